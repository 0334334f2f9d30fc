"""Classifier = preprocessing + backbone + GAP head; and the freezing policy of each stage.

The model takes float32 images in [0, 255] at a fixed size and returns logits.
The backbone is one nested model named "backbone" so stages can freeze and
unfreeze it by name, and so features can be read off it later.
"""

from __future__ import annotations

from pathlib import Path

import keras

from tlkit.errors import TlkitError
from tlkit.models.backbones import build_backbone, get_backbone, validate_model
from tlkit.models.preprocess import Preprocess
from tlkit.recipe import Recipe, Stage


def input_size(recipe: Recipe) -> int:
    """The recipe's input size, else the backbone's default."""
    return recipe.model.input_size or get_backbone(recipe.model.backbone).default_size


def check_model(recipe: Recipe) -> None:
    """Fail on a bad backbone, option, size or weights path before any data is read."""
    size = input_size(recipe)
    spec = validate_model(recipe.model.backbone, size, recipe.model.options, recipe.model.weights)
    if spec.name == "scratch":
        from tlkit.models.scratch import block_sizes

        block_sizes(recipe.model.blocks, size)


def build_classifier(recipe: Recipe, num_classes: int) -> keras.Model:
    spec = get_backbone(recipe.model.backbone)
    size = input_size(recipe)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    backbone = build_backbone(
        spec, size, recipe.model.weights, recipe.model.options, blocks=recipe.model.blocks
    )
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if recipe.model.head.dropout > 0:
        x = keras.layers.Dropout(recipe.model.head.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"tlkit_{spec.name}")


def backbone_of(model: keras.Model) -> keras.Model:
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise TlkitError(f"model '{model.name}' has no layer named 'backbone': it was not built by tlkit") from None


def resolve_batchnorm(recipe: Recipe, stage: Stage) -> str:
    """`auto`: pretrained BatchNorm statistics are kept (inference mode); fresh ones must learn."""
    if stage.batchnorm != "auto":
        return stage.batchnorm
    pretrained = recipe.model.backbone != "scratch" and recipe.model.weights != "none"
    return "frozen" if pretrained else "train"


def apply_stage(model: keras.Model, stage: Stage, batchnorm: str) -> dict[str, int]:
    """Set which backbone layers train in this stage; return trainable/frozen parameter counts.

    `unfreeze: N` counts layers that hold weights, from the top of the backbone.
    A BatchNorm layer with trainable=False runs in inference mode in Keras 3, which
    is how `batchnorm: frozen` keeps the pretrained statistics.
    """
    backbone = backbone_of(model)
    if stage.unfreeze == "none":
        backbone.trainable = False
    else:
        backbone.trainable = True
        weighted = [layer for layer in backbone.layers if layer.weights]
        if isinstance(stage.unfreeze, int):
            keep = set(id(layer) for layer in weighted[len(weighted) - stage.unfreeze :]) if stage.unfreeze else set()
            for layer in weighted:
                layer.trainable = id(layer) in keep
        if batchnorm == "frozen":
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    total = sum(int(keras.ops.size(w)) for w in model.weights)
    return {"trainable": trainable, "frozen": total - trainable}


def load_run_model(run_dir: "str | Path") -> keras.Model:
    """The run's best checkpoint for inference (safe mode: no foreign code runs while loading).

    compile=False: the optimizer (and its tlkit learning-rate schedule) is not
    needed to predict, and would not deserialize in a process that never
    imported tlkit.train.
    """
    from tlkit import runs

    path = Path(run_dir) / runs.BEST
    if not path.is_file():
        raise TlkitError(f"{run_dir} has no {runs.BEST}: the run did not finish an epoch (resume it with --resume)")
    return keras.saving.load_model(path, safe_mode=True, compile=False)
