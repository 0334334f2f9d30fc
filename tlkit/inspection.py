"""`tlkit inspect`: the arithmetic of a CNN made visible.

A layer table (output shape, parameters, kernel/stride/padding/dilation,
receptive field and jump, multiply-adds), and pictures: a layer's feature maps
for one image, the first convolution's kernels, and a Grad-CAM heatmap.

Receptive fields follow the standard recurrence along the graph (not the list
of layers, so branches are counted once):

    k_eff = d*(k-1) + 1,   r_out = r_in + (k_eff-1)*j_in,   j_out = j_in*s

starting from r = 1, j = 1 at the input. Transposed convolutions and upsampling
divide the jump instead. Where branches merge, the widest input wins, except a
1x1 gate broadcast over a bigger map (squeeze-excitation), which is left out:
the column follows the convolutional path. Nested models (the classifier's
"backbone") are flattened, their layers named `backbone/LAYER`. How each layer
kind moves the receptive field is one entry in `GEOMETRY`.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from tlkit.errors import TlkitError
from tlkit.figures import new_figure, save_figure

# ----------------------------------------------------------------------------- geometry registry


@dataclass(frozen=True)
class Geometry:
    """How a layer moves a receptive field; `up` > 1 divides the jump (transposed conv, upsampling)."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = ""
    up: tuple[int, int] = (1, 1)
    shown: bool = True  # kernel/stride/dilation worth a column (a conv or a pool)


GeometryFn = Callable[[keras.layers.Layer, Sequence[Any], Sequence[Any]], Geometry]
MacsFn = Callable[[keras.layers.Layer, Sequence[Any], Sequence[Any]], "int | None"]


@dataclass(frozen=True)
class LayerKind:
    geometry: GeometryFn
    macs: MacsFn | None = None


GEOMETRY: dict[type, LayerKind] = {}


def register_layer_kind(cls: type, kind: LayerKind) -> None:
    """Teach `layer_table` a layer class (subclasses match too)."""
    GEOMETRY[cls] = kind


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if len(value) else (1, 1)
    return (int(value), int(value))


def _spatial(shape: Sequence[Any]) -> tuple[Any, Any]:
    return (shape[1], shape[2]) if len(shape) == 4 else (None, None)


def _prod(values: Sequence[Any]) -> int | None:
    out = 1
    for v in values:
        if v is None:
            return None
        out *= int(v)
    return out


def _conv_geometry(layer, ins, outs) -> Geometry:
    c = layer.get_config()
    return Geometry(_pair(c["kernel_size"]), _pair(c["strides"]), _pair(c.get("dilation_rate", 1)), c["padding"])


def _transpose_geometry(layer, ins, outs) -> Geometry:
    c = layer.get_config()
    stride = _pair(c["strides"])
    return Geometry(_pair(c["kernel_size"]), (1, 1), _pair(c.get("dilation_rate", 1)), c["padding"], up=stride)


def _pool_geometry(layer, ins, outs) -> Geometry:
    c = layer.get_config()
    size = _pair(c["pool_size"])
    return Geometry(size, _pair(c["strides"] if c.get("strides") is not None else size), padding=c["padding"])


def _global_pool_geometry(layer, ins, outs) -> Geometry:
    h, w = _spatial(ins[0])
    size = (int(h) if h else 1, int(w) if w else 1)
    return Geometry(size, size, padding="valid")


def _upsampling_geometry(layer, ins, outs) -> Geometry:
    return Geometry(up=_pair(layer.get_config()["size"]), shown=False)


def _zero_padding_geometry(layer, ins, outs) -> Geometry:
    pads = np.array(layer.get_config()["padding"]).ravel().tolist()
    text = str(pads[0]) if len(set(pads)) == 1 else ",".join(str(p) for p in pads)
    return Geometry(padding=text, shown=False)


def _kernel_macs(per_position: Callable[[dict[str, Any], int, int], int], at_input: bool = False) -> Callable[..., int | None]:
    """Multiply-adds of a kernel layer: its output (or, transposed, input) positions x `per_position(config, taps, c_in)`."""

    def macs(layer, ins, outs) -> int | None:
        c = layer.get_config()
        kh, kw = _pair(c["kernel_size"])
        positions = _prod(_spatial(ins[0] if at_input else outs[0]))
        cin = ins[0][-1]
        if positions is None or cin is None:
            return None
        return positions * per_position(c, kh * kw, int(cin))

    return macs


