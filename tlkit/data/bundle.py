"""The data types every source and task shares: a split, a bundle of splits, and how splits are cut.

A source (class folders, image + mask folders, a CSV of labels, TFDS) turns a
recipe's `data` section into a `DataBundle`: the class names, decided once, and per
split an unbatched `tf.data.Dataset` of `(uint8 image [H, W, 3], target)`, where the
target is what the task needs (a class index, a mask, a multi-hot vector).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from tlkit.data.decode import decode_image, is_url
from tlkit.errors import TlkitError

SPLITS = ("train", "val", "test")
#: folder names that mean a split, in a folder source that is already split
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
MAX_LISTED = 50  # bad files named in one error


@dataclass
class SplitData:
    """One split: a stream of decoded examples, plus what is known without decoding them.

    `labels` has one row per example (class indices, or a multi-hot matrix; zeros when
    the targets are masks). `items` + `read` (file sources) rebuild the stream for any
    subset without touching the other files.
    """

    source: "tf.data.Dataset | Callable[[], tf.data.Dataset]"  # the stream, or what builds it on first use
    labels: np.ndarray
    paths: list[str] | None = None
    items: tuple[Any, ...] | None = None  # per-example inputs of `read`, e.g. (paths,) or (images, masks)
    read: Callable[..., Any] | None = None
    #: the stream is (decoded `paths[i]`, `labels[i]`): a pipeline may decode the files itself, straight at its
    #: size (tlkit.data.pipeline.image_stream), and a worker may take its shard of the files (`shard`)
    image_files: bool = False

    @property
    def dataset(self) -> tf.data.Dataset:
        """The decoded stream, built on first use: building one traces the decoder (0.7 s a split), and the
        image-file pipelines decode the files themselves, so most runs never ask (a worker's shard neither)."""
        if not isinstance(self.source, tf.data.Dataset):
            self.source = self.source()
        return self.source

    @property
    def size(self) -> int:
        return int(len(self.labels))

    def subset(self, indices: Sequence[int]) -> "SplitData":
        """The examples at `indices` (sorted), decoding only those when the split knows its files."""
        idx = np.asarray(sorted(indices), np.int64)
        if self.items is not None and self.read is not None:
            items = tuple([column[i] for i in idx] for column in self.items)
            paths = [self.paths[i] for i in idx] if self.paths is not None else None
            if self.image_files and paths is not None:
                return image_file_split(paths, self.labels[idx])
            return file_split(items, self.labels[idx], self.read, paths)
        # no files (TFDS): keep the chosen ones among the first images, so the rest is never decoded
        limit = int(idx.max()) + 1 if len(idx) else 0
        keep = tf.constant(idx, tf.int64)
        ds = (
            self.dataset.take(limit)
            .enumerate()
            .filter(lambda i, example: tf.reduce_any(tf.equal(i, keep)))
            .map(lambda i, example: example)
        )
        return SplitData(ds, self.labels[idx])

    def sample(self, n: int, seed: int) -> "SplitData":
        """A seeded sample of at most `n` examples (TFDS: among the first max(10n, 2000))."""
        if self.size <= n:
            return self
        rng = np.random.default_rng(seed)
        pool = self.size if self.items is not None else min(self.size, max(10 * n, 2000))
        return self.subset(rng.choice(pool, n, replace=False))


@dataclass
class DataBundle:
    class_names: list[str]
    splits: dict[str, SplitData]
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # examples left out by data.exclude (tlkit.data.exclude)
    info: dict[str, Any] = field(default_factory=dict)  # what a task keeps beside the data (e.g. a mask mapping)

    def counts(self, split: str) -> dict[str, int]:
        """Images per class (a multi-hot split: images that carry each label)."""
        labels = self.splits[split].labels
        if labels.ndim == 2:
            counts = labels.sum(axis=0).astype(np.int64)
        else:
            counts = np.bincount(labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def only(self, split: str, part: SplitData) -> "DataBundle":
        """The same bundle with one split replaced by `part` and the others dropped."""
        return replace(self, splits={split: part})


def file_split(
    items: tuple[list[Any], ...], labels: np.ndarray, read: Callable[..., Any], paths: list[str] | None = None
) -> SplitData:
    """A split of files: `read(*item)` decodes one example inside the tf.data graph."""
    columns = tuple(list(c) for c in items)

    def stream() -> tf.data.Dataset:
        tensors = tuple(tf.constant([_tensor_item(v) for v in column]) for column in columns)
        ds = tf.data.Dataset.from_tensor_slices(tensors if len(tensors) > 1 else tensors[0])
        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    return SplitData(stream, labels, paths, columns, read)


def image_file_split(paths: list[str], labels: np.ndarray) -> SplitData:
    """Image files with one target row each (a class index, a multi-hot row): what class folders and CSVs give."""
    paths = list(paths)

    def stream() -> tf.data.Dataset:
        files = tf.constant([_tensor_item(p) for p in paths], tf.string)  # typed: a worker's shard may be empty
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(labels)))
        return ds.map(read_image_target, num_parallel_calls=tf.data.AUTOTUNE)

    return SplitData(stream, labels, paths, (paths, list(labels)), read_image_target, image_files=True)


