"""What every tlkit model shares, whatever its task: input size, checks, the freezing policy of a stage, loading.

A tlkit model takes float32 images in [0, 255] at a fixed size and returns logits;
its backbone is one nested model named "backbone", so stages freeze and unfreeze it
by name and features can be read off it later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from tlkit.errors import TlkitError
from tlkit.models.backbones import build_backbone, get_backbone, is_pretrained, resolve_weights, validate_model
from tlkit.models.preprocess import Preprocess
from tlkit.recipe import Recipe, Stage


def input_size(recipe: Recipe) -> int:
    """The recipe's input size, else the backbone's default (also for `auto` before the data has decided it)."""
    size = recipe.model.input_size
    return size if isinstance(size, int) else get_backbone(recipe.model.backbone).default_size


def check_model(recipe: Recipe) -> None:
    """Fail on a bad backbone, option, size or weights path before any data is read."""
    m = recipe.model
    validate_model(m.backbone, input_size(recipe), m.options, m.weights, blocks=m.blocks)


def fetch_pretrained(recipe: Recipe) -> None:
    """With `weights: imagenet`, download (or find in Keras's cache) the backbone's weights now.

    A run reads and checks all its data before building the model; offline, the error
    naming the file to fetch should come first, not after a long scan.
    """
    if weights_of(recipe) == "imagenet":
        m = recipe.model
        build_backbone(get_backbone(m.backbone), input_size(recipe), "imagenet", m.options, blocks=m.blocks)


def weights_of(recipe: Recipe) -> str:
    """The recipe's weights, or its backbone's own default (imagenet for pretrained backbones, none for scratch)."""
    return resolve_weights(recipe.model.backbone, recipe.model.weights)


def backbone_model(recipe: Recipe) -> keras.Model:
    """The recipe's backbone (the nested model named "backbone"), built with its weights and options."""
    m = recipe.model
    return build_backbone(get_backbone(m.backbone), input_size(recipe), weights_of(recipe), m.options, blocks=m.blocks)


def preprocessed_input(recipe: Recipe) -> tuple[Any, Any]:
    """(the model's image input, the same pixels after the backbone's own preprocessing layer)."""
    size = input_size(recipe)
    inputs = keras.Input((size, size, 3), name="image")
    return inputs, Preprocess(get_backbone(recipe.model.backbone).preprocess, name="preprocess")(inputs)


def backbone_of(model: keras.Model) -> keras.Model:
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise TlkitError(f"model '{model.name}' has no layer named 'backbone': it was not built by tlkit") from None


def resolve_batchnorm(recipe: Recipe, stage: Stage) -> str:
    """`auto`: pretrained BatchNorm statistics are kept (inference mode); fresh ones must learn."""
    if stage.batchnorm != "auto":
        return stage.batchnorm
    return "frozen" if is_pretrained(recipe.model.backbone, weights_of(recipe)) else "train"


def apply_stage(model: keras.Model, stage: Stage, batchnorm: str) -> dict[str, int]:
    """Set which backbone layers train in this stage; return trainable/frozen parameter counts.

    `unfreeze: N` counts layers that hold weights, from the top of the backbone.
    A BatchNorm layer with trainable=False runs in inference mode in Keras 3, which
    is how `batchnorm: frozen` keeps the pretrained statistics.
    """
    backbone = backbone_of(model)
    if stage.unfreeze == "none":
        backbone.trainable = False
    else:
        backbone.trainable = True
        weighted = [layer for layer in backbone.layers if layer.weights]
        if isinstance(stage.unfreeze, int):
            keep = set(id(layer) for layer in weighted[len(weighted) - stage.unfreeze :]) if stage.unfreeze else set()
            for layer in weighted:
                layer.trainable = id(layer) in keep
        if batchnorm == "frozen":
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    total = sum(int(keras.ops.size(w)) for w in model.weights)
    return {"trainable": trainable, "frozen": total - trainable}


def load_run_model(run_dir: "str | Path", unsafe: bool = False) -> keras.Model:
    """The run's best checkpoint, in Keras safe mode: a file that carries Python code is refused.

    A `.keras` file can hold a Lambda layer's pickled bytecode, which runs when the
    model is loaded or called. tlkit never writes one, so such a file came from
    elsewhere: it loads only with `unsafe=True` (CLI `--unsafe`), for a file you trust.
    No optimizer (compile=False): predicting needs none, and its tlkit learning-rate
    schedule would not deserialize in a process that never imported tlkit.train.
    """
    from tlkit import runs

    path = Path(run_dir) / runs.BEST
    if not path.is_file():
        raise TlkitError(f"{run_dir} has no {runs.BEST}: the run did not finish an epoch (resume it with --resume)")
    return load_keras_file(path, unsafe=unsafe)


def load_keras_file(path: "str | Path", unsafe: bool = False) -> keras.Model:
    """Load a `.keras` file for inference (no optimizer state), safe mode on unless `unsafe`; failures are one TlkitError line."""
    import tlkit.models.layers  # noqa: F401 - registers tlkit's layers for loading
    import tlkit.models.preprocess  # noqa: F401

    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError with long texts
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise TlkitError(
                f"{path} contains Python code (a Lambda layer or a lambda in its config), which would run on "
                "loading: refused. If you trust where the file came from, pass --unsafe (Python: unsafe=True)"
            ) from None
        raise TlkitError(f"cannot load {path}: {text[:300]}") from None
