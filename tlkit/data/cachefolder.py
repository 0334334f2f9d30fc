"""What tlkit keeps in its cache folder, and clearing it (`tlkit cache`).

Two kinds of entries live under :func:`tlkit.data.decoded.cache_home`, one
(or one per input size) for each data folder a run has read: the remembered
scan verdicts (``scans/``, :mod:`tlkit.data.scan`) and the decoded copies
(``decoded/``, :mod:`tlkit.data.decoded`). Both are only ever a shortcut: a
run without them checks and decodes again. Clearing never removes decoded
copies written in the last minutes (a running run may be reading them) unless
asked to with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tlkit.data.decoded import IN_USE_SECONDS, absolute_root, cache_home, folder_digest

__all__ = ["CacheEntry", "cache_entries", "clear_cache"]


@dataclass
class CacheEntry:
    """One data folder's remembered scan, or its decoded copies at one input size."""

    kind: str  # "scan" or "decoded"
    path: Path  # the file (scan) or folder (decoded copies) in the cache
    folder: str | None  # the data folder, CSV or bucket path it belongs to (None: written before tlkit recorded it)
    images: int
    bytes: int
    written: float  # seconds since the epoch
    size: int | None = None  # the input size of decoded copies

    def belongs_to(self, folder: str | os.PathLike[str]) -> bool:
        return self.path.name.startswith(folder_digest(absolute_root(folder)))


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _scan_entry(file: Path) -> CacheEntry:
    data = _read_json(file)
    stat = file.stat()
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    return CacheEntry("scan", file, data.get("root"), len(files), stat.st_size, stat.st_mtime)


def _store_entry(folder: Path) -> CacheEntry:
    indexes = [_read_json(f) for f in folder.glob("index-*.json")]
    listed: set[str] = set()
    for data in indexes:
        listed.update(data.get("files") or {})
    root = next((d.get("root") for d in indexes if d.get("root")), None)
    size = next((d.get("size") for d in indexes if isinstance(d.get("size"), int)), None)
    stats = [f.stat() for f in folder.iterdir() if f.is_file()]
    written = max((s.st_mtime for s in stats), default=folder.stat().st_mtime)
    return CacheEntry("decoded", folder, root, len(listed), sum(s.st_size for s in stats), written, size)


def _entries(home: Path) -> list[CacheEntry]:
    """Every entry; one that vanishes while it is read (another run evicting it) is left out."""
    places = [(_scan_entry, f) for f in sorted((home / "scans").glob("*.json"))]
    places += [(_store_entry, d) for d in sorted((home / "decoded").glob("*")) if d.is_dir()]
    entries = []
    for read, place in places:
        try:
            entries.append(read(place))
        except OSError:
            continue
    return entries


def cache_entries(folder: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every entry of the cache folder, or only those of the data `folder`; most recently written first."""
    home = cache_home()
    entries = _entries(home)
    if folder is not None:
        entries = [e for e in entries if e.belongs_to(folder)]
    return sorted(entries, key=lambda e: -e.written)


def clear_cache(folder: str | os.PathLike[str] | None = None, *, force: bool = False) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove every entry (or the data `folder`'s): (removed, kept because a run may be using them)."""
    removed, kept = [], []
    now = time.time()
    for entry in cache_entries(folder):
        if entry.kind == "decoded" and not force and now - entry.written < IN_USE_SECONDS:
            kept.append(entry)
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        removed.append(entry)
    return removed, kept
