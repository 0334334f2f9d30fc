"""The backbone registry: one entry per backbone, as timm and segmentation_models do.

An entry says how to build the network, how it wants its pixels, its default
and smallest input, the constructor options a recipe may set, and the layers a
segmentation decoder takes skip connections from. Adding a backbone is one
`register_backbone(BackboneSpec(...))` call.

Skip-layer convention
---------------------
`skip_layers[i]` is the feature map at stride `skip_strides[i]`; strides are
increasing and a subset of (2, 4, 8, 16) (the backbone output is stride 32).
A stride is left out when the backbone has no stably-named layer there
(ConvNeXt's patchify stem starts at stride 4; InceptionV3's stem layers get
session-dependent generated names). Each entry names a layer whose *output* is
the feature, except `"NAME:input"`, which means that layer's *input* (ConvNeXt:
stage outputs are unnamed residual adds, so we take the input of the next
downsampling block). Resolve them with `skip_layer_outputs(backbone, spec)`.
Each is the last layer at that resolution before the next downsampling,
preferring activation outputs; MobileNetV3's activations have generated names,
so its entries are the BatchNorm just before them. With `aligned=True` and an
input that is a multiple of 32, a stride-s skip is exactly input/s pixels;
Xception and InceptionV3 use 'valid' convolutions, so theirs are a few pixels
smaller (`aligned=False`) and a decoder must resize or crop.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras

from tlkit.errors import TlkitError

A = keras.applications

WEIGHT_KEYWORDS = ("imagenet", "none")
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: a dead network fails instead of hanging


@dataclass(frozen=True)
class BackboneSpec:
    """What tlkit needs to know about a backbone (see the module docstring for skip layers)."""

    name: str  # registry key, lowercase: "mobilenet", "mobilenet_v2", "efficientnet_b0", ...
    constructor: Callable[..., keras.Model]  # e.g. keras.applications.MobileNet
    preprocess: str  # a tlkit.models.preprocess.Preprocess mode
    default_size: int
    min_size: int  # smallest input the architecture accepts
    skip_layers: tuple[str, ...]  # features at skip_strides, shallow first
    options: tuple[str, ...] = ()  # constructor options a recipe may set (model.options)
    skip_strides: tuple[int, ...] = (2, 4, 8, 16)
    fixed: tuple[tuple[str, Any], ...] = ()  # constructor arguments tlkit always sets
    aliases: tuple[str, ...] = ()  # extra lookup names (lookups also ignore case, '_' and '-')
    aligned: bool = True  # skips are exactly input/stride for inputs that are multiples of 32

    def __post_init__(self) -> None:
        if len(self.skip_layers) != len(self.skip_strides):
            raise ValueError(f"{self.name}: skip_layers and skip_strides must have the same length")

    @property
    def can_feed_decoder(self) -> bool:
        """True when a U-Net decoder can take all four skips (strides 2..16) without resizing."""
        return self.aligned and self.skip_strides == (2, 4, 8, 16)


REGISTRY: dict[str, BackboneSpec] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add (or replace) a registry entry; returns it so it can be used as a decorator-free one-liner."""
    REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone, in registration order."""
    return list(REGISTRY.values())


def get_backbone(name: "str | BackboneSpec") -> BackboneSpec:
    """Lookup ignoring case, '_' and '-': 'MobileNetV2' and 'EfficientNetB0' find their entries."""
    if isinstance(name, BackboneSpec):
        return name
    keys: dict[str, BackboneSpec] = {}
    for spec in REGISTRY.values():
        for alias in (spec.name, *spec.aliases):
            keys.setdefault(_key(alias), spec)
    spec = keys.get(_key(str(name)))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(_key(str(name)), list(keys), n=1, cutoff=0.4)
    hint = f" Did you mean '{keys[close[0]].name}'?" if close else ""
    raise TlkitError(f"unknown backbone '{name}'.{hint} Available: {', '.join(REGISTRY)}")


# ----------------------------------------------------------------------------- entries


def _scratch_constructor(**_: Any) -> keras.Model:
    raise TypeError("the scratch stack is built by build_backbone('scratch', ..., blocks=...)")


_PRE = (("include_preprocessing", True),)
_EFFICIENTNET_SKIPS = (
    "block2a_expand_activation",
    "block3a_expand_activation",
    "block4a_expand_activation",
    "block6a_expand_activation",
)

for _spec in (
    # built from model.blocks: its skips depend on them (tlkit.models.scratch.scratch_skip_layers)
    BackboneSpec("scratch", _scratch_constructor, "unit", 64, 8, (), skip_strides=()),
    BackboneSpec(
        "mobilenet", A.MobileNet, "tf", 224, 32,
        ("conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu"),
        ("alpha", "depth_multiplier"),
        aliases=("mobilenet_v1",),
    ),
    BackboneSpec(
        "mobilenet_v2", A.MobileNetV2, "tf", 224, 32,
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"),
        ("alpha",),
    ),
    BackboneSpec(
        "mobilenet_v3_small", A.MobileNetV3Small, "none", 224, 32,
        ("conv_bn", "expanded_conv_1_expand_bn", "expanded_conv_3_expand_bn", "expanded_conv_8_expand_bn"),
        ("alpha", "minimalistic"),
        fixed=_PRE,
    ),
    BackboneSpec(
        "mobilenet_v3_large", A.MobileNetV3Large, "none", 224, 32,
        ("expanded_conv_1_expand_bn", "expanded_conv_3_expand_bn", "expanded_conv_6_expand_bn", "expanded_conv_12_expand_bn"),
        ("alpha", "minimalistic"),
        fixed=_PRE,
    ),
    # EfficientNet (v1) always includes its Rescaling + Normalization layers
    BackboneSpec("efficientnet_b0", A.EfficientNetB0, "none", 224, 32, _EFFICIENTNET_SKIPS),
    BackboneSpec("efficientnet_b1", A.EfficientNetB1, "none", 240, 32, _EFFICIENTNET_SKIPS),
    BackboneSpec("efficientnet_b2", A.EfficientNetB2, "none", 260, 32, _EFFICIENTNET_SKIPS),
    BackboneSpec("efficientnet_b3", A.EfficientNetB3, "none", 300, 32, _EFFICIENTNET_SKIPS),
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
    # ResNetV2 downsamples in the last block of a stage: take that block's pre-activation
    BackboneSpec(
        "resnet50_v2", A.ResNet50V2, "tf", 224, 32,
        ("conv1_conv", "conv2_block3_preact_relu", "conv3_block4_preact_relu", "conv4_block6_preact_relu"),
    ),
    BackboneSpec(
        "convnext_tiny", A.ConvNeXtTiny, "none", 224, 32,
        (
            "convnext_tiny_downsampling_block_0:input",
            "convnext_tiny_downsampling_block_1:input",
            "convnext_tiny_downsampling_block_2:input",
        ),
        skip_strides=(4, 8, 16),
        fixed=_PRE,
    ),
    BackboneSpec(
        "densenet121", A.DenseNet121, "torch", 224, 32,
        ("conv1_relu", "pool2_relu", "pool3_relu", "pool4_relu"),
    ),
    BackboneSpec(
        "xception", A.Xception, "tf", 299, 71,
        ("block2_sepconv2_act", "block3_sepconv2_act", "block4_sepconv2_act", "block13_sepconv2_act"),
        aligned=False,
    ),
    BackboneSpec(
        "inception_v3", A.InceptionV3, "tf", 299, 75, ("mixed2", "mixed7"),
        skip_strides=(8, 16),
        aligned=False,
    ),
):
    register_backbone(_spec)


# ----------------------------------------------------------------------------- building


def _weights_kind(weights: "str | os.PathLike[str] | None") -> str:
    """'none', 'imagenet' or 'path' (keywords are case-insensitive; Python None means 'none')."""
    if weights is None:
        return "none"
    text = str(weights)
    return text.lower() if text.lower() in WEIGHT_KEYWORDS else "path"


def validate_model(
    backbone: "str | BackboneSpec",
    input_size: int,
    options: Mapping[str, Any] | None,
    weights: "str | os.PathLike[str] | None",
) -> BackboneSpec:
    """Every check that needs no building, so a bad recipe fails before any data is read."""
    spec = get_backbone(backbone)
    unknown = [key for key in (options or {}) if key not in spec.options]
    if unknown:
        takes = ", ".join(spec.options) or "(none)"
        if spec.name == "scratch":
            takes += "; the scratch stack is configured by model.blocks"
        names = ", ".join(f"'{u}'" for u in unknown)
        verb = "is" if len(unknown) == 1 else "are"
        raise TlkitError(
            f"option{'s' if len(unknown) > 1 else ''} {names} {verb} not available for {spec.name}; it takes: {takes}"
        )
    if input_size < spec.min_size:
        raise TlkitError(f"{spec.name} needs input_size >= {spec.min_size}, got {input_size} (set model.input_size)")
    kind = _weights_kind(weights)
    if kind == "path":
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise TlkitError(
                f"weights file '{weights}' not found: model.weights takes 'imagenet', 'none' or the path of a "
                ".h5 / .weights.h5 file"
            )
    if spec.name == "scratch" and kind == "imagenet":
        raise TlkitError("backbone 'scratch' has no pretrained weights: set model.weights: none (or a file it saved)")
    return spec


def build_backbone(
    spec_or_name: "BackboneSpec | str",
    input_size: int,
    weights: "str | os.PathLike[str] | None" = "none",
    options: Mapping[str, Any] | None = None,
    *,
    blocks: Sequence[Any] | None = None,
) -> keras.Model:
    """A feature extractor named 'backbone': (N, s, s, 3) images -> stride-32 feature map.

    `weights`: 'none' (random init), 'imagenet' (Keras download, or its cache in
    ~/.keras/models/) or a weights file path. `blocks` is only used by 'scratch'
    (default: the recipe's default blocks). Every user mistake is a TlkitError.
    """
    options = dict(options or {})
    spec = validate_model(spec_or_name, input_size, options, weights)
    kind = _weights_kind(weights)
    if spec.name == "scratch":
        return _build_scratch_backbone(spec, input_size, weights, blocks)
    kwargs: dict[str, Any] = dict(spec.fixed)
    kwargs.update(options)
    weights_arg = None if kind == "none" else "imagenet" if kind == "imagenet" else str(Path(str(weights)).expanduser())
    previous_timeout = socket.getdefaulttimeout()
    if kind == "imagenet" and previous_timeout is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # No `name=`: EfficientNetV2 looks its block layout up by that name and breaks on any other.
        inner = spec.constructor(
            include_top=False,
            weights=weights_arg,
            input_shape=(input_size, input_size, 3),
            pooling=None,
            **kwargs,
        )
    except Exception as exc:
        raise _build_error(exc, spec, kind, weights, input_size, options) from None
    finally:
        if kind == "imagenet" and previous_timeout is None:
            socket.setdefaulttimeout(previous_timeout)
    # A functional wrapper over the same layers gives every backbone the same name.
    return keras.Model(inner.input, inner.output, name="backbone")


def _build_scratch_backbone(
    spec: BackboneSpec, input_size: int, weights: "str | os.PathLike[str] | None", blocks: Sequence[Any] | None
) -> keras.Model:
    from tlkit.models.scratch import build_scratch

    if blocks is None:
        blocks = default_scratch_blocks()
    model = build_scratch(blocks, input_size, name="backbone")
    if _weights_kind(weights) == "path":
        try:
            model.load_weights(str(Path(str(weights)).expanduser()))
        except Exception as exc:
            raise _build_error(exc, spec, "path", weights, input_size, {"blocks": len(blocks)}) from None
    return model


def default_scratch_blocks() -> list[Any]:
    """The recipe's default scratch blocks (used when none are given)."""
    from tlkit.recipe import Model

    return list(Model().blocks)


def keras_models_dir() -> Path:
    """Where Keras caches downloaded application weights (KERAS_HOME, else ~/.keras, then models/)."""
    base = os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return Path(base).expanduser() / "models"


_URL = re.compile(r"(https?://[^\s:]+(?::\d+)?[^\s:]*)")


def _first_line(exc: Exception) -> str:
    """The error text on one line (Keras spreads some over several), bounded for a terminal."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _build_error(
    exc: Exception,
    spec: BackboneSpec,
    kind: str,
    weights: Any,
    input_size: int,
    options: Mapping[str, Any],
) -> TlkitError:
    """One clear line for what went wrong while building or loading weights."""
    text = str(exc)
    shown_options = dict(options) or "{}"
    offline = "URL fetch failure" in text or isinstance(exc, (TimeoutError, urllib.error.URLError))
    if kind == "imagenet" and offline:
        match = _URL.search(text)
        url = match.group(1) if match else ""
        filename = url.rsplit("/", 1)[-1] if url else "the ImageNet weights file"
        reason = text.rsplit(" -- ", 1)[-1].strip() if " -- " in text else _first_line(exc)
        source = f" from {url}" if url else ""
        return TlkitError(
            f"could not download the ImageNet weights of {spec.name}: {filename}{source} ({reason}). "
            f"Download it on a machine with network and set `model.weights: PATH` "
            f"(or put it in {keras_models_dir()}/), or use `model.weights: none`"
        )
    if kind == "path":
        return TlkitError(
            f"cannot load weights file '{weights}' into {spec.name} (options {shown_options}, input_size {input_size}): "
            f"{_first_line(exc)} -- check that model.backbone and model.options (e.g. alpha) match the file"
        )
    return TlkitError(
        f"cannot build {spec.name} (options {shown_options}, input_size {input_size}, weights {kind}): {_first_line(exc)}"
    )


# ----------------------------------------------------------------------------- features


def skip_layer_outputs(
    backbone: keras.Model, spec: "BackboneSpec | str", blocks: Sequence[Any] | None = None
) -> list[Any]:
    """The symbolic tensors a decoder takes skips from, shallow first (strides: spec.skip_strides).

    For 'scratch' the skips come from its blocks (`scratch_skip_layers`), default blocks if None.
    """
    spec = get_backbone(spec)
    refs: Sequence[str] = spec.skip_layers
    if spec.name == "scratch":
        from tlkit.models.scratch import scratch_skip_layers

        refs = scratch_skip_layers(blocks if blocks is not None else default_scratch_blocks())
    out = []
    for ref in refs:
        name, _, port = ref.partition(":")
        layer = backbone.get_layer(name)
        out.append(layer.input if port == "input" else layer.output)
    return out


@functools.cache
def count_params(name: str) -> int:
    """Parameters of the backbone at its default size with random weights (cached: the CLI lists them)."""
    spec = get_backbone(name)
    return int(build_backbone(spec, spec.default_size, "none").count_params())
