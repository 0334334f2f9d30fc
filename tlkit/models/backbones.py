"""The backbone registry: one entry per backbone, as timm and segmentation_models do.

An entry says how to build the network, how it wants its pixels, its default
and smallest input, the constructor options a recipe may set, its default
weights and the layers a segmentation decoder takes skip connections from.
Adding a backbone is one `register_backbone(BackboneSpec(...))` call.

What differs between entries is data or a hook on the entry, never a test of
its name: `build` (how the nested "backbone" model is made), `skips` (its skip
layers and their strides), `check` (validation that needs no building), plus
`default_weights`, `pretrained`, `configured_by` and `no_skips_reason`. The
keras.applications entries share the defaults (`build_applications`,
`named_skips`, `check_min_size`); `scratch`, the from-scratch stack, brings its
own hooks from tlkit.models.scratch, all driven by `model.blocks`.

Generic code asks through the functions below, never reads a hook itself:
`validate_model`, `build_backbone`, `resolve_weights`, `is_pretrained`,
`skip_refs` / `skip_layer_outputs`, `can_feed_decoder`, `count_params`.

Skip-layer convention
---------------------
`skip_refs(spec, blocks)` gives `Skip(ref, stride)` pairs, shallow first, strides
increasing; for the keras.applications entries they are the `skip_layers` /
`skip_strides` fields, a subset of strides (2, 4, 8, 16) (the output is stride 32).
`scratch` computes them from its blocks (its fields are empty): the activation
before each downsampling, at stride 1, 2, 4 for the default blocks.
A stride is left out when the backbone has no stably-named layer there
(ConvNeXt's patchify stem starts at stride 4; InceptionV3's stem layers get
session-dependent generated names). Each ref names a layer whose *output* is
the feature, except `"NAME:input"`, which means that layer's *input* (ConvNeXt:
stage outputs are unnamed residual adds, so we take the input of the next
downsampling block). Resolve them with `skip_layer_outputs(backbone, spec, blocks)`.
Each is the last layer at that resolution before the next downsampling,
preferring activation outputs; MobileNetV3's activations have generated names,
so its entries are the BatchNorm just before them. With `aligned=True` and an
input that is a multiple of 32, a stride-s skip is exactly input/s pixels;
Xception and InceptionV3 use 'valid' convolutions, so theirs are a few pixels
smaller (`aligned=False`) and a decoder must resize or crop; `scratch` is
exact only when its blocks use 'same' convolutions and the input divides.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import socket
import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

from tlkit.errors import TlkitError
from tlkit.models import scratch

if TYPE_CHECKING:
    import keras


class _Applications:
    """`A.MobileNet` is a constructor that imports keras.applications only when called: listing entries needs no TensorFlow."""

    def __getattr__(self, name: str) -> Callable[..., "keras.Model"]:
        def construct(**kwargs: Any) -> "keras.Model":
            import keras

            return getattr(keras.applications, name)(**kwargs)

        construct.__name__ = construct.__qualname__ = name
        return construct


A = _Applications()

WEIGHT_KEYWORDS = ("imagenet", "none")
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: a dead network fails instead of hanging


class Skip(NamedTuple):
    """One skip connection: a layer reference ("NAME" or "NAME:input") and its stride."""

    ref: str
    stride: int


# ----------------------------------------------------------------------------- default hooks (keras.applications)


def build_applications(
    spec: "BackboneSpec", input_size: int, weights: str, options: Mapping[str, Any], blocks: Sequence[Any] | None
) -> keras.Model:
    """Builder of the keras.applications entries: `spec.constructor` without its top.

    `weights` is 'none', 'imagenet' or an expanded file path (build_backbone resolved it).
    """
    import keras

    kwargs: dict[str, Any] = dict(spec.fixed)
    kwargs.update(options)
    # No `name=`: EfficientNetV2 looks its block layout up by that name and breaks on any other.
    inner = spec.constructor(
        include_top=False,
        weights=None if weights == "none" else weights,
        input_shape=(input_size, input_size, 3),
        pooling=None,
        **kwargs,
    )
    # A functional wrapper over the same layers gives every backbone the same name.
    return keras.Model(inner.input, inner.output, name="backbone")


def named_skips(spec: "BackboneSpec", blocks: Sequence[Any] | None) -> tuple[Skip, ...]:
    """Skips of an entry with fixed layer names: its `skip_layers` at its `skip_strides`."""
    return tuple(Skip(ref, stride) for ref, stride in zip(spec.skip_layers, spec.skip_strides))


def check_min_size(
    spec: "BackboneSpec", input_size: int, options: Mapping[str, Any], weights: str, blocks: Sequence[Any] | None
) -> None:
    """Check of the fixed architectures: the input is at least the entry's `min_size`."""
    if input_size < spec.min_size:
        raise TlkitError(f"{spec.name} needs input_size >= {spec.min_size}, got {input_size} (set model.input_size)")


