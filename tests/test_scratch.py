"""From-scratch stack: Keras' real output sizes follow the formula, block options build, too-small fails clearly.

The registry-wide checks (builds, skips at their strides, errors) run on `scratch` in
tests/test_backbones.py like on every entry; here: what its blocks change in its entry.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from tlkit.errors import TlkitError
from tlkit.models.backbones import (
    build_backbone,
    can_feed_decoder,
    get_backbone,
    is_pretrained,
    resolve_weights,
    skip_layer_outputs,
    skip_refs,
    validate_model,
)
from tlkit.models.scratch import (
    block_sizes,
    build_scratch,
    conv_output_size,
    default_blocks,
    pool_output_size,
    scratch_skip_layers,
    scratch_skip_strides,
)
from tlkit.recipe import ScratchBlock


def _side(model: keras.Model, layer: str) -> int:
    shape = model.get_layer(layer).output.shape
    assert shape[1] == shape[2]
    return shape[1]


def test_hand_examples():
    assert conv_output_size(7, 3, 2, 1) == 4  # floor((7 + 2 - 3) / 2) + 1
    assert conv_output_size(7, 3, 2, "valid") == 3
    assert conv_output_size(7, 3, 2, "same") == 4
    assert conv_output_size(32, 3, 1, "valid", dilation=2) == 28  # kernel_eff 5
    assert conv_output_size(4, 5, 1, "valid") == 0
    assert pool_output_size(7, 2) == 3 and pool_output_size(7, 3, 1) == 5 and pool_output_size(1, 2) == 0
    model = build_scratch([ScratchBlock(filters=4, kernel_size=3, stride=2, padding=1, pool="none")], 7)
    assert _side(model, "block1_pad") == 9 and _side(model, "block1_conv") == 4


CONV_GRID = [
    (size, kernel, stride, padding, dilation)
    for size, kernel, stride, padding, dilation in itertools.product(
        (7, 16, 33), (1, 3, 5), (1, 2, 3), ("same", "valid", 0, 1, 2), (1, 2)
    )
    if not (stride > 1 and dilation > 1)  # Keras refuses that combination (tested below)
]


@pytest.mark.parametrize("size", (7, 16, 33))
def test_conv_sizes_follow_the_formula(size):
    """One single-block model per combination; the formula must agree with Keras, or both must fail."""
    for _, kernel, stride, padding, dilation in [c for c in CONV_GRID if c[0] == size]:
        block = ScratchBlock(filters=2, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, pool="none")
        expected = conv_output_size(size, kernel, stride, padding, dilation)
        if expected < 1:
            with pytest.raises(TlkitError, match="gives 0x0"):
                build_scratch([block], size)
            continue
        model = build_scratch([block], size)
        assert _side(model, "block1_conv") == expected, (size, kernel, stride, padding, dilation)
        assert tuple(model.output.shape) == (None, expected, expected, 2)


@pytest.mark.parametrize("pool", ("max", "avg"))
def test_pool_sizes_follow_the_formula(pool):
    for size, pool_size, pool_stride in itertools.product((5, 8, 9, 16), (2, 3), (None, 1, 2, 3)):
        block = ScratchBlock(filters=2, pool=pool, pool_size=pool_size, pool_stride=pool_stride)
        expected = pool_output_size(size, pool_size, pool_stride)
        model = build_scratch([block], size)
        assert _side(model, "block1_pool") == expected, (size, pool_size, pool_stride)


def test_multi_block_stack_layer_by_layer():
    blocks = [
        ScratchBlock(filters=8, kernel_size=5, stride=2, padding=2, pool="max", pool_size=3, pool_stride=2),
        ScratchBlock(filters=8, kernel_size=3, padding="valid", dilation=2, pool="avg"),
        ScratchBlock(filters=16, kernel_size=3, stride=3, padding="same", pool="none"),
        ScratchBlock(filters=16, kernel_size=1, padding=1, pool="max", pool_size=2, pool_stride=1),
    ]
    size = 61
    model = build_scratch(blocks, size)
    sizes = block_sizes(blocks, size)
    for i, (block, (conv, pooled)) in enumerate(zip(blocks, sizes), 1):
        assert conv == conv_output_size(size, block.kernel_size, block.stride, block.padding, block.dilation)
        assert _side(model, f"block{i}_conv") == conv
        assert _side(model, f"block{i}_act") == conv
        if block.pool != "none":
            assert pooled == pool_output_size(conv, block.pool_size, block.pool_stride)
            assert _side(model, f"block{i}_pool") == pooled
        size = pooled
    assert tuple(model.output.shape) == (None, size, size, 16)
    assert model.name == "backbone"
    out = model(np.zeros((2, 61, 61, 3), "float32"), training=False)
    assert tuple(out.shape) == (2, size, size, 16)


@pytest.mark.parametrize(
    "activation", ["relu", "leaky_relu", "elu", "gelu", "selu", "swish", "tanh", "sigmoid", "relu6", "linear"]
)
def test_every_activation_builds(activation):
    model = build_scratch([ScratchBlock(filters=4, activation=activation)], 8)
    out = keras.ops.convert_to_numpy(model(np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype("float32")))
    assert out.shape == (1, 4, 4, 4) and np.isfinite(out).all()


def test_block_options():
    blocks = [
        ScratchBlock(filters=4, batch_norm=False, pool="avg", dropout=0.25),
        {"filters": 6, "pool": "none", "padding": 0},  # plain dicts work too (Python API)
    ]
    model = build_scratch(blocks, 16, name="my_stack")
    names = [layer.name for layer in model.layers]
    assert model.name == "my_stack"
    assert "block1_bn" not in names and model.get_layer("block1_conv").use_bias
    assert isinstance(model.get_layer("block1_pool"), keras.layers.AveragePooling2D)
    assert isinstance(model.get_layer("block1_dropout"), keras.layers.Dropout)
    assert "block2_pool" not in names and "block2_pad" not in names  # padding 0 adds no layer
    assert not model.get_layer("block2_conv").use_bias and "block2_bn" in names
    assert model.get_layer("block1_conv").kernel_initializer.__class__.__name__ == "HeNormal"
    assert tuple(model.output.shape) == (None, 6, 6, 6)


def test_too_small_names_block_and_numbers():
    blocks = [ScratchBlock(filters=4), ScratchBlock(filters=4), ScratchBlock(filters=4, kernel_size=5, padding="valid")]
    with pytest.raises(TlkitError, match=r"block 3: input 4x4 with kernel 5 stride 1 padding valid gives 0x0; lower kernel/stride or raise input_size"):
        build_scratch(blocks, 16)
    with pytest.raises(TlkitError, match=r"block 2: max pooling 2 \(stride 2\) on 1x1 gives 0x0"):
        build_scratch([ScratchBlock(filters=4), ScratchBlock(filters=4)], 2)
    with pytest.raises(TlkitError, match="stride 2 with dilation 2"):
        build_scratch([ScratchBlock(filters=4, stride=2, dilation=2)], 16)
    with pytest.raises(TlkitError, match="at least one"):
        build_scratch([], 16)


def test_skip_layers_are_the_activations_before_each_downsampling():
    default = [ScratchBlock(filters=f) for f in (8, 16, 32)]
    assert scratch_skip_layers(default) == ("block1_act", "block2_act", "block3_act")
    mixed = [
        ScratchBlock(filters=4, pool="none"),  # the next block's stride-2 conv downsamples: a skip
        ScratchBlock(filters=4, stride=2, pool="none"),
        ScratchBlock(filters=4, pool="max", pool_size=3, pool_stride=1),  # stride-1 pool: not a downsampling
        ScratchBlock(filters=4, pool="avg"),
        ScratchBlock(filters=4, pool="none"),  # the output, not a skip
    ]
    names = scratch_skip_layers(mixed)
    assert names == ("block1_act", "block4_act")
    assert scratch_skip_strides(mixed) == (1, 2)
    model = build_scratch(mixed, 32)
    assert [_side(model, n) for n in names] == [32, 14]  # stride 2, but the 3x3 stride-1 pool took 2 pixels
    assert scratch_skip_strides(default_blocks()) == (1, 2, 4)


# ----------------------------------------------------------------------------- the registry entry


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # from Keras' own saving code
def test_scratch_through_the_registry(tmp_path):
    blocks = [ScratchBlock(filters=8), ScratchBlock(filters=16, pool="none")]
    model = build_backbone("scratch", 32, "none", {}, blocks=blocks)
    assert model.name == "backbone" and tuple(model.output.shape) == (None, 16, 16, 16)
    assert [t.shape[1] for t in skip_layer_outputs(model, "scratch", blocks)] == [32]
    assert skip_refs("scratch", blocks) == (("block1_act", 1),)
    with pytest.raises(TlkitError, match=r"^backbone 'scratch' has no pretrained weights: set model.weights: none"):
        build_backbone("scratch", 32, "imagenet", blocks=blocks)
    with pytest.raises(TlkitError, match="it takes: \\(none\\); scratch is configured by model.blocks"):
        build_backbone("scratch", 32, "none", {"alpha": 1.0}, blocks=blocks)
    # a weights file the same stack saved loads back; None is the entry's default, 'none'
    path = tmp_path / "scratch.weights.h5"
    model.save_weights(path)
    again = build_backbone("scratch", 32, str(path), blocks=blocks)
    np.testing.assert_array_equal(again.get_layer("block1_conv").kernel.numpy(), model.get_layer("block1_conv").kernel.numpy())
    assert build_backbone("scratch", 32, None, blocks=blocks).count_params() == model.count_params()
    # ... and one from other blocks fails in one line naming what to check
    with pytest.raises(TlkitError) as err:
        build_backbone("scratch", 32, str(path), blocks=[ScratchBlock(filters=4)])
    text = str(err.value)
    assert "\n" not in text and f"cannot load weights file '{path}' into scratch" in text and "model.blocks" in text


def test_scratch_entry_is_data_not_a_name():
    spec = get_backbone("scratch")
    assert spec.default_weights == "none" and not spec.pretrained and spec.configured_by == "model.blocks"
    assert spec.skip_layers == () and spec.constructor is None  # its skips and its network come from the blocks
    assert resolve_weights("scratch", None) == "none" and not is_pretrained("scratch", None)
    assert get_backbone("Scratch") is spec


def test_validate_model_checks_the_blocks_before_building():
    three = [ScratchBlock(filters=4) for _ in range(3)]
    with pytest.raises(TlkitError, match=r"^scratch block 3: max pooling 2 \(stride 2\) on 1x1 gives 0x0"):
        validate_model("scratch", 7, {}, None, blocks=three)
    with pytest.raises(TlkitError, match=r"scratch block 3: .*gives 0x0"):  # default blocks when none are given
        validate_model("scratch", 7, {}, "none")
    with pytest.raises(TlkitError, match=r"scratch block 1 is invalid"):
        validate_model("scratch", 32, {}, "none", blocks=[{"filters": 4, "kernel": 3}])
    # the blocks, not the entry's min_size (the default blocks' minimum), decide what fits
    one = [ScratchBlock(filters=2, pool="none")]
    assert validate_model("scratch", 4, {}, "none", blocks=one).name == "scratch"
    assert tuple(build_backbone("scratch", 4, "none", blocks=one).output.shape) == (None, 4, 4, 2)


def test_can_feed_decoder_follows_the_blocks():
    assert can_feed_decoder("scratch") is None and can_feed_decoder("scratch", [ScratchBlock(filters=4)]) is None
    flat = [ScratchBlock(filters=4, pool="none"), ScratchBlock(filters=4, pool="max", pool_size=3, pool_stride=1)]
    assert skip_refs("scratch", flat) == ()
    assert can_feed_decoder("scratch", flat) == (
        "model.blocks never downsample: a U-Net encoder needs blocks with pooling or stride > 1"
    )
