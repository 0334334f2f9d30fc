"""Recipes: one validated object for a whole run, from YAML, CLI flags or Python.

A recipe is data. The YAML file, `--set a.b=value` overrides and keyword
arguments of the Python API all resolve to the same `Recipe`, and the run
directory stores its resolved form so any run can be repeated from its folder.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlkit.errors import TlkitError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
QUICKSTART = "quickstart"  # no recipe, no data: the offline built-in run
OWN_IMAGES = "own_images"  # no recipe, your data: the pretrained default made for it


def default_recipe(data_source: Any = None) -> str:
    """The shipped recipe a run without one uses: the quickstart, or with data of your own the own-images default.

    The built-in data (`builtin:...`) keeps the quickstart, the recipe made for it.
    """
    if not data_source or str(data_source).strip().startswith("builtin:"):
        return QUICKSTART
    return OWN_IMAGES


class Section(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored; so is an infinite or NaN number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


PositiveInt = Field(gt=0)


class Augment(Section):
    """Training-only augmentation; each strength 0 turns that transform off."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    rotation: float = Field(0.0, ge=0.0, le=1.0, description="fraction of a full turn, as keras RandomRotation")
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    translation: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    noise: float = Field(
        0.0,
        ge=0.0,
        le=64.0,
        description="std of Gaussian pixel noise in gray levels (0-255); teaches the model to ignore tiny "
        "perturbations, which is what int8 quantization adds",
    )


class Data(Section):
    """Where images come from and how they are split and cleaned."""

    source: str = Field("builtin:shapes", description="a folder, 'tfds:NAME[/CONFIG]' or 'builtin:shapes[/CONFIG]'")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held out for validation when the source has no val split")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="held out for test when the source has no test split")
    train_split: str = Field("train", description="TFDS split name (TFDS sources)")
    val_split: str | None = Field(None, description="TFDS split for validation; default: 'validation' if it exists, else carved from train")
    test_split: str | None = Field(None, description="TFDS split for test; default: 'test' if it exists")
    tfds_data_dir: str | None = Field(None, description="TFDS data dir; default: TFDS's own (~/tensorflow_datasets)")
    on_bad_file: Literal["skip", "fail"] = "skip"
    exclude: str | None = Field(None, description="a file of paths, one a line (doctor's exclude.txt), left out of every split")
    augment: Augment = Field(default_factory=Augment)

    @model_validator(mode="after")
    def _fractions(self) -> "Data":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class ScratchBlock(Section):
    """One Conv -> [BatchNorm] -> activation -> [pool] -> [dropout] block of the from-scratch stack."""

    filters: int = PositiveInt
    kernel_size: int = Field(3, gt=0)
    stride: int = Field(1, gt=0)
    padding: Union[Literal["same", "valid"], int] = "same"
    dilation: int = Field(1, gt=0)
    activation: Literal["relu", "leaky_relu", "elu", "gelu", "selu", "swish", "tanh", "sigmoid", "relu6", "linear"] = "relu"
    batch_norm: bool = True
    pool: Literal["max", "avg", "none"] = "max"
    pool_size: int = Field(2, gt=0)
    pool_stride: int | None = Field(None, gt=0, description="default: pool_size")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("padding")
    @classmethod
    def _padding(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError("padding must be 'same', 'valid' or a non-negative integer")
        return value


def _default_blocks() -> list[ScratchBlock]:
    return [ScratchBlock(filters=f) for f in (32, 64, 128)]


class Head(Section):
    """Global pooling -> dropout -> dense to the classes."""

    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    pool: Literal["avg", "max"] = Field(
        "avg", description="global pooling of the backbone's map: avg, or max (a small object anywhere counts in full)"
    )


class Model(Section):
    """Backbone (a registry name, `scratch` included) and its options; the task adds its head or decoder."""

    backbone: str = "scratch"
    weights: str | None = Field(
        None,
        description="'imagenet', 'none' or a path to a Keras weights file (.h5/.weights.h5); "
        "default: the backbone's own (imagenet for pretrained backbones, none for scratch)",
    )
    input_size: Union[Literal["auto"], int, None] = Field(
        None,
        description="square input side in pixels; auto: from the backbone's sizes and the images' median short side "
        "(tlkit.data.autosize); default: the backbone's",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="backbone constructor options, e.g. {alpha: 0.25}")
    blocks: list[ScratchBlock] = Field(default_factory=_default_blocks, description="from-scratch stack (backbone: scratch)")

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: Any) -> Any:
        if isinstance(value, int) and value <= 0:
            raise ValueError("input_size must be a positive number of pixels or 'auto'")
        return value


