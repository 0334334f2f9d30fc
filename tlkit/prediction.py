"""Predict with an export alone, on its own runtime: a SavedModel folder, a .tflite or an .onnx file.

A SavedModel decodes, resizes and normalizes itself (`serving_bytes`); for
TFLite and ONNX tlkit decodes and resizes exactly as in training and the file
normalizes. The same images give the same top-1 in every format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tlkit import formats, runs
from tlkit.data.decode import check_image_bytes
from tlkit.errors import TlkitError


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """`[{"path", "predictions": [{"label", "score"}, ...]}]`, or `{"path", "error"}` for a file that is not an image.

    `export`: a SavedModel version or model folder, a .tflite/.onnx file, or an export folder holding one.
    A segmentation export gives `{"path", "size", "fractions"}` per image instead, and with
    `out` writes `STEM_mask.png` (class indices) and `STEM_overlay.png` there.
    """
    if top_k < 1:
        raise TlkitError(f"--top-k must be at least 1, got {top_k}")
    fmt, model_path = formats.locate(export)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise TlkitError(f"image file(s) not found: {', '.join(missing)}")
    labels = formats.read_labels(model_path)
    formats.require(fmt)
    runner = fmt.load(model_path)
    if export_task(model_path) == "segmentation":
        return _predict_masks(_segmenter(runner), images, labels, out)
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, bytes]] = []

    def flush() -> None:
        if not pending:
            return
        probs = runner.encoded([b for _, b in pending])
        for (index, _), row in zip(pending, probs):
            order = np.argsort(-row)[: min(top_k, len(labels))]
            results[index]["predictions"] = [{"label": labels[i], "score": float(row[i])} for i in order]
        pending.clear()

    for index, _, data in _readable(images, results):
        pending.append((index, data))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def export_task(model_path: Path) -> str:
    """The task an export was trained for: from its metadata.json, else the ONNX file's own metadata."""
    meta = formats.export_folder(model_path) / "metadata.json"
    if meta.is_file():
        return str(runs.read_json(meta).get("task", "classification"))
    if model_path.suffix == ".onnx":
        return formats.onnx_metadata(model_path).get("task", "classification")
    return "classification"


def _readable(images: Sequence[str | Path], results: list[dict[str, Any]]):
    """(index, path, bytes) of each decodable image; every image gets a result entry, bad ones an error."""
    for path in images:
        data = Path(path).read_bytes()
        results.append({"path": str(path)})
        problem = check_image_bytes(data)
        if problem:
            results[-1]["error"] = problem
        else:
            yield len(results) - 1, str(path), data


def _segmenter(runner: formats.Runner) -> Callable[[bytes], np.ndarray]:
    """Encoded image -> class map [H, W] at the image's own size, on the export's engine."""
    import tensorflow as tf

    if isinstance(runner, formats.SavedModelRunner):  # the export resizes back itself
        serve = runner.signatures["serving_bytes"]
        return lambda data: serve(image_bytes=tf.constant([data]))["classes"].numpy()[0]

    from tlkit.data.decode import decode_image
    from tlkit.data.pipeline import resize_image

    def segment(data: bytes) -> np.ndarray:
        image = decode_image(tf.constant(data))  # decoded once: its size, and the model's input
        probs = runner(resize_image(image, runner.size)[None].numpy())[0]  # [S, S, classes] at the input size
        height, width = image.shape[:2]
        return np.argmax(tf.image.resize(probs, (height, width), method="bilinear").numpy(), axis=-1).astype(np.int32)

    return segment


def _predict_masks(
    segment: Callable[[bytes], np.ndarray], images: Sequence[str | Path], labels: list[str], out: str | Path | None
) -> list[dict[str, Any]]:
    from tlkit.segmentation.serving import predict_masks

    results: list[dict[str, Any]] = []
    todo = list(_readable(images, results))
    for index, entry in predict_masks(segment, todo, labels, Path(out) if out is not None else None).items():
        results[index].update(entry)
    return results

