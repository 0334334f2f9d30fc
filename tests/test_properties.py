"""Properties over generated inputs (hypothesis): recipe overrides, the conv output-size rule, decoding any bytes.

Each property runs on a few dozen generated cases (a fixed budget, no deadline)
so the file stays fast; hypothesis shrinks any failure to a minimal example.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tlkit.errors import TlkitError
from tlkit.recipe import parse_override
from tlkit.tasks import load_recipe

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ----------------------------------------------------------------------------- recipe overrides

BASES: list[dict[str, Any] | None] = [
    None,  # the shipped quickstart recipe
    {},  # every default
    {"name": "two", "train": {"stages": [{"name": "head", "unfreeze": "none"}, {"name": "all", "learning_rate": 1e-4}]}},
]

FINITE = {"allow_nan": False, "allow_infinity": False}
VALID = {
    "train.batch_size": st.integers(1, 10**6),
    "train.stages.0.epochs": st.integers(1, 10**4),
    "train.stages.0.learning_rate": st.floats(1e-12, 1e3, **FINITE),
    "train.stages.0.momentum": st.floats(0.0, 1.0, exclude_max=True, **FINITE),
    "train.label_smoothing": st.floats(0.0, 1.0, exclude_max=True, **FINITE),
    "model.input_size": st.integers(1, 4096),
    "model.head.dropout": st.floats(0.0, 1.0, exclude_max=True, **FINITE),
    "data.val_fraction": st.floats(0.0, 1.0, exclude_max=True, **FINITE),
    "seed": st.integers(-(2**31), 2**31),
    "name": st.text(max_size=30),
}

NOT_A_NUMBER = st.one_of(
    st.text(max_size=20).filter(lambda s: not _numeric(s) and s != "auto"),  # auto: a valid size and epoch count
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FRACTIONAL = st.floats(0.01, 1e6, **FINITE).filter(lambda v: v != int(v))
INVALID = {
    "train.batch_size": st.one_of(st.integers(max_value=0), FRACTIONAL, st.none(), NOT_A_NUMBER),
    "train.stages.0.epochs": st.one_of(st.integers(max_value=0), FRACTIONAL, st.none(), NOT_A_NUMBER),
    "model.input_size": st.one_of(st.integers(max_value=0), FRACTIONAL, NOT_A_NUMBER),  # None: the backbone's size
    "train.stages.0.learning_rate": st.one_of(
        st.floats(max_value=0.0, allow_nan=False), st.sampled_from([math.inf, -math.inf, math.nan]), st.none(), NOT_A_NUMBER
    ),
    "data.val_fraction": st.one_of(
        st.floats(max_value=0.0, exclude_max=True, allow_nan=False),
        st.floats(min_value=1.0, allow_nan=False),
        st.just(math.nan),
        st.none(),
        NOT_A_NUMBER,
    ),
    "train.label_smoothing": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.none(), NOT_A_NUMBER),
}


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node: Any = data
    *parents, last = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value


@FAST
@given(base=st.sampled_from(BASES), key_value=st.sampled_from(sorted(VALID)).flatmap(lambda k: st.tuples(st.just(k), VALID[k])))
def test_a_valid_override_sets_exactly_that_field_and_survives_yaml(base, key_value, tmp_path):
    key, value = key_value
    recipe = load_recipe(copy.deepcopy(base), {key: value})
    expected = load_recipe(copy.deepcopy(base)).to_dict()
    _set(expected, key, value)
    assert recipe.to_dict() == expected

    text = recipe.to_yaml()
    assert load_recipe(yaml.safe_load(text)) == recipe
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_recipe(path) == recipe  # what the run directory stores reruns as the same recipe


@FAST
@given(key_value=st.sampled_from(sorted(INVALID)).flatmap(lambda k: st.tuples(st.just(k), INVALID[k])))
@example(key_value=("train.stages.0.learning_rate", math.inf))
@example(key_value=("train.batch_size", "3 images"))
def test_an_invalid_override_is_one_line_naming_the_field(key_value):
    key, value = key_value
    with pytest.raises(TlkitError) as info:
        load_recipe({}, {key: value})
    message = str(info.value)
    assert "\n" not in message and f"'{key}'" in message


SCALARS = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@FAST
@given(value=SCALARS)
@example(value=1e-05)  # YAML 1.1 alone reads these as text
@example(value=-2.5e16)
def test_parse_override_reads_numbers_and_booleans_back(value):
    key, parsed = parse_override(f"train.x={value}")
    assert key == "train.x"
    assert type(parsed) is type(value) and parsed == value


@FAST
@given(text=st.text(max_size=20))
@example(text="1e-05")
def test_parse_override_keeps_quoted_text_as_text(text):
    """Quoting forces text, whatever it looks like: --set 'name="1e-05"'."""
    quoted = yaml.safe_dump(text, default_style='"', width=10**6).strip()
    _, parsed = parse_override(f"name={quoted}")
    assert parsed == text


# ----------------------------------------------------------------------------- conv output sizes

GEOMETRY = st.tuples(
    st.integers(1, 96),  # input side
    st.integers(1, 9),  # kernel
    st.integers(1, 5),  # stride
    st.one_of(st.integers(0, 4), st.sampled_from(["valid", "same"])),  # padding
    st.integers(1, 4),  # dilation
)


def _formula(size: int, kernel: int, stride: int, padding: Any, dilation: int) -> int:
    if padding == "same":
        return -(-size // stride)
    pad = 0 if padding == "valid" else padding
    return max(math.floor((size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride) + 1, 0)


@settings(max_examples=100, deadline=None)
@given(geometry=GEOMETRY)
def test_conv_output_size_is_the_textbook_formula(geometry):
    from tlkit.models.scratch import conv_output_size

    assert conv_output_size(*geometry) == _formula(*geometry)


@settings(max_examples=15, deadline=None)
@given(geometry=GEOMETRY.filter(lambda g: _formula(*g) >= 1 and (g[2] == 1 or g[4] == 1)))
def test_conv_output_size_matches_a_real_keras_conv(geometry):
    """ZeroPadding2D + 'valid' Conv2D (or 'same') on a tiny input: Keras' actual output side."""
    import keras

    from tlkit.models.scratch import conv_output_size

    size, kernel, stride, padding, dilation = geometry
    x = np.zeros((1, size, size, 1), np.float32)
    if isinstance(padding, int):
        x = keras.layers.ZeroPadding2D(padding)(x)
    conv = keras.layers.Conv2D(1, kernel, strides=stride, dilation_rate=dilation, padding="same" if padding == "same" else "valid")
    out = conv(x)
    assert tuple(out.shape[1:3]) == (conv_output_size(*geometry),) * 2


