"""Predict with an export alone, on its own runtime: a SavedModel folder, a .tflite or an .onnx file.

A SavedModel decodes, resizes and normalizes itself (`serving_bytes`); for
TFLite and ONNX tlkit decodes and resizes exactly as in training and the file
normalizes. The same images give the same top-1 in every format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tlkit import formats
from tlkit.data.decode import check_image_bytes
from tlkit.errors import TlkitError


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """`[{"path", "predictions": [{"label", "score"}, ...]}]`, or `{"path", "error"}` for a file that is not an image.

    `export`: a SavedModel version or model folder, a .tflite/.onnx file, or an export folder holding one.
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

    for path in images:
        data = Path(path).read_bytes()
        results.append({"path": str(path)})
        problem = check_image_bytes(data)
        if problem:
            results[-1]["error"] = problem
            continue
        pending.append((len(results) - 1, data))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
