"""Segmentation metrics from one confusion matrix over valid pixels: IoU, Dice, pixel accuracy."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from tlkit.errors import TlkitError

IGNORE = 255


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts (rows: true class) of the pixels whose true class is not ignored."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    keep = (t >= 0) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(cm: np.ndarray, class_names: list[str], loss: float | None = None) -> dict[str, Any]:
    """`mean_iou` averages the classes present in truth or prediction (a class absent from both is left out)."""
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    if total == 0:
        raise TlkitError("cannot compute metrics: no labelled pixels in this split")
    tp = np.diag(cm)
    actual, predicted = cm.sum(axis=1), cm.sum(axis=0)
    union = actual + predicted - tp
    per_class, ious = {}, []
    for i, name in enumerate(class_names):
        iou = tp[i] / union[i] if union[i] else None
        dice = 2 * tp[i] / (actual[i] + predicted[i]) if actual[i] + predicted[i] else None
        per_class[name] = {
            "iou": None if iou is None else float(iou),
            "dice": None if dice is None else float(dice),
            "pixels": int(actual[i]),
        }
        if iou is not None:
            ious.append(iou)
    out: dict[str, Any] = {
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "pixel_accuracy": float(tp.sum() / total),
        "mean_dice": float(np.mean([v["dice"] for v in per_class.values() if v["dice"] is not None] or [0.0])),
        "per_class": per_class,
        "labels": list(class_names),
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def evaluate_batches(
    fn: Callable[[Any], np.ndarray], batches: Iterable, class_names: list[str]
) -> dict[str, Any]:
    """`fn(images) -> probabilities [B, S, S, C]` over (images, masks) batches."""
    c = len(class_names)
    cm = np.zeros((c, c), np.int64)
    nll, pixels, n = 0.0, 0, 0
    for images, masks in batches:
        probs = np.asarray(fn(images))
        y = np.asarray(masks)[..., 0]
        cm += confusion(y, probs.argmax(-1), c)
        valid = y < c
        picked = np.take_along_axis(probs, np.where(valid, y, 0)[..., None], axis=-1)[..., 0]
        nll += float(-np.log(np.clip(picked[valid], 1e-7, 1.0)).sum())
        pixels += int(valid.sum())
        n += len(y)
    result = metrics_from_confusion(cm, class_names, nll / max(pixels, 1))
    return {"num_examples": n, **result}
