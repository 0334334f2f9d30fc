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

    The k-th batch enters with momentum k/(k+1), so the result is the plain average of the
    batch statistics (the first batch replaces ImageNet's). Nothing else changes.
    """
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
    count = 0
    try:
        for images, _ in batches.take(max_batches):
            for layer in layers:
                layer.trainable = True
                layer.momentum = count / (count + 1.0)
            backbone(preprocess(images), training=True)
            count += 1
    finally:
        backbone.trainable = was_trainable
        for layer, (trainable, momentum) in zip(layers, saved):
            layer.trainable, layer.momentum = trainable, momentum
    return count
