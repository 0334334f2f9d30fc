"""Run reports: what a run learned, as pictures beside it in `RUN_DIR/report/`.

People would rather look than read, so every finished run leaves `curves.png`
(loss and metric per epoch, stage boundaries, learning rate), the task's own
pictures (classification: `confusion_matrix.png`, `predictions.png`) and an
`index.html` that opens from disk with no server or network. The report reads
only the run directory (and the run's data for sample predictions), so
`tlkit report RUN_DIR` rebuilds it at any time. What a task draws beyond the
curves is one entry in `REPORTERS`.

Figures use matplotlib's object API on the Agg canvas: no pyplot state, no
display, the same in a notebook and on a server.
"""

from __future__ import annotations

import datetime
import html
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlkit import runs
from tlkit.errors import TlkitError

REPORT = "report"
INDEX = "index.html"
CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
PREDICTIONS = "predictions.png"
CURVES_INCHES = (11.0, 4.2)
DPI = 100
GRID_COLS = 6
GRID_TILES = 24


@dataclass
class Figure:
    """A picture of the report: its file in report/, a title and a caption for index.html."""

    file: str
    title: str
    caption: str = ""


@dataclass
class ReportContext:
    """What a task's figures may read; the model and the data are loaded on first use only."""

    run_dir: Path
    out: Path  # where the figures are written (a temporary folder until the report is complete)
    recipe: Any
    labels: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    max_images: int = 256
    _model: Any = None
    _bundle: Any = None

    def model(self) -> Any:
        if self._model is None:
            from tlkit.models.classifier import load_run_model

            self._model = load_run_model(self.run_dir)
        return self._model

    def bundle(self) -> Any:
        if self._bundle is None:
            from tlkit.data.sources import load_data

            self._bundle = load_data(self.recipe.data, self.recipe.seed, progress=False, task=self.recipe.task)
        return self._bundle


@dataclass(frozen=True)
class TaskReport:
    """A task's part of the report: the metric drawn beside the loss, and its own figures."""

    metric: str
    figures: Callable[[ReportContext], list[Figure]] = field(default=lambda ctx: [])


REPORTERS: dict[str, TaskReport] = {}


def register_report(task: str, entry: TaskReport) -> TaskReport:
    """Add (or replace) what the report draws for runs of `task` (recipe `task:`)."""
    REPORTERS[task] = entry
    return entry


# ----------------------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=DPI)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _save(fig: Any, path: Path) -> None:
    from tlkit.inspection import save_figure

    save_figure(fig, path)


def stage_starts(recipe: Any) -> list[tuple[str, int]]:
    """(stage name, first epoch index) of every stage: epochs are numbered across stages."""
    starts, epoch = [], 0
    for stage in recipe.train.stages:
        starts.append((stage.name, epoch))
        epoch += stage.epochs
    return starts


def _metric_column(history: list[dict[str, float]], preferred: str) -> str | None:
    columns = set().union(*(row.keys() for row in history)) if history else set()
    if preferred in columns:
        return preferred
    others = sorted(c for c in columns if f"val_{c}" in columns and c != "loss" and not c.startswith("val_"))
    return others[0] if others else None


