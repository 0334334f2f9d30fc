"""The from-scratch stack: blocks of Conv -> [BatchNorm] -> activation -> [pool] -> [dropout].

Sizes follow the textbook rule, checked before anything is built so a recipe
that would shrink a feature map to nothing fails with the block and numbers:

    out = floor((in + 2*pad - kernel_eff) / stride) + 1,  kernel_eff = dilation*(kernel-1) + 1

with padding 'valid' = pad 0, an integer = that many zeros on each side
(a ZeroPadding2D layer before a 'valid' conv), and 'same' = ceil(in / stride).
Keras pooling never pads ('valid').

Layers are named `block{i}_pad`, `block{i}_conv`, `block{i}_bn`, `block{i}_act`,
`block{i}_pool`, `block{i}_dropout` (i from 1), so features can be read off by name.

The stack is the registry entry `scratch` (tlkit.models.backbones): the
`scratch_build`, `scratch_skips` and `scratch_check` hooks at the end are that
entry's builder, skips and checks, all driven by the blocks (default: the
recipe's default blocks). This module imports no other tlkit model module, and
tlkit.recipe only when blocks are validated, so the registry can import it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from tlkit.errors import TlkitError

if TYPE_CHECKING:
    import keras

    from tlkit.recipe import ScratchBlock


def conv_output_size(
    size: int, kernel: int, stride: int, padding: "Literal['same', 'valid'] | int", dilation: int = 1
) -> int:
    """Output side of a convolution (0 when the kernel no longer fits), as Keras computes it."""
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    effective = dilation * (kernel - 1) + 1
    return max((size + 2 * pad - effective) // stride + 1, 0)


def pool_output_size(size: int, pool_size: int, stride: int | None = None) -> int:
    """Output side of Keras Max/AveragePooling2D ('valid'; stride defaults to pool_size)."""
    return conv_output_size(size, pool_size, stride or pool_size, "valid")


def _as_blocks(blocks: Sequence[Any]) -> list[ScratchBlock]:
    """Accept ScratchBlock objects or plain dicts (the Python API), validated the same way."""
    from tlkit.recipe import ScratchBlock

    out = []
    for i, b in enumerate(blocks, 1):
        if isinstance(b, ScratchBlock):
            out.append(b)
            continue
        try:
            out.append(ScratchBlock.model_validate(b))
        except Exception as exc:  # pydantic ValidationError: a user mistake in the block
            raise TlkitError(f"scratch block {i} is invalid: {exc}") from None
    return out


def block_sizes(blocks: Sequence[Any], input_size: int) -> list[tuple[int, int]]:
    """(after conv, after pool) side of each block; TlkitError naming the block if one would vanish.

    Needs no building, so a recipe can be checked before any data is read.
    """
    blocks = _as_blocks(blocks)
    if not blocks:
        raise TlkitError("backbone 'scratch' needs at least one entry in model.blocks")
    if input_size < 1:
        raise TlkitError(f"input_size must be positive, got {input_size}")
    sizes = []
    size = input_size
    for i, b in enumerate(blocks, 1):
        if b.stride > 1 and b.dilation > 1:
            raise TlkitError(
                f"scratch block {i}: stride {b.stride} with dilation {b.dilation} is not supported by Keras; "
                "use stride 1 or dilation 1"
            )
        conv = conv_output_size(size, b.kernel_size, b.stride, b.padding, b.dilation)
        if conv < 1:
            dil = f" dilation {b.dilation}" if b.dilation > 1 else ""
            raise TlkitError(
                f"scratch block {i}: input {size}x{size} with kernel {b.kernel_size} stride {b.stride} "
                f"padding {b.padding}{dil} gives {conv}x{conv}; "
                "lower kernel/stride or raise input_size (model.input_size)"
            )
        pooled = conv
        if b.pool != "none":
            pooled = pool_output_size(conv, b.pool_size, b.pool_stride)
            if pooled < 1:
                raise TlkitError(
                    f"scratch block {i}: {b.pool} pooling {b.pool_size} (stride {b.pool_stride or b.pool_size}) "
                    f"on {conv}x{conv} gives {pooled}x{pooled}; set pool: none or raise input_size (model.input_size)"
                )
        sizes.append((conv, pooled))
        size = pooled
    return sizes


def _activation(kind: str, name: str) -> "keras.layers.Layer":
    """One layer per activation; leaky_relu uses slope 0.1 (Keras' 0.3 default is steep for CNNs)."""
    import keras

    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.1, name=name)
    return keras.layers.Activation(kind, name=name)


