"""Metrics of a classifier on a split: the same numbers for a run directory or an export."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, loss, top-k, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    n, c = probs.shape
    if n == 0:
        raise TlkitError("cannot compute metrics on an empty split")
    pred = probs.argmax(axis=1)
    k = min(5, max(1, c - 1))
    topk = np.argsort(-probs, axis=1)[:, :k]
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (y_true, pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        predicted, actual = cm[:, i].sum(), cm[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual),
        }
    return {
        "num_examples": int(n),
        "accuracy": float((pred == y_true).mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(n), y_true], 1e-7, 1.0)).mean()),
        "top_k": int(k),
        "top_k_accuracy": float((topk == y_true[:, None]).any(axis=1).mean()),
        "per_class": per_class,
        "labels": list(class_names),
        "confusion_matrix": cm.tolist(),
    }


def _collect(fn: Callable[[tf.Tensor], tf.Tensor], batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    for images, onehot in batches:
        probs.append(np.asarray(fn(images)))
        labels.append(np.argmax(np.asarray(onehot), axis=1))
    return np.concatenate(labels), np.concatenate(probs)


def evaluate(
    target: str | Path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
    quiet: bool = True,
    unsafe: bool = False,
) -> dict[str, Any]:
    """Metrics of a run directory or an export on a split of `data` (default: the run's own data).

    `unsafe=True` lets a run's .keras file run Python code it carries (Lambda layers).
    """
    from tlkit import runs
    from tlkit.data.sources import load_data
    from tlkit.exporting import load_export_recipe
    from tlkit.models.classifier import load_run_model
    from tlkit.recipe import load_recipe
    from tlkit.tasks import get_task

    target = Path(target)
    if target.is_file() or (target.is_dir() and not (target / runs.RECIPE).is_file()):
        from tlkit import formats

        try:
            fmt, model_path = formats.locate(target)
        except TlkitError:
            raise TlkitError(
                f"'{target}' is neither a run directory (it has no {runs.RECIPE}) nor an export "
                "(SavedModel folder, .tflite/.onnx file, or a model folder of numbered versions)"
            ) from None
        folder = formats.export_folder(model_path)
        if not (folder / "metadata.json").is_file():
            raise TlkitError(f"{folder} has no metadata.json: evaluate needs the whole export folder, not the model file alone")
        recipe = load_export_recipe(folder)
        labels = formats.read_labels(model_path)
        formats.require(fmt)
        runner = fmt.load(model_path)  # any export format, on its own engine

        def fn(images: tf.Tensor) -> np.ndarray:
            return runner(np.asarray(images))

    else:
        run_dir = runs.require_run_dir(target)
        recipe = load_recipe(run_dir / runs.RECIPE)
        labels = runs.read_labels(run_dir)
        model = load_run_model(run_dir, unsafe=unsafe)
        fn = tf.function(lambda x: tf.nn.softmax(model(x, training=False), axis=-1), reduce_retracing=True)
    if data is not None:
        recipe = load_recipe(recipe, {"data.source": data})
    bundle = load_data(recipe.data, recipe.seed, progress=not quiet, task=recipe.task)
    if bundle.class_names != labels:
        raise TlkitError(
            f"the data's classes {bundle.class_names} differ from the model's labels {labels}; "
            "evaluate needs data with the same class folders/names"
        )
    split = split or ("test" if "test" in bundle.splits else "val" if "val" in bundle.splits else "train")
    if split not in bundle.splits:
        raise TlkitError(f"split '{split}' is not available; this data has: {', '.join(bundle.splits)}")
    task = get_task(recipe)
    return {"split": split, **task.evaluate(fn, task.eval_pipeline(bundle, recipe, split, batch_size), labels)}
