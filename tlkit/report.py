"""Run reports: what a run learned, as pictures beside it in `RUN_DIR/report/`.

People would rather look than read, so every finished run leaves `curves.png`
(loss and metric per epoch, stage boundaries, learning rate), the task's own
pictures (classification: `confusion_matrix.png`, `predictions.png`) and an
`index.html` that opens from disk with no server or network. The report reads
only the run directory (and the run's data for sample predictions), so
`tlkit report RUN_DIR` rebuilds it at any time. What a task draws beyond the
curves is the task's own `report_figures`.

Figures use matplotlib's object API on the Agg canvas: no pyplot state, no
display, the same in a notebook and on a server.
"""

from __future__ import annotations

import datetime
import html
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlkit import runs
from tlkit.errors import TlkitError
from tlkit.figures import Figure, new_figure, save_figure, umask
from tlkit.tasks import get_task, load_data, load_recipe

REPORT = "report"
INDEX = "index.html"
CURVES = "curves.png"
CURVES_INCHES = (11.0, 4.2)


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
            from tlkit.models.stages import load_run_model

            self._model = load_run_model(self.run_dir)
        return self._model

    def bundle(self) -> Any:
        if self._bundle is None:
            self._bundle = load_data(self.recipe, progress=False)
        return self._bundle

    def eval_batches(self, split: str, batch: int) -> Any:
        """Plain batches of a split through the task's own evaluation pipeline."""
        return get_task(self.recipe).eval_pipeline(self.bundle(), self.recipe, split, batch)


# ----------------------------------------------------------------------------- curves


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
    fig = new_figure(*CURVES_INCHES)
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
    save_figure(fig, path)


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
    note = runs.selection_note(m)
    if note:
        parts.append(f'<p class="sub">{html.escape(note)}</p>')
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
    run_dir = runs.require_run_dir(run_dir)
    if not (run_dir / runs.METRICS).is_file():
        raise TlkitError(f"run {run_dir} has no {runs.METRICS}: it has not finished (resume it with tlkit finetune --resume)")
    if max_images < 1:
        raise TlkitError(f"max_images must be at least 1, got {max_images}")
    recipe = load_recipe(run_dir / runs.RECIPE)
    task = get_task(recipe)
    final = run_dir / REPORT
    with runs.atomic_folder(final, replace=True) as tmp:
        ctx = ReportContext(
            run_dir=run_dir,
            out=tmp,
            recipe=recipe,
            labels=runs.read_labels(run_dir),
            metrics=runs.read_json(run_dir / runs.METRICS),
            history=runs.read_history(run_dir),
            max_images=max_images,
            _model=model,
            _bundle=bundle,
        )
        plot_curves(ctx.history, stage_starts(recipe), task.headline, tmp / CURVES)
        figures = [
            Figure(CURVES, "Training curves", "Train and validation per epoch; dotted lines mark stage boundaries, "
                   "the dashed grey line is the learning rate (right axis)."),
            *task.report_figures(ctx),
        ]
        (tmp / INDEX).write_text(render_index(ctx, figures), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~umask())  # a report is for sharing
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
