"""Segmentation data: images paired with masks, and the mask value -> class mapping.

A segmentation source yields `(uint8 image [H, W, 3], uint8 mask [h, w, 1])`
with the mask's raw pixel values; `MaskMapping.table` turns raw values into
class indices (IGNORE for `ignore` values) inside the pipeline, so the same
data can be read with another mapping without rewriting files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tlkit.data.bundle import DataBundle, SplitData, fail_on_bad, file_split, split_folders, stratified_split
from tlkit.data.decode import IMAGE_EXTENSIONS, decode_image
from tlkit.data.scan import scan_images
from tlkit.errors import TlkitError

IGNORE = 255  # class index of pixels left out of loss and metrics
MASK_EXTENSIONS = {".png", ".bmp", ".gif", ".tif", ".tiff"}  # lossless only: JPEG blurs class indices
BINARY = {0: "background", 255: "foreground"}


@dataclass(frozen=True)
class MaskMapping:
    """Raw mask values -> class indices; several values may share a class."""

    values: dict[int, str]
    ignore: tuple[int, ...] = ()

    @property
    def class_names(self) -> list[str]:
        names: list[str] = []
        for value in sorted(self.values):
            if self.values[value] not in names:
                names.append(self.values[value])
        return names

    def lookup(self) -> np.ndarray:
        """256 entries: class index per raw value, IGNORE for ignored ones, -1 for unexpected ones."""
        table = np.full(256, -1, np.int32)
        names = self.class_names
        for value, name in self.values.items():
            table[value] = names.index(name)
        for value in self.ignore:
            table[value] = IGNORE
        return table

    def table(self) -> tf.Tensor:
        """uint8 lookup for the pipeline; unexpected values (screened out before) become IGNORE."""
        t = self.lookup()
        return tf.constant(np.where(t < 0, IGNORE, t).astype(np.uint8))

    def unexpected(self, mask: np.ndarray) -> list[int]:
        present = np.unique(mask)
        return [int(v) for v in present if self.lookup()[v] < 0]


def mapping_for(data: Any, default: dict[int, str]) -> MaskMapping:
    values = data.masks.values if data.masks.values is not None else default
    overlap = sorted(set(values) & set(data.masks.ignore))
    if overlap:
        raise TlkitError(f"data.masks: value(s) {overlap} are both in values and in ignore; keep each in one")
    return MaskMapping(dict(values), tuple(data.masks.ignore))


def read_mask(path: str) -> np.ndarray:
    """A mask file's stored values as uint8 [H, W] (palette PNGs give their indices, not colours)."""
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)
        if im.mode in ("P", "L"):
            arr = np.asarray(im)
        elif im.mode in ("I;16", "I;16B", "I", "F"):
            arr = np.asarray(im).astype(np.int64)
            if arr.max() > 255 or arr.min() < 0:
                raise ValueError(f"mask values up to {arr.max()} do not fit 8 bits")
        else:  # RGB(A) / LA: a grey mask saved in colour; the first channel holds the value
            arr = np.asarray(im.convert("RGB"))[..., 0]
    return np.ascontiguousarray(arr.astype(np.uint8))


def decode_mask_file(path: tf.Tensor) -> tf.Tensor:
    """A mask file as uint8 [H, W, 1] inside the tf.data graph (read as `read_mask` does)."""
    mask = tf.numpy_function(lambda p: read_mask(p.decode())[..., None], [path], tf.uint8, stateful=False)
    return tf.ensure_shape(mask, [None, None, 1])


