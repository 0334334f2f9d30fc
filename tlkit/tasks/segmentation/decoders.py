"""Segmentation decoders: backbone features (+ skips) -> per-pixel logits at the input size.

A decoder is one `register_decoder` entry: a function of (features shallow-first,
input size, the recipe's decoder section, number of classes) that returns the
logits tensor. Features come from the backbone registry's skip layers, so every
backbone with registered skips works with every decoder; spatial sizes are read
from the tensors, so unaligned backbones (Xception) and from-scratch stacks
need no special case.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import keras

from tlkit.errors import TlkitError
from tlkit.models.layers import BilinearResize
from tlkit.tasks.segmentation.recipe import Decoder

DecoderFn = Callable[[list[Any], int, Decoder, int], Any]
DECODERS: dict[str, DecoderFn] = {}


def register_decoder(name: str) -> Callable[[DecoderFn], DecoderFn]:
    def wrap(fn: DecoderFn) -> DecoderFn:
        DECODERS[name] = fn
        return fn

    return wrap


def get_decoder(name: str) -> DecoderFn:
    if name not in DECODERS:
        close = difflib.get_close_matches(name, list(DECODERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise TlkitError(f"unknown decoder '{name}' (model.decoder.type){hint} Available: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


def _hw(x: Any) -> tuple[int, int]:
    return int(x.shape[1]), int(x.shape[2])


def conv_bn_relu(x: Any, filters: int, name: str, kernel: int = 3, dilation: int = 1) -> Any:
    x = keras.layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # few steps: statistics must settle fast
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def upsample_to(x: Any, size: tuple[int, int], filters: int, mode: str, name: str) -> Any:
    """To `size`: a 2x transposed conv where the factor is exactly 2 and asked for, else bilinear resize."""
    h, w = _hw(x)
    if (h, w) == size:
        return x
    if mode == "transpose" and size == (2 * h, 2 * w):
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, use_bias=False, name=f"{name}_tconv")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_tbn")(x)
        return keras.layers.ReLU(name=f"{name}_trelu")(x)
    return BilinearResize(size[0], size[1], name=f"{name}_resize")(x)


def _logits(x: Any, input_size: int, num_classes: int, cfg: Decoder) -> Any:
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="decoder_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="decoder_logits")(x)
    x = upsample_to(x, (input_size, input_size), num_classes, "bilinear", "decoder_out")
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)


@register_decoder("unet")
def unet(features: list[Any], input_size: int, cfg: Decoder, num_classes: int) -> Any:
    """U-Net: from the deepest feature up, each block upsamples, concatenates the skip
    at that resolution and applies two conv-BN-ReLU; blocks past the last skip
    (stride 2 -> 1) run without one, as segmentation_models does."""
    x, skips = features[-1], features[:-1][::-1]
    h, _ = _hw(x)
    steps = max(len(skips), 0)
    while h * 2 ** (steps) < input_size:
        steps += 1
    for i in range(steps):
        width = cfg.widths[min(i, len(cfg.widths) - 1)]
        name = f"decoder_up{i + 1}"
        if i < len(skips):
            target = _hw(skips[i])
        else:
            cur = _hw(x)
            target = (min(cur[0] * 2, input_size), min(cur[1] * 2, input_size))
        x = upsample_to(x, target, width, cfg.upsample, name)
        if i < len(skips):
            x = keras.layers.Concatenate(name=f"{name}_concat")([x, skips[i]])
        x = conv_bn_relu(x, width, f"{name}_a")
        x = conv_bn_relu(x, width, f"{name}_b")
    return _logits(x, input_size, num_classes, cfg)


@register_decoder("fpn")
def fpn(features: list[Any], input_size: int, cfg: Decoder, num_classes: int) -> Any:
    """Feature pyramid: 1x1 laterals, top-down sums, one conv per level, all merged at the
    finest pyramid level. Lighter than U-Net: one width, no per-level conv pairs."""
    pyramid = cfg.widths[0]
    head = cfg.widths[1] if len(cfg.widths) > 1 else max(pyramid // 2, 8)
    levels = features[1:] if len(features) > 2 else features  # stride-2 features cost most and add least
    laterals = [keras.layers.Conv2D(pyramid, 1, name=f"fpn_lateral{i}")(f) for i, f in enumerate(levels)]
    x = laterals[-1]
    merged = [x]
    for i in range(len(laterals) - 2, -1, -1):
        x = upsample_to(x, _hw(laterals[i]), pyramid, "bilinear", f"fpn_top{i}")
        x = keras.layers.Add(name=f"fpn_add{i}")([x, laterals[i]])
        merged.insert(0, x)
    finest = _hw(merged[0])
    outs = []
    for i, m in enumerate(merged):
        y = conv_bn_relu(m, head, f"fpn_head{i}")
        outs.append(upsample_to(y, finest, head, "bilinear", f"fpn_head{i}_up"))
    x = keras.layers.Add(name="fpn_merge")(outs) if len(outs) > 1 else outs[0]
    x = conv_bn_relu(x, head, "fpn_final")
    return _logits(x, input_size, num_classes, cfg)
