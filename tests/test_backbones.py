"""Backbone registry: every entry builds, its skip layers sit at the strides it claims, errors are one clear line.

The shared harness (`HARNESS`) is parametrized from the registry itself, so an entry
registered tomorrow is checked by every harness test without editing this file;
`KNOWN` only pins published numbers (channels, output sides) of entries we know.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path

import keras
import numpy as np
import pytest

from tlkit.errors import TlkitError
from tlkit.models.backbones import (
    REGISTRY,
    BackboneSpec,
    build_backbone,
    can_feed_decoder,
    count_params,
    get_backbone,
    is_pretrained,
    keras_models_dir,
    list_backbones,
    register_backbone,
    resolve_weights,
    skip_layer_outputs,
    skip_refs,
    validate_model,
)
from tlkit.models.preprocess import MODES, Preprocess

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOBILENET_025 = SHARED_DATA / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
TLKIT = Path(__file__).resolve().parents[1] / "tlkit"

_BUILT: dict[str, keras.Model] = {}


def _test_size(spec: BackboneSpec) -> int:
    return max(64, spec.min_size)


def _built(name: str) -> keras.Model:
    """Each backbone is built once per session: building all of them is most of this file's time."""
    if name not in _BUILT:
        _BUILT[name] = build_backbone(name, _test_size(get_backbone(name)), "none")
    return _BUILT[name]


# ----------------------------------------------------------------------------- the shared harness


def harness_names() -> list[str]:
    """What the harness runs on: every registered entry, read from the registry (no list in this file)."""
    return [spec.name for spec in list_backbones()]


HARNESS = pytest.mark.parametrize("name", harness_names())


@HARNESS
def test_entry_is_well_formed(name):
    spec = get_backbone(name)
    assert spec.name == spec.name.lower() and get_backbone(spec.name.upper()) is spec
    assert spec.preprocess in MODES
    assert 0 < spec.min_size <= spec.default_size
    assert spec.default_weights in ("imagenet", "none") and (spec.pretrained or spec.default_weights == "none")
    assert resolve_weights(name, None) == spec.default_weights
    assert is_pretrained(name, None) == (spec.default_weights == "imagenet")
    assert not is_pretrained(name, "none")
    strides = [skip.stride for skip in skip_refs(spec)]
    assert all(s > 0 for s in strides) and strides == sorted(set(strides))
    reason = can_feed_decoder(spec)
    assert (reason is None) == bool(strides)
    assert reason is None or (reason and "\n" not in reason)


@HARNESS
def test_entry_builds_a_4d_feature_map(name):
    spec = get_backbone(name)
    size = _test_size(spec)
    model = _built(name)
    assert model.name == "backbone"
    shape = tuple(model.output.shape)
    assert len(shape) == 4 and shape[0] is None and shape[-1] > 0 and shape[1] == shape[2] and shape[1] > 0
    features = model(np.zeros((1, size, size, 3), "float32"), training=False)
    assert tuple(features.shape) == (1, *shape[1:])
    # what `tlkit backbones` prints without building (a conv net's count does not depend on the input size)
    assert spec.params is None or model.count_params() == spec.params


@HARNESS
def test_entry_skips_resolve_at_their_strides(name):
    """Asked from the entry (skip_refs / skip_layer_outputs), never read off its fields."""
    spec = get_backbone(name)
    size = _test_size(spec)
    model = _built(name)
    refs = skip_refs(spec)
    skips = skip_layer_outputs(model, spec)
    assert len(skips) == len(refs)
    for tensor, (ref, stride) in zip(skips, refs):
        assert len(tensor.shape) == 4 and tensor.shape[-1] > 0, ref
        h, w = tensor.shape[1:3]
        assert h == w
        if spec.aligned:
            assert h == size // stride, (name, ref, stride, h)
        else:  # 'valid' convolutions: a few pixels under input/stride
            assert size / stride - 4 <= h <= math.ceil(size / stride), (name, ref, stride, h)
    sides = [t.shape[1] for t in skips]
    assert sides == sorted(sides, reverse=True) and (not sides or sides[-1] > model.output.shape[1])


