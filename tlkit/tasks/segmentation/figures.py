"""Segmentation's report figures: the pixel confusion matrix and overlays, worst images first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlkit.figures import Figure, confusion_figure, first_batches, new_figure, report_split, save_figure
from tlkit.tasks.segmentation.masks import IGNORE
from tlkit.tasks.segmentation.serving import palette

OVERLAYS = "overlays.png"
OVERLAY_ROWS = 8


def _predict_masks(ctx: Any, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8-range images, true masks with 255 = ignore, predicted masks) of the first `max_images` of a split."""
    import tensorflow as tf

    model = ctx.model()
    call = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32), reduce_retracing=True)
    images, truths, preds = first_batches(
        ctx.eval_batches(split, 16), ctx.max_images,
        lambda x, y: x.numpy(), lambda x, y: y.numpy()[..., 0], lambda x, y: call(x).numpy(),
    )
    return images, truths, preds


def worst_masks_first(truths: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Images by rising pixel accuracy over their valid (not ignored) pixels."""
    valid = truths != IGNORE
    right = ((truths == preds) & valid).reshape(len(truths), -1).sum(axis=1)
    accuracy = right / np.maximum(valid.reshape(len(truths), -1).sum(axis=1), 1)
    return np.argsort(accuracy, kind="stable"), accuracy


def plot_overlays(
    images: np.ndarray, truths: np.ndarray, preds: np.ndarray, names: list[str], split: str, path: Path, rows: int = OVERLAY_ROWS
) -> None:
    """Rows of (image, true mask, predicted mask), the worst images first, with a colour legend."""
    from matplotlib.patches import Patch

    order, accuracy = worst_masks_first(truths, preds)
    order = order[:rows]
    colours = np.concatenate([palette(len(names)), np.array([[128, 128, 128]], np.uint8)])
    height = 2.0 * max(len(order), 1) + 0.9
    fig = new_figure(6.4, height)
    fig.suptitle(f"{split}: image, true mask, prediction; worst pixel accuracy first", fontsize=10)
    for r, k in enumerate(order):
        image = images[k].clip(0, 255).astype(np.uint8)
        truth = np.where(truths[k] == IGNORE, len(names), truths[k])
        panels = (image, colours[truth], colours[preds[k]])
        titles = ("image", "true mask", f"predicted mask ({accuracy[k]:.0%} of pixels right)")
        for c, (panel, title) in enumerate(zip(panels, titles)):
            ax = fig.add_subplot(max(len(order), 1), 3, 3 * r + c + 1)
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    handles = [Patch(color=colours[i] / 255.0, label=name) for i, name in enumerate(names)]
    handles.append(Patch(color=colours[-1] / 255.0, label="ignored"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.45 / height))
    save_figure(fig, path)


def segmentation_figures(ctx: Any) -> list[Figure]:
    figures = confusion_figure(ctx, "Pixel confusion matrix", ", over valid pixels")
    split = report_split(ctx)
    if split is not None:
        images, truths, preds = _predict_masks(ctx, split)
        plot_overlays(images, truths, preds, ctx.labels, split, ctx.out / OVERLAYS)
        figures.append(
            Figure(
                OVERLAYS,
                "Masks",
                f"{min(len(images), OVERLAY_ROWS)} of the first {len(images)} {split} images, the lowest pixel accuracy "
                "first: the image, its true mask (grey: ignored pixels) and the predicted mask.",
            )
        )
    return figures
