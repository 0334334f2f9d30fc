"""`train.adapt_batchnorm`: the backbone's BatchNorm statistics re-estimated on your images before training.

ImageNet's moving means and variances describe 224 px ImageNet photos. When a
fine-tune stage trains BatchNorm, those statistics drift to the new data's within
a few hundred steps, and the head trained on the old ones falls back (flowers_128:
val accuracy 0.66 -> 0.55 when stage 2 started). Re-estimating them first (AdaBN,
Li et al. 2016: a forward pass in training mode, no gradients) gives the head
stage the statistics stage 2 will keep, so stage 2 starts where stage 1 ended.
"""

from __future__ import annotations

from typing import Any

import keras

from tlkit.models.stages import backbone_of


def _batchnorms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batchnorms(layer))
    return found


def adapt_batchnorm(model: keras.Model, batches: Any, max_batches: int) -> int:
    """Set every backbone BatchNorm's moving statistics to the mean over up to `max_batches` batches; returns how many.

    One traced forward pass in training mode per batch with momentum 0 (the moving
    statistics become that batch's), summed here: the plain average of the batch
    statistics. Traced, not eager: on flowers_128 the eager loop cost 20 s of a 95 s run.
    Nothing else changes.
    """
    import numpy as np
    import tensorflow as tf

    try:
        preprocess = model.get_layer("preprocess")
    except ValueError:
        return 0
    backbone = backbone_of(model)
    layers = _batchnorms(backbone)
    if not layers or max_batches <= 0:
        return 0
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    was_trainable = backbone.trainable
    backbone.trainable = True
    for layer in layers:
        layer.trainable, layer.momentum = True, 0.0
    forward = tf.function(lambda images: backbone(preprocess(images), training=True), reduce_retracing=True)
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    count = 0
    try:
        for images, _ in batches.take(max_batches):
            forward(images)
            for total, layer in zip(sums, layers):
                total[0] += np.asarray(layer.moving_mean)
                total[1] += np.asarray(layer.moving_variance)
            count += 1
        for (mean, variance), layer in zip(sums, layers):
            if count:
                layer.moving_mean.assign(mean / count)
                layer.moving_variance.assign(variance / count)
    finally:
        backbone.trainable = was_trainable
        for layer, (trainable, momentum) in zip(layers, saved):
            layer.trainable, layer.momentum = trainable, momentum
    return count