BuildFn = Callable[["BackboneSpec", int, str, Mapping[str, Any], "Sequence[Any] | None"], "keras.Model"]
SkipsFn = Callable[["BackboneSpec", "Sequence[Any] | None"], Sequence[tuple[str, int]]]
CheckFn = Callable[["BackboneSpec", int, Mapping[str, Any], str, "Sequence[Any] | None"], None]

_NO_SKIPS = "backbone '{name}' has no registered skip layers: it cannot feed a segmentation decoder"


@dataclass(frozen=True)
class BackboneSpec:
    """What tlkit needs to know about a backbone (see the module docstring for hooks and skip layers)."""

    name: str  # registry key, lowercase: "mobilenet", "mobilenet_v2", "efficientnet_b0", ...
    constructor: Callable[..., "keras.Model"] | None  # e.g. keras.applications.MobileNet (used by build_applications)
    preprocess: str  # a tlkit.models.preprocess.Preprocess mode
    default_size: int
    min_size: int  # smallest input the architecture accepts (scratch: with its default blocks)
    skip_layers: tuple[str, ...]  # features at skip_strides, shallow first (named_skips); () if `skips` computes them
    options: tuple[str, ...] = ()  # constructor options a recipe may set (model.options)
    skip_strides: tuple[int, ...] = (2, 4, 8, 16)
    fixed: tuple[tuple[str, Any], ...] = ()  # constructor arguments tlkit always sets
    aliases: tuple[str, ...] = ()  # extra lookup names (lookups also ignore case, '_' and '-')
    aligned: bool = True  # skips are exactly input/stride for inputs that are multiples of 32
    default_weights: str = "imagenet"  # what model.weights means when the recipe leaves it unset
    pretrained: bool = True  # 'imagenet' weights exist (else model.weights: imagenet is refused)
    configured_by: str = "model.options"  # the recipe field that shapes this network (errors name it)
    no_skips_reason: str = _NO_SKIPS  # can_feed_decoder's answer when the entry has no skips ({name} filled in)
    params: int | None = None  # parameters at default_size, default options and blocks, no head: `tlkit backbones` prints it unbuilt
    build: BuildFn = build_applications  # (spec, input_size, weights, options, blocks) -> keras.Model
    skips: SkipsFn = named_skips  # (spec, blocks) -> ((ref, stride), ...), shallow first
    check: CheckFn = check_min_size  # (spec, input_size, options, weights, blocks) -> None or TlkitError

    def __post_init__(self) -> None:
        if len(self.skip_layers) != len(self.skip_strides):
            raise ValueError(f"{self.name}: skip_layers and skip_strides must have the same length")
        if self.build is build_applications and self.constructor is None:
            raise ValueError(f"{self.name}: give a constructor or a build hook")
        if self.default_weights == "imagenet" and not self.pretrained:
            raise ValueError(f"{self.name}: default_weights 'imagenet' needs pretrained=True")


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


_PRE = (("include_preprocessing", True),)
_EFFICIENTNET_SKIPS = (
    "block2a_expand_activation",
    "block3a_expand_activation",
    "block4a_expand_activation",
    "block6a_expand_activation",
)

