"""Parts that every task's model shares: the pooled-features submodel and the probabilities wrapper.

A tlkit model maps float32 pixels in [0, 255] to logits; its global pooling layer is named
`POOL` when it has one (classifiers, multi-label classifiers). These are the only places that
know those names.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import keras

POOL = "pool"
ACTIVATIONS = ("softmax", "sigmoid")


def has_pool(model: keras.Model) -> bool:
    return any(layer.name == POOL for layer in model.layers)


def pooled_features(model: keras.Model, name: str = "features") -> keras.Model:
    """image -> the pooled backbone features, sharing the model's weights."""
    return keras.Model(model.inputs, model.get_layer(POOL).output, name=name)


def head_after_pool(model: keras.Model, width: int) -> keras.Model:
    """features -> logits: the layers after the pool, sharing their weights (trained on cached features)."""
    inputs = keras.Input((width,), name="features")
    x = inputs
    names = [layer.name for layer in model.layers]
    for name in names[names.index(POOL) + 1 :]:
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name="head")


def activate(logits: Any, activation: str) -> Any:
    """Logits -> probabilities inside a serving graph: softmax over the last axis, or one sigmoid each."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    ops = keras.ops
    return ops.softmax(logits, axis=-1) if activation == "softmax" else ops.sigmoid(logits)


def serving_probabilities(model: keras.Model, activation: str, probabilities: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
    """What a serving signature computes from images at the model's size: `probabilities` if given, else the model's."""
    if probabilities is not None:
        return probabilities
    return lambda images: activate(model(images, training=False), activation)


def probabilities_model(model: keras.Model, activation: str) -> keras.Model:
    """The same weights with probabilities out: softmax over the last axis, or one sigmoid per class."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    probs = keras.layers.Activation(activation, name="probabilities", dtype="float32")(model.outputs[0])
    return keras.Model(model.inputs[0], probs, name="inference")


_TRACED: "weakref.WeakKeyDictionary[keras.Model, dict[str, Callable[[Any], Any]]]" = weakref.WeakKeyDictionary()


def probability_fn(model: keras.Model, activation: str) -> Callable[[Any], Any]:
    """A traced images -> probabilities function for evaluation loops (inference mode), one per model."""
    import tensorflow as tf

    per_model = _TRACED.setdefault(model, {})
    if activation not in per_model:
        wrapped = probabilities_model(model, activation)
        per_model[activation] = tf.function(lambda x: wrapped(x, training=False), reduce_retracing=True)
    return per_model[activation]
