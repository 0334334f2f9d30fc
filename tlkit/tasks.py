"""Tasks: what differs between classification and segmentation, behind one registry.

The trainer, evaluator, exporter and predictor are shared; a task supplies the
model builder, the pipelines, the loss and metrics, the evaluation and the
serving signatures. Adding a task is one `register_task(Task(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from tlkit.errors import TlkitError
from tlkit.recipe import Recipe


@dataclass(frozen=True)
class Task:
    name: str
    check: Callable[[Recipe], None]
    build_model: Callable[[Recipe, int], keras.Model]
    # (bundle, recipe, cache dir) -> (augmented train, plain train, val) batches
    pipelines: Callable[[Any, Recipe, Path], tuple[Any, Any, Any]]
    # (bundle, recipe, split name, batch size) -> plain batches of that split
    eval_pipeline: Callable[[Any, Recipe, str, int], Any]
    # (recipe, bundle) -> (loss, metrics, class_weight argument for fit)
    objective: Callable[[Recipe, Any], tuple[Any, list[Any], Any]]
    # (probabilities function, batches, class names) -> metrics dict
    evaluate: Callable[[Callable[[Any], Any], Any, list[str]], dict[str, Any]]
    archive: Callable[[keras.Model, list[str], int], keras.export.ExportArchive]
    signatures: dict[str, str]
    headline: str  # the metric printed at the end of a run
    cache_features: bool  # a frozen backbone's pooled features can stand in for images


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(recipe_or_name: "Recipe | str") -> Task:
    name = recipe_or_name if isinstance(recipe_or_name, str) else recipe_or_name.task
    if name not in TASKS:
        raise TlkitError(f"unknown task '{name}'; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def class_weight_list(recipe: Recipe, names: list[str], counts: np.ndarray | None) -> list[float] | None:
    """train.class_weights as one weight per class (None: all equal). `auto` needs counts."""
    setting = recipe.train.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        if counts is None:
            raise TlkitError("train.class_weights: auto is for classification; for segmentation give {class: weight}")
        counts = counts.astype(float)
        total = counts.sum()
        return [float(total / (len(names) * c)) if c else 0.0 for c in counts]
    unknown = sorted(set(setting) - set(names))
    if unknown:
        raise TlkitError(f"train.class_weights names unknown class(es) {unknown}; the classes are: {', '.join(names)}")
    return [float(setting.get(n, 1.0)) for n in names]


# ----------------------------------------------------------------------------- classification


def _cls_check(recipe: Recipe) -> None:
    from tlkit.models.classifier import check_model

    check_model(recipe)


def _cls_build(recipe: Recipe, num_classes: int) -> keras.Model:
    from tlkit.models.classifier import build_classifier

    return build_classifier(recipe, num_classes)


def _cls_pipelines(bundle: Any, rec: Recipe, cache: Path) -> tuple[Any, Any, Any]:
    from tlkit.data.pipeline import cached_images, make_pipeline
    from tlkit.models.classifier import input_size

    size, n, batch = input_size(rec), len(bundle.class_names), rec.train.batch_size
    train_images = cached_images(bundle.splits["train"], size, cache_dir=cache / "train")
    train = make_pipeline(
        bundle.splits["train"], size, n, batch, training=True, augment=rec.data.augment, seed=rec.seed, images=train_images
    )
    plain = make_pipeline(bundle.splits["train"], size, n, batch, images=train_images)
    val = make_pipeline(bundle.splits["val"], size, n, batch, cache_dir=cache / "val")
    return train, plain, val


def _cls_eval_pipeline(bundle: Any, rec: Recipe, split: str, batch: int) -> Any:
    from tlkit.data.pipeline import make_pipeline
    from tlkit.models.classifier import input_size

    return make_pipeline(bundle.splits[split], input_size(rec), len(bundle.class_names), batch, cache=False)


def _cls_objective(rec: Recipe, bundle: Any) -> tuple[Any, list[Any], Any]:
    n = len(bundle.class_names)
    k = min(5, max(1, n - 1))
    counts = np.bincount(bundle.splits["train"].labels, minlength=n)
    weights = class_weight_list(rec, bundle.class_names, counts)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=rec.train.label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.TopKCategoricalAccuracy(k, name="top_k_accuracy")]
    return loss, metrics, (dict(enumerate(weights)) if weights is not None else None)


def _cls_evaluate(fn: Callable[[Any], Any], batches: Any, class_names: list[str]) -> dict[str, Any]:
    from tlkit.evaluation import _collect, compute_metrics

    y, p = _collect(fn, batches)
    return compute_metrics(y, p, class_names)


def _cls_archive(model: keras.Model, labels: list[str], size: int) -> keras.export.ExportArchive:
    from tlkit.exporting import build_archive

    return build_archive(model, labels, size)


register_task(
    Task(
        name="classification",
        check=_cls_check,
        build_model=_cls_build,
        pipelines=_cls_pipelines,
        eval_pipeline=_cls_eval_pipeline,
        objective=_cls_objective,
        evaluate=_cls_evaluate,
        archive=_cls_archive,
        signatures={
            "serving_default": "images: uint8 [batch, height, width, 3] -> probabilities, classes",
            "serving_bytes": "image_bytes: string [batch] (JPEG/PNG/GIF/BMP) -> probabilities, classes",
            "embeddings": "images: uint8 [batch, height, width, 3] -> embeddings float32 [batch, features]",
            "embeddings_bytes": "image_bytes: string [batch] -> embeddings",
        },
        headline="accuracy",
        cache_features=True,
    )
)


# ----------------------------------------------------------------------------- segmentation


def _seg_check(recipe: Recipe) -> None:
    from tlkit.models.classifier import check_model
    from tlkit.models.segmenter import check_segmenter

    check_model(recipe)
    check_segmenter(recipe)


def _seg_build(recipe: Recipe, num_classes: int) -> keras.Model:
    from tlkit.models.segmenter import build_segmenter

    return build_segmenter(recipe, num_classes)


def _seg_pipelines(bundle: Any, rec: Recipe, cache: Path) -> tuple[Any, Any, Any]:
    from tlkit.data.pipeline import cached_pairs, make_seg_pipeline
    from tlkit.models.classifier import input_size

    size, batch, table = input_size(rec), rec.train.batch_size, bundle.mapping.table()
    pairs = cached_pairs(bundle.splits["train"], size, table, cache_dir=cache / "train")
    train = make_seg_pipeline(
        bundle.splits["train"], size, table, batch, training=True, augment=rec.data.augment, seed=rec.seed, pairs=pairs
    )
    plain = make_seg_pipeline(bundle.splits["train"], size, table, batch, pairs=pairs)
    val_pairs = cached_pairs(bundle.splits["val"], size, table, cache_dir=cache / "val")
    val = make_seg_pipeline(bundle.splits["val"], size, table, batch, pairs=val_pairs)
    return train, plain, val


def _seg_eval_pipeline(bundle: Any, rec: Recipe, split: str, batch: int) -> Any:
    from tlkit.data.pipeline import cached_pairs, make_seg_pipeline
    from tlkit.models.classifier import input_size

    size, table = input_size(rec), bundle.mapping.table()
    pairs = cached_pairs(bundle.splits[split], size, table, cache=False)
    return make_seg_pipeline(bundle.splits[split], size, table, batch, pairs=pairs)


def _seg_objective(rec: Recipe, bundle: Any) -> tuple[Any, list[Any], Any]:
    from tlkit.segmentation.losses import SegmentationLoss, segmentation_metrics

    n = len(bundle.class_names)
    lw = rec.train.loss
    loss = SegmentationLoss(
        n, lw.cross_entropy, lw.dice, lw.focal, lw.focal_gamma, class_weight_list(rec, bundle.class_names, None)
    )
    return loss, segmentation_metrics(n), None


def _seg_evaluate(fn: Callable[[Any], Any], batches: Any, class_names: list[str]) -> dict[str, Any]:
    from tlkit.segmentation.evaluation import evaluate_batches

    return evaluate_batches(fn, batches, class_names)


def _seg_archive(model: keras.Model, labels: list[str], size: int) -> keras.export.ExportArchive:
    from tlkit.segmentation.serving import build_segmentation_archive

    return build_segmentation_archive(model, labels, size)


def _seg_signatures() -> dict[str, str]:
    return {
        "serving_default": "images: uint8 [batch, height, width, 3] -> classes int32 [batch, height, width], "
        "probabilities float32 [batch, height, width, classes], at the input's size",
        "serving_bytes": "image_bytes: string [batch] -> classes, probabilities at the first image's size",
    }


register_task(
    Task(
        name="segmentation",
        check=_seg_check,
        build_model=_seg_build,
        pipelines=_seg_pipelines,
        eval_pipeline=_seg_eval_pipeline,
        objective=_seg_objective,
        evaluate=_seg_evaluate,
        archive=_seg_archive,
        signatures=_seg_signatures(),
        headline="mean_iou",
        cache_features=False,
    )
)
