"""Which files of a folder are usable images: checked once, remembered, and decoded once per run.

A folder source must know its bad files before it splits the data and before
training starts (README "What happens to each kind of file"), which takes a
decode of every file. :func:`scan_images` makes that decode count:

* **Remembered verdicts.** The verdict of every checked file (usable, or why
  not, plus its width and height) is kept per folder in
  ``$TLKIT_CACHE_DIR/scans/`` (default ``~/.cache/tlkit/scans/``, or under
  ``$XDG_CACHE_HOME``), keyed by path, size and modification time. The next scan
  of the folder checks only new or changed files; ``--rescan`` (``rescan=True``)
  checks everything again. Nothing is written inside the data folder.
* **One decode per image per run.** Inside :func:`scan_options` with a ``size``
  (what `finetune` sets), the check *is* the pipeline's decode: each file is
  decoded at the cheapest JPEG scale that covers the model's input size, resized
  once, and the result is kept (uint8, in a temporary folder) for the input
  pipeline, which then reads it instead of decoding again (:func:`kept_images`).
  Files that fail are checked again alone to get the same reason as ever
  (:func:`tlkit.data.decode.check_file`), so bad files are reported as before.
* **Workers share the check.** With ``workers`` > 1 each worker checks only its
  shard of the files (:func:`shard_of`, the same rule the input pipeline shards
  by) and the verdicts are summed across workers, so every worker knows every
  verdict and keeps only its own shard's images.

The check runs as one ``tf.data`` pass (parallel decode, errors dropped with
``ignore_errors`` and explained afterwards); :func:`tlkit.data.decode.scan_files`
is the plain eager check of a list of files, unchanged.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from tlkit.data.autotune import untuned
from tlkit.data.decode import check_decodes, check_file, decode_for_size, is_url
from tlkit.data.decoded import Copy, DecodedStore, PackWriter, absolute_root, cache_home, folder_digest
from tlkit.data.imagesizes import header_size, sample_paths

__all__ = [
    "ScanOptions",
    "ScanResult",
    "cache_home",
    "kept_files",
    "kept_images",
    "scan_images",
    "scan_options",
    "scan_summary",
    "shard_of",
    "verdict_file",
]

VERDICT_FORMAT = 1
_PROGRESS_MIN_FILES = 200
_SUM_CHUNK = 1 << 20  # verdict rows summed across workers per collective


def verdict_file(root: str | os.PathLike[str]) -> Path:
    """Where the verdicts of the folder (or CSV, or bucket path) `root` are remembered."""
    return cache_home() / "scans" / f"{folder_digest(absolute_root(root))}.json"


def shard_of(path: str, workers: int) -> int:
    """The worker (of `workers`) that checks, decodes and trains on `path`: stable across processes and runs."""
    if workers <= 1:
        return 0
    # a cryptographic digest, not crc32: crc32's low bits are affine in the input bits, so names that differ only
    # in a digit or two (photo_1.jpg, photo_2.jpg ...) could all land with one worker (a test saw 13 of 13)
    return int.from_bytes(hashlib.sha1(os.fsencode(path)).digest()[:8], "big") % workers


@dataclass
class ScanOptions:
    """What a run asks of the scans made while its data is read (see :func:`scan_options`)."""

    size: int | None = None  # decode at this model size and keep the images for the pipelines
    auto: Callable[[list[tuple[int, int]]], Any] | None = None  # with no size: picks it from (height, width) pairs
    auto_choice: Any = None  # what `auto` returned (has .size and .reason), once a scan has asked it
    rescan: bool = False  # ignore remembered verdicts (they are rewritten)
    remember: bool = True
    workers: int = 1
    index: int = 0
    all_sum: Callable[[np.ndarray], np.ndarray] | None = None  # sums an int64 array across workers
    keep_dir: Path | None = None
    kept: dict[tuple[str, int], Copy] = field(default_factory=dict)  # (path, size) -> its decoded image's copy
    stores: list[DecodedStore] = field(default_factory=list)  # the stores this run's scans kept copies in
    files: int = 0  # files the run's scans were given (each once), for `scan_summary`
    checked: int = 0  # of those, decoded by this process (the rest remembered, or another worker's)
    seconds: float = 0.0


_OPTIONS: contextvars.ContextVar[ScanOptions | None] = contextvars.ContextVar("tlkit_scan_options", default=None)


@contextmanager
def scan_options(
    size: int | None = None,
    *,
    rescan: bool = False,
    remember: bool = True,
    workers: int = 1,
    index: int = 0,
    all_sum: Callable[[np.ndarray], np.ndarray] | None = None,
    auto: Callable[[list[tuple[int, int]]], Any] | None = None,
) -> Iterator[ScanOptions]:
    """Scans (and pipelines) inside the block use these options; copies kept only for the run are deleted when it ends.

    `auto` (with no `size`): the first scan picks the size from a seeded sample of its files' sizes
    (remembered, else read from the headers) before it decodes anything, so `model.input_size: auto`
    still costs one decode per image.
    """
    options = ScanOptions(size, auto, None, rescan, remember, workers, index, all_sum)
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)
        if options.keep_dir is not None:
            shutil.rmtree(options.keep_dir, ignore_errors=True)


def current_options() -> ScanOptions:
    return _OPTIONS.get() or ScanOptions()


def kept_files(paths: Sequence[str], size: int) -> list[Copy | None]:
    """The copy (pack file, offset) of each of `paths` decoded at `size` by this run's scan (or kept from an
    earlier run), else None.

    A file of another worker's shard has the copy that worker kept, once it has listed it: the chief
    evaluates every file of the test split, and would otherwise decode half of them again."""
    options = current_options()
    found = [options.kept.get((p, size)) for p in paths]
    for store in options.stores:
        if None not in found:
            break
        if store.size == size:
            store.reload()
            found = [f if f is not None else store.copy_of(p, _stat(p)) for f, p in zip(found, paths)]
    return found


def kept_images(paths: Sequence[str], size: int) -> list[Copy] | None:
    """The copies of `paths` decoded at `size` by this run's scan, or None unless every one was kept."""
    files = kept_files(paths, size)
    return None if any(f is None for f in files) else files  # type: ignore[return-value]


