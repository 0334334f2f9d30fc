"""The one pass over a dataset: every image decoded once, and from that decode its features and its facts.

Each split's own stream (`SplitData.dataset`: the task's reader, files or TFDS) is
mapped to the model input (resized exactly as training resizes) plus a few numbers
per image: size, a fingerprint of the pixels and of the target, a perceptual hash,
the grey-level spread, and for mask targets a histogram of mask values. Only those
numbers and the pooled features are kept, so memory grows by a few hundred bytes
per image whatever the image size.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tlkit.data.autotune import untuned
from tlkit.data.bundle import DataBundle
from tlkit.data.exclude import example_ids
from tlkit.data.pipeline import AUTOTUNE, resize_image

HASH_SIDE = 32  # pHash: DCT of a 32x32 grey image, the top-left 8x8 coefficients against their median
HASH_KEEP = 8


@dataclass
class Scanned:
    """Per image, in bundle order (split by split): what the findings and facts are computed from."""

    ids: list[str]  # absolute path, or SPLIT/INDEX for sources without files
    paths: list[str]  # as the source listed them (what findings print)
    splits: np.ndarray
    labels: np.ndarray  # the split's label rows (class indices, multi-hot rows, zeros for masks)
    features: np.ndarray  # N x D float32
    pixel_key: np.ndarray  # uint64: fingerprint of the decoded pixels (compare with height, width)
    target_key: np.ndarray  # uint64: fingerprint of the target (class, label set or mask)
    phash: np.ndarray  # uint64 perceptual hash
    height: np.ndarray
    width: np.ndarray
    grey_std: np.ndarray  # spread of grey levels: ~0 for a blank frame
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # mask targets: histogram, height, width, per image

    @property
    def size(self) -> int:
        return len(self.ids)


def phash_bits(grey: tf.Tensor) -> tf.Tensor:
    """64 bools: the low-frequency DCT coefficients of a 32x32 grey image above their median (as imagehash.phash)."""
    small = tf.image.resize(grey[..., None], (HASH_SIDE, HASH_SIDE), method="area")[..., 0]
    dct = tf.signal.dct(tf.transpose(tf.signal.dct(small, type=2, norm="ortho")), type=2, norm="ortho")
    low = tf.reshape(tf.transpose(dct)[:HASH_KEEP, :HASH_KEEP], [-1])
    ordered = tf.sort(low)
    half = HASH_KEEP * HASH_KEEP // 2
    return low > (ordered[half - 1] + ordered[half]) / 2.0


def _fingerprint(tensor: tf.Tensor) -> tf.Tensor:
    return tf.bitcast(tf.fingerprint(tf.reshape(tensor, [1, -1]))[0], tf.int64)


def _per_image(size: int, mask_target: bool) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    def stats(image: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(image)
        grey = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))[..., 0]
        out = {
            "pixels": tf.round(resize_image(image, size)),  # as cached_images: rounded to uint8 levels
            "height": shape[0],
            "width": shape[1],
            "pixel_key": _fingerprint(image),  # the same pixels = the same key and the same height, width
            "target_key": _fingerprint(target),
            "phash": phash_bits(grey),
            "grey_std": tf.math.reduce_std(grey),
        }
        if mask_target:
            values = tf.cast(tf.reshape(target, [-1]), tf.int32)
            out["mask_hist"] = tf.math.bincount(values, minlength=256, maxlength=256, dtype=tf.int64)
            out["mask_height"], out["mask_width"] = tf.shape(target)[0], tf.shape(target)[1]
        return out

    return stats


def is_mask_target(bundle: DataBundle) -> bool:
    """Targets that are images themselves (a mask per image), told from the stream's shapes, not the task."""
    first = next(iter(bundle.splits.values()))
    spec = first.dataset.element_spec
    return isinstance(spec, tuple) and len(spec) == 2 and spec[1].shape.rank == 3


def scan_bundle(
    bundle: DataBundle, features: Callable[[tf.Tensor], np.ndarray], size: int, batch: int = 64, progress: bool = True
) -> Scanned:
    """Decode every image of every split once; keep its features and numbers (see the module's docstring)."""
    mask_target = is_mask_target(bundle)
    total = sum(part.size for part in bundle.splits.values())
    bar = keras.utils.Progbar(total, unit_name="image", verbose=1 if progress and sys.stderr.isatty() else 0)
    columns: dict[str, list[np.ndarray]] = {}
    ids: list[str] = []
    paths: list[str] = []
    splits: list[str] = []
    for name, part in bundle.splits.items():
        ids += example_ids(name, part.paths, part.size)
        paths += part.paths if part.paths is not None else [f"{name}/{i}" for i in range(part.size)]
        splits += [name] * part.size
        stream = part.dataset.map(_per_image(size, mask_target), num_parallel_calls=AUTOTUNE)
        for batch_values in untuned(stream.batch(batch).prefetch(AUTOTUNE)):
            columns.setdefault("features", []).append(features(batch_values.pop("pixels")))
            for key, value in batch_values.items():
                columns.setdefault(key, []).append(value.numpy())
            bar.add(len(columns["features"][-1]))
    return _collect(bundle, columns, ids, paths, splits)


def _collect(bundle: DataBundle, columns: dict[str, list[np.ndarray]], ids: list[str], paths: list[str],
             splits: list[str]) -> Scanned:
    def col(key: str, dtype: Any = None) -> np.ndarray:
        parts = columns.get(key) or [np.zeros(0)]
        out = np.concatenate(parts)
        return out.astype(dtype) if dtype is not None else out

    labels = [part.labels for part in bundle.splits.values()]
    bits = col("phash", bool).reshape(-1, HASH_KEEP * HASH_KEEP)
    phash = np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64) if len(bits) else np.zeros(0, np.uint64)
    masks = {k: col(k) for k in ("mask_hist", "mask_height", "mask_width") if k in columns}
    return Scanned(
        ids=ids, paths=paths, splits=np.array(splits), labels=np.concatenate(labels) if labels else np.zeros(0),
        features=col("features", np.float32).reshape(len(ids), -1),
        pixel_key=col("pixel_key", np.int64).view(np.uint64), target_key=col("target_key", np.int64).view(np.uint64),
        phash=phash, height=col("height", np.int64), width=col("width", np.int64),
        grey_std=col("grey_std", np.float32), masks=masks,
    )