def plot_curves(history: list[dict[str, float]], stages: list[tuple[str, int]], metric: str, path: Path) -> None:
    """Loss and metric per epoch (train and val), stage boundaries, the learning rate on a second axis."""
    if not history:
        raise TlkitError("history.csv has no epochs: nothing to draw (did the run finish an epoch?)")
    epochs = np.array([row["epoch"] + 1 for row in history])
    column = _metric_column(history, metric)
    fig = _figure(*CURVES_INCHES)
    panels = [("loss", "loss")] + ([(column, column.replace("_", " "))] if column else [])
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        lines = []
        for prefix, style, name in (("", "-o", "train"), ("val_", "-s", "val")):
            values = [row.get(prefix + key, np.nan) for row in history]
            if not np.all(np.isnan(values)):
                lines += ax.plot(epochs, values, style, markersize=3, label=f"{name} {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for s, (name, start) in enumerate(stages):
            if s > 0:
                ax.axvline(start + 0.5, color="0.4", linestyle=":", linewidth=1)
            ax.text(start + 0.6, 1.0, name, transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, color="0.3")
        rates = [row.get("learning_rate", np.nan) for row in history]
        if not np.all(np.isnan(rates)):
            lr_ax = ax.twinx()
            lines += lr_ax.step(epochs, rates, where="mid", color="0.55", linestyle="--", linewidth=1, label="learning rate")
            positive = [r for r in rates if r > 0]
            if positive and max(positive) / min(positive) > 20:
                lr_ax.set_yscale("log")
            lr_ax.set_ylabel("learning rate", color="0.45")
            lr_ax.tick_params(axis="y", labelsize=7, colors="0.45")
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
        ax.set_xlim(0.5, max(epochs.max(), stages[-1][1] + 1 if stages else 1) + 0.5)
    fig.tight_layout()
    _save(fig, path)


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
    fig = _figure(side, side)
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
    _save(fig, path)


def grid_inches(tiles: int, cols: int = GRID_COLS) -> tuple[float, float]:
    rows = max(1, math.ceil(tiles / cols))
    return (1.9 * min(cols, max(tiles, 1)), 2.15 * rows + 0.5)


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
    fig = _figure(width, height)
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
    _save(fig, path)


# ----------------------------------------------------------------------------- classification


def _predict_split(ctx: ReportContext, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8-range images, labels, probabilities) of the first `max_images` images of a split."""
    import tensorflow as tf

    from tlkit.data.pipeline import make_pipeline
    from tlkit.models.classifier import input_size

    model = ctx.model()
    part = ctx.bundle().splits[split]
    batch = 64
    batches = make_pipeline(part, input_size(ctx.recipe), len(ctx.labels), batch, cache=False)
    call = tf.function(lambda x: tf.nn.softmax(model(x, training=False), axis=-1), reduce_retracing=True)
    images, labels, probs = [], [], []
    for x, onehot in batches.take(math.ceil(ctx.max_images / batch)):
        images.append(x.numpy())
        labels.append(np.argmax(onehot.numpy(), axis=1))
        probs.append(call(x).numpy())
    n = ctx.max_images
    return np.concatenate(images)[:n], np.concatenate(labels)[:n], np.concatenate(probs)[:n]


def _confusion_figure(ctx: ReportContext, title: str, over: str = "") -> list[Figure]:
    """The normalized confusion matrix of metrics.json, if the run recorded one."""
    if "confusion_matrix" not in ctx.metrics:
        return []
    split = ctx.metrics.get("split", "test")
    plot_confusion(np.array(ctx.metrics["confusion_matrix"]), ctx.labels, split, ctx.out / CONFUSION)
    return [Figure(CONFUSION, title, f"On the {split} split{over}: rows are the true classes, each sums to 1.")]


def _eval_split(ctx: ReportContext) -> str | None:
    splits = ctx.bundle().splits
    return next((s for s in ("val", "test", "train") if s in splits), None)


def classification_figures(ctx: ReportContext) -> list[Figure]:
    figures = _confusion_figure(ctx, "Confusion matrix")
    split = _eval_split(ctx)
    if split is not None:
        images, labels, probs = _predict_split(ctx, split)
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


register_report("classification", TaskReport(metric="accuracy", figures=classification_figures))


# ----------------------------------------------------------------------------- segmentation

OVERLAYS = "overlays.png"
OVERLAY_ROWS = 8


def _predict_masks(ctx: ReportContext, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8-range images, true masks with 255 = ignore, predicted masks) of the first `max_images` of a split."""
    import tensorflow as tf

    from tlkit.tasks import get_task

    model = ctx.model()
    batches = get_task(ctx.recipe).eval_pipeline(ctx.bundle(), ctx.recipe, split, 16)
    call = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32), reduce_retracing=True)
    images, truths, preds, n = [], [], [], 0
    for x, y in batches:
        images.append(x.numpy())
        truths.append(y.numpy()[..., 0])
        preds.append(call(x).numpy())
        n += len(images[-1])
        if n >= ctx.max_images:
            break
    k = ctx.max_images
    return np.concatenate(images)[:k], np.concatenate(truths)[:k], np.concatenate(preds)[:k]