def read_image_target(path: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One example of an `image_file_split`: the decoded image at its own size, and its target."""
    return decode_image(tf.io.read_file(path)), target


def _tensor_item(value: Any) -> Any:
    # bytes, not str: a file name that is not valid UTF-8 arrives as str with surrogates,
    # which TF cannot turn into a string tensor; os.fsencode gives back its exact bytes.
    return os.fsencode(value) if isinstance(value, str) else value


def stratified_split(
    items: list[tuple[Any, int]], num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[Any, int]]]:
    """Per-class seeded shuffle, so every split keeps the class balance and reruns agree."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[Any, int]]] = {"train": [], "val": [], "test": []}
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


def split_folders(folder: Path | str, inner: str = "") -> dict[str, Path | str]:
    """`train/`, `val/` (or `valid/`, `validation/`), `test/` under `folder` (each holding `inner`, if given)."""
    found: dict[str, Path | str] = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if is_folder(os.path.join(os.fspath(folder), name, inner)):
                found[split] = folder / name if isinstance(folder, Path) else os.path.join(folder, name)
    return found


def is_folder(path: Any) -> bool:
    return tf.io.gfile.isdir(os.fspath(path)) if is_url(path) else os.path.isdir(path)


def exists(path: Any) -> bool:
    return tf.io.gfile.exists(os.fspath(path)) if is_url(path) else os.path.exists(path)


def subfolders(folder: Any) -> list[str]:
    """Names of the visible folders directly under `folder`, sorted."""
    if is_url(folder):
        names = [n.rstrip("/") for n in tf.io.gfile.listdir(os.fspath(folder))]
        return sorted(n for n in names if not n.startswith(".") and is_folder(os.path.join(os.fspath(folder), n)))
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def list_files(folder: Path | str, extensions: set[str] | frozenset[str]) -> list[str]:
    """Files under a folder by extension, nested folders included, hidden ones and links to folders not."""
    return list(walk_files(folder, extensions))


def walk_files(folder: Path | str, extensions: set[str] | frozenset[str]) -> Iterator[str]:
    """`list_files` one at a time, in the same sorted order: memory stays flat however many files there are."""
    walk = tf.io.gfile.walk(os.fspath(folder)) if is_url(folder) else os.walk(folder, followlinks=False)
    for root, dirs, files in walk:
        dirs[:] = sorted(d.rstrip("/") for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions:
                yield os.path.join(root, f)


def fail_on_bad(bad: list[tuple[str, str]], policy: str, what: str = "file(s) are not decodable images") -> None:
    """`data.on_bad_file: fail`: one error listing the bad files before anything is written."""
    if not bad or policy != "fail":
        return
    listing = "\n".join(f"  {p}: {why}" for p, why in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise TlkitError(
        f"{len(bad)} {what} (data.on_bad_file: fail):\n{listing}{more}\n"
        "Fix or remove them, or set data.on_bad_file: skip to train without them."
    )
