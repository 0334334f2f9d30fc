"""Figures: one way to draw and save a picture, shared by run reports, `tlkit inspect` and the tasks' figures.

matplotlib's object API on the Agg canvas: no pyplot state, no display, the same
in a notebook and on a server. Every PNG is written beside its name and renamed.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
GRID_COLS = 6
GRID_TILES = 24


@dataclass
class Figure:
    """A picture of a report: its file in report/, a title and a caption for index.html."""

    file: str
    title: str
    caption: str = ""


def new_figure(width: float, height: float, dpi: int = DPI) -> Any:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=dpi)


def umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """PNG through the Agg canvas, written beside and renamed: no half-written picture, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; a picture is for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def grid_inches(tiles: int, cols: int = GRID_COLS) -> tuple[float, float]:
    rows = max(1, math.ceil(tiles / cols))
    return (1.9 * min(cols, max(tiles, 1)), 2.15 * rows + 0.5)


def confusion_inches(num_classes: int) -> float:
    """Side of the square confusion-matrix figure: grows with the classes, capped."""
    return float(min(max(5.0, 0.45 * num_classes + 3.0), 20.0))


def plot_confusion(matrix: np.ndarray, labels: list[str], split: str, path: Path) -> None:
    """Row-normalized (each true class sums to 1), counts in brackets, label names on both axes."""
    counts = np.asarray(matrix, np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)
    n = len(labels)
    side = confusion_inches(n)
    fig = new_figure(side, side)
    ax = fig.add_subplot(1, 1, 1)
    shade = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shade, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({split}, {int(counts.sum())} images, rows normalized)", fontsize=10)
    if n <= 25:
        for t in range(n):
            for p in range(n):
                colour = "white" if norm[t, p] > 0.5 else "black"
                ax.text(p, t, f"{norm[t, p]:.2f}\n({counts[t, p]})", ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    save_figure(fig, path)


CONFUSION = "confusion_matrix.png"


def confusion_figure(ctx: Any, title: str, over: str = "") -> list[Figure]:
    """The normalized confusion matrix of the run's metrics.json, if it recorded one (`ctx`: a report context)."""
    if "confusion_matrix" not in ctx.metrics:
        return []
    split = ctx.metrics.get("split", "test")
    plot_confusion(np.array(ctx.metrics["confusion_matrix"]), ctx.labels, split, ctx.out / CONFUSION)
    return [Figure(CONFUSION, title, f"On the {split} split{over}: rows are the true classes, each sums to 1.")]


def report_split(ctx: Any) -> str | None:
    """The split a report draws sample predictions from: val, else test, else train."""
    splits = ctx.bundle().splits
    return next((s for s in ("val", "test", "train") if s in splits), None)


def first_batches(batches: Any, limit: int, *fns: Any) -> list[np.ndarray]:
    """Concatenated columns of the first `limit` examples: each fn maps a batch (x, y) to one array."""
    columns: list[list[np.ndarray]] = [[] for _ in fns]
    n = 0
    for x, y in batches:
        for column, fn in zip(columns, fns):
            column.append(np.asarray(fn(x, y)))
        n += len(columns[0][-1])
        if n >= limit:
            break
    return [np.concatenate(c)[:limit] for c in columns]