@HARNESS
def test_entry_too_small_input_fails_in_one_line(name):
    spec = get_backbone(name)
    with pytest.raises(TlkitError) as err:
        build_backbone(name, spec.min_size - 1, "none")
    text = str(err.value)
    assert "\n" not in text and "model.input_size" in text, text


@HARNESS
def test_entry_unknown_option_names_what_it_takes(name):
    spec = get_backbone(name)
    with pytest.raises(TlkitError) as err:
        validate_model(name, _test_size(spec), {"no_such_option": 1}, "none")
    text = str(err.value)
    assert "\n" not in text and f"'no_such_option' is not available for {spec.name}; it takes: " in text
    takes = text.split("it takes: ", 1)[1]
    assert all(option in takes for option in spec.options) and (spec.options or takes.startswith("(none)"))
    if spec.configured_by != "model.options":
        assert f"configured by {spec.configured_by}" in text


def _tiny_build(spec, input_size, weights, options, blocks):
    """A three-conv toy: stride 2, 4, then 8 at the output."""
    width = int(options.get("width", 4))
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="tiny_c1")(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="tiny_c2")(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", name="tiny_out")(x)
    return keras.Model(inputs, x, name="tiny")  # build_backbone renames it


HARNESS_TESTS = (
    test_entry_is_well_formed,
    test_entry_builds_a_4d_feature_map,
    test_entry_skips_resolve_at_their_strides,
    test_entry_too_small_input_fails_in_one_line,
    test_entry_unknown_option_names_what_it_takes,
)


def test_a_registered_toy_backbone_joins_the_harness():
    spec = BackboneSpec(
        "tiny_test_net", None, "unit", 32, 16, ("tiny_c1", "tiny_c2"),
        options=("width",), skip_strides=(2, 4), default_weights="none", pretrained=False, build=_tiny_build,
    )
    assert "tiny_test_net" not in harness_names()
    try:
        register_backbone(spec)
        assert get_backbone("Tiny-Test-Net") is spec
        assert harness_names()[-1] == "tiny_test_net"  # what HARNESS is computed from at collection
        for test in HARNESS_TESTS:
            test("tiny_test_net")
        assert tuple(_built("tiny_test_net").output.shape) == (None, 8, 8, 8)
        assert build_backbone(spec, 32, None, {"width": 2}).output.shape[-1] == 4
        with pytest.raises(TlkitError, match="backbone 'tiny_test_net' has no pretrained weights"):
            validate_model(spec, 32, {}, "imagenet")
    finally:
        REGISTRY.pop("tiny_test_net", None)
        _BUILT.pop("tiny_test_net", None)
    assert "tiny_test_net" not in harness_names()


def test_no_tlkit_code_dispatches_on_a_backbone_name():
    """What differs per backbone is a hook or a field of its entry: no `== "scratch"` anywhere in tlkit."""
    names = "|".join(re.escape(spec.name) for spec in list_backbones())
    quoted = rf"""['"]({names})['"]"""
    pattern = re.compile(rf"""(==|!=)\s*{quoted}|{quoted}\s*(==|!=)|\bin\s*[(\[{{][^)\]}}]*{quoted}""")
    hits = [
        f"{path.relative_to(TLKIT.parent)}:{n}: {line.strip()}"
        for path in sorted(TLKIT.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


# ----------------------------------------------------------------------------- known values of known entries

# channels and side of the output at the test size max(64, min_size) with default options:
# 64 -> 2x2; Xception at 71 -> 3x3; InceptionV3 at 75 -> 1x1; scratch (three 2x pools) 64 -> 8x8
KNOWN = {
    "scratch": (128, 8),
    "mobilenet": (1024, 2),
    "mobilenet_v2": (1280, 2),
    "mobilenet_v3_small": (576, 2),
    "mobilenet_v3_large": (960, 2),
    "efficientnet_b0": (1280, 2),
    "efficientnet_b1": (1280, 2),
    "efficientnet_b2": (1408, 2),
    "efficientnet_b3": (1536, 2),
    "efficientnet_v2_b0": (1280, 2),
    "efficientnet_v2_b1": (1280, 2),
    "resnet50": (2048, 2),
    "resnet50_v2": (2048, 2),
    "convnext_tiny": (768, 2),
    "densenet121": (1024, 2),
    "xception": (2048, 3),
    "inception_v3": (2048, 1),
}


def test_registry_has_the_promised_backbones():
    assert set(KNOWN) <= set(harness_names())
    assert get_backbone("xception").default_size == 299 and get_backbone("efficientnet_b3").default_size == 300
    for spec in list_backbones():  # the fixed-layer entries keep to the decoder convention
        if spec.skip_layers:
            assert set(spec.skip_strides) <= {2, 4, 8, 16}
    assert [s.stride for s in skip_refs("scratch")] == [1, 2, 4]  # the default blocks pool by 2 three times


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_output_shapes(name):
    channels, side = KNOWN[name]
    assert tuple(_built(name).output.shape) == (None, side, side, channels)


def test_weights_default_and_pretrained_policy(tmp_path):
    assert resolve_weights("mobilenet", None) == "imagenet" and resolve_weights("scratch", None) == "none"
    assert resolve_weights("MobileNet", "ImageNet") == "imagenet" and resolve_weights("resnet50", "NONE") == "none"
    assert resolve_weights("resnet50", tmp_path / "w.h5") == str(tmp_path / "w.h5")
    assert is_pretrained("mobilenet", None) and is_pretrained("mobilenet", "imagenet") and is_pretrained("resnet50", "w.h5")
    assert not is_pretrained("mobilenet", "none") and not is_pretrained("scratch", None)
    assert not is_pretrained("scratch", "w.h5")  # a file the stack saved: its BatchNorm still learns
    assert can_feed_decoder("inception_v3") is None  # two skips are enough for the decoders (they resize)


def test_aliases_and_case_insensitive_lookup():
    for alias, name in [
        ("MobileNetV2", "mobilenet_v2"),
        ("EfficientNetB0", "efficientnet_b0"),
        ("ResNet50", "resnet50"),
        ("resnet-50-v2", "resnet50_v2"),
        ("EfficientNetV2B1", "efficientnet_v2_b1"),
        ("ConvNeXtTiny", "convnext_tiny"),
        ("MobileNetV3Small", "mobilenet_v3_small"),
        ("mobilenet_v1", "mobilenet"),
    ]:
        assert get_backbone(alias).name == name


def test_unknown_name_names_the_closest_match_and_the_list():
    with pytest.raises(TlkitError) as err:
        get_backbone("mobilnet_v2")
    text = str(err.value)
    assert "'mobilnet_v2'" in text and "Did you mean 'mobilenet_v2'?" in text and "efficientnet_b0" in text


def test_option_not_available():
    with pytest.raises(TlkitError, match=r"option 'alpha' is not available for resnet50; it takes: \(none\)"):
        build_backbone("resnet50", 64, "none", {"alpha": 0.5})
    with pytest.raises(TlkitError, match=r"it takes: alpha, depth_multiplier"):
        validate_model("mobilenet", 64, {"alpah": 0.5}, "none")


def test_input_too_small():
    with pytest.raises(TlkitError, match=r"^mobilenet needs input_size >= 32, got 16"):
        build_backbone("mobilenet", 16, "none")
    with pytest.raises(TlkitError, match=r"xception needs input_size >= 71, got 64"):
        build_backbone("xception", 64, "none")


def test_options_reach_the_constructor():
    small = build_backbone("mobilenet", 64, "none", {"alpha": 0.25})
    assert small.output.shape[-1] == 256
    minimal = build_backbone("mobilenet_v3_small", 64, "none", {"minimalistic": True, "alpha": 0.75})
    spec = get_backbone("mobilenet_v3_small")
    assert [t.shape[1] for t in skip_layer_outputs(minimal, spec)] == [32, 16, 8, 4]


def test_constructor_value_errors_become_tlkit_errors():
    with pytest.raises(TlkitError, match=r"cannot build mobilenet .*alpha can be one of"):
        build_backbone("mobilenet", 128, "imagenet", {"alpha": 0.3})


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(TlkitError, match="nope.h5' not found"):
        build_backbone("mobilenet", 64, str(missing))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # from Keras' own saving code
def test_wrong_weights_file_names_file_and_setup(tmp_path):
    saved = tmp_path / "scratch.weights.h5"
    build_backbone("scratch", 32, "none").save_weights(saved)
    with pytest.raises(TlkitError) as err:
        build_backbone("mobilenet", 64, str(saved), {"alpha": 0.25})
    text = str(err.value)
    assert str(saved) in text and "mobilenet" in text and "input_size 64" in text and "alpha" in text
    assert "\n" not in text
    if MOBILENET_025.is_file():  # the real alpha-0.25 file does not fit the default alpha 1.0
        with pytest.raises(TlkitError, match=r"mobilenet_2_5_224_tf_no_top.h5' into mobilenet \(options \{\}, input_size 128\).*[Ss]hape"):
            build_backbone("mobilenet", 128, str(MOBILENET_025))


def test_imagenet_offline_fails_fast_naming_the_file(monkeypatch):
    if (keras_models_dir() / "mobilenet_2_5_128_tf_no_top.h5").exists():
        pytest.skip("the ImageNet file is cached in ~/.keras/models, so nothing is downloaded")

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in this test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    import time

    start = time.monotonic()
    with pytest.raises(TlkitError) as err:
        build_backbone("mobilenet", 128, "imagenet", {"alpha": 0.25})
    assert time.monotonic() - start < 30
    text = str(err.value)
    assert "mobilenet_2_5_128_tf_no_top.h5" in text
    assert "model.weights: PATH" in text and ".keras" in text and "\n" not in text
    assert socket.getdefaulttimeout() is None  # the download timeout does not leak


def test_count_params_is_cached():
    assert count_params("mobilenet") == 3_228_864
    assert count_params.cache_info().hits >= 0
    count_params("mobilenet")
    assert count_params.cache_info().hits >= 1


def test_real_mobilenet_weights_load_at_128():
    if not MOBILENET_025.is_file():
        pytest.skip(f"needs {MOBILENET_025} (the real-data folder beside the repository); absent here")
    import h5py

    model = build_backbone("mobilenet", 128, str(MOBILENET_025), {"alpha": 0.25})
    assert tuple(model.output.shape) == (None, 4, 4, 256)
    with h5py.File(MOBILENET_025, "r") as f:
        kernel = np.asarray(f["conv1"]["conv1"]["kernel:0"])
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), kernel)
    assert np.abs(model.get_layer("conv1_bn").moving_mean.numpy()).max() > 0  # fresh BN has zero means
    fresh = build_backbone("mobilenet", 128, "none", {"alpha": 0.25})
    assert not np.allclose(fresh.get_layer("conv1").kernel.numpy(), kernel)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    images[1] = np.flip(images[1] * 0.5, axis=0)
    x = Preprocess("tf")(images)
    pooled = keras.ops.convert_to_numpy(keras.ops.mean(model(x, training=False), axis=(1, 2)))
    assert np.isfinite(pooled).all()
    assert not np.allclose(pooled[0], pooled[1], atol=1e-3)


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("tf", lambda x: keras.applications.mobilenet.preprocess_input(x)),
        ("tf", lambda x: keras.applications.resnet_v2.preprocess_input(x)),
        ("torch", lambda x: keras.applications.densenet.preprocess_input(x)),
        ("caffe", lambda x: keras.applications.resnet50.preprocess_input(x)),
        ("none", lambda x: keras.applications.efficientnet.preprocess_input(x)),
        ("none", lambda x: keras.applications.convnext.preprocess_input(x)),
        ("unit", lambda x: x / 255.0),
    ],
)
def test_preprocess_matches_keras_applications(mode, reference):
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.asarray(reference(images.copy()))
    got = keras.ops.convert_to_numpy(Preprocess(mode)(images))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_preprocess_modes_of_the_registry_match_their_families():
    for name in ("efficientnet_b0", "efficientnet_v2_b0", "mobilenet_v3_small", "convnext_tiny"):
        assert get_backbone(name).preprocess == "none"
    assert get_backbone("resnet50").preprocess == "caffe" and get_backbone("densenet121").preprocess == "torch"
    assert get_backbone("scratch").preprocess == "unit"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from Keras' own saving code
def test_preprocess_survives_save_and_load(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, Preprocess("caffe", name="preprocess")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.get_layer("preprocess").get_config()["mode"] == "caffe"
    x = np.full((1, 4, 4, 3), 200.0, "float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        Preprocess("bogus")