@dataclass
class ScanResult:
    """`good` and `bad` as `scan_files` returns them, plus the (width, height) of every good file."""

    good: list[str]
    bad: list[tuple[str, str]]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    checked: int = 0  # files decoded by this scan (the rest were remembered or another worker's)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- remembered verdicts


def _stat(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns), or None when the file cannot be stat'ed (then it is never remembered)."""
    try:
        if is_url(path):
            st = tf.io.gfile.stat(path)
            return int(st.length), int(st.mtime_nsec)
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except (OSError, tf.errors.OpError, ValueError):
        return None


class _Verdicts:
    """The remembered verdicts of one folder: path -> [size, mtime_ns, reason or None, width, height]."""

    def __init__(self, root: str | None, options: ScanOptions):
        self.file = verdict_file(root) if root is not None and options.remember else None
        self.root = absolute_root(root) if root is not None else None
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if self.file is not None and not options.rescan:
            try:
                data = json.loads(self.file.read_text())
                if data.get("format") == VERDICT_FORMAT:
                    self.entries = data["files"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # unreadable or from another version: check everything again

    def known(self, path: str, stat: tuple[int, int] | None) -> list[Any] | None:
        entry = self.entries.get(path)
        if entry is None or stat is None or tuple(entry[:2]) != stat:
            return None
        return entry

    def record(self, path: str, stat: tuple[int, int] | None, reason: str | None, size: tuple[int, int]) -> None:
        if stat is not None and not reason_is_transient(reason):
            self.entries[path] = [stat[0], stat[1], reason, size[0], size[1]]
            self.changed = True

    def save(self) -> None:
        if self.file is None or not self.changed:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
            tmp.write_text(json.dumps({"format": VERDICT_FORMAT, "root": self.root, "files": self.entries}))
            os.replace(tmp, self.file)
        except OSError as err:  # a read-only home must not stop training: the next run checks again
            print(f"warning: could not remember the scan in {self.file} ({err.strerror or err})", file=sys.stderr)


def reason_is_transient(reason: str | None) -> bool:
    """A read failure (permissions, a vanished file, a link loop) may change without the file changing."""
    return reason is not None and reason.startswith("cannot read file")


# ----------------------------------------------------------------------------- the decode pass


def _path_tensor(paths: Sequence[str]) -> tf.Tensor:
    return tf.constant([os.fsencode(p) for p in paths], tf.string)


def _decode_pass(
    paths: list[str], options: ScanOptions, progress: bool, writer: PackWriter | None
) -> tuple[dict[int, tuple[int, int]], dict[int, Copy]]:
    """Decode `paths` in one parallel tf.data pass: (index -> (width, height) of those that decode, index -> copy).

    With a `writer` each image is also resized to `options.size` and written into its packs here, on this
    thread, while the pass decodes the next ones.
    """
    size = options.size

    def check(i: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, ...]:
        contents = tf.io.read_file(path)
        if writer is None:
            return i, check_decodes(contents)
        small, hw = decode_for_size(contents, size)
        return i, hw, small

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), _path_tensor(paths)))
    # prefetch: the pass decodes on while this thread writes a batch into its packs
    ds = untuned(ds.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(64).prefetch(2))
    found: dict[int, tuple[int, int]] = {}
    copies: dict[int, Copy] = {}
    with _progress(len(paths), progress) as update:
        done = 0
        for idx, hw, *images in ds:
            indices = idx.numpy().tolist()
            for i, (h, w) in zip(indices, hw.numpy().tolist()):
                found[i] = (int(w), int(h))
            written = writer.write(images[0].numpy()) if writer is not None and indices else None
            copies.update(zip(indices, written or []))
            # a dropped file is only known at the end: advance by the highest index seen
            seen = max(indices) + 1 if indices else done
            update(max(0, seen - done))
            done = max(done, seen)
        update(len(paths) - done)
    return found, copies