def _separable(c: dict[str, Any], taps: int, cin: int) -> int:
    mid = cin * int(c.get("depth_multiplier", 1))
    return taps * mid + mid * int(c["filters"])


_conv_macs = _kernel_macs(lambda c, taps, cin: taps * (cin // int(c.get("groups", 1))) * int(c["filters"]))
_depthwise_macs = _kernel_macs(lambda c, taps, cin: taps * cin * int(c.get("depth_multiplier", 1)))
_separable_macs = _kernel_macs(_separable)
_transpose_macs = _kernel_macs(lambda c, taps, cin: taps * cin * int(c["filters"]), at_input=True)


def _dense_macs(layer, ins, outs) -> int | None:
    shape = ins[0]
    positions = _prod(shape[1:-1]) if len(shape) > 2 else 1
    if positions is None or shape[-1] is None:
        return None
    return positions * int(shape[-1]) * int(layer.get_config()["units"])


L = keras.layers
for _cls, _kind in (
    (L.Conv2D, LayerKind(_conv_geometry, _conv_macs)),
    (L.DepthwiseConv2D, LayerKind(_conv_geometry, _depthwise_macs)),
    (L.SeparableConv2D, LayerKind(_conv_geometry, _separable_macs)),
    (L.Conv2DTranspose, LayerKind(_transpose_geometry, _transpose_macs)),
    (L.MaxPooling2D, LayerKind(_pool_geometry)),
    (L.AveragePooling2D, LayerKind(_pool_geometry)),
    (L.GlobalAveragePooling2D, LayerKind(_global_pool_geometry)),
    (L.GlobalMaxPooling2D, LayerKind(_global_pool_geometry)),
    (L.UpSampling2D, LayerKind(_upsampling_geometry)),
    (L.ZeroPadding2D, LayerKind(_zero_padding_geometry)),
    (L.Dense, LayerKind(lambda layer, ins, outs: Geometry(shown=False), _dense_macs)),
):
    register_layer_kind(_cls, _kind)


def _kind_of(layer: keras.layers.Layer) -> LayerKind | None:
    for cls in type(layer).__mro__:
        if cls in GEOMETRY:
            return GEOMETRY[cls]
    return None


# ----------------------------------------------------------------------------- graph walk


@dataclass
class _Call:
    """One call of a leaf layer in the flattened graph."""

    path: str  # "backbone/block1_conv"
    layer: keras.layers.Layer
    inputs: list[str]  # tensor keys
    outputs: list[str]


def _tensor_refs(obj: Any) -> list[tuple[str, int, int]]:
    """keras_history entries of the serialized tensors in a node's args/kwargs, in order."""
    found: list[tuple[str, int, int]] = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            name, node, index = obj["config"]["keras_history"]
            return [(name, int(node), int(index))]
        for value in obj.values():
            found.extend(_tensor_refs(value))
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found.extend(_tensor_refs(value))
    return found


def _lookup(tensors: dict[tuple[str, int, int], Any], ref: tuple[str, int, int]) -> Any:
    """A serialized tensor reference. Keras numbers a nested Functional's calls from 1 (its node 0
    is its own construction) or from 0 (a reloaded model), so a miss tries the node before."""
    name, node, index = ref
    if ref in tensors:
        return tensors[ref]
    if (name, node - 1, index) in tensors:
        return tensors[(name, node - 1, index)]
    raise KeyError(ref)


def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


def _flatten(model: keras.Model, prefix: str, input_keys: list[str], calls: list[_Call], shapes: dict[str, Any]) -> list[str]:
    """Append the leaf calls of `model` (fed by `input_keys`) to `calls`; return its output keys."""
    if isinstance(model, keras.Sequential):
        keys = input_keys
        for layer in model.layers:
            keys = _call(layer, f"{prefix}{layer.name}", keys, calls, shapes)
        return keys
    config = model.get_config()
    if "input_layers" not in config:
        raise TlkitError(f"model '{model.name}' is a subclassed model: inspect needs a Functional or Sequential model")
    tensors: dict[tuple[str, int, int], str] = {}
    inputs = config["input_layers"]
    inputs = [inputs] if inputs and isinstance(inputs[0], str) else inputs
    for (name, node, index), key in zip(inputs, input_keys):
        tensors[(name, node, index)] = key
    for entry in config["layers"]:
        name = entry["name"]
        if entry["class_name"] == "InputLayer":
            continue
        layer = model.get_layer(name)
        for node_index, node in enumerate(entry["inbound_nodes"]):
            try:
                feeds = [_lookup(tensors, r) for r in _tensor_refs(node)]
            except KeyError:
                raise TlkitError(f"cannot follow the graph of '{model.name}' at layer '{name}'") from None
            outs = _call(layer, f"{prefix}{name}", feeds, calls, shapes)
            for i, key in enumerate(outs):
                tensors[(name, node_index, i)] = key
    outputs = config["output_layers"]
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    return [_lookup(tensors, (n, k, i)) for n, k, i in outputs]


def _call(layer: keras.layers.Layer, path: str, input_keys: list[str], calls: list[_Call], shapes: dict[str, Any]) -> list[str]:
    if _is_model(layer):
        return _flatten(layer, f"{path}/", input_keys, calls, shapes)
    try:
        out = layer.output
    except (AttributeError, ValueError):
        out = None
    outs = out if isinstance(out, (list, tuple)) else [out]
    keys = [f"{path}#{len(calls)}:{i}" for i in range(len(outs))]
    for key, tensor in zip(keys, outs):
        shapes[key] = tuple(tensor.shape) if tensor is not None else None
    calls.append(_Call(path, layer, list(input_keys), keys))
    return keys


def _input_names(model: keras.Model) -> list[str]:
    """The input layers' names (a tensor's own name is an anonymous `keras_tensor_N`)."""
    if not isinstance(model, keras.Sequential):
        inputs = model.get_config().get("input_layers") or []
        inputs = [inputs] if inputs and isinstance(inputs[0], str) else inputs
        if len(inputs) == len(model.inputs):
            return [entry[0] for entry in inputs]
    return [f"input{i}" if i else "input" for i in range(len(model.inputs))]


def _walk(model: keras.Model) -> tuple[list[_Call], dict[str, Any], list[str]]:
    """Leaf calls in graph order, the shape of every tensor, and the model's input keys."""
    calls: list[_Call] = []
    shapes: dict[str, Any] = {}
    input_keys = []
    for i, tensor in enumerate(model.inputs):
        key = f"input:{i}"
        shapes[key] = tuple(tensor.shape)
        input_keys.append(key)
    _flatten(model, "", input_keys, calls, shapes)
    return calls, shapes, input_keys


# ----------------------------------------------------------------------------- table


@dataclass
class LayerRow:
    """One line of the layer table."""

    name: str
    type: str
    output_shape: tuple[Any, ...] | None
    params: int
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: str = ""
    dilation: tuple[int, int] | None = None
    receptive_field: tuple[float, float] = (1, 1)  # (rows, columns) of input pixels
    jump: tuple[float, float] = (1, 1)  # input pixels between neighbouring outputs
    macs: int | None = 0


@dataclass
class _Field:
    r: tuple[float, float]
    j: tuple[float, float]
    spatial: tuple[Any, Any]


def _merge(fields: list[_Field]) -> _Field:
    """Where branches meet the widest wins; a 1x1 gate broadcast over a bigger map is left out."""
    if len(fields) > 1:
        big = [f for f in fields if f.spatial != (1, 1)]
        if big and len(big) < len(fields):
            fields = big
    r = tuple(max(f.r[a] for f in fields) for a in (0, 1))
    j = tuple(max(f.j[a] for f in fields) for a in (0, 1))
    return _Field(r, j, fields[0].spatial)  # type: ignore[arg-type]


def _advance(field: _Field, g: Geometry) -> tuple[tuple[float, float], tuple[float, float]]:
    r, j = list(field.r), list(field.j)
    for a in (0, 1):
        j[a] = j[a] / g.up[a]
        k_eff = g.dilation[a] * (g.kernel[a] - 1) + 1
        r[a] = r[a] + (k_eff - 1) * j[a]
        j[a] = j[a] * g.stride[a]
    return (r[0], r[1]), (j[0], j[1])


def layer_table(model: keras.Model) -> list[LayerRow]:
    """Every leaf layer of `model` (nested models flattened) with its geometry, receptive field and cost."""
    calls, shapes, input_keys = _walk(model)
    fields: dict[str, _Field] = {}
    rows: list[LayerRow] = []
    for key, name in zip(input_keys, _input_names(model)):
        fields[key] = _Field((1, 1), (1, 1), _spatial(shapes[key]))
        rows.append(LayerRow(name, "InputLayer", shapes[key][1:], 0))
    for call in calls:
        in_shapes = [shapes.get(k) or () for k in call.inputs]
        out_shapes = [shapes.get(k) or () for k in call.outputs]
        known = [fields[k] for k in call.inputs if k in fields]
        field = _merge(known) if known else _Field((1, 1), (1, 1), (None, None))
        kind = _kind_of(call.layer)
        geometry = kind.geometry(call.layer, in_shapes, out_shapes) if kind else Geometry(shown=False)
        r, j = _advance(field, geometry)
        out_spatial = _spatial(out_shapes[0]) if out_shapes and out_shapes[0] else (None, None)
        for key in call.outputs:
            fields[key] = _Field(r, j, out_spatial)
        macs = kind.macs(call.layer, in_shapes, out_shapes) if kind and kind.macs else 0
        rows.append(
            LayerRow(
                name=call.path,
                type=type(call.layer).__name__,
                output_shape=tuple(out_shapes[0][1:]) if out_shapes and out_shapes[0] else None,
                params=int(call.layer.count_params()) if call.layer.built else 0,
                kernel=geometry.kernel if geometry.shown else None,
                stride=geometry.stride if geometry.shown else None,
                padding=geometry.padding,
                dilation=geometry.dilation if geometry.shown else None,
                receptive_field=r,
                jump=j,
                macs=macs,
            )
        )
    return rows


def _num(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _square(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return ""
    return _num(pair[0]) if pair[0] == pair[1] else f"{_num(pair[0])}x{_num(pair[1])}"


def _shape(shape: tuple[Any, ...] | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if s is None else str(s) for s in shape) or "scalar"


def human(n: float) -> str:
    """12345678 -> '12.3M' (what a reader compares at a glance)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def totals(model: keras.Model, rows: list[LayerRow]) -> dict[str, Any]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = int(model.count_params())
    known = [r.macs for r in rows if r.macs is not None]
    return {
        "layers": len(rows),
        "params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "multiply_adds": int(sum(known)),
        "multiply_adds_complete": len(known) == len(rows),
    }


def format_table(model: keras.Model, rows: list[LayerRow] | None = None) -> str:
    """The layer table as text, with totals: what `tlkit inspect TARGET` prints."""
    rows = layer_table(model) if rows is None else rows
    header = ["layer", "type", "output", "params", "kernel", "stride", "pad", "dil", "rf", "jump", "mult-adds"]
    body = [
        [
            r.name,
            r.type,
            _shape(r.output_shape),
            f"{r.params:,}" if r.params else "",
            _square(r.kernel),
            _square(r.stride),
            r.padding,
            _square(r.dilation),
            _square(r.receptive_field),
            _square(r.jump),
            "?" if r.macs is None else human(r.macs) if r.macs else "",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    right = {3, 4, 5, 7, 8, 9, 10}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    t = totals(model, rows)
    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in body)]
    macs = f"{human(t['multiply_adds'])} multiply-adds per image (convolutions and dense layers"
    macs += ")" if t["multiply_adds_complete"] else "; '?' rows have unknown sizes)"
    lines += [
        "",
        f"{t['layers']} layers, {t['params']:,} parameters ({t['trainable_params']:,} trainable, "
        f"{t['non_trainable_params']:,} non-trainable)",
        macs,
        "rf: receptive field in input pixels (r_out = r_in + (k_eff-1)*j_in, k_eff = d*(k-1)+1); "
        "jump: input pixels between neighbouring outputs (j_out = j_in*s)",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- targets


def load_target(
    target: str | os.PathLike[str],
    *,
    weights: str | None = None,
    input_size: int | None = None,
    options: dict[str, Any] | None = None,
    num_classes: int | None = None,
    unsafe: bool = False,
) -> tuple[keras.Model, str]:
    """(model, description) for a backbone name, a recipe, a run directory or a `.keras` file.

    A backbone is built behind its preprocessing layer, with random weights unless
    `weights` says otherwise (nothing is downloaded by default); a recipe builds its task's model with
    `num_classes` outputs (default: the task's guess from the recipe's data, without reading images).
    """
    from tlkit.targets import resolve_target

    found = resolve_target(target, ("run", "keras", "recipe", "backbone"))
    if found.kind == "run":
        return found.keras_model(unsafe=unsafe), f"run {found.path} (best.keras)"
    if found.kind == "keras":
        return found.keras_model(unsafe=unsafe), f"model file {found.path}"
    if found.kind == "recipe":
        return _recipe_model(str(target), weights, input_size, num_classes)
    return _backbone_model(found.source, weights, input_size, options)


def _recipe_model(target: str, weights: str | None, input_size: int | None, num_classes: int | None) -> tuple[keras.Model, str]:
    from tlkit.tasks import get_task, load_recipe

    overrides: dict[str, Any] = {}
    if weights is not None:
        overrides["model.weights"] = weights
    if input_size is not None:
        overrides["model.input_size"] = input_size
    recipe = load_recipe(target, overrides)
    task = get_task(recipe)
    task.check(recipe)
    n = num_classes or task.num_classes_hint(recipe)
    return task.build_model(recipe, n), f"recipe {target} ({recipe.model.backbone}, {task.head_name(recipe)} for {n} classes)"


def _backbone_model(name: str, weights: str | None, input_size: int | None, options: dict[str, Any] | None) -> tuple[keras.Model, str]:
    from tlkit.models.backbones import build_backbone, get_backbone
    from tlkit.models.preprocess import Preprocess

    spec = get_backbone(name)
    size = input_size or spec.default_size
    chosen = weights or "none"
    backbone = build_backbone(spec, size, chosen, options or {})
    # with its input scaling in front, as in a tlkit model: feature maps of [0, 255] pixels mean something
    inputs = keras.Input((size, size, 3), name="image")
    model = keras.Model(inputs, backbone(Preprocess(spec.preprocess, name="preprocess")(inputs)), name=spec.name)
    return model, f"backbone {spec.name} at {size}x{size} (weights: {chosen}; preprocessing '{spec.preprocess}' in front)"


# ----------------------------------------------------------------------------- finding and tapping layers


def _leaf_paths(model: keras.Model, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    out = []
    for layer in model.layers:
        if _is_model(layer):
            out.extend(_leaf_paths(layer, f"{prefix}{layer.name}/"))
        else:
            out.append((f"{prefix}{layer.name}", layer))
    return out


def find_layer(model: keras.Model, name: str) -> str:
    """The full path (`backbone/conv1`) of a layer given by path or by its own name."""
    paths = [p for p, _ in _leaf_paths(model)]
    if name in paths:
        return name
    matches = [p for p in paths if p.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise TlkitError(f"layer name '{name}' is ambiguous: {', '.join(matches)}")
    close = difflib.get_close_matches(name, paths, n=3, cutoff=0.5)
    close += [p for p in paths if p.rsplit("/", 1)[-1] in difflib.get_close_matches(name, [q.rsplit("/", 1)[-1] for q in paths], n=3, cutoff=0.5) and p not in close]
    if close:
        hint = f"; close: {', '.join(close[:3])}"
    elif len(paths) <= 30:
        hint = f"; its layers: {', '.join(paths)}"
    else:
        hint = ""
    raise TlkitError(f"no layer '{name}' in model '{model.name}'{hint} (`tlkit inspect TARGET` lists them)")


def _fill(obj: Any, tensors: dict[tuple[str, int, int], Any]) -> Any:
    """A node's serialized args with its tensors put back (the rest is plain data)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            name, node, index = obj["config"]["keras_history"]
            return _lookup(tensors, (name, int(node), int(index)))
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


def tap(model: keras.Model, path: str) -> keras.Model:
    """A model with the same inputs and outputs `[layer activation, *model.outputs]` in one graph.

    One graph, so a gradient of the outputs with respect to the activation exists
    (Grad-CAM). A layer inside a nested model is reached by rebuilding the outer
    graph around a tapped copy of the nested one (same layers, same weights).
    """
    head, _, rest = path.partition("/")
    layer = model.get_layer(head)
    feed = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if not rest:
        return keras.Model(feed, [layer.output, *model.outputs])
    inner = tap(layer, rest)
    if isinstance(model, keras.Sequential):
        x = model.inputs[0]
        act = None
        for lyr in model.layers:
            if lyr is layer:
                act, *outs = inner(x)
                x = outs[0]
            else:
                x = lyr(x)
        return keras.Model(feed, [act, x])
    config = model.get_config()
    tensors: dict[tuple[str, int, int], Any] = {}
    inputs = config["input_layers"]
    inputs = [inputs] if inputs and isinstance(inputs[0], str) else inputs
    for (name, node, index), tensor in zip(inputs, model.inputs):
        tensors[(name, node, index)] = tensor
    act = None
    for entry in config["layers"]:
        if entry["class_name"] == "InputLayer":
            continue
        lyr = model.get_layer(entry["name"])
        for node_index, node in enumerate(entry["inbound_nodes"]):
            args, kwargs = _fill(node["args"], tensors), _fill(node["kwargs"], tensors)
            if lyr is layer:
                act, *outs = inner(*args, **kwargs)
            else:
                result = lyr(*args, **kwargs)
                outs = list(result) if isinstance(result, (list, tuple)) else [result]
            for i, t in enumerate(outs):
                tensors[(entry["name"], node_index, i)] = t
    outputs = config["output_layers"]
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    return keras.Model(feed, [act, *(_lookup(tensors, (n, k, i)) for n, k, i in outputs)])


# ----------------------------------------------------------------------------- images


def model_image(model: keras.Model, image: "str | os.PathLike[str] | np.ndarray") -> tuple[np.ndarray, np.ndarray]:
    """(original uint8 RGB image, float32 batch of one at the model's input size and channels).

    tlkit models take float32 pixels in [0, 255]; arrays are used as given, files are decoded by content.
    """
    import tensorflow as tf

    if isinstance(image, (str, os.PathLike)):
        from tlkit.data.decode import decode_image_file

        original = decode_image_file(image).numpy()
    else:
        original = np.asarray(image)
        if original.ndim == 2:
            original = original[..., None]
    shape = model.inputs[0].shape
    h, w, c = shape[1], shape[2], shape[3]
    x = tf.convert_to_tensor(original, tf.float32)
    if h is not None and w is not None and (x.shape[0], x.shape[1]) != (h, w):
        x = tf.image.resize(x, (h, w), method="bilinear", antialias=True)
    if c == 1 and x.shape[-1] == 3:
        x = tf.image.rgb_to_grayscale(x)
    elif c == 3 and x.shape[-1] == 1:
        x = tf.image.grayscale_to_rgb(x)
    if c is not None and x.shape[-1] != c:
        raise TlkitError(f"the model takes {c}-channel images; this image has {x.shape[-1]} (give an array of {c} channels)")
    return original, x.numpy()[None]


def feature_maps(model: keras.Model, image: "str | os.PathLike[str] | np.ndarray", layer: str) -> np.ndarray:
    """The activation of `layer` for one image, without the batch axis (H, W, C for a conv layer)."""
    path = find_layer(model, layer)
    _, batch = model_image(model, image)
    out = tap(model, path)(batch, training=False)[0]
    return keras.ops.convert_to_numpy(out)[0]


def first_conv(model: keras.Model) -> tuple[str, np.ndarray, bool]:
    """(path, kernel [kh, kw, in, out], depthwise?) of the first convolution in graph order."""
    calls, _, _ = _walk(model)
    for call in calls:
        if isinstance(call.layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)) and call.layer.weights:
            depthwise = isinstance(call.layer, (L.DepthwiseConv2D, L.SeparableConv2D))
            return call.path, keras.ops.convert_to_numpy(call.layer.weights[0]), depthwise
    raise TlkitError(f"model '{model.name}' has no 2D convolution")


def last_conv_activation(model: keras.Model) -> str:
    """Grad-CAM's layer: the last convolution of the model, followed through the layers that keep its shape
    (BatchNorm, activation), so the map is the rectified feature map the head reads."""
    calls, shapes, _ = _walk(model)
    convs = [i for i, c in enumerate(calls) if isinstance(c.layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D))]
    if not convs:
        raise TlkitError(f"model '{model.name}' has no 2D convolution for Grad-CAM")
    index = convs[-1]
    current = calls[index]
    for nxt in calls[index + 1 :]:
        if nxt.inputs != current.outputs or shapes.get(nxt.outputs[0]) != shapes.get(current.outputs[0]):
            break
        current = nxt
    return current.path


def gradcam(
    model: keras.Model,
    image: "str | os.PathLike[str] | np.ndarray",
    class_index: int | None = None,
    layer: str | None = None,
) -> dict[str, Any]:
    """Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

    Channel weights are the spatially averaged gradients of the class logit with
    respect to a conv layer's activation; the heatmap is ReLU(sum of weighted
    channels), upsampled to the input size and scaled to [0, 1]. Returns
    `heatmap` (input size), `coarse` (the layer's size), `class_index`,
    `probability`, `layer`.
    """
    import tensorflow as tf

    path = find_layer(model, layer) if layer else last_conv_activation(model)
    probe = tap(model, path)
    _, batch = model_image(model, image)
    x = tf.convert_to_tensor(batch)
    with tf.GradientTape() as tape:
        activation, logits = probe(x, training=False)[:2]
        if len(logits.shape) != 2:
            raise TlkitError("Grad-CAM needs a classifier (outputs [batch, classes]): a run, a recipe or a .keras classifier")
        probs = tf.nn.softmax(logits, axis=-1)
        chosen = int(tf.argmax(logits[0])) if class_index is None else int(class_index)
        if not 0 <= chosen < logits.shape[-1]:
            raise TlkitError(f"class index {chosen} is out of range: the model has {logits.shape[-1]} classes")
        score = logits[:, chosen]
    grads = tape.gradient(score, activation)
    if grads is None or len(activation.shape) != 4:
        raise TlkitError(f"layer '{path}' gives no spatial map for Grad-CAM: choose a convolution layer (--layer)")
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activation, axis=-1))[0]
    coarse = cam.numpy()
    top = float(coarse.max())
    coarse = coarse / top if top > 0 else coarse
    h, w = batch.shape[1], batch.shape[2]
    heatmap = tf.image.resize(coarse[..., None], (h, w), method="bilinear").numpy()[..., 0]
    return {
        "heatmap": np.clip(heatmap, 0.0, 1.0),
        "coarse": coarse,
        "class_index": chosen,
        "probability": float(probs[0, chosen]),
        "layer": path,
    }