# ----------------------------------------------------------------------------- decoding any bytes

MAGIC = {
    "PNG": b"\x89PNG\r\n\x1a\n",
    "JPEG": b"\xff\xd8\xff",
    "GIF": b"GIF89a",
    "BMP": b"BM",
    "WebP": b"RIFF\x00\x10\x00\x00WEBPVP8X",
}


def _real(fmt: str, side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


REAL = {(fmt, side): _real(fmt, side, side) for fmt in ("PNG", "JPEG") for side in (5, 24)}

ARBITRARY = st.binary(max_size=1500)
WITH_HEADER = st.tuples(st.sampled_from(sorted(MAGIC)), st.binary(max_size=1500)).map(lambda t: MAGIC[t[0]] + t[1])
TRUNCATED = st.tuples(st.sampled_from(sorted(REAL)), st.floats(0.0, 1.0)).map(
    lambda t: REAL[t[0]][: int(len(REAL[t[0]]) * t[1])]
)
MUTATED = st.tuples(st.sampled_from(sorted(REAL)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)).map(
    lambda t: _mutate(REAL[t[0]], t[1])
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for where, byte in edits:
        out[where % len(out)] = byte
    return bytes(out)


_graph_decode = None


def _pipeline_decode(data: bytes) -> np.ndarray:
    """decode_image as the tf.data pipeline runs it: one traced graph."""
    global _graph_decode
    import tensorflow as tf

    from tlkit.data.decode import decode_image

    if _graph_decode is None:
        _graph_decode = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    return _graph_decode(tf.constant(data)).numpy()


@pytest.fixture(scope="module")
def scratch_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode") / "image.jpg"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(ARBITRARY, WITH_HEADER, TRUNCATED, MUTATED))
@example(data=b"")
@example(data=REAL[("PNG", 24)])
def test_any_bytes_decode_to_rgb_or_a_one_line_reason(data, scratch_file):
    import tensorflow as tf

    from tlkit.data.decode import check_image_bytes, decode_image_file

    reason = check_image_bytes(data)
    event("decodes" if reason is None else "refused")
    scratch_file.write_bytes(data)
    if reason is None:  # the pre-training scan said yes: every decode path gives the same RGB image
        image = np.asarray(decode_image_file(scratch_file))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 1
        np.testing.assert_array_equal(_pipeline_decode(data), image)
        return
    assert isinstance(reason, str) and reason and "\n" not in reason
    with pytest.raises(TlkitError) as info:
        decode_image_file(scratch_file)
    assert reason in str(info.value) and str(scratch_file) in str(info.value)
    with pytest.raises(tf.errors.InvalidArgumentError):  # the scan keeps it out of the pipeline, where it would fail
        _pipeline_decode(data)


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(sorted(REAL)), keep=st.floats(0.0, 0.5))
def test_a_real_image_cut_in_the_first_half_is_reported_as_that_format(key, keep):
    from tlkit.data.decode import check_image_bytes

    data = REAL[key][: int(len(REAL[key]) * keep)]
    reason = check_image_bytes(data)
    assert reason is not None
    if len(data) >= len(MAGIC[key[0]]):
        assert key[0] in reason, reason