class Stage(Section):
    """One call to fit(): which layers train, with which optimizer and schedule."""

    name: str = "stage"
    epochs: Union[Literal["auto"], int] = Field(
        5, description="passes over the training data; auto: `steps` optimizer steps, within [min_epochs, max_epochs]"
    )
    steps: int = Field(500, gt=0, description="epochs: auto: the optimizer steps this stage aims for, whatever the data size")
    min_epochs: int = Field(1, gt=0, description="epochs: auto: at least this many passes (large data)")
    max_epochs: int = Field(50, gt=0, description="epochs: auto: at most this many passes (small data)")
    unfreeze: Union[Literal["none", "all"], int] = Field(
        "all", description="backbone layers that train: none (head only), all, or the top N"
    )
    batchnorm: Literal["auto", "frozen", "train"] = Field(
        "auto",
        description="frozen: the backbone's BatchNorm stays in inference mode; auto: frozen for pretrained weights, train otherwise",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_steps: int | None = Field(None, ge=0, description="warm-up in optimizer steps (replaces warmup_epochs when set)")
    step_every: int = Field(3, gt=0, description="step schedule: epochs between decays")
    step_factor: float = Field(0.1, gt=0.0, le=1.0, description="step/plateau: multiply the rate by this")
    plateau_patience: int = Field(2, gt=0)
    clipnorm: float | None = Field(None, gt=0.0)

    @field_validator("unfreeze")
    @classmethod
    def _unfreeze(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError("unfreeze must be 'none', 'all' or a non-negative number of layers")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        if isinstance(value, int) and value <= 0:
            raise ValueError("epochs must be a positive number or 'auto'")
        return value

    @model_validator(mode="after")
    def _epoch_range(self) -> "Stage":
        if self.min_epochs > self.max_epochs:
            raise ValueError("min_epochs must not exceed max_epochs")
        return self


class EarlyStopping(Section):
    enabled: bool = False
    patience: int = Field(3, gt=0)
    monitor: str = "val_loss"


class Train(Section):
    """What every stage shares."""

    batch_size: int = Field(32, gt=0)
    monitor: str | None = Field(
        None, description="metric that picks the best checkpoint; default: the task's headline metric on val"
    )
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    tensorboard: bool = False
    cache_features: bool = Field(
        True,
        description="a stage with unfreeze: none trains the head on backbone features computed once per image",
    )
    adapt_batchnorm: int = Field(
        0,
        ge=0,
        description="before the first stage, re-estimate the backbone's BatchNorm statistics on up to this many "
        "training batches (AdaBN), so a later stage that trains BatchNorm does not shift the features the head "
        "learned; 0: keep the pretrained statistics",
    )
    feature_views: int = Field(
        1, gt=0, description="with cache_features: 1 = the plain image only; N = it plus N-1 augmented views per image"
    )
    jit_compile: Union[Literal["auto"], bool] = Field(
        "auto", description="XLA-compile train steps; auto: on GPU/TPU only (measured slower on CPU)"
    )
    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="train")], min_length=1)


class Export(Section):
    enabled: bool = Field(True, description="export a SavedModel at the end of finetune")
    dir: str = Field("saved_models", description="exports go to DIR/NAME/VERSION")
    name: str | None = Field(None, description="default: the recipe's name")
    description: str | None = Field(None, description="model description in TFLite metadata and the model card; default: task, backbone and labels")
    author: str | None = Field(None, description="author written into TFLite metadata")
    license: str | None = Field(None, description="licence written into TFLite metadata, e.g. Apache-2.0")


