"""`tlkit benchmark`: what each export format and quantization costs and gives, measured in one process.

For a run: the Keras model and an export in every format and quantization (or the
`formats` asked for), each run by its own engine; for exports: just those. Per row:
file size, the task's headline metric on the evaluation split (the task registry
names it), top-1 agreement with the float model (per pixel for a per-pixel output),
latency at batch 1 (p50, p95) and images/s at batch 32. Timings mean something only
as ratios within one call: the rows share the machine and its load.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tlkit.errors import TlkitError

BATCH = 32
MAX_LOSS = 0.01  # a quantized row that loses more than 1 point of the headline metric is flagged
TIMING_IMAGES = 256  # images timed at batch 32 (the evaluation pass itself covers the whole split)


@dataclass
class _Candidate:
    """One row to measure: a name, what it is, and how to load its images -> outputs function."""

    format: str
    quantize: str
    integer_io: bool
    size_bytes: int
    load: Callable[[], Callable[[np.ndarray], np.ndarray]]
    path: str


def benchmark(
    targets: Sequence[str | Path],
    formats: Sequence[str] | None = None,
    data: str | None = None,
    split: str | None = None,
    single: int = 50,
    out: str | Path | None = None,
    quiet: bool = True,
) -> list[dict[str, Any]]:
    """One row per model measured: `format`, `quantize`, `size_bytes`, the headline metric, `agreement`, timings.

    `targets`: run directories (the Keras model plus an export per format and
    quantization, written under `out` or a temporary folder) and/or exports.
    `formats`: `FORMAT` (all its quantizations) or `FORMAT:QUANT` items, e.g.
    `["tflite:int8", "onnx"]`; default: all. `data` overrides the recipe's source.
    """
    from tlkit.targets import resolve_target

    if not targets:
        raise TlkitError("benchmark needs at least one run directory or export")
    if single < 1:
        raise TlkitError(f"--single must be at least 1, got {single}")
    wanted = _parse_formats(formats)
    found = [resolve_target(t, ("run", "export")) for t in targets]
    with ExitStack() as stack:
        root = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tlkit-bench-")))
        bench = _Bench(found[0], data, split, quiet)
        candidates: list[_Candidate] = []
        for target in found:
            bench.check_same(target)
            candidates += bench.expand(target, wanted, root) if target.kind == "run" else [bench.export_row(target)]
        return bench.measure_all(candidates, single)


def _parse_formats(formats: Sequence[str] | None) -> list[tuple[str, str]] | None:
    """[(format, quantize)] from `FORMAT` / `FORMAT:QUANT` items (comma lists allowed); None: every one."""
    from tlkit.formats import check_options, get_format

    if not formats:
        return None
    pairs = []
    for item in (part.strip() for entry in formats for part in str(entry).split(",")):
        if not item:
            continue
        name, _, quantize = item.partition(":")
        fmt = get_format(name)
        for q in [quantize] if quantize else list(fmt.quantize):
            check_options(fmt, q, False)
            pairs.append((fmt.name, q))
    return pairs


class _Bench:
    """The evaluation data, the float reference and the measurements shared by every row."""

    def __init__(self, first: Any, data: str | None, split: str | None, quiet: bool) -> None:
        from tlkit.tasks import get_task, load_data

        self.quiet = quiet
        self.recipe = first.recipe()
        self.task = get_task(self.recipe)
        self.labels = first.labels()
        self.state = first.task_state()
        self.bundle = load_data(self.recipe, progress=not quiet, source=data)
        self.data = data
        self.split = split or next(s for s in ("test", "val", "train") if s in self.bundle.splits)
        if self.split not in self.bundle.splits:
            raise TlkitError(f"split '{self.split}' is not available; this data has: {', '.join(self.bundle.splits)}")
        if self.bundle.class_names != self.labels:
            raise TlkitError(f"the data's classes {self.bundle.class_names} differ from the model's labels {self.labels}")

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def check_same(self, target: Any) -> None:
        if target.labels() != self.labels or target.task_name() != self.task.name:
            raise TlkitError(f"{target.source} is not the same model family (task and labels) as the first target")

    def expand(self, target: Any, wanted: list[tuple[str, str]] | None, root: Path) -> list[_Candidate]:
        """The run's Keras model, then an export in each wanted format and quantization (verified as usual)."""
        from tlkit import formats, runs
        from tlkit.exporting import export_run
        from tlkit.models.parts import probability_fn

        model_file = target.path / runs.BEST if (target.path / runs.BEST).is_file() else target.path / runs.FINAL
        rows = [_Candidate("keras", "none", False, model_file.stat().st_size if model_file.is_file() else 0,
                           lambda: _numpy(probability_fn(target.keras_model(), self.task.activation)), str(target.path))]
        pairs = wanted or [(f.name, q) for f in formats.FORMATS.values() for q in f.quantize]
        for name, quantize in pairs:
            fmt = formats.get_format(name)
            try:
                formats.require(fmt)
            except TlkitError as exc:
                self.say(f"skipping {name}: {exc}")
                continue
            self.say(f"exporting {name}{'' if quantize == 'none' else ' ' + quantize} ...")
            slug = f"{target.path.name}-{name}-{quantize}"
            folder = export_run(target.path, out=root / slug, format=name, quantize=quantize, quiet=True,
                                bundle=self.bundle, data=self.data)
            rows.append(self.export_row(_export_target(folder)))
        return rows

    def export_row(self, target: Any) -> _Candidate:
        meta = target.meta()
        path = Path(target.path)
        size = path.stat().st_size if path.is_file() else meta.get("size_bytes", 0)
        return _Candidate(target.fmt.name, meta.get("quantize", "none"), bool(meta.get("integer_io")), int(size),
                          lambda: _numpy(target.runner()), str(target.path))

    def measure_all(self, candidates: list[_Candidate], single: int) -> list[dict[str, Any]]:
        images = self._timing_images()
        rows = []
        for c in candidates:
            self.say(f"measuring {c.format} {c.quantize} ...")
            rows.append(self.measure(c, images, single))
        _agreement(rows)
        return rows

    def _timing_images(self) -> np.ndarray:
        batches = self.task.eval_pipeline(self.bundle, self.recipe, self.split, BATCH)
        found, count = [], 0
        for images, _ in batches:
            found.append(images.numpy().astype(np.float32))
            count += len(found[-1])
            if count >= TIMING_IMAGES:
                break
        return np.concatenate(found)[:TIMING_IMAGES]

    def measure(self, c: _Candidate, images: np.ndarray, single: int) -> dict[str, Any]:
        run = c.load()
        outputs: list[np.ndarray] = []

        def record(batch: Any) -> np.ndarray:
            out = run(np.asarray(batch, np.float32))
            outputs.append(out)
            return out

        metrics = self.task.evaluate(record, self.task.eval_pipeline(self.bundle, self.recipe, self.split, BATCH),
                                     self.labels, self.state)
        p50, p95 = _latency(run, images, single)
        row = {"format": c.format, "quantize": c.quantize, "integer_io": c.integer_io, "size_bytes": c.size_bytes,
               "metric": self.task.headline, self.task.headline: float(metrics[self.task.headline]),
               "split": self.split, "images": int(sum(len(o) for o in outputs)),
               "p50_ms": p50, "p95_ms": p95, "images_per_second": _throughput(run, images), "path": c.path}
        row["_outputs"] = np.concatenate(outputs)
        return row