def _files_by_stem(folder: Path, extensions: set[str] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if f.startswith(".") or (extensions is not None and ext.lower() not in extensions):
                continue
            rel = os.path.relpath(os.path.join(root, stem), folder)
            found.setdefault(rel, os.path.join(root, f))
    return found


def check_pairs(
    pairs: list[tuple[str, str | None]], mapping: MaskMapping, progress: bool = True, root: str | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(usable pairs, [(path, reason)]): undecodable images, missing or undecodable masks, unexpected values.

    The images go through the run's scan (tlkit.data.scan: verdicts remembered for `root`, and inside a
    run each image decoded once, at the model size, for the pipeline); the masks are read here for their values.
    """
    import keras

    scan = scan_images([img for img, _ in pairs], root=root, progress=progress)
    good_images, bad = scan.good, list(scan.bad)
    ok_images = set(good_images)
    usable: list[tuple[str, str]] = []
    bar = keras.utils.Progbar(len(pairs), unit_name="mask", verbose=1 if progress and os.isatty(2) else 0)
    for image, mask in pairs:
        bar.add(1)
        if image not in ok_images:
            continue
        if mask is None:
            bad.append((image, "no mask with the same file name in the masks folder"))
            continue
        try:
            values = read_mask(mask)
        except Exception as exc:  # PIL raises many kinds for broken files
            bad.append((mask, f"mask is not a readable image ({type(exc).__name__}: {str(exc)[:80]})"))
            continue
        unexpected = mapping.unexpected(values)
        if unexpected:
            shown = ", ".join(map(str, unexpected[:8])) + (" ..." if len(unexpected) > 8 else "")
            bad.append((mask, f"mask values {shown} are not in data.masks.values or data.masks.ignore"))
            continue
        usable.append((image, mask))
    return usable, bad


def segmentation_folder(path: str, data: Any, seed: int, progress: bool = True) -> DataBundle:
    """`images/` + `masks/` matched by file stem, or `train|val|test/{images,masks}`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TlkitError(f"data folder '{path}' does not exist: segmentation data is a folder with images/ and masks/")
    im_dir, mk_dir = data.masks.images_dir, data.masks.masks_dir
    roots = split_folders(folder, im_dir)
    if "train" not in roots:
        if not (folder / im_dir).is_dir():
            raise TlkitError(
                f"'{path}' has no '{im_dir}/' folder: segmentation data is {path}/{im_dir}/NAME.jpg with "
                f"{path}/{mk_dir}/NAME.png (or train/ and val/ folders that each hold both)"
            )
        roots = {"all": folder}
    mapping = mapping_for(data, BINARY)
    pairs, orphans = _pairs(roots, im_dir, mk_dir)
    everything = [p for items in pairs.values() for p in items]
    if not everything:
        raise TlkitError(f"no images found under '{path}/{im_dir}'")
    usable, bad = check_pairs(everything, mapping, progress=progress, root=str(folder))
    fail_on_bad(bad, data.on_bad_file, "image/mask file(s) cannot be used")
    ok = set(usable)
    files = {k: [(img, mk) for img, mk in v if (img, mk) in ok] for k, v in pairs.items()}
    if "all" in files:
        # one stratum: stratified_split wants (item, label) pairs
        split = stratified_split([(p, 0) for p in files["all"]], 1, data.val_fraction, data.test_fraction, seed)
        files = {k: [p for p, _ in v] for k, v in split.items()}
    if not files.get("train"):
        raise TlkitError(f"no usable image/mask pair for training under '{path}' ({len(bad)} skipped)")
    desc = f"folder {folder} ({im_dir}/ + {mk_dir}/)" + (f", {orphans} mask(s) without image ignored" if orphans else "")
    splits = {k: _pair_split(v) for k, v in files.items() if v}
    return DataBundle(mapping.class_names, splits, desc, skipped=bad, info={"mapping": mapping})


def _pairs(roots: dict[str, Path], im_dir: str, mk_dir: str) -> tuple[dict[str, list[tuple[str, str | None]]], int]:
    pairs: dict[str, list[tuple[str, str | None]]] = {}
    orphans = 0
    for split, root in roots.items():
        images = _files_by_stem(root / im_dir, IMAGE_EXTENSIONS)
        masks = _files_by_stem(root / mk_dir, MASK_EXTENSIONS) if (root / mk_dir).is_dir() else {}
        pairs[split] = [(images[s], masks.get(s)) for s in sorted(images)]
        orphans += len(set(masks) - set(images))
    return pairs, orphans


def _read_pair(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return decode_image(tf.io.read_file(image)), decode_mask_file(mask)


def _pair_split(items: list[tuple[str, str]]) -> SplitData:
    images = [i for i, _ in items]
    return file_split((images, [m for _, m in items]), np.zeros(len(items), np.int32), _read_pair, images)


# ----------------------------------------------------------------------------- TFDS


def mask_features(builder, data: Any) -> tuple[str, str]:
    """(image key, mask key) of a TFDS dataset with a segmentation mask."""
    from tlkit.data.tfds import image_features

    feats = builder.info.features
    images = image_features(builder)
    mask_key = data.masks.feature or next((k for k in images if k != "image" and "mask" in k), None)
    mask_key = mask_key or (images[1] if len(images) > 1 else None)
    if mask_key is None or mask_key not in feats:
        raise TlkitError(
            f"TFDS dataset '{builder.info.full_name}' has no mask feature: its image features are {images}; "
            "name the mask with data.masks.feature"
        )
    image_key = "image" if "image" in images else next(k for k in images if k != mask_key)
    return image_key, mask_key


def tfds_masks(builder, name: str, data: Any, default_mapping: dict[int, str] | None = None, mask_fn: Any = None) -> DataBundle:
    """A TFDS dataset with an image and a mask feature; `mask_fn(example)` may derive the mask."""
    from tlkit.data.tfds import as_split, num_examples, split_names, to_rgb

    image_key, mask_key = mask_features(builder, data)
    if data.masks.values is None and default_mapping is None:
        raise TlkitError(
            f"TFDS dataset '{name}': set data.masks.values (mask value -> class name), "
            "e.g. {1: pet, 2: background, 3: border} for tfds:oxford_iiit_pet"
        )
    mapping = mapping_for(data, default_mapping or {})
    get_mask = mask_fn or (lambda ex: ex[mask_key])

    def example(ex: dict) -> tuple[tf.Tensor, tf.Tensor]:
        return to_rgb(ex[image_key]), _mask_channel(get_mask(ex))

    splits = {
        split: as_split(builder, tfds_split, example, np.zeros(num_examples(builder, tfds_split), np.int32))
        for split, tfds_split in split_names(builder, name, data).items()
    }
    return DataBundle(mapping.class_names, splits, f"{name} ({builder.info.full_name})", info={"mapping": mapping})


def _mask_channel(mask: tf.Tensor) -> tf.Tensor:
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 2:
        mask = mask[..., None]
    return tf.ensure_shape(tf.cast(mask[..., :1], tf.uint8), [None, None, 1])
