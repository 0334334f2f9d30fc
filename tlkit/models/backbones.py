"""The backbone registry: one entry per backbone, as timm and segmentation_models do.

An entry says how to build the network, how it wants its pixels, its default
and smallest input, the options a recipe may pass to its constructor, and the
layers a segmentation decoder takes skip connections from. Adding a backbone
is adding one `register_backbone(...)` call.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import keras

from tlkit.errors import TlkitError

A = keras.applications


@dataclass(frozen=True)
class BackboneSpec:
    """What tlkit needs to know about a backbone.

    `skip_layers` feed a U-Net decoder: the outputs at strides 2, 4, 8, 16 (in
    that order; the backbone's own output is stride 32). A string is a layer
    name; an int is a layer index, used where Keras generates the names
    (MobileNetV3) and so they are not stable. Backbones whose valid-padded
    stems give odd sizes (Xception, InceptionV3) register none and cannot feed
    a decoder.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: str
    default_size: int = 224
    min_size: int = 32
    skip_layers: tuple["str | int", ...] = ()
    options: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()  # constructor arguments tlkit always sets

    @property
    def can_feed_decoder(self) -> bool:
        return len(self.skip_layers) == 4


REGISTRY: dict[str, BackboneSpec] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    return list(REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    """Case- and underscore-insensitive lookup: 'MobileNetV2' finds 'mobilenet_v2'."""
    by_key = {_key(n): spec for n, spec in REGISTRY.items()}
    spec = by_key.get(_key(name))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name.lower(), list(REGISTRY), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise TlkitError(f"unknown backbone '{name}'.{hint} Available: {', '.join(REGISTRY)}")


def _scratch_constructor(**_: Any) -> keras.Model:  # built by tlkit.models.scratch instead
    raise NotImplementedError


_MOBILENET_V3 = ("alpha", "minimalistic", "dropout_rate")
_PRE = (("include_preprocessing", True),)
for _spec in (
    BackboneSpec("scratch", _scratch_constructor, "unit", 64, 8),
    BackboneSpec(
        "mobilenet", A.MobileNet, "tf", 224, 32,
        ("conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu"),
        ("alpha", "depth_multiplier", "dropout"),
    ),
    BackboneSpec(
        "mobilenet_v2", A.MobileNetV2, "tf", 224, 32,
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"),
        ("alpha",),
    ),
    BackboneSpec("mobilenet_v3_small", A.MobileNetV3Small, "none", 224, 32, (4, 19, 37, 111), _MOBILENET_V3, _PRE),
    BackboneSpec("mobilenet_v3_large", A.MobileNetV3Large, "none", 224, 32, (13, 31, 76, 141), _MOBILENET_V3, _PRE),
    *(
        BackboneSpec(
            f"efficientnet_b{i}", getattr(A, f"EfficientNetB{i}"), "none", size, 32,
            ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation", "block6a_expand_activation"),
        )
        for i, size in enumerate((224, 240, 260, 300))
    ),
    BackboneSpec(
        "efficientnet_v2_b0", A.EfficientNetV2B0, "none", 224, 32,
        ("block1a_project_activation", "block2b_add", "block4a_expand_activation", "block6a_expand_activation"),
        fixed=_PRE,
    ),
    BackboneSpec(
        "efficientnet_v2_b1", A.EfficientNetV2B1, "none", 240, 32,
        ("block1b_add", "block2c_add", "block4a_expand_activation", "block6a_expand_activation"),
        fixed=_PRE,
    ),
    BackboneSpec(
        "resnet50", A.ResNet50, "caffe", 224, 32,
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
    ),
    BackboneSpec(
        "resnet50_v2", A.ResNet50V2, "tf", 224, 32,
        ("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu"),
    ),
    # ConvNeXt's patchify stem starts at stride 4: no stride-2 features, so no U-Net skips
    BackboneSpec("convnext_tiny", A.ConvNeXtTiny, "none", 224, 32, fixed=_PRE),
    BackboneSpec("densenet121", A.DenseNet121, "torch", 224, 32, ("conv1_relu", "pool2_conv", "pool3_conv", "pool4_conv")),
    BackboneSpec("xception", A.Xception, "tf", 299, 71),
    BackboneSpec("inception_v3", A.InceptionV3, "tf", 299, 75),
):
    register_backbone(_spec)


def validate_model(backbone: str, input_size: int, options: dict[str, Any], weights: str) -> BackboneSpec:
    """Every check that needs no building: fail before any data is read."""
    spec = get_backbone(backbone)
    if input_size < spec.min_size:
        raise TlkitError(f"{spec.name} needs model.input_size >= {spec.min_size}, got {input_size}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TlkitError(
            f"option(s) {', '.join(repr(u) for u in unknown)} not available for {spec.name}; "
            f"model.options it takes: {', '.join(spec.options) or '(none)'}"
        )
    if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
        raise TlkitError(f"weights file '{weights}' not found: give a path to a .h5 / .weights.h5 file, 'imagenet' or 'none'")
    if spec.name == "scratch" and weights not in ("none",):
        if weights == "imagenet":
            raise TlkitError("backbone 'scratch' has no pretrained weights: set model.weights: none")
    return spec


def build_backbone(
    spec_or_name: "BackboneSpec | str",
    input_size: int,
    weights: str = "none",
    options: dict[str, Any] | None = None,
    blocks: Sequence[Any] | None = None,
) -> keras.Model:
    """A feature extractor named 'backbone': image batch -> stride-32 feature map."""
    options = dict(options or {})
    spec = spec_or_name if isinstance(spec_or_name, BackboneSpec) else get_backbone(spec_or_name)
    validate_model(spec.name, input_size, options, weights)
    if spec.name == "scratch":
        from tlkit.models.scratch import build_scratch

        model = build_scratch(blocks or [], input_size)
        if weights != "none":
            _load_weights_file(model, weights, spec, input_size, options)
        return model
    kwargs = dict(spec.fixed)
    kwargs.update(options)
    try:
        inner = spec.constructor(
            include_top=False,
            weights=_weights_arg(weights),
            input_shape=(input_size, input_size, 3),
            **kwargs,
        )
    except Exception as exc:
        raise _weights_error(exc, spec, weights, input_size, options) from None
    # a fresh functional wrapper gives every backbone the same name, whatever its constructor allows
    return keras.Model(inner.inputs, inner.outputs, name="backbone")


def _weights_arg(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    return str(Path(weights).expanduser())


def _weights_error(exc: Exception, spec: BackboneSpec, weights: str, size: int, options: dict[str, Any]) -> TlkitError:
    text = str(exc)
    if "URL fetch failure" in text or "Downloading" in text or "urlopen" in text.lower():
        url = next((w for w in text.split() if w.startswith("http")), "")
        url = url.rstrip(":")
        filename = url.rsplit("/", 1)[-1] or "(unknown)"
        return TlkitError(
            f"could not download the ImageNet weights of {spec.name} ({filename} from {url}): no network. "
            f"Download that file on a machine with network and set model.weights: PATH "
            f"(or put it in ~/.keras/models/), or use model.weights: none"
        )
    if weights not in ("imagenet", "none"):
        return TlkitError(
            f"weights file '{weights}' does not fit {spec.name} with options {options or '{}'} at input {size}: "
            f"{text.splitlines()[0][:300]}"
        )
    return TlkitError(f"cannot build {spec.name} with options {options or '{}'} at input {size}: {text.splitlines()[0][:300]}")


def _load_weights_file(model: keras.Model, path: str, spec: BackboneSpec, size: int, options: dict[str, Any]) -> None:
    try:
        model.load_weights(str(Path(path).expanduser()))
    except Exception as exc:
        raise _weights_error(exc, spec, path, size, options) from None


def skip_layer_outputs(backbone: keras.Model, spec: BackboneSpec) -> list[Any]:
    """The tensors a decoder takes skips from, resolved by name or index."""
    return [
        (backbone.layers[ref] if isinstance(ref, int) else backbone.get_layer(ref)).output for ref in spec.skip_layers
    ]


@functools.cache
def count_params(name: str) -> int:
    """Parameters of the backbone at its default size (built with random weights)."""
    spec = get_backbone(name)
    if spec.name == "scratch":
        from tlkit.recipe import Model

        return build_backbone(spec, spec.default_size, "none", blocks=Model().blocks).count_params()
    return build_backbone(spec, spec.default_size, "none").count_params()