@contextmanager
def _progress(n: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show or n <= _PROGRESS_MIN_FILES:
        yield lambda _k: None
        return
    import click

    with click.progressbar(length=n, label=f"Checking {n} images", file=sys.stderr, show_pos=True) as bar:
        yield bar.update


# ----------------------------------------------------------------------------- the scan


def _temporary_writer(options: ScanOptions) -> PackWriter:
    """Copies kept only while the run lasts: a temporary folder, removed when `scan_options` ends."""
    if options.keep_dir is None:
        options.keep_dir = Path(tempfile.mkdtemp(prefix="tlkit-decoded-"))
    return PackWriter(options.keep_dir, options.size)  # type: ignore[arg-type]


def _check_mine(
    paths: list[str], options: ScanOptions, progress: bool, store: DecodedStore | None = None, stats: dict | None = None
) -> dict[str, tuple[str | None, tuple[int, int]]]:
    """This worker's verdicts on `paths`: path -> (reason or None, (width, height)); the decoded copies kept,
    in the run's store when every file has a size and time to key it by."""
    stats = stats or {}
    to_store = store is not None and all(stats[p] is not None for p in paths)
    writer = None if options.size is None or not paths else store.writer() if to_store else _temporary_writer(options)
    found, copies = _decode_pass(paths, options, progress, writer) if paths else ({}, {})
    verdicts: dict[str, tuple[str | None, tuple[int, int]]] = {}
    for i, path in enumerate(paths):
        if i in found:
            verdicts[path] = (None, found[i])
            if i in copies:
                if to_store:
                    store.add(path, stats[path], copies[i])  # type: ignore[union-attr]
                options.kept[(path, options.size)] = copies[i]  # type: ignore[index]
            continue
        reason = check_file(path)  # the same words as ever for a file the pass dropped
        verdicts[path] = (reason, (0, 0) if reason else _size_of(path))  # fine alone: the pass failed around it
    return verdicts


def _size_of(path: str) -> tuple[int, int]:
    """(width, height) of a file that decodes eagerly but not in the pass (e.g. the keep folder was full)."""
    from tlkit.data.decode import decode_image_file

    height, width = decode_image_file(path).shape[:2]
    return int(width), int(height)


def _summed(rows: np.ndarray, options: ScanOptions) -> np.ndarray:
    """`rows` summed across the workers (each worker passes the same shape), in chunks."""
    if options.workers <= 1 or options.all_sum is None:
        return rows
    chunks = [options.all_sum(rows[s : s + _SUM_CHUNK]) for s in range(0, len(rows), _SUM_CHUNK)]
    return np.concatenate(chunks) if chunks else rows


def _share(paths: list[str], mine: dict[str, tuple[str | None, tuple[int, int]]], options: ScanOptions):
    """Every worker's verdicts: sum (state, width, height) rows across workers, explain others' bad files here."""
    rows = np.zeros((len(paths), 3), np.int64)
    for i, path in enumerate(paths):
        if path in mine:
            reason, (w, h) = mine[path]
            rows[i] = (1 if reason is None else 2, w, h)
    total = _summed(rows, options)
    verdicts = dict(mine)
    for i, path in enumerate(paths):
        if path in mine:
            continue
        state, w, h = (int(v) for v in total[i])
        reason = None if state == 1 else check_file(path)
        verdicts[path] = (reason, (w, h) if state == 1 else (0, 0) if reason else _size_of(path))
    return verdicts


def scan_images(
    paths: Sequence[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None, progress: bool = True
) -> ScanResult:
    """Check every file as :func:`tlkit.data.decode.scan_files` does, remembering verdicts for `root`.

    Returns the good paths and the (path, reason) pairs of the bad ones, both in
    input order, and the (width, height) of every good file. See the module
    docstring for what is remembered, what is kept for the pipeline and how
    workers share the work (all set by :func:`scan_options`).
    """
    started = time.perf_counter()
    options = current_options()
    str_paths = [os.fspath(p) for p in paths]
    memory = _Verdicts(os.fspath(root) if root is not None else None, options)
    stats = {p: _stat(p) for p in str_paths}
    unique = list(dict.fromkeys(str_paths))
    entries = [memory.known(p, stats[p]) for p in unique]
    if options.size is None and options.auto is not None:
        _choose_size(unique, dict(zip(unique, entries)), options)
    # every worker must agree on what is checked: a file unknown to any of them is checked (by its shard's worker)
    flags = _summed(np.array([[e is None] for e in entries], np.int64).reshape(-1, 1), options)
    verdicts = {p: (e[2], (int(e[3]), int(e[4]))) for p, e, f in zip(unique, entries, flags[:, 0]) if not f}
    unknown = [p for p, f in zip(unique, flags[:, 0]) if f]
    mine = [p for p in unknown if shard_of(p, options.workers) == options.index]
    store = _store(root, len(unique), options)
    again = _from_store(store, verdicts, stats, options)  # known good, but no copy at this size yet
    checked = _check_mine(mine + again, options, progress, store, stats)
    if options.workers > 1 and options.all_sum is not None and unknown:
        checked = {**_share(unknown, {p: checked[p] for p in mine}, options), **{p: checked[p] for p in again}}
    for p, (reason, size) in checked.items():
        verdicts[p] = (reason, size)
        memory.record(p, stats[p], reason, size)
    memory.save()
    if store is not None:
        store.save()
    good = [p for p in str_paths if verdicts[p][0] is None]
    bad = [(p, verdicts[p][0]) for p in str_paths if verdicts[p][0] is not None]
    sizes = {p: verdicts[p][1] for p in good}
    result = ScanResult(good, bad, sizes, len(mine) + len(again), time.perf_counter() - started)  # type: ignore[arg-type]
    options.files += len(unique)
    options.checked += result.checked
    options.seconds += result.seconds
    return result


def scan_summary() -> str | None:
    """One line on what this run's scans decoded and what they found remembered (None before any scan)."""
    options = current_options()
    if not options.files:
        return None
    if not options.checked:
        return f"{options.files} files remembered from an earlier run, none decoded again (`tlkit cache`; --rescan checks again)"
    kept = " (kept for the next run: `tlkit cache`)" if options.remember else ""
    if options.checked >= options.files:
        return f"{options.files} files checked and decoded once in {options.seconds:.1f} s{kept}"
    others = " or another worker's" if options.workers > 1 else ""
    return (
        f"{options.files} files: {options.checked} checked and decoded in {options.seconds:.1f} s, "
        f"{options.files - options.checked} remembered{others}{kept}"
    )


def _choose_size(paths: list[str], entries: dict[str, Any], options: ScanOptions) -> None:
    """Set `options.size` from a sample of the files' (height, width): remembered ones, else their headers.

    The sample does not depend on what this process remembers, so every worker picks the same size."""
    sizes = []
    for path in sample_paths(paths):
        entry = entries[path]
        if entry is None:
            found = header_size(path)
            if found is not None:
                sizes.append(found)
        elif entry[2] is None:
            sizes.append((int(entry[4]), int(entry[3])))
    options.auto_choice = options.auto(sizes)
    options.size = int(options.auto_choice.size)


def _store(root: str | os.PathLike[str] | None, images: int, options: ScanOptions) -> DecodedStore | None:
    """The store that keeps this run's decoded copies for the next run (tlkit.data.decoded), if they fit."""
    if options.size is None or root is None or not options.remember or not DecodedStore.fits(images, options.size):
        return None
    store = DecodedStore(absolute_root(root), options.size, options.index, fresh=options.rescan)
    options.stores.append(store)
    return store


def _from_store(store: DecodedStore | None, verdicts: dict, stats: dict, options: ScanOptions) -> list[str]:
    """Remembered good files: their kept copies go to the run, whichever worker wrote them (the chief evaluates
    every file); the files of this worker's shard without one are returned, to be decoded."""
    if store is None:
        return []
    missing = []
    for path, (reason, _) in verdicts.items():
        if reason is not None:
            continue
        copy = store.copy_of(path, stats[path])
        if copy is not None:
            options.kept[(path, options.size)] = copy  # type: ignore[index]
        elif shard_of(path, options.workers) == options.index:
            missing.append(path)
    return missing
