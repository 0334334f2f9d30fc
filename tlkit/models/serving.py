"""Serving endpoints every image-level task shares: raw uint8 images or encoded bytes in, any size.

A task gives `predict(images)` on float32 pixels at the model's size; these wrap it
as the SavedModel signatures `serving_default` (uint8 [B, H, W, 3]) and
`serving_bytes` (encoded JPEG/PNG/GIF/BMP strings [B]), resizing exactly as in
training, and add the pooled `embeddings` signatures.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from tlkit.data.decode import decode_image
from tlkit.data.pipeline import resize_image
from tlkit.models.parts import pooled_features

IMAGES = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
IMAGE_BYTES = tf.TensorSpec([None], tf.string, name="image_bytes")


def decode_batch(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded images of any sizes -> one float32 batch at the model's size."""
    return tf.map_fn(
        lambda b: resize_image(decode_image(b, min_size=size), size),  # the JPEG scale training decodes at
        image_bytes,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
    )


def image_archive(model: keras.Model, size: int, predict: Callable[[tf.Tensor], dict[str, Any]]) -> keras.export.ExportArchive:
    """An archive tracking `model`, with `serving_default`/`serving_bytes` over `predict` and the embeddings."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda images: predict(resize_image(images, size)), input_signature=[IMAGES])
    archive.add_endpoint("serving_bytes", lambda image_bytes: predict(decode_batch(image_bytes, size)), input_signature=[IMAGE_BYTES])
    pooled = pooled_features(model)  # shares the model's weights
    archive.track(pooled)
    archive.add_endpoint(
        "embeddings",
        lambda images: {"embeddings": pooled(resize_image(images, size), training=False)},
        input_signature=[IMAGES],
    )
    archive.add_endpoint(
        "embeddings_bytes",
        lambda image_bytes: {"embeddings": pooled(decode_batch(image_bytes, size), training=False)},
        input_signature=[IMAGE_BYTES],
    )
    return archive

