"""Likely mislabelled images and outliers, from frozen features.

Out-of-fold probabilities: a softmax regression trained on the other folds of a
seeded, stratified k-fold, averaged with the vote of each image's nearest
neighbours (cosine similarity, itself left out). Both see an image only from
outside, so a wrong label cannot vouch for itself.

The rule is confident learning (Northcutt, Jiang, Chuang 2021, the rule behind
cleanlab's `find_label_issues`): a class's threshold is the mean probability of
that class over the images given it; an image is an issue when the most probable
class among those at or above their threshold is not its given one. Findings are
ranked by self-confidence (score = 1 - probability of the given label, cleanlab's
default ranking). We write these ~30 lines of NumPy instead of depending on
cleanlab because it would pull pandas, scikit-learn and scipy (~150 MB) into every
install for this one rule, and its Datalab would decode and embed the images again.
"""

from __future__ import annotations

import numpy as np

FOLDS = 5
NEIGHBOURS = 15  # the vote averaged with the regression (measured: bench/doctor_flowers.py)
OUTLIER_NEIGHBOURS = 5
L2 = 1e-3  # weight decay of the softmax regression on standardized features
STEPS = 300
BLANK_GREY_STD = 2.0  # an image whose grey levels spread less than this is blank (an outlier whatever its features)
_BLOCK_ELEMENTS = 4_000_000


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def nearest(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of each row's k nearest other rows, best first; blockwise (memory flat)."""
    unit = unit_rows(features.astype(np.float32))
    n = len(unit)
    k = min(k, n - 1)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    idx = np.zeros((n, k), np.int64)
    sim = np.zeros((n, k), np.float32)
    for start in range(0, n, rows):
        block = unit[start : start + rows] @ unit.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # never itself
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(block), 0), np.int64)
        vals = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-vals, axis=1)
        idx[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
        sim[start : start + len(block)] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float = L2, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch Adam: (weights D x C, bias C)."""
    n, d = x.shape
    target = np.eye(classes, dtype=np.float32)[y]
    params = [np.zeros((d, classes), np.float32), np.zeros(classes, np.float32)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    rate, b1, b2 = 0.05, 0.9, 0.999
    for t in range(1, steps + 1):
        err = softmax(x @ params[0] + params[1]) - target
        grads = [x.T @ err / n + l2 * params[0], err.mean(axis=0)]
        for p, g, m in zip(params, grads, moments):
            m[0] = b1 * m[0] + (1 - b1) * g
            m[1] = b2 * m[1] + (1 - b2) * g * g
            p -= rate * (m[0] / (1 - b1**t)) / (np.sqrt(m[1] / (1 - b2**t)) + 1e-8)
    return params[0], params[1]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per image: each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def regression_probabilities(features: np.ndarray, y: np.ndarray, classes: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold probabilities of the softmax regression on standardized features."""
    x = unit_rows(features)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    fold = stratified_folds(y, folds, seed)
    probs = np.zeros((len(y), classes), np.float32)
    for f in range(folds):
        held = fold == f
        if not held.any() or held.all():
            continue
        w, b = fit_softmax(x[~held], y[~held], classes)
        probs[held] = softmax(x[held] @ w + b)
    return probs


def neighbour_probabilities(neighbours: np.ndarray, y: np.ndarray, classes: int, k: int = NEIGHBOURS) -> np.ndarray:
    """The share of each class among an image's k nearest other images."""
    votes = y[neighbours[:, :k]]
    probs = np.zeros((len(y), classes), np.float32)
    for c in range(classes):
        probs[:, c] = (votes == c).mean(axis=1)
    return probs


def confident_issues(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged bool, suggested class, score) by the confident-learning rule (module docstring)."""
    n, classes = probs.shape
    thresholds = np.array([probs[y == c, c].mean() if (y == c).any() else 1.0 for c in range(classes)])
    above = probs >= thresholds[None, :] - 1e-9
    confident = np.where(above, probs, -1.0)
    best = confident.argmax(axis=1)
    flagged = above.any(axis=1) & (best != y)
    others = probs.copy()
    others[np.arange(n), y] = -1.0
    suggested = others.argmax(axis=1)
    score = 1.0 - probs[np.arange(n), y]
    return flagged, suggested, score


def outlier_scores(similarities: np.ndarray, grey_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, score): mean cosine distance to the nearest images, flagged beyond Q3 + 3 IQR; blank frames always."""
    k = min(OUTLIER_NEIGHBOURS, similarities.shape[1])
    score = 1.0 - similarities[:, :k].mean(axis=1) if k else np.zeros(len(grey_std), np.float32)
    flagged = np.zeros(len(score), bool)
    if len(score) >= 8:
        q1, q3 = np.percentile(score, [25, 75])
        flagged = score > q3 + 3.0 * (q3 - q1)
    blank = grey_std < BLANK_GREY_STD
    return flagged | blank, np.where(blank, 1.0, np.clip(score, 0.0, 1.0))