#: `BackboneSpec.params` of the entries below (`count_params`; tests/test_backbones.py checks each against its build)
PARAMS = {
    "scratch": 93_920,
    "mobilenet": 3_228_864,
    "mobilenet_v2": 2_257_984,
    "mobilenet_v3_small": 939_120,
    "mobilenet_v3_large": 2_996_352,
    "efficientnet_b0": 4_049_571,
    "efficientnet_b1": 6_575_239,
    "efficientnet_b2": 7_768_569,
    "efficientnet_b3": 10_783_535,
    "efficientnet_v2_b0": 5_919_312,
    "efficientnet_v2_b1": 6_931_124,
    "resnet50": 23_587_712,
    "resnet50_v2": 23_564_800,
    "convnext_tiny": 27_820_128,
    "densenet121": 7_037_504,
    "xception": 20_861_480,
    "inception_v3": 21_802_784,
}

for _spec in (
    # the from-scratch stack: built, checked and tapped from model.blocks (tlkit.models.scratch)
    BackboneSpec(
        "scratch", None, "unit", 64, 8, (),
        skip_strides=(),
        aligned=False,  # exact only for 'same' convs on a divisible input
        default_weights="none",
        pretrained=False,
        configured_by="model.blocks",
        no_skips_reason="model.blocks never downsample: a U-Net encoder needs blocks with pooling or stride > 1",
        build=scratch.scratch_build,
        skips=scratch.scratch_skips,
        check=scratch.scratch_check,
    ),
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
    register_backbone(replace(_spec, params=PARAMS.get(_spec.name)))


# ----------------------------------------------------------------------------- weights, checks, building


def _weights_kind(weights: "str | os.PathLike[str]") -> str:
    """'none', 'imagenet' or 'path' (keywords are case-insensitive)."""
    text = str(weights)
    return text.lower() if text.lower() in WEIGHT_KEYWORDS else "path"


def resolve_weights(backbone: "str | BackboneSpec", weights: "str | os.PathLike[str] | None") -> str:
    """`model.weights` as the entry takes it: None -> its `default_weights` ('imagenet'; 'none' for scratch).

    Keywords come back lowercase ('imagenet', 'none'); a path comes back as given (a str).
    """
    spec = get_backbone(backbone)
    if weights is None:
        return spec.default_weights
    kind = _weights_kind(weights)
    return str(weights) if kind == "path" else kind


def is_pretrained(backbone: "str | BackboneSpec", weights: "str | os.PathLike[str] | None") -> bool:
    """True when the backbone starts from trained weights: not 'none', and the entry has pretrained weights.

    The `batchnorm: auto` policy: pretrained statistics are kept, fresh ones train. A file
    saved by an entry without pretrained weights (scratch) counts as not pretrained.
    """
    spec = get_backbone(backbone)
    return spec.pretrained and resolve_weights(spec, weights) != "none"


def validate_model(
    backbone: "str | BackboneSpec",
    input_size: int,
    options: Mapping[str, Any] | None,
    weights: "str | os.PathLike[str] | None",
    blocks: Sequence[Any] | None = None,
) -> BackboneSpec:
    """Every check that needs no building, so a bad recipe fails before any data is read.

    Options the entry does not take, the entry's own `check` (input size; scratch: every
    block of `blocks` keeps a non-empty map), a weights file that is not there, and
    'imagenet' for an entry without pretrained weights. `weights` None means the entry's default.
    """
    spec = get_backbone(backbone)
    options = dict(options or {})
    unknown = [key for key in options if key not in spec.options]
    if unknown:
        takes = ", ".join(spec.options) or "(none)"
        if spec.configured_by != "model.options":
            takes += f"; {spec.name} is configured by {spec.configured_by}"
        names = ", ".join(f"'{u}'" for u in unknown)
        verb = "is" if len(unknown) == 1 else "are"
        raise TlkitError(
            f"option{'s' if len(unknown) > 1 else ''} {names} {verb} not available for {spec.name}; it takes: {takes}"
        )
    resolved = resolve_weights(spec, weights)
    spec.check(spec, input_size, options, resolved, blocks)
    kind = _weights_kind(resolved)
    if kind == "path":
        path = Path(resolved).expanduser()
        if not path.is_file():
            raise TlkitError(
                f"weights file '{weights}' not found: model.weights takes 'imagenet', 'none' or the path of a "
                ".h5 / .weights.h5 file"
            )
    if kind == "imagenet" and not spec.pretrained:
        raise TlkitError(
            f"backbone '{spec.name}' has no pretrained weights: set model.weights: none (or a file it saved)"
        )
    return spec


def build_backbone(
    spec_or_name: "BackboneSpec | str",
    input_size: int,
    weights: "str | os.PathLike[str] | None" = "none",
    options: Mapping[str, Any] | None = None,
    blocks: Sequence[Any] | None = None,
) -> keras.Model:
    """A feature extractor named 'backbone': (N, s, s, 3) images -> its deepest feature map.

    `weights`: 'none' (random init), 'imagenet' (Keras download, or its cache in
    ~/.keras/models/), a weights file path, or None for the entry's default.
    `blocks` shapes the entries configured by model.blocks (scratch; default: the
    recipe's default blocks); the others ignore it. Every user mistake is a TlkitError.
    """
    options = dict(options or {})
    spec = validate_model(spec_or_name, input_size, options, weights, blocks)
    resolved = resolve_weights(spec, weights)
    kind = _weights_kind(resolved)
    if kind == "path":
        resolved = str(Path(resolved).expanduser())
    previous_timeout = socket.getdefaulttimeout()
    if kind == "imagenet" and previous_timeout is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        model = spec.build(spec, input_size, resolved, options, blocks)
    except TlkitError:
        raise
    except Exception as exc:
        raise _build_error(exc, spec, kind, weights, input_size, options) from None
    finally:
        if kind == "imagenet" and previous_timeout is None:
            socket.setdefaulttimeout(previous_timeout)
    if model.name != "backbone":  # a hook that named its model otherwise: same layers, the name stages look for
        import keras

        model = keras.Model(model.input, model.output, name="backbone")
    return model


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
            f"Either fetch {filename} where there is a network and pass `--weights PATH` (model.weights: PATH; "
            f"or put it in {keras_models_dir()}/), or train without pretrained weights: `--backbone scratch` "
            f"(or `model.weights: none` to keep {spec.name} untrained)"
        )
    if kind == "path":
        settings = spec.configured_by + (f" (e.g. {spec.options[0]})" if spec.options else "")
        return TlkitError(
            f"cannot load weights file '{weights}' into {spec.name} (options {shown_options}, input_size {input_size}): "
            f"{_first_line(exc)} -- check that model.backbone and {settings} match the file"
        )
    return TlkitError(
        f"cannot build {spec.name} (options {shown_options}, input_size {input_size}, weights {kind}): {_first_line(exc)}"
    )


