"""Predict with an export alone: the SavedModel decodes, resizes and normalizes itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tlkit import runs
from tlkit.data.decode import check_image_bytes
from tlkit.errors import TlkitError
from tlkit.exporting import find_export


def predict(
    export: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """`[{"path", "predictions": [{"label", "score"}, ...]}]`, or `{"path", "error"}` for a file that is not an image."""
    if top_k < 1:
        raise TlkitError(f"--top-k must be at least 1, got {top_k}")
    export_dir = find_export(export)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise TlkitError(f"image file(s) not found: {', '.join(missing)}")
    labels = runs.read_labels(export_dir)
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_bytes"]
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