class Runtime(Section):
    """Where and how the run executes; none of it changes what the recipe means."""

    deterministic: bool = Field(False, description="op determinism: a resumed run ends with the same weights (slower)")
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker", "tpu"] = Field(
        "auto",
        description="tf.distribute strategy; auto: multi_worker when TF_CONFIG names several workers, "
        "mirrored when more than one GPU is visible, else one device",
    )
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "float32", description="mixed_float16 for NVIDIA GPUs, mixed_bfloat16 for TPUs and recent CPUs/GPUs"
    )
    devices: list[str] = Field(
        default_factory=list, description="one_device/mirrored: device names, e.g. ['/gpu:0', '/gpu:1'] (default: all GPUs)"
    )
    scale_learning_rate: bool = Field(
        False, description="multiply each stage's learning rate by the number of replicas (linear scaling rule)"
    )
    tpu: str = Field("", description="tpu: the TPU name or address ('' : from the environment, 'local' on a TPU VM)")


class Recipe(Section):
    """A whole run: data, model, training stages, export."""

    name: str = "run"
    task: str = Field("classification", description="a task registry name (classification, segmentation, multilabel)")
    seed: int = 1337
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    train: Train = Field(default_factory=Train)
    export: Export = Field(default_factory=Export)
    runtime: Runtime = Field(default_factory=Runtime)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- loading


