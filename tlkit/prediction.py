"""Predict with an export alone: the SavedModel decodes, resizes and normalizes itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tlkit import runs
from tlkit.data.decode import check_image_bytes
from tlkit.errors import TlkitError
from tlkit.exporting import METADATA, find_export


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """`[{"path", "predictions": [{"label", "score"}, ...]}]`, or `{"path", "error"}` for a file that is not an image.

    A segmentation export gives `{"path", "size", "fractions"}` per image instead, and with
    `out` writes `STEM_mask.png` (class indices) and `STEM_overlay.png` there.
    """
    if top_k < 1:
        raise TlkitError(f"--top-k must be at least 1, got {top_k}")
    export_dir = find_export(export)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise TlkitError(f"image file(s) not found: {', '.join(missing)}")
    labels = runs.read_labels(export_dir)
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_bytes"]
    if runs.read_json(export_dir / METADATA).get("task") == "segmentation":
        return _predict_masks(serve, images, labels, out)
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, bytes]] = []

    def flush() -> None:
        if not pending:
            return
        probs = serve(image_bytes=tf.constant([b for _, b in pending]))["probabilities"].numpy()
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


def _predict_masks(serve: Any, images: Sequence[str | Path], labels: list[str], out: str | Path | None) -> list[dict[str, Any]]:
    from tlkit.segmentation.serving import predict_masks

    results: list[dict[str, Any]] = []
    todo = list(_readable(images, results))
    for index, entry in predict_masks(serve, todo, labels, Path(out) if out is not None else None).items():
        results[index].update(entry)
    return results
