"""Segmentation pipelines: image and mask resized, cached and augmented together."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from tlkit.data.autotune import untuned
from tlkit.data.bundle import SplitData
from tlkit.data.pipeline import AUTOTUNE, PixelNoise, augmenter, cache_dataset, image_stream, resize_image
from tlkit.tasks.segmentation.masks import decode_mask_file
from tlkit.recipe import Augment



def resize_mask(mask: tf.Tensor, size: int) -> tf.Tensor:
    """Nearest neighbour: a mask's values are class ids, never to be blended."""
    return tf.image.resize(mask, (size, size), method="nearest")


def cached_pairs(
    split: SplitData, image_size: int, table: tf.Tensor, *, cache: bool = True, cache_dir: str | Path | None = None
) -> tf.data.Dataset:
    """(uint8 image, uint8 class-index mask [S, S, 1]) at the model size, decoded once (see `cached_images`).

    A mask of another size than its image is simply resized to the model size too.
    """
    def classes(mask: tf.Tensor) -> tf.Tensor:
        return tf.gather(table, tf.cast(resize_mask(mask, image_size), tf.int32))

    if split.paths is not None and split.items is not None and len(split.items) == 2:  # image and mask files
        # images straight at the size, or the scan's decoded copies (one decode per image per run)
        images, _ = image_stream(split.paths, [os.fsencode(m) for m in split.items[1]], image_size)
        ds = images.map(lambda image, mask: (image, classes(decode_mask_file(mask))), num_parallel_calls=AUTOTUNE)
    else:
        ds = split.dataset.map(
            lambda image, mask: (tf.cast(tf.round(resize_image(image, image_size)), tf.uint8), classes(mask)),
            num_parallel_calls=AUTOTUNE,
        )
    return cache_dataset(ds, split.size * image_size * image_size * 4, cache, cache_dir, f"pairs_{image_size}")


def paired_augmenter(augment: Augment, seed: int):
    """One function that moves image and mask together: geometric transforms to both
    (nearest neighbour on the mask), photometric ones to the image only."""
    aug = augmenter(augment, seed)
    if aug is None:
        return None
    layers = list(aug.layers)

    def apply(images: tf.Tensor, masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        data = {"images": images, "segmentation_masks": tf.cast(masks, tf.float32)}
        for layer in layers:
            if isinstance(layer, PixelNoise):  # photometric: the image only
                data["images"] = layer(data["images"], training=True)
            else:
                data = layer(data, training=True)
        return data["images"], tf.cast(tf.round(data["segmentation_masks"]), tf.int32)

    return apply


def make_seg_pipeline(
    split: SplitData,
    image_size: int,
    table: tf.Tensor,
    batch_size: int,
    *,
    training: bool = False,
    augment: Augment | None = None,
    seed: int = 0,
    pairs: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 images [B, S, S, 3], int32 class masks [B, S, S, 1]; 255 = ignore)."""
    ds = pairs if pairs is not None else cached_pairs(split, image_size, table)
    if training:
        ds = ds.shuffle(min(split.size, 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda image, mask: (tf.cast(image, tf.float32), tf.cast(mask, tf.int32)), num_parallel_calls=AUTOTUNE
    )
    aug = paired_augmenter(augment, seed) if training and augment is not None else None
    if aug is not None:
        ds = ds.map(aug, num_parallel_calls=AUTOTUNE)
    return untuned(ds.prefetch(AUTOTUNE))