# ----------------------------------------------------------------------------- drawing


def _grid(count: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / cols), cols


def draw_feature_maps(
    maps: np.ndarray, out: str | os.PathLike[str], title: str, image: np.ndarray | None = None, max_maps: int = 64
) -> Path:
    """Each channel as its own tile (colours scaled per channel), the input first; a vector as bars."""
    if maps.ndim == 1:
        fig = new_figure(10, 3.5)
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(np.arange(len(maps)), maps, color="tab:blue")
        ax.set_xlabel("unit")
        ax.set_ylabel("activation")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        return save_figure(fig, out)
    if maps.ndim != 3:
        raise TlkitError(f"cannot draw an activation of shape {maps.shape}: choose a layer with a spatial output")
    channels = min(maps.shape[-1], max_maps)
    tiles = channels + (image is not None)
    rows, cols = _grid(tiles)
    fig = new_figure(1.6 * cols, 1.6 * rows + 0.5)
    fig.suptitle(title, fontsize=9)
    k = 0
    if image is not None:
        ax = fig.add_subplot(rows, cols, 1)
        ax.imshow(image.squeeze() if image.shape[-1] == 1 else image, cmap="gray", interpolation="nearest")
        ax.set_title("input", fontsize=7)
        ax.axis("off")
        k = 1
    for c in range(channels):
        ax = fig.add_subplot(rows, cols, k + c + 1)
        ax.imshow(maps[..., c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"{c}", fontsize=7)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, out)


