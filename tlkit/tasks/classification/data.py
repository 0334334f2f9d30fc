"""Classification data: class subfolders (or train/val/test folders of them) and TFDS class labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tlkit.data.bundle import (
    DataBundle,
    exists,
    fail_on_bad,
    image_file_split,
    is_folder,
    is_url,
    list_files,
    split_folders,
    stratified_split,
    subfolders,
)
from tlkit.data.decode import IMAGE_EXTENSIONS
from tlkit.data.scan import scan_images
from tlkit.data.tfds import as_split, feature_values, split_names, tfds_module, to_rgb
from tlkit.errors import TlkitError


def class_folders(path: str, data: Any, seed: int, progress: bool = True) -> DataBundle:
    """A folder of class subfolders, or of train/ val/ test/ folders that each hold class subfolders.

    A local path or a `tf.io.gfile` URL (gs://, s3://, ram://...) to such a folder.
    """
    folder = path.rstrip("/") if is_url(path) else os.path.expanduser(path)
    if not exists(folder):
        raise TlkitError(f"data folder '{path}' does not exist: give a folder of class subfolders, tfds:NAME or builtin:shapes")
    if not is_folder(folder):
        raise TlkitError(f"data source '{path}' is a file, not a folder of class subfolders")
    explicit = split_folders(folder)
    if "train" in explicit:
        class_names = subfolders(explicit["train"])
        files = {split: _labelled_files(d, class_names) for split, d in explicit.items()}
    else:
        class_names = subfolders(folder)
        files = {"all": _labelled_files(folder, class_names)}
    _check_class_names(class_names, path)
    if len(class_names) < 2:
        raise TlkitError(
            f"data folder '{path}' has {len(class_names)} class folder(s): a classifier needs at least 2, "
            f"laid out as {path}/CLASS_NAME/image.jpg"
        )
    everything = [p for items in files.values() for p, _ in items]
    if not everything:
        raise TlkitError(f"no images found under '{path}' (looked for files by extension in its class folders)")
    scan = scan_images(everything, root=folder, progress=progress)
    fail_on_bad(scan.bad, data.on_bad_file)
    ok = set(scan.good)
    files = {k: [(p, y) for p, y in v if p in ok] for k, v in files.items()}
    if "all" in files:
        files = stratified_split(files["all"], len(class_names), data.val_fraction, data.test_fraction, seed)
    _require_every_class(files.get("train", []), class_names, path)
    splits = {split: _folder_split(items) for split, items in files.items() if items}
    sizes = [(h, w) for w, h in scan.sizes.values()]  # the scan records (width, height); the auto rule reads (height, width)
    return DataBundle(class_names, splits, f"folder {folder}", skipped=scan.bad, info={"image_sizes": sizes})


def _require_every_class(items: list[tuple[str, int]], class_names: list[str], path: str) -> None:
    present = {y for _, y in items}
    missing = [class_names[i] for i in range(len(class_names)) if i not in present]
    if missing:
        raise TlkitError(
            f"class folder(s) with no usable training image: {', '.join(missing)} "
            f"(in '{path}'): add images to them or remove the folder(s)"
        )


def _check_class_names(class_names: list[str], path: str) -> None:
    """Class names go into labels.txt and the export's string tensors: they must be text."""
    for name in class_names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TlkitError(
                f"class folder {name.encode('utf-8', 'surrogateescape')!r} in '{path}' has a name that is not "
                "valid UTF-8: rename it (class names are written to labels.txt and into the export)"
            ) from None


def _labelled_files(folder: Any, class_names: list[str]) -> list[tuple[str, int]]:
    items = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(os.fspath(folder), name)
        if is_folder(class_dir):
            items.extend((p, label) for p in list_files(class_dir, IMAGE_EXTENSIONS))
    return items


def _folder_split(items: list[tuple[str, int]]):
    paths = [p for p, _ in items]
    labels = np.array([y for _, y in items], np.int32)
    return image_file_split(paths, labels)


def label_features(builder) -> tuple[str, str]:
    """(image key, class-label key) of a TFDS dataset: its supervised keys, else the first of each kind."""
    tfds = tfds_module()
    info = builder.info
    if info.supervised_keys and len(info.supervised_keys) == 2 and all(isinstance(k, str) for k in info.supervised_keys):
        image_key, label_key = info.supervised_keys
    else:
        feats = info.features
        images = [k for k, f in feats.items() if isinstance(f, tfds.features.Image)]
        labels = [k for k, f in feats.items() if isinstance(f, tfds.features.ClassLabel)]
        if not images or not labels:
            raise TlkitError(f"TFDS dataset '{info.full_name}' has no image + class label features to classify")
        image_key, label_key = images[0], labels[0]
    if not isinstance(info.features[label_key], tfds.features.ClassLabel):
        raise TlkitError(f"TFDS dataset '{info.full_name}': feature '{label_key}' is not a class label")
    return image_key, label_key


def tfds_classes(builder, name: str, data: Any) -> DataBundle:
    """Any TFDS dataset with an image and a class label; labels remapped to sorted class names."""
    image_key, label_key = label_features(builder)
    original = list(builder.info.features[label_key].names)
    class_names = sorted(original)
    order = np.array([class_names.index(n) for n in original], np.int32)
    remap = tf.constant(order)

    def example(ex: dict) -> tuple[tf.Tensor, tf.Tensor]:
        return to_rgb(ex[image_key]), tf.gather(remap, tf.cast(ex[label_key], tf.int32))

    splits = {}
    for split, tfds_split in split_names(builder, name, data).items():
        raw = np.array(feature_values(builder, tfds_split, label_key, skip=(image_key,)), np.int64)
        splits[split] = as_split(builder, tfds_split, example, order[raw].astype(np.int32) if len(raw) else np.zeros(0, np.int32))
    return DataBundle(class_names, splits, f"{name} ({builder.info.full_name})")


def count_class_folders(source: str) -> int:
    """Classes of a source without reading its images: class folders, the built-in dataset's 4, else 2."""
    if source.strip().startswith("builtin:"):
        return 4  # circle, square, star, triangle
    folder = Path(source).expanduser()
    if folder.is_dir():
        base = folder / "train" if (folder / "train").is_dir() else folder
        count = sum(1 for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if count >= 2:
            return count
    return 2
