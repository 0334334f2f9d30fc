"""Classification metrics from probabilities: accuracy, loss, top-k, per-class precision/recall/F1, confusion."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

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


def collect(fn: Callable[[Any], Any], batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = [], []
    for images, onehot in batches:
        probs.append(np.asarray(fn(images)))
        labels.append(np.argmax(np.asarray(onehot), axis=1))
    return np.concatenate(labels), np.concatenate(probs)
