"""Serving a segmenter: signatures that return masks at each input's own size, and mask files.

Signatures (see README):
- `serving_default`: images uint8 [B, H, W, 3] -> classes int32 [B, H, W], probabilities float32 [B, H, W, C]
- `serving_bytes`: image_bytes string [B] -> the same at the first image's size (send one
  image per request when sizes differ; `tlkit predict` does)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tlkit.data.decode import decode_image
from tlkit.data.pipeline import resize_image
from tlkit.models.parts import serving_probabilities


def build_segmentation_archive(model: keras.Model, labels: list[str], size: int, probabilities: Any = None) -> keras.export.ExportArchive:
    probabilities = serving_probabilities(model, "softmax", probabilities)

    def segment(images: tf.Tensor) -> dict[str, tf.Tensor]:
        hw = tf.shape(images)[1:3]
        probs = probabilities(resize_image(images, size))
        probs = tf.image.resize(probs, hw, method="bilinear")
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1, output_type=tf.int32)}

    def segment_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        first = decode_image(image_bytes[0])
        hw = tf.shape(first)[0:2]
        images = tf.map_fn(
            lambda b: tf.image.resize(tf.cast(decode_image(b), tf.float32), hw, method="bilinear", antialias=True),
            image_bytes,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32),
        )
        return segment(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", segment, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    )
    archive.add_endpoint(
        "serving_bytes", segment_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    return archive


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours per class (uint8 [C, 3]); class 0 is dark, as background usually is."""
    base = np.array(
        [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
         [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]],
        np.uint8,
    )
    reps = int(np.ceil(num_classes / len(base)))
    return np.tile(base, (reps, 1))[:num_classes]


def write_mask_outputs(image: np.ndarray, classes: np.ndarray, out_dir: Path, stem: str, num_classes: int) -> dict[str, str]:
    """`STEM_mask.png` (class indices, 8-bit) and `STEM_overlay.png` (colours over the image), atomically."""
    import os

    from PIL import Image

    colours = palette(num_classes)[classes]
    overlay = (0.55 * image.astype(np.float32) + 0.45 * colours.astype(np.float32)).round().astype(np.uint8)
    paths = {"mask": out_dir / f"{stem}_mask.png", "overlay": out_dir / f"{stem}_overlay.png"}
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)  # stems may name a subfolder (`sub/NAME`)
    for key, array in (("mask", classes.astype(np.uint8)), ("overlay", overlay)):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, paths[key])
    return {k: str(v) for k, v in paths.items()}


def class_fractions(classes: np.ndarray, labels: list[str]) -> dict[str, float]:
    counts = np.bincount(classes.reshape(-1), minlength=len(labels))[: len(labels)]
    return {name: float(c / max(classes.size, 1)) for name, c in zip(labels, counts)}


def predict_masks(
    segment: Callable[[bytes], np.ndarray], images: list[tuple[int, str, bytes]], labels: list[str], out_dir: Path | None,
    stems: dict[int, str] | None = None,
) -> dict[int, dict[str, Any]]:
    """One call per image (`segment`: encoded image -> class map at its own size), so every mask has its image's size.

    `stems` names each image's outputs (index -> `NAME` or `sub/NAME`; default the file's stem)."""
    results: dict[int, dict[str, Any]] = {}
    for index, path, data in images:
        classes = segment(data)
        entry: dict[str, Any] = {"size": [int(classes.shape[0]), int(classes.shape[1])], "fractions": class_fractions(classes, labels)}
        if out_dir is not None:
            image = decode_image(tf.constant(data)).numpy()
            stem = (stems or {}).get(index) or Path(path).stem
            entry.update(write_mask_outputs(image, classes, Path(out_dir), stem, len(labels)))
        results[index] = entry
    return results


def segmenter(runner: Any) -> Callable[[bytes], np.ndarray]:
    """Encoded image -> class map [H, W] at the image's own size, on the export's engine."""
    signatures = getattr(runner, "signatures", None)
    if signatures is not None:  # a SavedModel: the export resizes back itself
        serve = signatures["serving_bytes"]
        return lambda data: serve(image_bytes=tf.constant([data]))["classes"].numpy()[0]

    def segment(data: bytes) -> np.ndarray:
        image = decode_image(tf.constant(data))  # decoded once: its size, and the model's input
        probs = runner(resize_image(image, runner.size)[None].numpy())[0]  # [S, S, classes] at the input size
        height, width = image.shape[:2]
        return np.argmax(tf.image.resize(probs, (height, width), method="bilinear").numpy(), axis=-1).astype(np.int32)

    return segment
