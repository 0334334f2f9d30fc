"""Data sources: anything that yields labelled images, behind one registry.

A source turns a recipe's `data` section into a `DataBundle`: the class names
(decided once, sorted), and per split an unbatched `tf.data.Dataset` of
`(uint8 image [H, W, 3], int32 label)`. A new kind of source is one entry in
`SOURCES`: a prefix and a function.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError
from tlkit.recipe import Data

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split: a stream of decoded images, plus what is known without decoding them."""

    dataset: tf.data.Dataset
    labels: np.ndarray
    paths: list[str] | None = None

    @property
    def size(self) -> int:
        return int(len(self.labels))


@dataclass
class DataBundle:
    class_names: list[str]
    splits: dict[str, SplitData]
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mapping: Any = None  # segmentation: tlkit.data.masks.MaskMapping

    def counts(self, split: str) -> dict[str, int]:
        counts = np.bincount(self.splits[split].labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


SourceFn = Callable[[str, Data, int, str], DataBundle]  # (rest, data, seed, task)
SOURCES: dict[str, SourceFn] = {}


def register_source(prefix: str) -> Callable[[SourceFn], SourceFn]:
    """Register a source for `prefix:REST` strings."""

    def wrap(fn: SourceFn) -> SourceFn:
        SOURCES[prefix] = fn
        return fn

    return wrap


def load_data(data: Data, seed: int, progress: bool = True, task: str = "classification") -> DataBundle:
    """Resolve `data.source` through the registry; a plain path is a folder source.

    Classification splits yield (image, class index); segmentation splits yield
    (image, raw mask values), with `bundle.mapping` to turn values into classes.
    """
    source = data.source.strip()
    prefix, sep, rest = source.partition(":")
    if sep and prefix in SOURCES:
        return SOURCES[prefix](rest, data, seed, task)
    if sep and len(prefix) > 1 and not Path(source).exists():
        close = difflib.get_close_matches(prefix, list(SOURCES), n=1)
        hint = f" Did you mean '{close[0]}:{rest}'?" if close else ""
        raise TlkitError(
            f"unknown data source kind '{prefix}:' in '{source}'. Use a folder path, "
            f"{', '.join(p + ':NAME' for p in SOURCES)}.{hint}"
        )
    if task == "segmentation":
        from tlkit.data.masks import segmentation_folder

        return segmentation_folder(source, data, seed, progress=progress)
    return folder_source(source, data, seed, progress=progress)


# ----------------------------------------------------------------------------- TFDS


def _tfds():
    import tensorflow_datasets as tfds  # slow import: only when a TFDS source is used

    return tfds


@register_source("tfds")
def tfds_source(name: str, data: Data, seed: int, task: str = "classification") -> DataBundle:
    """Any TFDS dataset with an image and a class label; labels remapped to sorted class names."""
    tfds = _tfds()
    if not name:
        raise TlkitError("data.source 'tfds:' needs a dataset name, e.g. tfds:tf_flowers")
    try:
        builder = tfds.builder(name, data_dir=data.tfds_data_dir)
    except Exception as exc:  # DatasetNotFoundError and friends
        raise TlkitError(f"TFDS dataset '{name}' not found: {str(exc).splitlines()[0]}") from None
    try:
        builder.download_and_prepare()
    except Exception as exc:
        raise TlkitError(
            f"could not prepare TFDS dataset '{name}' in {builder.data_dir}: {str(exc).splitlines()[0]}. "
            "Without network, prepare it on a connected machine and point data.tfds_data_dir at the copy."
        ) from None
    return _bundle_from_builder(builder, name, data, seed, task)


@register_source("builtin")
def builtin_source(name: str, data: Data, seed: int, task: str = "classification") -> DataBundle:
    """The generated shapes dataset: `builtin:shapes` or `builtin:shapes/tiny`."""
    from tlkit.data import shapes

    dataset, _, config = (name or "shapes").partition("/")
    if dataset != "shapes":
        raise TlkitError(f"unknown built-in dataset '{dataset}': the built-in dataset is 'builtin:shapes[/CONFIG]'")
    builder = shapes.prepare(config or "default", data_dir=data.tfds_data_dir)
    # masks are 0/1 per image: shape pixels take the value label+1, so classes are background + shapes
    default = {0: "background", **{i + 1: n for i, n in enumerate(shapes.CLASS_NAMES)}}
    return _bundle_from_builder(
        builder, f"builtin:{name}", data, seed, task, default_mapping=default,
        mask_fn=lambda ex: ex["mask"] * tf.cast(ex["label"] + 1, tf.uint8),
    )


def _features(builder) -> tuple[str, str]:
    tfds = _tfds()
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


def _mask_features(builder, data: Data) -> tuple[str, str]:
    """(image key, mask key) of a TFDS dataset with a segmentation mask."""
    tfds = _tfds()
    feats = builder.info.features
    images = [k for k, f in feats.items() if isinstance(f, tfds.features.Image)]
    mask_key = data.masks.feature or next((k for k in images if k != "image" and "mask" in k), None)
    mask_key = mask_key or (images[1] if len(images) > 1 else None)
    if mask_key is None or mask_key not in feats:
        raise TlkitError(
            f"TFDS dataset '{builder.info.full_name}' has no mask feature: its image features are {images}; "
            "name the mask with data.masks.feature"
        )
    image_key = "image" if "image" in images else next(k for k in images if k != mask_key)
    return image_key, mask_key


def _bundle_from_builder(
    builder,
    name: str,
    data: Data,
    seed: int,
    task: str = "classification",
    default_mapping: dict[int, str] | None = None,
    mask_fn: Callable[[dict], tf.Tensor] | None = None,
) -> DataBundle:
    _tfds()  # registers the built-in builder
    mapping = None
    if task == "segmentation":
        from tlkit.data.masks import mapping_for

        image_key, mask_key = _mask_features(builder, data)
        if data.masks.values is None and default_mapping is None:
            raise TlkitError(
                f"TFDS dataset '{name}': set data.masks.values (mask value -> class name), "
                "e.g. {1: pet, 2: background, 3: border} for tfds:oxford_iiit_pet"
            )
        mapping = mapping_for(data, default_mapping or {})
        class_names = mapping.class_names
        get_mask = mask_fn or (lambda ex: ex[mask_key])
        label_key = None
    else:
        image_key, label_key = _features(builder)
        original = list(builder.info.features[label_key].names)
        class_names = sorted(original)
        remap = tf.constant([class_names.index(n) for n in original], tf.int32)
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
    n_train = _num_examples(builder, train)
    if val is None and data.val_fraction > 0 or test is None and data.test_fraction > 0:
        # carve missing splits from train with TFDS slicing: deterministic and streaming
        n_val = int(round(n_train * data.val_fraction)) if val is None else 0
        n_test = int(round(n_train * data.test_fraction)) if test is None else 0
        keep = n_train - n_val - n_test
        if val is None and n_val:
            val = f"{train}[{keep}:{keep + n_val}]"
        if test is None and n_test:
            test = f"{train}[{keep + n_val}:]"
        train = f"{train}[:{keep}]"

    def split_data(split: str) -> SplitData:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        if label_key is None:
            ds = ds.map(
                lambda ex: (_to_rgb(ex[image_key]), _mask_channel(get_mask(ex))), num_parallel_calls=tf.data.AUTOTUNE
            )
            return SplitData(ds, np.zeros(_num_examples(builder, split), np.int32))
        labels = remap.numpy()[_labels(builder, split, image_key, label_key)]
        ds = ds.map(
            lambda ex: (_to_rgb(ex[image_key]), tf.gather(remap, tf.cast(ex[label_key], tf.int32))),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return SplitData(ds, labels.astype(np.int32))

    splits = {"train": split_data(train)}
    if val:
        splits["val"] = split_data(val)
    if test:
        splits["test"] = split_data(test)
    return DataBundle(class_names, splits, f"{name} ({builder.info.full_name})", mapping=mapping)


def _num_examples(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except KeyError:  # split info missing (e.g. tfds.testing.mock_data): count
        return int(builder.as_dataset(split=split, shuffle_files=False).reduce(0, lambda n, _: n + 1))


def _labels(builder, split: str, image_key: str, label_key: str) -> np.ndarray:
    """A split's labels without decoding its images."""
    tfds = _tfds()
    raw = builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})
    batches = list(raw.map(lambda ex: ex[label_key]).batch(4096).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)


def _mask_channel(mask: tf.Tensor) -> tf.Tensor:
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    return tf.ensure_shape(tf.cast(mask[..., :1], tf.uint8), [None, None, 1])


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = tf.shape(image)[-1]
    image = tf.cond(channels == 1, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    return tf.ensure_shape(image, [None, None, 3])


# ----------------------------------------------------------------------------- folders


def _list_images(folder: Path) -> list[str]:
    """Image files under a class folder, nested folders included, hidden ones and links to folders not."""
    from tlkit.data.decode import IMAGE_EXTENSIONS

    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, f))
    return found


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def folder_source(path: str, data: Data, seed: int, progress: bool = True) -> DataBundle:
    """A folder of class subfolders, or of train/ val/ test/ folders that each hold class subfolders."""
    from tlkit.data.decode import scan_files

    folder = Path(path).expanduser()
    if not folder.exists():
        raise TlkitError(f"data folder '{path}' does not exist: give a folder of class subfolders, tfds:NAME or builtin:shapes")
    if not folder.is_dir():
        raise TlkitError(f"data source '{path}' is a file, not a folder of class subfolders")
    explicit = {split: folder / name for split, names in _SPLIT_DIRS.items() for name in names if (folder / name).is_dir()}
    if "train" in explicit:
        class_names = [p.name for p in _class_dirs(explicit["train"])]
        files = {split: _labelled_files(d, class_names) for split, d in explicit.items()}
    else:
        class_names = [p.name for p in _class_dirs(folder)]
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
    good, bad = scan_files(everything, progress=progress)
    if bad and data.on_bad_file == "fail":
        listing = "\n".join(f"  {p}: {why}" for p, why in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise TlkitError(
            f"{len(bad)} file(s) are not decodable images (data.on_bad_file: fail):\n{listing}{more}\n"
            "Remove them, or set data.on_bad_file: skip to train without them."
        )
    ok = set(good)
    files = {k: [(p, y) for p, y in v if p in ok] for k, v in files.items()}
    if "all" in files:
        files = _stratified_split(files["all"], len(class_names), data.val_fraction, data.test_fraction, seed)
    for split, items in files.items():
        if split == "train":
            present = {y for _, y in items}
            missing = [class_names[i] for i in range(len(class_names)) if i not in present]
            if missing:
                raise TlkitError(
                    f"class folder(s) with no usable training image: {', '.join(missing)} "
                    f"(in '{path}'): add images to them or remove the folder(s)"
                )
    splits = {split: _folder_split(items) for split, items in files.items() if items}
    return DataBundle(class_names, splits, f"folder {folder}", skipped=bad)


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


def _labelled_files(folder: Path, class_names: list[str]) -> list[tuple[str, int]]:
    items = []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if class_dir.is_dir():
            items.extend((p, label) for p in _list_images(class_dir))
    return items


def _stratified_split(
    items: list[tuple[str, int]], num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[str, int]]]:
    """Per-class seeded shuffle, so every split keeps the class balance and reruns agree."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in range(num_classes):
        members = [it for it in items if it[1] == label]
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n_val = int(round(len(members) * val_fraction))
        n_test = int(round(len(members) * test_fraction))
        if len(members) - n_val - n_test < 1:
            n_val, n_test = (min(n_val, max(len(members) - 1, 0)), 0)
        out["val"].extend(members[:n_val])
        out["test"].extend(members[n_val : n_val + n_test])
        out["train"].extend(members[n_val + n_test :])
    return {k: sorted(v) for k, v in out.items()}


def _folder_split(items: list[tuple[str, int]]) -> SplitData:
    from tlkit.data.decode import decode_image

    paths = [p for p, _ in items]
    labels = np.array([y for _, y in items], np.int32)
    # bytes, not str: a file name that is not valid UTF-8 arrives as str with surrogates,
    # which TF cannot turn into a string tensor; os.fsencode gives back its exact bytes.
    ds = tf.data.Dataset.from_tensor_slices((tf.constant([os.fsencode(p) for p in paths], tf.string), labels))
    ds = ds.map(lambda p, y: (decode_image(tf.io.read_file(p)), y), num_parallel_calls=tf.data.AUTOTUNE)
    return SplitData(ds, labels, paths)
