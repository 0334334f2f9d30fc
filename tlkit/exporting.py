"""Export a run as a TF Serving SavedModel that carries its own preprocessing and labels.

Layout: OUT/VERSION/{saved_model.pb, variables/, labels.txt, metadata.json}.
Signatures take raw images (uint8 of any size, or encoded JPEG/PNG/GIF/BMP
bytes), resize and normalize inside, and return probabilities and class names,
so a caller never needs to know how the backbone wants its pixels.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tlkit import runs
from tlkit.data.decode import decode_image
from tlkit.data.pipeline import resize_image
from tlkit.errors import TlkitError
from tlkit.models.classifier import input_size, load_run_model
from tlkit.recipe import Recipe, load_recipe
from tlkit.tasks import get_task

METADATA = "metadata.json"


def _versions(out: Path) -> list[int]:
    if not out.is_dir():
        return []
    return sorted(int(p.name) for p in out.iterdir() if p.is_dir() and p.name.isdigit())


def find_export(path: str | Path, required: bool = True) -> Path | None:
    """A version folder itself, or the newest version under a model folder (TF Serving's rule)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = _versions(path)
    if versions and (path / str(versions[-1]) / "saved_model.pb").is_file():
        return path / str(versions[-1])
    if required:
        raise TlkitError(
            f"'{path}' is not a tlkit export: expected a folder with saved_model.pb, "
            "or a model folder with numbered versions (saved_models/NAME/1/saved_model.pb)"
        )
    return None


def export_folder(recipe: Recipe) -> Path:
    """Where a recipe's exports go by default: export.dir/NAME."""
    return Path(recipe.export.dir) / (recipe.export.name or recipe.name)


def export_of_run(run_dir: str | Path, recipe: Recipe) -> Path | None:
    """The version folder already exported from `run_dir` (by its metadata), if any."""
    out = export_folder(recipe)
    target = str(Path(run_dir).resolve())
    for version in reversed(_versions(out)):
        meta = out / str(version) / METADATA
        try:
            if runs.read_json(meta).get("run_dir") == target:
                return out / str(version)
        except (OSError, ValueError):
            continue
    return None


def _remove_stale_temporaries(out: Path) -> None:
    """`.tmp-VERSION-PID` folders of exports that were killed (their process is gone)."""
    for tmp in out.glob(".tmp-*-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def load_export_recipe(export_dir: Path) -> Recipe:
    meta = runs.read_json(Path(export_dir) / METADATA)
    return load_recipe(meta["recipe"])


def build_archive(model: keras.Model, labels: list[str], size: int) -> keras.export.ExportArchive:
    """The serving endpoints around a trained Keras classifier."""
    names = tf.constant(labels)

    def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = tf.nn.softmax(model(images, training=False), axis=-1)
        return {"probabilities": probs, "classes": tf.gather(names, tf.argmax(probs, axis=-1))}

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(resize_image(images, size))

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict(_decode_batch(image_bytes, size))

    pooled = keras.Model(model.inputs, model.get_layer("pool").output)  # shares the classifier's weights

    def serve_embeddings(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": pooled(resize_image(images, size), training=False)}

    def serve_embeddings_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": pooled(_decode_batch(image_bytes, size), training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(pooled)
    archive.add_endpoint(
        "serving_default", serve_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    )
    archive.add_endpoint(
        "serving_bytes", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "embeddings", serve_embeddings, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    )
    archive.add_endpoint(
        "embeddings_bytes", serve_embeddings_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    return archive


def _decode_batch(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded images of any sizes -> one float32 batch at the model's size."""
    return tf.map_fn(
        lambda b: resize_image(decode_image(b), size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
    )


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    version: int | None = None,
    quiet: bool = False,
    unsafe: bool = False,
) -> Path:
    """Write OUT/VERSION atomically: a failed or killed export leaves no partial version folder.

    `unsafe=True` lets the run's .keras file run Python code it carries (Lambda layers).
    """
    run_dir = runs.require_run_dir(run_dir)
    recipe = load_recipe(run_dir / runs.RECIPE)
    labels = runs.read_labels(run_dir)
    out = Path(out) if out is not None else export_folder(recipe)
    existing = _versions(out)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    if version < 0:
        raise TlkitError(f"export version must be a non-negative integer, got {version}")
    final = out / str(version)
    if final.exists():
        raise TlkitError(f"{final} already exists: choose another --version (existing: {existing})")
    model = load_run_model(run_dir, unsafe=unsafe)
    size = input_size(recipe)
    metrics = runs.read_json(run_dir / runs.METRICS) if (run_dir / runs.METRICS).is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        get_task(recipe).archive(model, labels, size).write_out(str(tmp), verbose=False)
        runs.write_labels(tmp, labels)
        runs.write_json(tmp / METADATA, _metadata(recipe, labels, size, metrics, run_dir))
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if runs.is_disk_full(exc):
            raise runs.disk_full_error(final) from None
        raise
    if not quiet:
        print(f"exported SavedModel to {final}", flush=True)
    return final


def _metadata(recipe: Recipe, labels: list[str], size: int, metrics: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return {
        "task": recipe.task,
        "backbone": recipe.model.backbone,
        "input_size": size,
        "labels": labels,
        "metrics": metrics,
        "signatures": get_task(recipe).signatures,
        "recipe": recipe.to_dict(),
        "run_dir": str(run_dir.resolve()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": runs.package_versions(),
    }
