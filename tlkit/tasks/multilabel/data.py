"""Multi-label data: a folder of images with a CSV of labels, or a TFDS sequence-of-class-labels feature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tlkit.data.bundle import DataBundle, fail_on_bad, image_file_split
from tlkit.data.scan import scan_images
from tlkit.data.tfds import as_split, feature_values, image_features, split_names, tfds_module, to_rgb
from tlkit.errors import TlkitError
from tlkit.tasks.multilabel.labels import multi_hot, read_label_csv, split_indices, unused_labels


def csv_path(path: str, data: Any) -> Path:
    """The CSV of a folder source: `data.source` itself, or `data.labels` inside the folder (or as a path)."""
    source = Path(path).expanduser()
    if source.is_file():
        return source
    if not source.exists():
        raise TlkitError(f"data source '{path}' does not exist: give a folder with {data.labels}, the CSV itself, or tfds:NAME")
    labels = Path(data.labels).expanduser()
    return labels if labels.is_absolute() else source / labels


def csv_folder(path: str, data: Any, seed: int, progress: bool = True) -> DataBundle:
    """Images listed in a CSV (`path,labels`); an image with no labels is a negative, not a bad file."""
    csv_file = csv_path(path, data)
    rows, class_names = read_label_csv(csv_file)
    paths = [p for p, _ in rows]
    scan = scan_images(paths, root=csv_file, progress=progress)
    good, bad = scan.good, scan.bad
    fail_on_bad(bad, data.on_bad_file)
    ok = set(good)
    rows = [(p, labels) for p, labels in rows if p in ok]
    if not rows:
        raise TlkitError(f"no readable image listed in {csv_file} ({len(bad)} skipped)")
    targets = multi_hot([labels for _, labels in rows], class_names)
    parts = split_indices(len(rows), data.val_fraction, data.test_fraction, seed)
    require_used(targets[parts["train"]], class_names, str(csv_file))
    splits = {k: _csv_split([rows[i][0] for i in idx], targets[idx]) for k, idx in parts.items() if len(idx)}
    return DataBundle(class_names, splits, f"{csv_file} ({len(rows)} images)", skipped=bad)


def require_used(train_targets: np.ndarray, class_names: list[str], where: str) -> None:
    unused = unused_labels(train_targets, class_names)
    if unused:
        raise TlkitError(
            f"label(s) {', '.join(unused)} of {where} are on no training image (after the split and skipped files): "
            "add images with them, remove them, or lower data.val_fraction/test_fraction"
        )


def _csv_split(paths: list[str], targets: np.ndarray):
    return image_file_split(paths, targets)


def sequence_feature(builder, wanted: str | None) -> str:
    """The TFDS feature that is a sequence of class labels (the first one, unless `wanted` names it)."""
    tfds = tfds_module()
    feats = builder.info.features
    found = [
        k for k, f in feats.items()
        if isinstance(f, tfds.features.Sequence) and isinstance(f.feature, tfds.features.ClassLabel)
    ]
    if wanted is not None and wanted not in found:
        raise TlkitError(f"TFDS dataset '{builder.info.full_name}': '{wanted}' is not a sequence of class labels; those are: {found}")
    if not found:
        raise TlkitError(
            f"TFDS dataset '{builder.info.full_name}' has no sequence-of-class-labels feature for multi-label "
            "classification (the built-in multi-label data is builtin:shapes/multi)"
        )
    return wanted or found[0]


def tfds_labels(builder, name: str, data: Any) -> DataBundle:
    """Any TFDS dataset with an image and a sequence of class labels; classes remapped to sorted names."""
    label_key = sequence_feature(builder, data.labels_feature)
    image_key = "image" if "image" in image_features(builder) else image_features(builder)[0]
    original = list(builder.info.features[label_key].feature.names)
    class_names = sorted(original)
    order = np.array([class_names.index(n) for n in original], np.int64)
    remap, c = tf.constant(order), len(class_names)

    def example(ex: dict) -> tuple[tf.Tensor, tf.Tensor]:
        ids = tf.gather(remap, tf.cast(ex[label_key], tf.int64))
        return to_rgb(ex[image_key]), tf.clip_by_value(tf.reduce_sum(tf.one_hot(ids, c), axis=0), 0.0, 1.0)

    splits = {}
    for split, tfds_split in split_names(builder, name, data).items():
        values = feature_values(builder, tfds_split, label_key, skip=(image_key,))
        targets = multi_hot([[class_names[order[i]] for i in v] for v in values], class_names)
        splits[split] = as_split(builder, tfds_split, example, targets)
    return DataBundle(class_names, splits, f"{name} ({builder.info.full_name})")
