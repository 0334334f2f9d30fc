"""Predict with an export alone, on its own runtime: a SavedModel folder, a .tflite or an .onnx file (or a run).

A SavedModel decodes, resizes and normalizes itself (`serving_bytes`); for
TFLite and ONNX tlkit decodes and resizes exactly as in training and the file
normalizes. The same images give the same answers in every format. What an answer
is (top-k labels, labels over their thresholds, a mask) and how it fills a CSV row
is the export's task's.

Inputs are files and folders (every image inside, recursively, by extension as in
training), read a batch at a time: memory stays flat however many files there are.
A file that cannot be read or decoded becomes a result with its reason, never a stop.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tlkit.errors import TlkitError
from tlkit.tasks import get_task


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    out: str | Path | None = None,
    tta: bool = False,
    csv_path: str | Path | None = None,
    unsafe: bool = False,
) -> list[dict[str, Any]]:
    """One entry per image, `{"path", ...the task's answer}`, or `{"path", "error"}` for a file that is not an image.

    Classification: `"predictions": [{"label", "score"}, ...]` (top_k, best first); multi-label: every label
    over its threshold, best first; segmentation: `"size"`, `"fractions"` and with `out` the written
    `STEM_mask.png` / `STEM_overlay.png`. `export`: a SavedModel version or model folder, a .tflite/.onnx
    file, an export folder holding one, or a run directory (its Keras model). `images`: files and folders.
    `tta=True` averages each image's and its mirror image's probabilities; `csv_path` also writes the rows
    there (atomically). For many files iterate `Predictor(...).results(images)` instead of holding a list.
    """
    predictor = Predictor(export, top_k=top_k, batch_size=batch_size, out=out, tta=tta, unsafe=unsafe)
    rows = predictor.results(images)
    if csv_path is not None:
        rows = predictor.to_csv(rows, csv_path)
    return list(rows)


class Predictor:
    """An export (or a run directory) opened once: its task, labels and runner, and the options of every batch."""

    def __init__(self, export: str | Path, top_k: int = 5, batch_size: int = 32, out: str | Path | None = None,
                 tta: bool = False, unsafe: bool = False) -> None:
        from tlkit.targets import resolve_target

        if top_k < 1:
            raise TlkitError(f"--top-k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise TlkitError(f"--batch-size must be at least 1, got {batch_size}")
        self.target = resolve_target(export, ("export", "run"))
        self.task = get_task(self.target.task_name())
        self.labels = self.target.labels()
        self.batch_size = batch_size
        self._wrap_tta = tta and not self.target.meta().get("tta")  # an export with TTA inside averages already
        self._unsafe = unsafe
        self._runner: Any = None
        self.options = {"top_k": top_k, "batch_size": batch_size, "out": out, "state": self.target.task_state()}

    @property
    def runner(self) -> Any:
        """Loaded on first use, so a wrong image path fails before the model is read."""
        if self._runner is None:
            runner = self.target.runner(unsafe=self._unsafe)
            if self._wrap_tta:
                from tlkit.formats import TTARunner

                runner = TTARunner(runner, self.task.per_pixel)
            self._runner = runner
        return self._runner

    def count(self, images: Sequence[str | Path]) -> int:
        """How many results `results(images)` gives (a walk of the folders, nothing kept)."""
        return sum(1 for _ in image_inputs(images))

    def results(self, images: Sequence[str | Path], progress: bool = False) -> Iterator[dict[str, Any]]:
        """One result per image file, a batch at a time, in order (`progress`: a bar on stderr).

        Missing paths and a model that does not load fail here, before the first result is asked for.
        """
        check_inputs(images)
        self.runner  # noqa: B018 - loaded now
        return self._stream(images, progress)

    def _stream(self, images: Sequence[str | Path], progress: bool) -> Iterator[dict[str, Any]]:
        bar: Any = contextlib.nullcontext()
        if progress:
            import click

            bar = click.progressbar(length=self.count(images), label="Predicting", file=sys.stderr, show_pos=True)
        with bar:
            for chunk in _batched(image_inputs(images), self.batch_size):
                yield from self._batch(chunk)
                if progress:
                    bar.update(len(chunk))

    def _batch(self, chunk: list[tuple[str, str]]) -> list[dict[str, Any]]:
        from tlkit.data.decode import check_image_bytes

        rows: list[dict[str, Any]] = []
        files: list[tuple[int, str, bytes]] = []
        stems: dict[int, str] = {}
        for path, stem in chunk:
            rows.append({"path": path})
            data, problem = _read(path)
            problem = problem or check_image_bytes(data)
            if problem:
                rows[-1]["error"] = problem
            else:
                files.append((len(rows) - 1, path, data))
                stems[len(rows) - 1] = stem
        for index, entry in self._answers(files, stems).items():
            rows[index].update(entry)
        return rows

    def _answers(self, files: list[tuple[int, str, bytes]], stems: dict[int, str]) -> dict[int, dict[str, Any]]:
        """The task's answers for decodable files; a batch that fails is retried one file at a time."""
        options = {**self.options, "stems": stems}
        try:
            return self.task.predict(self.runner, files, self.labels, self.target.meta(), options)
        except Exception:  # noqa: BLE001 - one bad file must not stop the others
            if len(files) <= 1:
                return {index: {"error": f"cannot predict: {_one_line(sys.exc_info()[1])}"} for index, _, _ in files}
        answers: dict[int, dict[str, Any]] = {}
        for file in files:
            answers.update(self._answers([file], stems))
        return answers

    def csv_columns(self) -> list[str]:
        return ["path", *self.task.csv_columns(self.labels, self.options), "error"]

    def csv_row(self, result: dict[str, Any]) -> dict[str, Any]:
        if "error" in result:
            return {"path": result["path"], "error": result["error"]}
        return {"path": result["path"], **self.task.csv_row(result)}

    def to_csv(self, rows: Iterable[dict[str, Any]], path: str | Path) -> Iterator[dict[str, Any]]:
        """Pass `rows` through, writing each as a CSV row; the file appears whole at the end, or not at all."""
        from tlkit import runs

        with runs.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=self.csv_columns(), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(self.csv_row(row))
                yield row