def model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic class that owns the field at `loc`, to list its keys in errors."""
    cls: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        elif inner:
            found = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
            if not found:
                return None
            cls = found[0]
        else:
            return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def describe_error(
    err: ValidationError, origin: str, root: type[BaseModel], elsewhere: Callable[[str], str | None] = lambda key: None
) -> str:
    """One line for all of a recipe's problems; `elsewhere(dotted key)` may say which other task has a field."""
    by_place: dict[str, list[str]] = {}
    for e in err.errors():
        # pydantic adds union member tags ('literal[...]', 'int') to the location: drop them
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in {"int", "str", "float"})))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = model_at(root, loc)
            allowed = sorted(owner.model_fields) if owner else []
            msg = f"unknown key '{where}'"
            other = elsewhere(where)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if other:
                msg += f" ({other})"
            elif close:
                msg += f"; did you mean '{close[0]}'?"
            if allowed:
                msg += f" Allowed keys here: {', '.join(allowed)}"
            by_place.setdefault(msg, [])
            continue
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        by_place.setdefault(f"'{where}' = {shown}", []).append(e["msg"].replace("Value error, ", ""))
    lines = [f"{place}: {' or '.join(dict.fromkeys(msgs))}" if msgs else place for place, msgs in by_place.items()]
    return f"invalid recipe ({origin}): " + "; ".join(lines)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` with the value read as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise TlkitError(f"override '{item}' must look like section.key=value, e.g. train.batch_size=16")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise TlkitError(f"override '{item}' has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value == raw.strip() and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-05 (no dot) as text; it is the number the user typed
    return key, value


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict; numeric parts index lists (train.stages.0.epochs)."""
    parts = key.split(".")
    if "*" in parts:  # train.stages.*.epochs=3 sets the key in every item of the list
        star = parts.index("*")
        head = ".".join(parts[:star])
        items = _get(data, parts[:star])
        if not isinstance(items, list):
            raise TlkitError(f"override '{key}': '{head}' is not a list, so '*' cannot index it")
        for i in range(len(items)):
            apply_override(data, ".".join([*parts[:star], str(i), *parts[star + 1 :]]), copy.deepcopy(value))
        return
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise TlkitError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, parts)
        node[idx] = value
    else:
        node[last] = value


def _get(data: Any, parts: list[str]) -> Any:
    node = data
    for part in parts:
        if isinstance(node, list):
            node = _list_item(node, part, parts)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


SHORTCUTS = {
    "data": "data.source",
    "backbone": "model.backbone",
    "weights": "model.weights",
    "input_size": "model.input_size",
    "batch_size": "train.batch_size",
    "epochs": "train.stages.*.epochs",
    "name": "name",
}


def shortcut_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flags and API keywords (`epochs=3`, `train__batch_size=8`) as dotted overrides."""
    out = {}
    for flag, value in flags.items():
        if value is None:
            continue
        out[SHORTCUTS.get(flag, flag.replace("__", "."))] = value
    return out


def _list_index(node: list[Any], part: str, path: list[str]) -> int:
    if not part.lstrip("-").isdigit():
        raise TlkitError(f"override '{'.'.join(path)}': '{part}' must be a list index (0..{len(node) - 1})")
    idx = int(part)
    if not -len(node) <= idx < len(node):
        raise TlkitError(f"override '{'.'.join(path)}': index {idx} is out of range; the list has {len(node)} items")
    return idx


def _list_item(node: list[Any], part: str, path: list[str]) -> Any:
    return node[_list_index(node, part, path)]


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped recipe (`quickstart` -> recipes/quickstart.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / f"{name_or_path}.yaml", RECIPES_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise TlkitError(
        f"recipe '{name_or_path}' not found: give a YAML file path or one of the shipped recipes: {', '.join(shipped) or '(none)'}"
    )


def read_recipe_data(
    source: "str | Path | dict[str, Any] | Recipe | None" = None,
    overrides: "dict[str, Any] | list[str] | None" = None,
) -> tuple[dict[str, Any], list[tuple[str, Any]], str]:
    """(the recipe as a dict, the overrides as (key, value) pairs, where it came from) before validation.

    `overrides` is either {"train.batch_size": 16} or ["train.batch_size=16"]. Validation
    needs the task's recipe class, which the task registry (`tlkit.tasks.load_recipe`) supplies.
    """
    origin = "python"
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    if source is None:
        source = default_recipe(dict(items).get("data.source"))
    if isinstance(source, Recipe):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        path = resolve_recipe_path(source)
        origin = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise TlkitError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise TlkitError(f"recipe {path} must be a mapping of sections (data, model, train, export)")
        data.setdefault("name", path.stem)
        _resolve_relative_source(data, path.parent)
    return data, items, origin


def validate_recipe(
    data: dict[str, Any],
    items: list[tuple[str, Any]],
    origin: str,
    cls: type[Recipe],
    elsewhere: Callable[[str], str | None] = lambda key: None,
) -> Recipe:
    """Apply overrides to `data` and validate it as `cls`; every problem in one line."""
    if items:
        try:  # make defaults explicit so overrides can reach into them (train.stages.*.epochs)
            data = cls.model_validate(data).to_dict()
        except ValidationError:
            pass
    for key, value in items:
        apply_override(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise TlkitError(describe_error(exc, origin, cls, elsewhere)) from None


def _resolve_relative_source(data: dict[str, Any], base: Path) -> None:
    """Relative input paths in a recipe (data folder, TFDS dir, weights file) are relative to the recipe file.

    Output folders (export.dir) stay relative to where tlkit runs, like `runs/`.
    """
    for section, key, keywords in (
        ("data", "source", ()),
        ("data", "tfds_data_dir", ()),
        ("data", "exclude", ()),
        ("model", "weights", ("imagenet", "none")),
    ):
        value = (data.get(section) or {}).get(key)
        if not isinstance(value, str) or value in keywords or Path(value).is_absolute():
            continue
        if ":" in value.split("/")[0]:  # tfds:NAME, builtin:shapes
            continue
        data[section][key] = str((base / value).resolve())


def reference_rows(cls: type[BaseModel], skip: set[str] | None = None, note: str = "") -> list[str]:
    """Markdown rows of every field of a recipe class (minus the keys in `skip`), generated so they never drift."""
    rows: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            ann = field.annotation
            key = f"{prefix}{name}"
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            args = getattr(ann, "__args__", ())
            listed = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is not None:
                walk(sub, key + ".")
                continue
            if skip is not None and key in skip:
                continue
            rows.append(_reference_row(key, field, note))
            if listed is not None:
                walk(listed, key + "[].")

    walk(cls, "")
    return rows


def _reference_row(key: str, field: Any, note: str) -> str:
    ann = field.annotation
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list) and default and isinstance(default[0], BaseModel):
        default = f"{len(default)} items"
    type_text = str(ann).replace("typing.", "").replace("NoneType", "None")
    if getattr(ann, "__origin__", None) is Literal:
        type_text = " / ".join(str(a) for a in ann.__args__)
    elif isinstance(ann, type):
        type_text = ann.__name__
    description = (f"{note} " if note else "") + (field.description or "")
    return f"| `{key}` | {type_text.replace('|', 'or')} | `{default}` | {description.strip()} |"