def _export_target(folder: Path) -> Any:
    from tlkit.targets import resolve_target

    return resolve_target(folder, ("export",))


def _numpy(fn: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(fn(x))


def _latency(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, single: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of one-image calls (after 3 warm-up calls)."""
    singles = [images[i % len(images)][None] for i in range(single)]
    for x in singles[:3]:
        run(x)
    times = []
    for x in singles:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def _throughput(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
    run(images[:BATCH])  # warm-up: tracing, allocation, the interpreter's resize to 32
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        run(images[i : i + BATCH])
    return float(len(images) / (time.perf_counter() - start))


def _agreement(rows: list[dict[str, Any]]) -> None:
    """Top-1 (per-pixel for [N, H, W, C] outputs) agreement with the first float row, and the >1 point warning."""
    reference = next((r for r in rows if r["quantize"] == "none"), None)
    ref_top1 = np.argmax(reference["_outputs"], -1) if reference is not None else None
    for row in rows:
        top1 = np.argmax(row.pop("_outputs"), -1)
        if reference is None:
            row["agreement"] = None
            continue
        row["agreement"] = float(np.mean(top1 == ref_top1)) if ref_top1.shape == top1.shape else None
        row["reference"] = f"{reference['format']} {reference['quantize']}"
        loss = reference[row["metric"]] - row[row["metric"]]
        if row["quantize"] != "none" and loss > MAX_LOSS:
            row["warning"] = f"loses {loss * 100:.1f} points of {row['metric']} against {row['reference']}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, with each timing's ratio to the first row (measured in the same call)."""
    if not rows:
        return ""
    metric, base = rows[0]["metric"], rows[0]
    lines = [
        f"| format | quantize | size | {metric} | agreement | p50 ms (x first) | p95 ms (x first) | images/s (x first) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "-" if r.get("agreement") is None else f"{r['agreement']:.2%}"
        lines.append(
            f"| {r['format']} | {r['quantize']}{' (uint8 I/O)' if r.get('integer_io') else ''} | {r['size_bytes'] / 1e3:.0f} kB "
            f"| {r[metric]:.4f} | {agree} | {r['p50_ms']:.2f} ({r['p50_ms'] / base['p50_ms']:.2f}x) "
            f"| {r['p95_ms']:.2f} ({r['p95_ms'] / base['p95_ms']:.2f}x) "
            f"| {r['images_per_second']:.0f} ({r['images_per_second'] / base['images_per_second']:.2f}x) |"
        )
    warnings = [f"warning: {r['format']} {r['quantize']} {r['warning']}" for r in rows if r.get("warning")]
    return "\n".join(lines + ([""] + warnings if warnings else []))
