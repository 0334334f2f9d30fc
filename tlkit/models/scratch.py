"""The from-scratch stack: Conv -> [BatchNorm] -> activation -> [pool] -> [dropout] blocks.

Every size follows the rule the project grew from:
`out = floor((in + 2*pad - kernel_eff) / stride) + 1`, kernel_eff = dilation*(kernel-1)+1.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras

from tlkit.errors import TlkitError
from tlkit.recipe import ScratchBlock


def conv_output_size(size: int, kernel: int, stride: int, padding: "str | int", dilation: int = 1) -> int:
    """Output side of a convolution; 'same' keeps ceil(in/stride), 'valid' pads nothing."""
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    effective = dilation * (kernel - 1) + 1
    return (size + 2 * pad - effective) // stride + 1


def pool_output_size(size: int, pool_size: int, stride: int | None = None) -> int:
    """Keras pooling pads nothing ('valid')."""
    return conv_output_size(size, pool_size, stride or pool_size, "valid")


_ACTIVATIONS = {
    "leaky_relu": lambda name: keras.layers.LeakyReLU(negative_slope=0.1, name=name),
    "elu": lambda name: keras.layers.ELU(name=name),
    "relu6": lambda name: keras.layers.ReLU(max_value=6.0, name=name),
}


def _activation(kind: str, name: str) -> keras.layers.Layer:
    make = _ACTIVATIONS.get(kind)
    return make(name) if make else keras.layers.Activation(kind, name=name)


def block_sizes(blocks: Sequence[ScratchBlock], input_size: int) -> list[tuple[int, int]]:
    """(after conv, after pool) side of each block; a TlkitError when one would vanish."""
    sizes = []
    size = input_size
    for i, b in enumerate(blocks, 1):
        conv = conv_output_size(size, b.kernel_size, b.stride, b.padding, b.dilation)
        if conv < 1:
            raise TlkitError(
                f"scratch block {i}: input {size}x{size} with kernel {b.kernel_size} stride {b.stride} "
                f"padding {b.padding} dilation {b.dilation} gives {max(conv, 0)}x{max(conv, 0)}; "
                "lower kernel/stride or raise model.input_size"
            )
        pooled = conv if b.pool == "none" else pool_output_size(conv, b.pool_size, b.pool_stride)
        if pooled < 1:
            raise TlkitError(
                f"scratch block {i}: {conv}x{conv} is too small for a {b.pool_size}x{b.pool_size} pool; "
                "set pool: none or raise model.input_size"
            )
        sizes.append((conv, pooled))
        size = pooled
    return sizes


def build_scratch(blocks: Sequence[ScratchBlock], input_size: int, name: str = "backbone") -> keras.Model:
    if not blocks:
        raise TlkitError("backbone 'scratch' needs at least one entry in model.blocks")
    block_sizes(blocks, input_size)
    inputs = keras.Input((input_size, input_size, 3), name="scratch_input")
    x = inputs
    for i, b in enumerate(blocks, 1):
        padding = b.padding
        if isinstance(padding, int):
            if padding:
                x = keras.layers.ZeroPadding2D(padding, name=f"block{i}_pad")(x)
            padding = "valid"
        x = keras.layers.Conv2D(
            b.filters,
            b.kernel_size,
            strides=b.stride,
            padding=padding,
            dilation_rate=b.dilation,
            use_bias=not b.batch_norm,
            kernel_initializer="he_normal",
            name=f"block{i}_conv",
        )(x)
        if b.batch_norm:
            x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = _activation(b.activation, f"block{i}_act")(x)
        if b.pool != "none":
            pool = keras.layers.MaxPooling2D if b.pool == "max" else keras.layers.AveragePooling2D
            x = pool(b.pool_size, strides=b.pool_stride or b.pool_size, name=f"block{i}_pool")(x)
        if b.dropout > 0:
            x = keras.layers.Dropout(b.dropout, name=f"block{i}_dropout")(x)
    return keras.Model(inputs, x, name=name)


def scratch_skip_layers(blocks: Sequence[ScratchBlock]) -> tuple[str, ...]:
    """Activation outputs just before each downsampling: the skips a U-Net decoder takes."""
    return tuple(
        f"block{i}_act" for i, b in enumerate(blocks, 1) if b.pool != "none" or b.stride > 1
    )
