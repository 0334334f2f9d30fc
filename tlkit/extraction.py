"""Features for other models: pooled backbone activations of every image, streamed in batches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tlkit import runs
from tlkit.errors import TlkitError

POOLS = ("avg", "max", "none")


def feature_model(model: keras.Model, layer: str | None = None, pool: str = "avg") -> keras.Model:
    """image -> features of a tlkit classifier: its pooled backbone output, or any backbone layer."""
    from tlkit.models.parts import has_pool, pooled_features
    from tlkit.models.stages import backbone_of

    if pool not in POOLS:
        raise TlkitError(f"--pool must be one of {', '.join(POOLS)}, got '{pool}'")
    backbone = backbone_of(model)
    if layer is None and pool == "avg" and has_pool(model):
        return pooled_features(model)
    if layer is not None:
        try:
            target = backbone.get_layer(layer)
        except ValueError:
            names = [l.name for l in backbone.layers]
            import difflib

            close = difflib.get_close_matches(layer, names, n=3)
            raise TlkitError(
                f"backbone has no layer '{layer}'" + (f"; close: {', '.join(close)}" if close else "")
                + " (see `tlkit inspect` or keras model.summary() for the names)"
            ) from None
        inner = keras.Model(backbone.inputs, target.output)
    else:
        inner = backbone
    x = model.get_layer("preprocess").output
    x = inner(x)
    if len(x.shape) == 4:
        if pool == "avg":
            x = keras.layers.GlobalAveragePooling2D()(x)
        elif pool == "max":
            x = keras.layers.GlobalMaxPooling2D()(x)
        else:
            x = keras.layers.Flatten()(x)
    return keras.Model(model.inputs, x, name="features")


def _source_model(
    source: str | Path, weights: str | None, input_size: int | None, options: dict[str, Any] | None, unsafe: bool = False
):
    """(keras model with a backbone, recipe) for a run directory or a backbone name."""
    from tlkit.models.heads import build_classifier
    from tlkit.models.stages import check_model, load_run_model
    from tlkit.tasks import load_recipe

    path = Path(source)
    if path.is_dir():
        run_dir = runs.require_run_dir(path)
        return load_run_model(run_dir, unsafe=unsafe), load_recipe(run_dir / runs.RECIPE)
    model_section: dict[str, Any] = {"backbone": str(source), "options": options or {}}
    if weights is not None:
        model_section["weights"] = weights
    if input_size is not None:
        model_section["input_size"] = input_size
    recipe = load_recipe({"name": "extract", "model": model_section})
    check_model(recipe)
    return build_classifier(recipe, num_classes=1), recipe


def extract(
    source: str | Path,
    data: str,
    *,
    split: str | None = None,
    layer: str | None = None,
    pool: str = "avg",
    out: str | Path | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    options: dict[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    unsafe: bool = False,
) -> dict[str, np.ndarray]:
    """`{"features": N x D float32, "paths", "labels", "label_names", "splits"}`, also written to `out` (.npz).

    SOURCE is a run directory, an export (its `embeddings` signature) or a backbone
    name (with `weights`). Every split of `data` is extracted unless `split` names one.
    """
    from tlkit.targets import resolve_target
    from tlkit.tasks import get_task, load_data

    found = resolve_target(source, ("run", "export", "backbone"))
    if found.kind == "export":
        if layer is not None or pool != "avg":
            raise TlkitError("an export carries pooled features only: --layer and --pool need a run directory or backbone")
        if found.fmt.filename is not None or "embeddings" not in found.meta().get("signatures", {}):
            raise TlkitError(f"{source} has no embeddings signature: extract from a SavedModel export of a pooling-head task, "
                             "or from the run directory")
        recipe = found.recipe()
        embed = tf.saved_model.load(str(found.path)).signatures["embeddings"]

        def fn(images: tf.Tensor) -> np.ndarray:
            return embed(images=tf.cast(images, tf.uint8))["embeddings"].numpy()

    else:
        model, recipe = _source_model(source, weights, input_size, options, unsafe)
        features = feature_model(model, layer, pool)
        call = tf.function(lambda x: features(x, training=False), reduce_retracing=True)

        def fn(images: tf.Tensor) -> np.ndarray:
            return call(images).numpy()

    bundle = load_data(recipe, progress=progress, source=data)
    task = get_task(recipe)
    names = [split] if split else list(bundle.splits)
    unknown = [n for n in names if n not in bundle.splits]
    if unknown:
        raise TlkitError(f"split '{unknown[0]}' is not available; this data has: {', '.join(bundle.splits)}")
    total = sum(bundle.splits[n].size for n in names)
    chunks, labels, paths, splits = [], [], [], []
    bar = keras.utils.Progbar(total, unit_name="image", verbose=1 if progress and sys.stderr.isatty() else 0)
    for name in names:
        part = bundle.splits[name]
        for images, _ in task.eval_pipeline(bundle, recipe, name, batch_size):
            chunks.append(fn(images).astype(np.float32))
            bar.add(len(chunks[-1]))
        labels.append(part.labels)
        paths.extend(part.paths or [f"{name}/{i}" for i in range(part.size)])
        splits.extend([name] * part.size)
    result = {
        "features": np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int32),
        "paths": np.array(paths),
        "splits": np.array(splits),
        "label_names": np.array(bundle.class_names),
    }
    if out is not None:
        _save_npz(Path(out), result)
    return result


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write beside, then rename: an interrupted extraction leaves no half file."""
    import os
    import tempfile

    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def feature_function(
    source: str | Path | dict[str, Any],
    weights: str | None = None,
    input_size: int | None = None,
    options: dict[str, Any] | None = None,
    unsafe: bool = False,
) -> tuple[Any, Any]:
    """(float32 images [B, S, S, 3] in [0, 255] -> pooled features as numpy, recipe) of a run directory, a backbone
    name or a recipe's `model` section (a dict).

    For callers that build their own pass over the images (doctor) and want the
    features `extract` would give.
    """
    if isinstance(source, dict):
        from tlkit.models.heads import build_classifier
        from tlkit.models.stages import check_model
        from tlkit.tasks import load_recipe

        recipe = load_recipe({"name": "features", "model": source})
        check_model(recipe)
        model = build_classifier(recipe, num_classes=1)
    else:
        model, recipe = _source_model(source, weights, input_size, options, unsafe)
    features = feature_model(model)
    call = tf.function(lambda x: features(x, training=False), reduce_retracing=True)
    return (lambda images: call(images).numpy().astype(np.float32)), recipe
