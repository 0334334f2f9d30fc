"""Segmenter = preprocessing + backbone (with skip outputs) + a registered decoder.

Same conventions as the classifier: float32 images in [0, 255] at a fixed size
in, logits out (here per pixel, [B, S, S, classes]); the backbone is one nested
model named "backbone", so stages freeze and unfreeze it exactly as for
classification.
"""

from __future__ import annotations

import keras

from tlkit.errors import TlkitError
from tlkit.models.backbones import build_backbone, get_backbone, skip_layer_outputs
from tlkit.models.classifier import input_size
from tlkit.models.decoders import get_decoder
from tlkit.models.preprocess import Preprocess
from tlkit.recipe import Recipe


def check_segmenter(recipe: Recipe) -> None:
    """Fail before reading data when the backbone cannot feed a decoder."""
    spec = get_backbone(recipe.model.backbone)
    get_decoder(recipe.model.decoder.type)
    if spec.name != "scratch" and not spec.skip_layers:
        raise TlkitError(f"backbone '{spec.name}' has no registered skip layers: it cannot feed a segmentation decoder")
    if spec.name == "scratch":
        from tlkit.models.scratch import scratch_skip_layers

        if not scratch_skip_layers(recipe.model.blocks):
            raise TlkitError("model.blocks never downsample: a U-Net encoder needs blocks with pooling or stride > 1")


def build_segmenter(recipe: Recipe, num_classes: int) -> keras.Model:
    spec = get_backbone(recipe.model.backbone)
    size = input_size(recipe)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    single = build_backbone(spec, size, recipe.model.weights, recipe.model.options, blocks=recipe.model.blocks)
    skips = skip_layer_outputs(single, spec, recipe.model.blocks if spec.name == "scratch" else None)
    backbone = keras.Model(single.input, [*skips, single.output], name="backbone")
    features = backbone(x)
    logits = get_decoder(recipe.model.decoder.type)(list(features), size, recipe.model.decoder, num_classes)
    return keras.Model(inputs, logits, name=f"tlkit_{spec.name}_{recipe.model.decoder.type}")
