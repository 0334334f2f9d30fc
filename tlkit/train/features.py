"""The cached-features head stage: a frozen backbone gives the same features every epoch, so compute them once."""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np

from tlkit.data.autotune import untuned
from tlkit.models.parts import head_after_pool, pooled_features
from tlkit.recipe import Recipe


def _features(call: Any, batches: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every batch, as float32 (the features are float16 under mixed_float16)."""
    xs, ys = [], []
    for images, labels in batches:
        xs.append(call(images).numpy().astype(np.float32))
        ys.append(labels.numpy())
    if not xs:  # a worker whose shard of a small split is empty
        labels = batches.element_spec[1]
        return np.zeros((0, width), np.float32), np.zeros((0, *labels.shape[1:]), labels.dtype.as_numpy_dtype)
    return np.concatenate(xs), np.concatenate(ys)


def feature_head(model: keras.Model, train_ds: Any, plain_train_ds: Any, val_ds: Any, rec: Recipe, quiet: bool):
    """Compute the pooled features once; return (head model sharing the model's head layers, train, val batches).

    With `feature_views: N`, the train features hold the plain view plus N-1 augmented views
    (each augmented view is one pass over `train_ds`, the shared training stream).
    """
    import tensorflow as tf

    pooled = pooled_features(model)
    call = tf.function(lambda x: pooled(x, training=False), reduce_retracing=True)
    width = int(pooled.output.shape[-1])
    start = time.perf_counter()
    views = [_features(call, plain_train_ds, width)] + [_features(call, train_ds, width) for _ in range(rec.train.feature_views - 1)]
    train_x = np.concatenate([v[0] for v in views])
    train_y = np.concatenate([v[1] for v in views])
    val_x, val_y = _features(call, val_ds, width)
    if not quiet:
        print(
            f"  backbone features cached: {len(train_x)} train, {len(val_x)} val, {train_x.shape[1]} wide, "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
    head = head_after_pool(model, train_x.shape[1])
    batch = rec.train.batch_size
    train = untuned(
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(max(1, len(train_x)), seed=rec.seed, reshuffle_each_iteration=True)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = untuned(tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(batch))
    return head, train, val
