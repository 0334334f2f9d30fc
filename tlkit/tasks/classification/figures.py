"""Classification's report figures: the confusion matrix and a grid of predictions, worst mistakes first."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tlkit.figures import GRID_COLS, GRID_TILES, Figure, confusion_figure, first_batches, grid_inches, new_figure, report_split, save_figure

PREDICTIONS = "predictions.png"


def worst_first(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Mistakes by falling confidence in the wrong class, then correct ones by rising confidence."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != labels)
    right = np.flatnonzero(pred == labels)
    return np.concatenate([wrong[np.argsort(-conf[wrong], kind="stable")], right[np.argsort(conf[right], kind="stable")]])


def plot_predictions(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, names: list[str], split: str, path: Path, tiles: int = GRID_TILES
) -> None:
    """A grid of images with true label, predicted label and confidence, worst mistakes first."""
    order = worst_first(labels, probs)[:tiles]
    pred = probs.argmax(axis=1)
    wrong = int((pred != labels).sum())
    width, height = grid_inches(len(order))
    fig = new_figure(width, height)
    cols = min(GRID_COLS, max(len(order), 1))
    rows = max(1, math.ceil(len(order) / cols))
    fig.suptitle(f"{split}: {wrong} of {len(labels)} wrong; worst mistakes first", fontsize=10)
    for i, k in enumerate(order):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[k].astype(np.uint8), interpolation="nearest")
        ok = pred[k] == labels[k]
        ax.set_title(
            f"true: {names[labels[k]]}\npred: {names[pred[k]]} {probs[k, pred[k]]:.0%}",
            fontsize=7,
            color="tab:green" if ok else "tab:red",
        )
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    save_figure(fig, path)


def classification_figures(ctx: Any, probabilities: Any, encode_labels: Any) -> list[Figure]:
    """`probabilities`: images -> class probabilities; `encode_labels`: a batch's targets -> class indices."""
    figures = confusion_figure(ctx, "Confusion matrix")
    split = report_split(ctx)
    if split is None:
        return figures
    batches = ctx.eval_batches(split, 64)
    images, labels, probs = first_batches(
        batches, ctx.max_images, lambda x, y: x.numpy(), lambda x, y: encode_labels(y), lambda x, y: probabilities(x)
    )
    plot_predictions(images, labels, probs, ctx.labels, split, ctx.out / PREDICTIONS)
    figures.append(
        Figure(
            PREDICTIONS,
            "Predictions",
            f"{min(len(labels), GRID_TILES)} of the first {len(labels)} {split} images: the most confident "
            "mistakes first (red), then the least confident correct answers (green).",
        )
    )
    return figures
