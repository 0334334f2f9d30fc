"""Multi-label evaluation metrics in plain numpy (sklearn is not a dependency).

Labels are multi-hot arrays ``y[N, C]`` of 0/1 and predictions are per-class sigmoid
probabilities ``probs[N, C]``. The definitions follow sklearn's (step-wise average
precision, precision-recall curve with a final (1, 0) point), so numbers can be
checked against it where it is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tlkit.errors import TlkitError

_EPS = 1e-7  # probability clip for the cross-entropy, as Keras' backend epsilon
_NO_POSITIVE_THRESHOLD = 0.5  # nothing to tune on: the plain sigmoid decision


def _binary_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, highest first.

    Tied scores form one threshold: all of them are predicted positive together.
    """
    y = np.asarray(y_true).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not y.size:
        raise TlkitError("cannot compute metrics on an empty split")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return fps, tps, s[last]


def average_precision(y_true_1d: Any, scores_1d: Any) -> float | None:
    """Step-wise AP = sum_n (R_n - R_{n-1}) P_n over descending distinct thresholds.

    No interpolation (sklearn's `average_precision_score`): the area under the PR
    curve as a step function, so it is not optimistic like the trapezoid rule.
    None when the class has no positives: its AP is undefined, not 0.
    """
    fps, tps, _ = _binary_curve(y_true_1d, scores_1d)
    positives = tps[-1]
    if positives == 0:
        return None
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(y_true_1d: Any, scores_1d: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for report figures, in sklearn's layout.

    Thresholds are the distinct scores, increasing; precision and recall have one more
    entry, the final (precision 1, recall 0) point, so the curve reaches the axis.
    A class with no positives gets recall 1 everywhere (sklearn's convention).
    """
    fps, tps, thresholds = _binary_curve(y_true_1d, scores_1d)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] else np.ones_like(precision)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def _best_f1_threshold(y_true_1d: np.ndarray, scores_1d: np.ndarray) -> float:
    """Midpoint between the best-F1 score and the next lower observed score (or 0)."""
    fps, tps, scores = _binary_curve(y_true_1d, scores_1d)
    positives = tps[-1]
    if positives == 0:
        return _NO_POSITIVE_THRESHOLD
    f1 = 2 * tps / (2 * tps + fps + (positives - tps))
    best = int(np.argmax(f1))  # first maximum: the highest threshold among ties
    lower = scores[best + 1] if best + 1 < scores.size else 0.0
    mid = (scores[best] + lower) / 2
    # float rounding can put the midpoint on the lower score, which would change decisions
    return float(mid if mid > lower else scores[best])


def choose_thresholds(y_true: Any, probs: Any) -> np.ndarray:
    """Per-class decision thresholds that maximise F1 on these (validation) images.

    Candidates are the observed scores. Rule: midpoint. For the best candidate score t
    (decision `prob >= t`, ties between F1 values go to the highest t), the threshold is
    the midpoint between t and the next lower observed score of that class (0 below the
    lowest), so the validation decisions are exactly those at t while new images that
    score a little under t are not lost. A class with no positives gets 0.5.
    """
    y, p = _check_pair(y_true, probs)
    return np.array([_best_f1_threshold(y[:, c], p[:, c]) for c in range(y.shape[1])], dtype=np.float64)


def _check_pair(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must both be [N, C]")
    if not y.shape[0]:
        raise TlkitError("cannot compute metrics on an empty split")
    return y > 0.5, p


def _ratio(num: float, den: float) -> float:
    """num / den, 0.0 when den is 0 (sklearn's zero_division=0)."""
    return float(num / den) if den else 0.0


def _per_class(y: np.ndarray, p: np.ndarray, pred: np.ndarray, names: list[str], thr: np.ndarray) -> dict:
    out = {}
    for c, name in enumerate(names):
        tp = int(np.sum(pred[:, c] & y[:, c]))
        fp = int(np.sum(pred[:, c] & ~y[:, c]))
        fn = int(np.sum(~pred[:, c] & y[:, c]))
        out[name] = {
            "average_precision": average_precision(y[:, c], p[:, c]),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "threshold": float(thr[c]),
            "support": int(np.sum(y[:, c])),
        }
    return out


def compute_metrics(
    y_true: Any, probs: Any, class_names: Sequence[str], thresholds: Any
) -> dict[str, Any]:
    """Every multi-label metric of one split, JSON-ready (plain floats, ints, lists).

    A decision is `prob >= threshold` (per class). Means over classes (mAP, macro F1)
    skip the classes with no positives in this split: their AP is undefined and their F1
    would count as 0 although there was nothing to find. None when no class has one.
    """
    y, p = _check_pair(y_true, probs)
    names = list(class_names)
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if not len(names) == thr.size == y.shape[1]:
        raise ValueError(f"{y.shape[1]} classes in the arrays, {len(names)} names, {thr.size} thresholds")
    pred = p >= thr[None, :]
    per_class = _per_class(y, p, pred, names, thr)
    present = [m for m in per_class.values() if m["support"]]
    q = np.clip(p, _EPS, 1 - _EPS)
    tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
    return {
        "num_examples": int(y.shape[0]),
        "mean_average_precision": float(np.mean([m["average_precision"] for m in present])) if present else None,
        "loss": float(np.mean(-(y * np.log(q) + (~y) * np.log(1 - q)))),
        "subset_accuracy": float(np.mean(np.all(pred == y, axis=1))),
        "hamming_loss": float(np.mean(pred != y)),
        "micro_precision": _ratio(tp, tp + fp),
        "micro_recall": _ratio(tp, tp + fn),
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "macro_f1": float(np.mean([m["f1"] for m in present])) if present else None,
        "per_class": per_class,
        "labels": names,
        "thresholds": [float(t) for t in thr],
    }
