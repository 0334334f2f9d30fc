"""Serving a multi-label classifier: one probability per label, and the labels over their thresholds."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tlkit.models.parts import serving_probabilities
from tlkit.models.serving import image_archive


def thresholds_of(state: dict[str, Any], num_classes: int) -> np.ndarray:
    """The per-class thresholds the run chose on val (0.5 each when a file carries none)."""
    values = state.get("thresholds")
    return np.asarray(values if values is not None else [0.5] * num_classes, np.float32)


def build_archive(model: keras.Model, labels: list[str], size: int, state: dict[str, Any],
                  probabilities: Any = None) -> keras.export.ExportArchive:
    """`probabilities` [B, C], `predicted` bool [B, C] (probability >= the class's threshold) and `labels`
    string [B, C]: the label's name where predicted, "" elsewhere, in the order of labels.txt."""
    names = tf.constant(labels)
    thresholds = tf.constant(thresholds_of(state, len(labels)))
    probabilities = serving_probabilities(model, "sigmoid", probabilities)

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = probabilities(images)
        predicted = probs >= thresholds
        shown = tf.where(predicted, tf.broadcast_to(names, tf.shape(predicted)), tf.constant(""))
        return {"probabilities": probs, "predicted": predicted, "labels": shown}

    return image_archive(model, size, predict)


def over_thresholds(runner: Any, files: list[tuple[int, str, bytes]], labels: list[str], state: dict[str, Any],
                    batch_size: int = 32) -> dict[int, dict[str, Any]]:
    """`{"predictions": [{"label", "score"}, ...]}`: every label over its threshold, best first (may be empty)."""
    thresholds = thresholds_of(state, len(labels))
    results: dict[int, dict[str, Any]] = {}
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        probs = runner.encoded([data for _, _, data in chunk])
        for (index, _, _), row in zip(chunk, probs):
            hits = [i for i in np.argsort(-row) if row[i] >= thresholds[i]]
            results[index] = {"predictions": [{"label": labels[i], "score": float(row[i])} for i in hits]}
    return results
