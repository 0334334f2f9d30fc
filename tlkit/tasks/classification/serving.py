"""Serving a classifier: probabilities and class names from raw images; top-k answers for `tlkit predict`."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tlkit.models.parts import serving_probabilities
from tlkit.models.serving import image_archive


def build_archive(model: keras.Model, labels: list[str], size: int, probabilities: Any = None) -> keras.export.ExportArchive:
    """The serving endpoints around a trained Keras classifier (`probabilities`: see `Task.archive`)."""
    names = tf.constant(labels)
    probabilities = serving_probabilities(model, "softmax", probabilities)

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = probabilities(images)
        return {"probabilities": probs, "classes": tf.gather(names, tf.argmax(probs, axis=-1))}

    return image_archive(model, size, predict)


def batched(files: list[tuple[int, str, bytes]], size: int):
    for start in range(0, len(files), size):
        yield files[start : start + size]


def top_k(runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], options: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """`{"predictions": [{"label", "score"}, ...]}` per image, the best `top_k` first."""
    k = min(int(options.get("top_k", 5)), len(labels))
    results: dict[int, dict[str, Any]] = {}
    for chunk in batched(files, int(options.get("batch_size", 32))):
        probs = runner.encoded([data for _, _, data in chunk])
        for (index, _, _), row in zip(chunk, probs):
            order = np.argsort(-row)[:k]
            results[index] = {"predictions": [{"label": labels[i], "score": float(row[i])} for i in order]}
    return results