def build_scratch(blocks: Sequence[ScratchBlock], input_size: int, name: str = "backbone") -> "keras.Model":
    """A randomly initialised CNN from recipe blocks; output is the last block's feature map (no pooling)."""
    import keras  # here, not at the top: the backbone registry lists its entries without TensorFlow

    blocks = _as_blocks(blocks)
    block_sizes(blocks, input_size)
    inputs = keras.Input((input_size, input_size, 3), name="scratch_input")
    x = inputs
    for i, b in enumerate(blocks, 1):
        padding = b.padding
        if isinstance(padding, int):
            if padding > 0:
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
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)  # few steps: stats must settle fast
        x = _activation(b.activation, f"block{i}_act")(x)
        if b.pool != "none":
            pool = keras.layers.MaxPooling2D if b.pool == "max" else keras.layers.AveragePooling2D
            x = pool(b.pool_size, strides=b.pool_stride or b.pool_size, name=f"block{i}_pool")(x)
        if b.dropout > 0:
            x = keras.layers.Dropout(b.dropout, name=f"block{i}_dropout")(x)
    return keras.Model(inputs, x, name=name)


def scratch_skip_layers(blocks: Sequence[ScratchBlock]) -> tuple[str, ...]:
    """`block{i}_act` of every block whose output is downsampled next: the U-Net skips, shallow first.

    A block's activation feeds a skip when its own pooling has stride > 1 or the
    next block's conv has stride > 1, i.e. it is the last full-resolution
    feature map of its level. The stack's output itself is not a skip.
    """
    blocks = _as_blocks(blocks)
    names = []
    for i, b in enumerate(blocks, 1):
        pools_down = b.pool != "none" and (b.pool_stride or b.pool_size) > 1
        next_strides = i < len(blocks) and blocks[i].stride > 1
        if pools_down or next_strides:
            names.append(f"block{i}_act")
    return tuple(names)


def scratch_skip_strides(blocks: Sequence[Any]) -> tuple[int, ...]:
    """The stride (input side / feature side, for 'same' convs) of each `scratch_skip_layers` entry."""
    blocks = _as_blocks(blocks)
    skips = set(scratch_skip_layers(blocks))
    strides, stride = [], 1
    for i, b in enumerate(blocks, 1):
        stride *= b.stride
        if f"block{i}_act" in skips:
            strides.append(stride)
        if b.pool != "none":
            stride *= b.pool_stride or b.pool_size
    return tuple(strides)


def default_blocks() -> list[Any]:
    """The recipe's default blocks: what the `scratch` entry builds when it is given none."""
    from tlkit.recipe import Model

    return list(Model().blocks)


# ----------------------------------------------------------------------------- the registry entry's hooks


def scratch_build(
    spec: Any, input_size: int, weights: str, options: Mapping[str, Any], blocks: Sequence[Any] | None
) -> "keras.Model":
    """The `scratch` entry's builder: the blocks (default ones if None), then a weights file if one is given.

    `weights` is 'none' or a file path (the registry refuses 'imagenet' before this runs);
    a file that does not fit raises Keras' error, which build_backbone turns into one line.
    """
    model = build_scratch(default_blocks() if blocks is None else blocks, input_size, name="backbone")
    if weights != "none":
        model.load_weights(weights)
    return model


def scratch_skips(spec: Any, blocks: Sequence[Any] | None) -> tuple[tuple[str, int], ...]:
    """The `scratch` entry's skips: (layer name, stride) of each block before a downsampling, shallow first."""
    blocks = default_blocks() if blocks is None else blocks
    return tuple(zip(scratch_skip_layers(blocks), scratch_skip_strides(blocks)))


def scratch_check(
    spec: Any,
    input_size: int,
    options: Mapping[str, Any],
    weights: str,
    blocks: Sequence[Any] | None,
) -> None:
    """The `scratch` entry's checks: every block keeps a non-empty feature map at this input size."""
    block_sizes(default_blocks() if blocks is None else blocks, input_size)