def draw_filters(
    kernel: np.ndarray, out: str | os.PathLike[str], title: str, depthwise: bool = False, max_filters: int = 64
) -> Path:
    """First-layer kernels: RGB pictures when they read 3 channels, else one grey tile per filter."""
    kh, kw, cin, cout = kernel.shape
    if cin == 3 and not depthwise:
        tiles = [kernel[..., i] for i in range(cout)]  # each filter as an RGB patch
    elif depthwise:
        tiles = [kernel[..., i, 0] for i in range(cin)]  # depthwise: one kernel per input channel
    else:
        tiles = [kernel[..., 0, i] for i in range(cout)]  # what each filter does to the first channel
    tiles = tiles[:max_filters]
    rows, cols = _grid(len(tiles))
    fig = new_figure(1.2 * cols, 1.2 * rows + 0.5)
    fig.suptitle(title, fontsize=9)
    for i, w in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, i + 1)
        if w.ndim == 3:
            span = w.max() - w.min()
            ax.imshow((w - w.min()) / span if span > 0 else np.full_like(w, 0.5), interpolation="nearest")
        else:
            ax.imshow(w, cmap="gray", interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, out)


def draw_gradcam(image: np.ndarray, heatmap: np.ndarray, out: str | os.PathLike[str], title: str) -> Path:
    """The image, and the heatmap (resized to the image) over it."""
    import tensorflow as tf

    h, w = image.shape[:2]
    heat = tf.image.resize(heatmap[..., None], (h, w), method="bilinear").numpy()[..., 0]
    shown = image.squeeze() if image.shape[-1] == 1 else image
    fig = new_figure(8, 4.3)
    fig.suptitle(title, fontsize=10)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(shown, cmap="gray")
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 2, 2)
    ax.imshow(shown, cmap="gray")
    shade = ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title("Grad-CAM", fontsize=9)
    ax.axis("off")
    fig.colorbar(shade, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(fig, out)


# ----------------------------------------------------------------------------- the command


def _class_index(target: str | os.PathLike[str], name: str) -> int:
    """A class given by name (labels.txt of a run) or by index."""
    from tlkit import runs

    path = Path(target)
    labels = runs.read_labels(path) if path.is_dir() and (path / runs.LABELS).is_file() else None
    if labels and name in labels:
        return labels.index(name)
    if name.isdigit():
        return int(name)
    known = f"; the classes are: {', '.join(labels)}" if labels else " (give a class index: this target has no labels.txt)"
    raise TlkitError(f"unknown class '{name}'{known}")


def inspect_model(
    target: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    layer: str | None = None,
    out: str | os.PathLike[str] | None = None,
    filters: bool = False,
    gradcam_image: str | os.PathLike[str] | None = None,
    class_name: str | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    options: dict[str, Any] | None = None,
    num_classes: int | None = None,
    unsafe: bool = False,
) -> dict[str, Any]:
    """What `tlkit inspect` does: the table, or the pictures asked for. Returns what it made.

    `{"description", "table", "totals", "rows"}` without pictures; with them,
    `{"written": [paths], ...}` (plus Grad-CAM's class and probability).
    """
    wants = [bool(image), filters, bool(gradcam_image)]
    if sum(wants) > 1 and out is not None:
        raise TlkitError("--out names one picture: give it with one of --image, --filters or --gradcam at a time")
    if image and not layer:
        raise TlkitError("--image draws a layer's feature maps: name the layer with --layer (see the table for names)")
    if layer and not (image or gradcam_image):
        raise TlkitError("--layer goes with --image IMG (feature maps) or --gradcam IMG (the Grad-CAM layer)")
    model, description = load_target(
        target, weights=weights, input_size=input_size, options=options, num_classes=num_classes, unsafe=unsafe
    )
    result: dict[str, Any] = {"description": description, "written": []}
    if not any(wants):
        rows = layer_table(model)
        result.update(rows=rows, totals=totals(model, rows), table=format_table(model, rows))
        return result
    if image:
        path = find_layer(model, layer)  # type: ignore[arg-type]
        _, batch = model_image(model, image)
        maps = keras.ops.convert_to_numpy(tap(model, path)(batch, training=False)[0])[0]
        shape = "x".join(str(s) for s in maps.shape)
        shown = np.clip(batch[0], 0, 255).astype(np.uint8)
        result["written"].append(
            draw_feature_maps(maps, out or "feature_maps.png", f"{path} ({shape}) for {Path(image).name}", shown)
        )
    if filters:
        path, kernel, depthwise = first_conv(model)
        shape = "x".join(str(s) for s in kernel.shape)
        result["written"].append(draw_filters(kernel, out or "filters.png", f"{path} kernels ({shape})", depthwise))
    if gradcam_image:
        chosen = _class_index(target, class_name) if class_name else None
        cam = gradcam(model, gradcam_image, chosen, layer if not image else None)
        original, _ = model_image(model, gradcam_image)
        from tlkit import runs

        tpath = Path(target)
        labels = runs.read_labels(tpath) if tpath.is_dir() and (tpath / runs.LABELS).is_file() else None
        label = labels[cam["class_index"]] if labels else f"class {cam['class_index']}"
        title = f"Grad-CAM of '{label}' (p={cam['probability']:.2f}) at {cam['layer']}"
        result["written"].append(draw_gradcam(original, cam["heatmap"], out or "gradcam.png", title))
        result.update(class_index=cam["class_index"], label=label, probability=cam["probability"], layer=cam["layer"])
    return result
