"""tf.data pipelines: resize, cache, shuffle, batch, augment (train only), prefetch.

Images leave the pipeline as float32 in [0, 255] at the model's input size;
the backbone's own normalization lives inside the model, so training and the
exported model see exactly the same preprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tlkit.data.autotune import untuned
from tlkit.data.bundle import SplitData
from tlkit.data.decode import decode_resized, resize_image
from tlkit.data.decoded import Copy, record_bytes
from tlkit.data.scan import kept_files
from tlkit.recipe import Augment

AUTOTUNE = tf.data.AUTOTUNE
CACHE_BUDGET_BYTES = 2 * 1024**3  # decoded + resized uint8 images kept in memory up to this size


class PixelNoise(keras.layers.Layer):
    """Gaussian noise in gray levels (keras GaussianNoise only takes a std up to 1), clipped to [0, 255]."""

    def __init__(self, stddev: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stddev = float(stddev)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = False) -> Any:
        if not training or self.stddev <= 0:
            return images
        noise = keras.random.normal(keras.ops.shape(images), stddev=self.stddev, seed=self.generator)
        return keras.ops.clip(images + keras.ops.cast(noise, images.dtype), 0.0, 255.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


def augmenter(augment: Augment, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers for the transforms whose strength is not zero."""
    layers: list[keras.layers.Layer] = []
    if augment.flip != "none":
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation > 0:
        layers.append(keras.layers.RandomRotation(augment.rotation, fill_mode="reflect", seed=seed + 1))
    if augment.zoom > 0:
        layers.append(keras.layers.RandomZoom(augment.zoom, fill_mode="reflect", seed=seed + 2))
    if augment.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(augment.translation, augment.translation, fill_mode="reflect", seed=seed + 3)
        )
    if augment.contrast > 0:
        layers.append(keras.layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed + 4))
    if augment.brightness > 0:
        layers.append(keras.layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed + 5))
    if augment.noise > 0:
        layers.append(PixelNoise(augment.noise, seed=seed + 6))
    return keras.Sequential(layers, name="augment") if layers else None


def cached_images(
    split: SplitData, image_size: int, *, cache: bool = True, cache_dir: str | Path | None = None
) -> tf.data.Dataset:
    """(uint8 image at image_size, label), decoded and resized once.

    Cached after the first pass: in memory up to CACHE_BUDGET_BYTES, beyond that in
    files under `cache_dir` (if given). Pipelines built on the same object share the
    cache, so the plain and the augmented view of a split decode each image once.
    Image files are decoded straight at the size (`image_stream`).
    """
    nbytes = split.size * image_size * image_size * 3
    if split.image_files and split.paths is not None:
        ds, kept = image_stream(split.paths, split.labels, image_size)
        if kept and nbytes > CACHE_BUDGET_BYTES:
            return ds  # the scan's decoded copies are already the on-disk cache
        return cache_dataset(ds, nbytes, cache, cache_dir, f"images_{image_size}")
    ds = split.dataset.map(
        lambda image, label: (tf.cast(tf.round(resize_image(image, image_size)), tf.uint8), label),
        num_parallel_calls=AUTOTUNE,
    )
    return cache_dataset(ds, nbytes, cache, cache_dir, f"images_{image_size}")


