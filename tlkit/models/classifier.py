"""Classifier = preprocessing + backbone + GAP head; and the freezing policy of each stage.

The model takes float32 images in [0, 255] at a fixed size and returns logits.
The backbone is one nested model named "backbone" so stages can freeze and
unfreeze it by name, and so features can be read off it later.
"""

from __future__ import annotations

from pathlib import Path

import keras

from tlkit.errors import TlkitError
from tlkit.models.backbones import build_backbone, get_backbone, validate_model
from tlkit.models.preprocess import Preprocess
from tlkit.recipe import Recipe, Stage


def input_size(recipe: Recipe) -> int:
    """The recipe's input size, else the backbone's default."""
    return recipe.model.input_size or get_backbone(recipe.model.backbone).default_size


def check_model(recipe: Recipe) -> None:
    """Fail on a bad backbone, option, size or weights path before any data is read."""
    size = input_size(recipe)
    spec = validate_model(recipe.model.backbone, size, recipe.model.options, recipe.model.weights)
    if spec.name == "scratch":
        from tlkit.models.scratch import block_sizes

        block_sizes(recipe.model.blocks, size)


def build_classifier(recipe: Recipe, num_classes: int) -> keras.Model:
    spec = get_backbone(recipe.model.backbone)
    size = input_size(recipe)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    backbone = build_backbone(
        spec, size, recipe.model.weights, recipe.model.options, blocks=recipe.model.blocks
    )
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if recipe.model.head.dropout > 0:
        x = keras.layers.Dropout(recipe.model.head.dropout, name="head_dropout")(x)
    # float32 logits whatever runtime.precision says: softmax and the loss need the range
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"tlkit_{spec.name}")


def backbone_of(model: keras.Model) -> keras.Model:
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise TlkitError(f"model '{model.name}' has no layer named 'backbone': it was not built by tlkit") from None


def resolve_batchnorm(recipe: Recipe, stage: Stage) -> str:
    """`auto`: pretrained BatchNorm statistics are kept (inference mode); fresh ones must learn."""
    if stage.batchnorm != "auto":
        return stage.batchnorm
    pretrained = recipe.model.backbone != "scratch" and recipe.model.weights != "none"
    return "frozen" if pretrained else "train"


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
    import tlkit.models.decoders  # noqa: F401 - registers the decoders' layers for loading
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
