"""Decoded images kept between runs, so that the next run on a folder decodes only what changed.

The scan of a run decodes every image once at the model's input size
(:mod:`tlkit.data.scan`). Those copies are also kept here, under
``$TLKIT_CACHE_DIR/decoded/`` (default ``~/.cache/tlkit/decoded/``), one store
per folder and input size, keyed like the remembered verdicts by path, size
and modification time: the next run on the same folder at the same size reads
them instead of decoding the photos again. A changed file gets a new copy;
``--rescan`` decodes everything again.

Space is bounded by ``TLKIT_DECODED_CACHE_MB`` (default 4096; 0 turns the
store off): a folder whose decoded images would not fit is not kept between
runs (its run decodes into a temporary folder, as before), and older stores
are removed, least recently used first, when the total passes the budget.
Copies are written under temporary names and renamed into place, and a store
lists only complete copies, so a killed run or two runs at once never leave a
half-written copy that a later run would read.

Copies are packed: a few dozen small images share one file of about
``PACK_BYTES`` (raw uint8 pixels, one image after another), and a copy is
named by its file and offset. Creating a file costs more than writing one
small image: at 4000 photos and 64 px, one file per image added 2.5 s to a
3.6 s decode pass on 2 cores; packs add a few hundredths of a second. The
pipeline reads a pack once for each run of consecutive copies in it
(`tlkit.data.pipeline.read_copies`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Copy", "DecodedStore", "IN_USE_SECONDS", "PackWriter", "absolute_root", "cache_home", "folder_digest", "record_bytes", "store_budget"]

STORE_FORMAT = 2  # 1: one tensor-proto file per image
DEFAULT_BUDGET_MB = 4096
PACK_BYTES = 256 * 1024  # images packed per file up to this (at least one)
_PER_IMAGE_OVERHEAD = 64  # bytes of index and file-system bookkeeping per image, roughly

Copy = tuple[str, int]  # (pack file, byte offset) of one decoded image: uint8 [size, size, 3], row-major
IN_USE_SECONDS = 600  # a store written this recently may belong to a running run: never evicted


def cache_home() -> Path:
    """tlkit's cache folder: ``$TLKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlkit``, else ``~/.cache/tlkit``."""
    explicit = os.environ.get("TLKIT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tlkit"


def absolute_root(root: str | os.PathLike[str]) -> str:
    """The name a data folder (or CSV, or bucket path with a scheme) is remembered by: absolute, as given for URLs."""
    text = os.fspath(root)
    return text if "://" in text else os.path.abspath(text)  # decode.is_url's test, without importing TensorFlow


def folder_digest(root: str) -> str:
    """A short stable name for the folder (or CSV, or bucket path) `root`, already made absolute."""
    return hashlib.sha1(os.fsencode(root)).hexdigest()[:16]


def record_bytes(size: int) -> int:
    """Bytes of one decoded copy at input size `size`."""
    return size * size * 3


class PackWriter:
    """Writes decoded images of one size into pack files in `folder`, each complete before it gets its name."""

    def __init__(self, folder: str | os.PathLike[str], size: int, prefix: str = "") -> None:
        self.folder, self.size, self.prefix = Path(folder), size, prefix
        self.per_pack = max(1, PACK_BYTES // record_bytes(size))

    def write(self, images: np.ndarray) -> list[Copy] | None:
        """The copy of each of `images` ([n, size, size, 3] uint8), or None when they could not be written (a
        full disk, a read-only cache: the run then decodes those images again rather than stop)."""
        copies: list[Copy] = []
        record = record_bytes(self.size)
        for start in range(0, len(images), self.per_pack):
            chunk = np.ascontiguousarray(images[start : start + self.per_pack], np.uint8)
            name = self.folder / f"{self.prefix}{uuid.uuid4().hex[:20]}.pack"
            tmp = name.with_name(f"{name.name}.{os.getpid()}.tmp")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as out:
                    out.write(chunk.tobytes())
                os.replace(tmp, name)
            except OSError:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                return None
            copies += [(str(name), row * record) for row in range(len(chunk))]
        return copies


def store_budget() -> int:
    """Bytes all stores together may take (``TLKIT_DECODED_CACHE_MB``)."""
    try:
        mb = float(os.environ.get("TLKIT_DECODED_CACHE_MB", DEFAULT_BUDGET_MB))
    except ValueError:
        mb = DEFAULT_BUDGET_MB
    return max(0, int(mb * 1024 * 1024))


class DecodedStore:
    """The kept copies of one folder at one input size; each worker of a run writes its own index."""

    def __init__(self, root: str, size: int, index: int = 0, fresh: bool = False):
        self.dir = cache_home() / "decoded" / f"{folder_digest(root)}-{size}"
        self.root, self.size, self.index = root, size, index
        self.entries: dict[str, list[Any]] = {}  # path -> [file size, mtime_ns, pack name, byte offset]
        self.added: dict[str, list[Any]] = {}
        if not fresh:  # --rescan: what earlier runs listed is ignored
            self.reload()

    def reload(self) -> None:
        """Read every worker's index (again: another worker lists its copies when its scan ends)."""
        for index_file in sorted(self.dir.glob("index-*.json")):
            try:
                data = json.loads(index_file.read_text())
                if data.get("format") == STORE_FORMAT and data.get("size") == self.size:
                    self.entries.update(data["files"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable or from another version: those images are decoded again

    @staticmethod
    def fits(images: int, size: int) -> bool:
        """Whether `images` copies at `size` fit the budget at all (else the run keeps them only while it runs)."""
        return images * (record_bytes(size) + _PER_IMAGE_OVERHEAD) <= store_budget()

    def copy_of(self, path: str, stat: tuple[int, int] | None) -> Copy | None:
        """The kept copy of `path` as it is now (same size and time), if one exists."""
        entry = self.entries.get(path)
        if entry is None or stat is None or tuple(entry[:2]) != stat:
            return None
        file = os.path.join(self.dir, entry[2])
        return (file, int(entry[3])) if os.path.exists(file) else None

    def writer(self) -> PackWriter:
        """Where this worker's new copies go (its packs are named apart from other workers')."""
        return PackWriter(self.dir, self.size, prefix=f"{self.index}-")

    def add(self, path: str, stat: tuple[int, int], copy: Copy) -> None:
        self.added[path] = [stat[0], stat[1], os.path.basename(copy[0]), copy[1]]

    def save(self) -> None:
        """List this worker's complete copies (atomically), then keep all stores within the budget."""
        if not self.added:
            return
        mine = self.dir / f"index-{self.index}.json"
        try:
            data = json.loads(mine.read_text()) if mine.is_file() else {}
            listed = data["files"] if data.get("format") == STORE_FORMAT and data.get("size") == self.size else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            listed = {}
        listed.update(self.added)
        payload = {"format": STORE_FORMAT, "size": self.size, "root": self.root, "files": listed}
        try:
            tmp = mine.with_name(f".{mine.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, mine)
        except OSError:
            return  # a read-only cache: the next run decodes again
        for left in [*self.dir.glob("*.tmp"), *self.dir.glob("*.tensor")]:  # killed runs' packs; format 1's copies
            try:
                if time.time() - left.stat().st_mtime > IN_USE_SECONDS:
                    left.unlink()
            except OSError:
                pass
        evict(keep=self.dir)


def _store_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def evict(keep: Path) -> None:
    """Remove the least recently written stores (never `keep`, nor one written in the last minutes) over the budget."""
    root = keep.parent
    stores = [(max((f.stat().st_mtime for f in d.glob("index-*.json")), default=0.0), d) for d in root.iterdir() if d.is_dir()]
    sizes = {d: _store_bytes(d) for _, d in stores}
    total, budget, now = sum(sizes.values()), store_budget(), time.time()
    for written, folder in sorted(stores, key=lambda s: s[0]):
        if total <= budget:
            break
        if folder == keep or now - written < IN_USE_SECONDS:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
