"""Likely mislabelled images and outliers, from frozen features.

Out-of-fold probabilities: a softmax regression trained on the other folds of a
seeded, stratified k-fold, averaged (0.7 / 0.3) with the vote of each image's 25
nearest neighbours (cosine similarity, itself left out). Both see an image only
from outside, so a wrong label cannot vouch for itself. These settings, and the
features being the average over the image and its mirror image (doctor.py), were
chosen on two noisy copies of flowers_128 (seeds 0 and 1, bench/doctor_flowers.py):
mean precision of the top N 0.46, against 0.42 for the plain features with an
even average of the regression and a 15-neighbour vote.

How many labels are wrong comes from confident learning (Northcutt, Jiang,
Chuang 2021, the rule behind cleanlab's `find_label_issues`): a class's threshold
is the mean probability of that class over the images given it; an image counts
when the most probable class among those at or above their threshold is not its
given one. Which ones: that many images whose most probable class is not the given
one, lowest self-confidence first (score = 1 - probability of the given label,
cleanlab's default ranking), as cleanlab's `prune_by_noise_rate` keeps the
count and removes by rank. On the noisy flowers bench, ranking every image this way
put more moved files in the top N than ranking only the images the rule flags. We write these ~30 lines of NumPy instead of depending on
cleanlab because it would pull pandas, scikit-learn and scipy (~150 MB) into every
install for this one rule, and its Datalab would decode and embed the images again.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FOLDS = 5
NEIGHBOURS = 25  # neighbours that vote
REGRESSION_WEIGHT = 0.7  # probabilities = 0.7 regression + 0.3 neighbour vote
OUTLIER_NEIGHBOURS = 5
L2 = 0.01  # weight decay of the softmax regression on standardized features
STEPS = 200
BLANK_GREY_STD = 2.0  # an image whose grey levels spread less than this is blank (an outlier whatever its features)
_BLOCK_ELEMENTS = 4_000_000


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def nearest(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of each row's k nearest other rows, best first; blockwise (memory flat)."""
    unit = tf.constant(unit_rows(features.astype(np.float32)))
    n = int(unit.shape[0])
    k = min(k, n - 1)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    idx, sim = [], []
    for start in range(0, n, rows):
        block = tf.matmul(unit[start : start + rows], unit, transpose_b=True)
        own = tf.one_hot(tf.range(start, start + int(block.shape[0])), n, on_value=-np.inf, off_value=0.0)
        values, indices = tf.math.top_k(block + own, k=k)  # never itself
        idx.append(indices.numpy().astype(np.int64))
        sim.append(values.numpy())
    return np.concatenate(idx), np.concatenate(sim)


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float | None = None, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch Adam: (weights D x C, bias C).

    In one TensorFlow graph: NumPy's threaded BLAS was 5x slower on a busy machine.
    """
    target = np.eye(classes, dtype=np.float32)[y]
    w, b = _adam_softmax(tf.constant(x, tf.float32), tf.constant(target), tf.constant(L2 if l2 is None else l2, tf.float32),
                         tf.constant(STEPS if steps is None else steps))
    return w.numpy(), b.numpy()


@tf.function(reduce_retracing=True, autograph=False)
def _adam_softmax(x: tf.Tensor, target: tf.Tensor, l2: tf.Tensor, steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    rate, b1, b2 = 0.05, 0.9, 0.999
    n = tf.cast(tf.shape(x)[0], tf.float32)
    w = tf.zeros([tf.shape(x)[1], tf.shape(target)[1]])
    b = tf.zeros([tf.shape(target)[1]])

    def step(t, w, b, mw, vw, mb, vb):
        err = tf.nn.softmax(tf.matmul(x, w) + b) - target
        gw = tf.matmul(x, err, transpose_a=True) / n + l2 * w
        gb = tf.reduce_mean(err, axis=0)
        mw, vw = b1 * mw + (1 - b1) * gw, b2 * vw + (1 - b2) * gw * gw
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb * gb
        tt = tf.cast(t, tf.float32)
        c1, c2 = 1 - b1**tt, 1 - b2**tt
        w = w - rate * (mw / c1) / (tf.sqrt(vw / c2) + 1e-8)
        b = b - rate * (mb / c1) / (tf.sqrt(vb / c2) + 1e-8)
        return t + 1, w, b, mw, vw, mb, vb

    state = (tf.constant(1), w, b, tf.zeros_like(w), tf.zeros_like(w), tf.zeros_like(b), tf.zeros_like(b))
    out = tf.while_loop(lambda t, *rest: t <= steps, step, state)
    return out[1], out[2]


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
    """(flagged bool, suggested class, score): how many labels are wrong by the confident-learning rule, and which
    ones by self-confidence (module docstring)."""
    n, classes = probs.shape
    rows = np.arange(n)
    thresholds = np.array([probs[y == c, c].mean() if (y == c).any() else 1.0 for c in range(classes)])
    above = probs >= thresholds[None, :] - 1e-9
    off_diagonal = above.any(axis=1) & (np.where(above, probs, -1.0).argmax(axis=1) != y)
    others = probs.copy()
    others[rows, y] = -1.0
    suggested = others.argmax(axis=1)
    score = 1.0 - probs[rows, y]
    candidates = np.flatnonzero(probs.argmax(axis=1) != y)  # never claim an image whose best guess is its label
    chosen = candidates[np.argsort(-score[candidates], kind="stable")][: int(off_diagonal.sum())]
    flagged = np.zeros(n, bool)
    flagged[chosen] = True
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
