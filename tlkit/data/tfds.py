"""TFDS plumbing every task shares: which split strings to read, counts, labels without decoding.

What a task reads from each example (a class label, a mask, a sequence of labels)
is the task's; which TFDS splits become train/val/test, and how a missing one is
carved from train, is the same for all of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError


def tfds_module():
    import tensorflow_datasets as tfds  # slow import: only when a TFDS source is used

    return tfds


def prepare_builder(name: str, data_dir: str | None):
    """The ready builder of a TFDS dataset, or one line saying why it cannot be had."""
    tfds = tfds_module()
    if not name:
        raise TlkitError("data.source 'tfds:' needs a dataset name, e.g. tfds:tf_flowers")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # DatasetNotFoundError and friends
        raise TlkitError(f"TFDS dataset '{name}' not found: {str(exc).splitlines()[0]}") from None
    try:
        builder.download_and_prepare()
    except Exception as exc:
        raise TlkitError(
            f"could not prepare TFDS dataset '{name}' in {builder.data_dir}: {str(exc).splitlines()[0]}. "
            "Without network, prepare it on a connected machine and point data.tfds_data_dir at the copy."
        ) from None
    return builder


def split_names(builder, name: str, data: Any) -> dict[str, str]:
    """train/val/test -> TFDS split strings; missing val/test are carved from train by TFDS slicing."""
    available = dict(builder.info.splits.items())

    def pick(wanted: str | None, default: str) -> str | None:
        if wanted is not None:
            base = wanted.split("[")[0]
            if available and base not in available:
                raise TlkitError(f"TFDS dataset '{name}' has no split '{base}'; it has: {', '.join(available)}")
            return wanted
        return default if default in available or (not available and default == "train") else None

    train = pick(data.train_split, "train")
    val = pick(data.val_split, "validation")
    test = pick(data.test_split, "test")
    if train is None:
        raise TlkitError(f"TFDS dataset '{name}' has no split 'train'; set data.train_split to one of: {', '.join(available)}")
    if val is None and data.val_fraction > 0 or test is None and data.test_fraction > 0:
        n_train = num_examples(builder, train)
        n_val = int(round(n_train * data.val_fraction)) if val is None else 0
        n_test = int(round(n_train * data.test_fraction)) if test is None else 0
        keep = n_train - n_val - n_test
        if val is None and n_val:
            val = f"{train}[{keep}:{keep + n_val}]"
        if test is None and n_test:
            test = f"{train}[{keep + n_val}:]"
        train = f"{train}[:{keep}]"
    return {k: v for k, v in (("train", train), ("val", val), ("test", test)) if v}


def num_examples(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except KeyError:  # split info missing (e.g. tfds.testing.mock_data): count
        return int(builder.as_dataset(split=split, shuffle_files=False).reduce(0, lambda n, _: n + 1))


def feature_values(builder, split: str, key: str, skip: tuple[str, ...] = ()) -> list[np.ndarray]:
    """One feature of every example of a split, without decoding the features in `skip` (the images)."""
    tfds = tfds_module()
    decoders = {k: tfds.decode.SkipDecoding() for k in skip}
    raw = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    return [np.asarray(v) for v in raw.map(lambda ex: ex[key]).as_numpy_iterator()]


def image_features(builder) -> list[str]:
    tfds = tfds_module()
    return [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = tf.shape(image)[-1]
    image = tf.cond(channels == 1, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    return tf.ensure_shape(image, [None, None, 3])


def as_split(builder, split: str, example_fn, labels: np.ndarray) -> Any:
    """A TFDS split as a SplitData of `example_fn(example)` pairs."""
    from tlkit.data.bundle import SplitData

    ds = builder.as_dataset(split=split, shuffle_files=False)
    return SplitData(ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE), labels)
