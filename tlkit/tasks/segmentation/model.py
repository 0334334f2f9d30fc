"""Segmenter = preprocessing + backbone (with skip outputs) + a registered decoder.

Same conventions as every tlkit model: float32 images in [0, 255] at a fixed size
in, logits out (here per pixel, [B, S, S, classes]); the backbone is one nested
model named "backbone", so stages freeze and unfreeze it as for any task.
"""

from __future__ import annotations

import keras

from tlkit.errors import TlkitError
from tlkit.models.backbones import can_feed_decoder, get_backbone, skip_layer_outputs
from tlkit.models.stages import backbone_model, preprocessed_input
from tlkit.recipe import Recipe
from tlkit.tasks.segmentation.decoders import get_decoder


def check_segmenter(recipe: Recipe) -> None:
    """Fail before reading data when the backbone cannot feed a decoder."""
    get_decoder(recipe.model.decoder.type)
    problem = can_feed_decoder(get_backbone(recipe.model.backbone), recipe.model.blocks)
    if problem:
        raise TlkitError(problem)


def build_segmenter(recipe: Recipe, num_classes: int) -> keras.Model:
    spec = get_backbone(recipe.model.backbone)
    inputs, x = preprocessed_input(recipe)
    single = backbone_model(recipe)
    skips = skip_layer_outputs(single, spec, recipe.model.blocks)
    backbone = keras.Model(single.input, [*skips, single.output], name="backbone")
    features = backbone(x)
    size = int(inputs.shape[1])
    logits = get_decoder(recipe.model.decoder.type)(list(features), size, recipe.model.decoder, num_classes)
    return keras.Model(inputs, logits, name=f"tlkit_{spec.name}_{recipe.model.decoder.type}")
