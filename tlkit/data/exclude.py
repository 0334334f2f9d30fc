"""`data.exclude`: leave listed files out of every split without deleting them.

The file holds one entry a line (`tlkit doctor --out DIR` writes `DIR/exclude.txt`),
blank lines and `#` comments ignored. A file entry is a path, absolute or relative
to the exclude file's folder; an example of a source without files (TFDS) is
`SPLIT/INDEX` as doctor names it. Excluding after the split keeps every other
file in the split it had, so val figures with and without the list compare.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from tlkit.data.bundle import DataBundle
from tlkit.errors import TlkitError


def read_exclude(path: str | os.PathLike[str]) -> set[str]:
    """The entries of an exclude file: absolute, normalized paths, and `SPLIT/INDEX` ids kept as written."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise TlkitError(f"data.exclude: cannot read '{path}' ({exc.strerror or exc}): give a file of paths, one a line") from None
    entries: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.add(line if _is_example_id(line) else _norm(line, file.parent))
    return entries


def _is_example_id(entry: str) -> bool:
    split, sep, index = entry.partition("/")
    return bool(sep) and index.isdigit() and "/" not in index and not os.path.exists(entry)


def _norm(path: str, base: Path) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def example_ids(split: str, paths: list[str] | None, size: int) -> list[str]:
    """What an exclude file names each example of a split by: its absolute path, else `SPLIT/INDEX`."""
    if paths is None:
        return [f"{split}/{i}" for i in range(size)]
    return [os.path.normpath(os.path.abspath(p)) for p in paths]


def apply_exclude(bundle: DataBundle, path: str | os.PathLike[str]) -> DataBundle:
    """The bundle without the listed examples; `bundle.excluded` names the ones left out."""
    entries = read_exclude(path)
    splits, excluded = {}, []
    for name, part in bundle.splits.items():
        ids = example_ids(name, part.paths, part.size)
        keep = [i for i, key in enumerate(ids) if key not in entries]
        excluded += [key for key in ids if key in entries]
        if not keep:
            continue
        splits[name] = part if len(keep) == part.size else part.subset(keep)
    if "train" in bundle.splits and "train" not in splits:
        raise TlkitError(f"data.exclude '{path}' leaves no training image: check the list")
    return replace(bundle, splits=splits, excluded=excluded)
