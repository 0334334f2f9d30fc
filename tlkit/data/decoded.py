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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["DecodedStore", "cache_home", "folder_digest", "store_budget"]

STORE_FORMAT = 1
DEFAULT_BUDGET_MB = 4096
_PER_FILE_OVERHEAD = 64  # bytes of the tensor proto around the pixels
_IN_USE_SECONDS = 600  # a store written this recently may belong to a running run: never evicted


def cache_home() -> Path:
    """tlkit's cache folder: ``$TLKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/tlkit``, else ``~/.cache/tlkit``."""
    explicit = os.environ.get("TLKIT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tlkit"


def folder_digest(root: str) -> str:
    """A short stable name for the folder (or CSV, or bucket path) `root`, already made absolute."""
    return hashlib.sha1(os.fsencode(root)).hexdigest()[:16]


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
        self.size, self.index = size, index
        self.entries: dict[str, list[Any]] = {}  # path -> [file size, mtime_ns, copy name]
        self.added: dict[str, list[Any]] = {}
        self.made = False  # the folder exists (made once, before the first copy is written)
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
        return images * (size * size * 3 + _PER_FILE_OVERHEAD) <= store_budget()

    def copy_of(self, path: str, stat: tuple[int, int] | None) -> str | None:
        """The kept copy of `path` as it is now (same size and time), if one exists."""
        entry = self.entries.get(path)
        if entry is None or stat is None or tuple(entry[:2]) != stat:
            return None
        file = os.path.join(self.dir, entry[2])
        return file if os.path.exists(file) else None

    def target(self, path: str, stat: tuple[int, int]) -> str:
        """Where the copy of `path` (as it is now) goes: the name changes with the file."""
        if not self.made:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.made = True
        name = hashlib.sha1(os.fsencode(f"{path}\0{stat[0]}\0{stat[1]}\0{self.size}")).hexdigest()[:24] + ".tensor"
        return os.path.join(self.dir, name)

    def add(self, path: str, stat: tuple[int, int], file: str) -> None:
        self.added[path] = [stat[0], stat[1], os.path.basename(file)]

    def save(self) -> None:
        """List this worker's complete copies (atomically), then keep all stores within the budget."""
        if not self.added:
            return
        mine = self.dir / f"index-{self.index}.json"
        try:
            listed = json.loads(mine.read_text())["files"] if mine.is_file() else {}
        except (OSError, ValueError, KeyError, TypeError):
            listed = {}
        listed.update(self.added)
        payload = {"format": STORE_FORMAT, "size": self.size, "files": listed}
        try:
            tmp = mine.with_name(f".{mine.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, mine)
        except OSError:
            return  # a read-only cache: the next run decodes again
        for left in self.dir.glob("*.tmp"):  # copies of killed runs, never listed
            try:
                if time.time() - left.stat().st_mtime > _IN_USE_SECONDS:
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
        if folder == keep or now - written < _IN_USE_SECONDS:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
