"""The pooling head: preprocessing + backbone + global average pooling, dropout, dense logits per class.

Classification (softmax over the logits) and multi-label classification (one sigmoid
per logit) both sit on it; the layer names (`pool`, `logits`) are what
`tlkit.models.parts` reads features and heads from.
"""

from __future__ import annotations

import keras

from tlkit.models.parts import POOL
from tlkit.models.stages import backbone_model, preprocessed_input
from tlkit.recipe import Recipe


def build_classifier(recipe: Recipe, num_classes: int) -> keras.Model:
    inputs, x = preprocessed_input(recipe)
    x = backbone_model(recipe)(x)
    pooling = keras.layers.GlobalMaxPooling2D if recipe.model.head.pool == "max" else keras.layers.GlobalAveragePooling2D
    x = pooling(name=POOL)(x)
    if recipe.model.head.dropout > 0:
        x = keras.layers.Dropout(recipe.model.head.dropout, name="head_dropout")(x)
    # float32 logits whatever runtime.precision says: softmax and the loss need the range
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"tlkit_{recipe.model.backbone}")