def check_inputs(images: Sequence[str | Path]) -> None:
    """Every named file or folder exists (a typo fails at once, before the model is loaded)."""
    if not images:
        raise TlkitError("no images given: name image files or folders")
    missing = [str(p) for p in images if not (Path(p).is_file() or Path(p).is_dir())]
    if missing:
        raise TlkitError(f"image file(s) or folder(s) not found: {', '.join(missing)}")


def image_inputs(images: Sequence[str | Path]) -> Iterator[tuple[str, str]]:
    """(path, output stem) per image: named files as given; in a folder every image file, recursively, sorted.

    The stem names written outputs (segmentation masks): a file's stem, or for a file inside
    a named folder its path below that folder without the extension (`sub/cat`), so nested
    files of the same name do not overwrite each other.
    """
    from tlkit.data.bundle import walk_files
    from tlkit.data.decode import IMAGE_EXTENSIONS

    for image in images:
        if not Path(image).is_dir():
            yield str(image), Path(image).stem
            continue
        for path in walk_files(image, IMAGE_EXTENSIONS):
            yield path, os.path.splitext(os.path.relpath(path, image))[0]


def _read(path: str) -> tuple[bytes, str | None]:
    try:
        return Path(path).read_bytes(), None
    except OSError as exc:
        return b"", f"cannot read file ({exc.strerror or exc})"


def _one_line(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def format_result(result: dict[str, Any], task_name: str) -> str:
    """The text line `tlkit predict` prints for one image."""
    if "error" in result:
        return f"{result['path']}: error: {result['error']}"
    return get_task(task_name).format_prediction(result)