def image_stream(paths: list[str], targets: Any, size: int) -> tuple[tf.data.Dataset, bool]:
    """((uint8 image at `size`, target) of image files, whether it reads the scan's decoded copies).

    The copies this run's scan kept (tlkit.data.scan, or kept from an earlier run: tlkit.data.decoded) where
    there are some, else each file decoded now at the cheapest JPEG scale that covers `size` (`decode_resized`).
    """
    kept = kept_files(paths, size)
    if all(k is not None for k in kept):
        return read_copies(kept, targets, size), True  # type: ignore[arg-type]
    have = [k is not None for k in kept]
    files = tf.constant([os.fsencode(k[0] if k is not None else p) for k, p in zip(kept, paths)])
    offsets = tf.constant([k[1] if k is not None else 0 for k in kept], tf.int64)
    record = record_bytes(size)

    def read_copy(file: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
        pixels = tf.strings.substr(tf.io.read_file(file), tf.cast(offset, tf.int32), record)
        return tf.reshape(tf.io.decode_raw(pixels, tf.uint8, fixed_length=record), [size, size, 3])

    def decode(file: tf.Tensor, _offset: tf.Tensor) -> tf.Tensor:
        return decode_resized(tf.io.read_file(file), size)

    if not any(have):
        ds = tf.data.Dataset.from_tensor_slices((files, offsets, tf.constant(targets)))
        return ds.map(lambda file, at, target: (decode(file, at), target), num_parallel_calls=AUTOTUNE), False
    ds = tf.data.Dataset.from_tensor_slices((files, offsets, tf.constant(have), tf.constant(targets)))
    return ds.map(
        lambda file, at, is_copy, target: (
            tf.cond(is_copy, lambda: read_copy(file, at), lambda: decode(file, at)),
            target,
        ),
        num_parallel_calls=AUTOTUNE,
    ), False


def read_copies(kept: list[Copy], targets: Any, size: int) -> tf.data.Dataset:
    """(uint8 image, target) from decoded copies, in the order given, reading each pack once per run of
    consecutive copies in it.

    The scan packs files in their folder order and a split keeps that order, so a run is most of a pack:
    reading the pack for each image instead read each byte about 20 times (0.4 s of a 4000-photo epoch)."""
    starts = [i for i in range(len(kept)) if i == 0 or kept[i][0] != kept[i - 1][0]]
    record = record_bytes(size)
    files = tf.constant([os.fsencode(kept[i][0]) for i in starts], tf.string)
    offsets = tf.RaggedTensor.from_row_starts(tf.constant([k[1] for k in kept], tf.int32), starts)
    target_runs = tf.RaggedTensor.from_row_starts(tf.constant(targets), starts)

    def read_run(file: tf.Tensor, at: tf.Tensor, run_targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.strings.substr(tf.io.read_file(file), at, tf.fill(tf.shape(at), record))
        images = tf.reshape(tf.io.decode_raw(pixels, tf.uint8, fixed_length=record), [-1, size, size, 3])
        return images, run_targets

    ds = tf.data.Dataset.from_tensor_slices((files, offsets, target_runs))
    ds = ds.map(read_run, num_parallel_calls=AUTOTUNE).unbatch()
    return ds.apply(tf.data.experimental.assert_cardinality(len(kept)))  # unbatch loses it: fit() and progress bars count on it


def cache_dataset(ds: tf.data.Dataset, nbytes: int, cache: bool, cache_dir: str | Path | None, name: str) -> tf.data.Dataset:
    """In memory within the budget, else in files under cache_dir (if given), else not at all."""
    if cache and nbytes <= CACHE_BUDGET_BYTES:
        return ds.cache()
    if cache and cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return ds.cache(str(Path(cache_dir) / name))
    return ds


def one_hot(num_classes: int) -> Any:
    """Class indices -> one-hot rows, so label smoothing works."""
    return lambda labels: tf.one_hot(labels, num_classes)


def make_pipeline(
    split: SplitData,
    image_size: int,
    encode: Any,
    batch_size: int,
    *,
    training: bool = False,
    augment: Augment | None = None,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    images: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 images, encode(labels)): `encode` turns a batch of targets into what the loss takes
    (a number of classes means one-hot rows).

    `images` is a `cached_images` dataset to share between pipelines; without it
    the split gets its own (see `cached_images` for the cache).
    """
    if isinstance(encode, int):
        encode = one_hot(encode)
    ds = images if images is not None else cached_images(split, image_size, cache=cache, cache_dir=cache_dir)
    if training:
        ds = ds.shuffle(max(1, min(split.size, 10_000)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda image, label: (tf.cast(image, tf.float32), encode(label)),
        num_parallel_calls=AUTOTUNE,
    )
    aug = augmenter(augment, seed) if training and augment is not None else None
    if aug is not None:
        ds = ds.map(lambda image, label: (aug(image, training=True), label), num_parallel_calls=AUTOTUNE)
    return untuned(ds.prefetch(AUTOTUNE))
