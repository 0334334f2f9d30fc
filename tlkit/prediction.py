"""Predict with an export alone, on its own runtime: a SavedModel folder, a .tflite or an .onnx file.

A SavedModel decodes, resizes and normalizes itself (`serving_bytes`); for
TFLite and ONNX tlkit decodes and resizes exactly as in training and the file
normalizes. The same images give the same answers in every format. What an answer
is (top-k labels, labels over their thresholds, a mask) is the export's task's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from tlkit.data.decode import check_image_bytes
from tlkit.errors import TlkitError
from tlkit.tasks import get_task


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One entry per image, `{"path", ...the task's answer}`, or `{"path", "error"}` for a file that is not an image.

    Classification: `"predictions": [{"label", "score"}, ...]` (top_k, best first); multi-label: every label
    over its threshold, best first; segmentation: `"size"`, `"fractions"` and with `out` the written
    `STEM_mask.png` / `STEM_overlay.png`. `export`: a SavedModel version or model folder, a .tflite/.onnx
    file, or an export folder holding one.
    """
    from tlkit.targets import resolve_target

    if top_k < 1:
        raise TlkitError(f"--top-k must be at least 1, got {top_k}")
    found = resolve_target(export, ("export",))
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise TlkitError(f"image file(s) not found: {', '.join(missing)}")
    labels = found.labels()
    task = get_task(found.task_name())
    runner = found.runner()
    results: list[dict[str, Any]] = []
    files = list(_readable(images, results))
    options = {"top_k": top_k, "batch_size": batch_size, "out": out, "state": found.task_state()}
    for index, entry in task.predict(runner, files, labels, found.meta(), options).items():
        results[index].update(entry)
    return results


def format_result(result: dict[str, Any], task_name: str) -> str:
    """The text line `tlkit predict` prints for one image."""
    if "error" in result:
        return f"{result['path']}: error: {result['error']}"
    return get_task(task_name).format_prediction(result)


def _readable(images: Sequence[str | Path], results: list[dict[str, Any]]) -> Iterator[tuple[int, str, bytes]]:
    """(index, path, bytes) of each decodable image; every image gets a result entry, bad ones an error."""
    for path in images:
        data = Path(path).read_bytes()
        results.append({"path": str(path)})
        problem = check_image_bytes(data)
        if problem:
            results[-1]["error"] = problem
        else:
            yield len(results) - 1, str(path), data


def export_task(export: str | Path) -> str:
    """The task an export was trained for (its metadata.json, or an ONNX file's own metadata)."""
    from tlkit.targets import resolve_target

    return resolve_target(export, ("export",)).task_name()