def worst_masks_first(truths: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Images by rising pixel accuracy over their valid (not ignored) pixels."""
    valid = truths != 255
    right = ((truths == preds) & valid).reshape(len(truths), -1).sum(axis=1)
    accuracy = right / np.maximum(valid.reshape(len(truths), -1).sum(axis=1), 1)
    return np.argsort(accuracy, kind="stable"), accuracy


def plot_overlays(
    images: np.ndarray, truths: np.ndarray, preds: np.ndarray, names: list[str], split: str, path: Path, rows: int = OVERLAY_ROWS
) -> None:
    """Rows of (image, true mask, predicted mask), the worst images first, with a colour legend."""
    from matplotlib.patches import Patch

    from tlkit.segmentation.serving import palette

    order, accuracy = worst_masks_first(truths, preds)
    order = order[:rows]
    colours = np.concatenate([palette(len(names)), np.array([[128, 128, 128]], np.uint8)])
    height = 2.0 * max(len(order), 1) + 0.9
    fig = _figure(6.4, height)
    fig.suptitle(f"{split}: image, true mask, prediction; worst pixel accuracy first", fontsize=10)
    for r, k in enumerate(order):
        image = images[k].clip(0, 255).astype(np.uint8)
        truth = np.where(truths[k] == 255, len(names), truths[k])
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
    _save(fig, path)


def segmentation_figures(ctx: ReportContext) -> list[Figure]:
    figures = _confusion_figure(ctx, "Pixel confusion matrix", ", over valid pixels")
    split = _eval_split(ctx)
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


register_report("segmentation", TaskReport(metric="mean_iou", figures=segmentation_figures))


# ----------------------------------------------------------------------------- index.html


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1150px;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} figure{margin:1rem 0} img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem} pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem} .card{border:1px solid #ddd;border-radius:6px;padding:.5rem .9rem}
.card b{display:block;font-size:1.3rem}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.001:  # learning rates
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def stage_timings(recipe: Any, history: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per stage: epochs run and wall seconds, summed from history.csv's epoch_seconds."""
    out = []
    starts = stage_starts(recipe)
    for (name, start), stage in zip(starts, recipe.train.stages):
        rows = [r for r in history if start <= r["epoch"] < start + stage.epochs]
        seconds = sum(r.get("epoch_seconds", 0.0) for r in rows)
        out.append(
            {
                "stage": name,
                "epochs": len(rows),
                "optimizer": stage.optimizer,
                "learning_rate": stage.learning_rate,
                "unfreeze": str(stage.unfreeze),
                "seconds": round(seconds, 2),
                "seconds_per_epoch": round(seconds / len(rows), 2) if rows else None,
            }
        )
    return out


def render_index(ctx: ReportContext, figures: list[Figure]) -> str:
    """The self-contained page: inline style, pictures by relative name, no scripts, nothing fetched."""
    m = ctx.metrics
    scalars = {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    cards = "".join(
        f'<div class="card">{html.escape(k.replace("_", " "))}<b>{html.escape(_fmt(v))}</b></div>' for k, v in scalars.items()
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tlkit report: {html.escape(ctx.recipe.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(ctx.recipe.name)}</h1>",
        f'<p class="sub">{html.escape(ctx.recipe.task)} run <code>{html.escape(ctx.run_dir.resolve().name)}</code>, '
        f"backbone {html.escape(ctx.recipe.model.backbone)}, report written "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Metrics</h2>",
        f'<div class="cards">{cards}</div>',
    ]
    per_class = m.get("per_class") or {}
    if per_class:
        columns = list(next(iter(per_class.values())).keys())
        rows = [[name, *(row.get(c) for c in columns)] for name, row in per_class.items()]
        parts += ["<h2>Per class</h2>", _table(["class", *columns], rows)]
    for f in figures:
        parts += [
            f"<h2>{html.escape(f.title)}</h2>",
            f'<figure><img src="{html.escape(f.file)}" alt="{html.escape(f.title)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>",
        ]
    timings = stage_timings(ctx.recipe, ctx.history)
    if timings:
        total = sum(t["seconds"] for t in timings)
        parts += [
            "<h2>Timings</h2>",
            _table(list(timings[0].keys()), [list(t.values()) for t in timings]),
            f"<p>{total:.1f} s of training in {sum(t['epochs'] for t in timings)} epochs (wall clock per epoch, "
            "validation included, from history.csv).</p>",
        ]
    if ctx.history:
        columns = [c for c in ctx.history[0].keys() if c != "epoch"]
        rows = [[int(r["epoch"]) + 1, *(r.get(c) for c in columns)] for r in ctx.history]
        parts += ["<h2>History</h2>", _table(["epoch", *columns], rows)]
    parts += ["<h2>Recipe</h2>", f"<pre>{html.escape(ctx.recipe.to_yaml())}</pre>"]
    versions_path = ctx.run_dir / runs.VERSIONS
    if versions_path.is_file():
        versions = runs.read_json(versions_path)
        parts += ["<h2>Versions</h2>", _table(["package", "version"], [[k, v] for k, v in versions.items()])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- entry points


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    max_images: int = 256,
    model: Any = None,
    bundle: Any = None,
    quiet: bool = True,
) -> Path:
    """Write (or rewrite) `RUN_DIR/report/` and return the path of its index.html.

    `model` and `bundle` let `finetune` pass what it already holds; by default the
    run's best.keras and its data are loaded. The folder is built under a
    temporary name and swapped in whole, so a failure leaves the old report (or none).
    """
    from tlkit.recipe import load_recipe
    from tlkit.train import read_history

    run_dir = runs.require_run_dir(run_dir)
    if not (run_dir / runs.METRICS).is_file():
        raise TlkitError(f"run {run_dir} has no {runs.METRICS}: it has not finished (resume it with tlkit finetune --resume)")
    if max_images < 1:
        raise TlkitError(f"max_images must be at least 1, got {max_images}")
    recipe = load_recipe(run_dir / runs.RECIPE)
    entry = REPORTERS.get(recipe.task, TaskReport(metric="accuracy"))
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{REPORT}.tmp-"))
    try:
        ctx = ReportContext(
            run_dir=run_dir,
            out=tmp,
            recipe=recipe,
            labels=runs.read_labels(run_dir),
            metrics=runs.read_json(run_dir / runs.METRICS),
            history=read_history(run_dir),
            max_images=max_images,
            _model=model,
            _bundle=bundle,
        )
        plot_curves(ctx.history, stage_starts(recipe), entry.metric, tmp / CURVES)
        figures = [
            Figure(CURVES, "Training curves", "Train and validation per epoch; dotted lines mark stage boundaries, "
                   "the dashed grey line is the learning rate (right axis)."),
            *entry.figures(ctx),
        ]
        (tmp / INDEX).write_text(render_index(ctx, figures), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a report is for sharing
        final = run_dir / REPORT
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{REPORT}.old-"))
            os.replace(final, old / REPORT)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not quiet:
        print(f"report: {final / INDEX}", flush=True)
    return final / INDEX


def report_after_training(run_dir: Path, *, model: Any = None, bundle: Any = None, quiet: bool = False) -> Path | None:
    """The end-of-finetune hook: a failed report warns and never costs the trained run."""
    try:
        return write_report(run_dir, model=model, bundle=bundle, quiet=quiet)
    except Exception as exc:  # noqa: BLE001 - the run is complete; the report is a by-product
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(
            f"warning: the run is complete, but its report could not be written ({type(exc).__name__}: {text}). "
            f"Retry with: tlkit report {run_dir}",
            file=sys.stderr,
            flush=True,
        )
        return None
