"""What a recipe leaves to the data: `model.input_size: auto` and `epochs: auto`, resolved once the data is read.

The resolved values are written into the run's recipe.yaml, so the run repeats
(and resumes) with exactly the size and stage lengths it trained with, and the
summary prints each choice with its reason.
"""

from __future__ import annotations

import math
from typing import Any

from tlkit.data.autosize import auto_input_size
from tlkit.data.imagesizes import image_sizes
from tlkit.data.scan import current_options
from tlkit.models.backbones import get_backbone
from tlkit.models.stages import input_size
from tlkit.recipe import Recipe, Stage


def stage_epochs(stage: Stage, steps_per_epoch: int) -> int:
    """`epochs: auto`: ceil(steps / steps per epoch), kept within [min_epochs, max_epochs]; a number stays itself.

    A few hundred images (10 steps an epoch) and 40,000 (1,250) then both get about
    `steps` optimizer steps where the bounds allow: many passes over small data, few over large.
    """
    if stage.epochs != "auto":
        return int(stage.epochs)
    wanted = math.ceil(stage.steps / max(1, steps_per_epoch))
    return int(min(stage.max_epochs, max(stage.min_epochs, wanted)))


def steps_per_epoch(train_images: int, global_batch: int) -> int:
    return max(1, math.ceil(train_images / max(1, global_batch)))


def scan_size(rec: Recipe) -> dict[str, Any]:
    """How the run's scan decodes: at the recipe's size, or (`auto`) at the size the scan picks from the files."""
    if rec.model.input_size != "auto":
        return {"size": input_size(rec)}  # the backbone's default when the recipe gives none
    spec = get_backbone(rec.model.backbone)
    return {"auto": lambda sizes: auto_input_size(sizes, spec.default_size, spec.min_size, backbone=spec.name)}


def resolve_auto(rec: Recipe, bundle: Any, replicas: int = 1) -> tuple[Recipe, list[str]]:
    """The recipe with every `auto` replaced by its number, and one line per choice for the summary."""
    notes: list[str] = []
    model = rec.model
    if model.input_size == "auto":
        spec = get_backbone(model.backbone)
        choice = current_options().auto_choice  # the scan of image files picked it before decoding them
        if choice is None:  # no image files were scanned (TFDS sources)
            choice = auto_input_size(image_sizes(bundle, rec.seed), spec.default_size, spec.min_size, backbone=spec.name)
        model = model.model_copy(update={"input_size": choice.size})
        notes.append(f"input     {choice.reason}")
    steps = steps_per_epoch(bundle.splits["train"].size, rec.train.batch_size * replicas)
    stages = []
    for stage in rec.train.stages:
        if stage.epochs == "auto":
            epochs = stage_epochs(stage, steps)
            notes.append(
                f"length    {stage.name}: {epochs} epoch(s) x {steps} steps = {epochs * steps} steps "
                f"(epochs: auto, aiming at {stage.steps} steps within {stage.min_epochs}-{stage.max_epochs} epochs)"
            )
            stage = stage.model_copy(update={"epochs": epochs})
        stages.append(stage)
    train = rec.train.model_copy(update={"stages": stages})
    return rec.model_copy(update={"model": model, "train": train}), notes
