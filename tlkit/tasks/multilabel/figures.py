"""Multi-label report figures: average precision per class, and each class's precision-recall curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tlkit.figures import Figure, first_batches, new_figure, report_split, save_figure
from tlkit.tasks.multilabel.metrics import average_precision, precision_recall_curve

AP_BARS = "average_precision.png"
PR_CURVES = "precision_recall.png"


def plot_ap_bars(per_class: dict[str, Any], split: str, path: Path) -> None:
    """One bar per class (its AP on the evaluated split), worst first, with the mean as a line."""
    names = [n for n, row in per_class.items() if row.get("average_precision") is not None]
    values = [per_class[n]["average_precision"] for n in names]
    order = np.argsort(values)
    fig = new_figure(7.0, max(2.5, 0.32 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([names[i] for i in order], [values[i] for i in order], color="tab:blue")
    if values:
        ax.axvline(float(np.mean(values)), color="0.3", linestyle="--", linewidth=1, label=f"mean {np.mean(values):.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(f"average precision per class ({split})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_pr_curves(y: np.ndarray, p: np.ndarray, names: list[str], thresholds: list[float], split: str, path: Path) -> None:
    """Each class's precision-recall curve, with the point its threshold picks."""
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = new_figure(3.0 * cols, 2.8 * rows + 0.4)
    fig.suptitle(f"precision-recall per class ({split}); dot: the chosen threshold", fontsize=10)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        if y[:, i].sum() > 0:
            precision, recall, _ = precision_recall_curve(y[:, i], p[:, i])
            ax.step(recall, precision, where="post", color="tab:blue")
            chosen = p[:, i] >= thresholds[i]
            tp = float((chosen & (y[:, i] > 0)).sum())
            ax.plot([tp / y[:, i].sum()], [tp / max(chosen.sum(), 1)], "o", color="tab:red", markersize=4)
            ax.set_title(f"{name} (AP {average_precision(y[:, i], p[:, i]):.3f})", fontsize=8)
        else:
            ax.set_title(f"{name} (no positives)", fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)


def multilabel_figures(ctx: Any, probabilities: Any, thresholds: list[float]) -> list[Figure]:
    figures = []
    per_class = ctx.metrics.get("per_class") or {}
    split = ctx.metrics.get("split", "test")
    if per_class:
        plot_ap_bars(per_class, split, ctx.out / AP_BARS)
        figures.append(Figure(AP_BARS, "Average precision per class", f"On the {split} split; the dashed line is their mean (mAP)."))
    sample = report_split(ctx)
    if sample is not None:
        y, p = first_batches(ctx.eval_batches(sample, 64), ctx.max_images, lambda x, t: t.numpy(), lambda x, t: probabilities(x))
        plot_pr_curves(y, p, ctx.labels, thresholds, sample, ctx.out / PR_CURVES)
        figures.append(Figure(PR_CURVES, "Precision-recall curves", f"The first {len(y)} {sample} images, per class."))
    return figures