# ----------------------------------------------------------------------------- features


def skip_refs(spec: "BackboneSpec | str", blocks: Sequence[Any] | None = None) -> tuple[Skip, ...]:
    """The entry's skips without building: `Skip(ref, stride)`, shallow first (scratch: from `blocks`)."""
    spec = get_backbone(spec)
    return tuple(Skip(str(ref), int(stride)) for ref, stride in spec.skips(spec, blocks))


def skip_layer_outputs(
    backbone: keras.Model, spec: "BackboneSpec | str", blocks: Sequence[Any] | None = None
) -> list[Any]:
    """The symbolic tensors a decoder takes skips from, shallow first, at the strides of `skip_refs(spec, blocks)`.

    `blocks` must be the ones `backbone` was built from (entries configured by model.blocks;
    default blocks if None); the other entries ignore it.
    """
    out = []
    for ref, _ in skip_refs(spec, blocks):
        name, _, port = ref.partition(":")
        layer = backbone.get_layer(name)
        out.append(layer.input if port == "input" else layer.output)
    return out


def can_feed_decoder(spec: "BackboneSpec | str", blocks: Sequence[Any] | None = None) -> str | None:
    """None when the backbone (with these blocks) has skips a segmentation decoder can take, else the reason, one line."""
    spec = get_backbone(spec)
    if skip_refs(spec, blocks):
        return None
    return spec.no_skips_reason.format(name=spec.name)


@functools.cache
def count_params(name: str) -> int:
    """Parameters of the backbone at its default size with random weights (cached: the CLI lists them)."""
    spec = get_backbone(name)
    return int(build_backbone(spec, spec.default_size, "none").count_params())
