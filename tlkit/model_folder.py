"""A model folder of numbered versions (TF Serving's layout) shared by exports running at the same time.

Each export claims its version number before it writes anything, with an atomic
`mkdir` of `.claim-N` (it fails if another process got there first), fills a
hidden `.tmp-N-PID` folder and renames it to `N` whole. So several processes
exporting into one folder get distinct versions, and a reader (TF Serving,
`tlkit predict` on the folder) only ever sees complete numbered versions: claims
and temporaries are hidden and not numbers. A claim left by a killed process
(its PID gone) is removed by the next export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlkit.errors import TlkitError

CLAIM = ".claim-"
_UNNAMED_CLAIM_SECONDS = 60  # a claim whose PID file never appeared is stale after this


def versions(out: Path) -> list[int]:
    """The complete version numbers under `out`, ascending."""
    if not out.is_dir():
        return []
    return sorted(int(p.name) for p in out.iterdir() if p.is_dir() and p.name.isdigit())


def _claimed(out: Path) -> list[int]:
    return [int(p.name[len(CLAIM):]) for p in out.glob(CLAIM + "*") if p.name[len(CLAIM):].isdigit()]


@contextmanager
def claim_version(out: Path, version: int | None = None) -> Iterator[int]:
    """Reserve `version` (default: the next free number) under `out` for this process until the block ends."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_claims(out)
    if version is not None:
        if version < 0:
            raise TlkitError(f"export version must be a non-negative integer, got {version}")
        if not _try_claim(out, version):
            raise TlkitError(
                f"{out / str(version)} already exists or another export is writing it right now: choose another "
                f"--version (existing: {versions(out)})"
            )
        number = version
    else:
        number = max(versions(out) + _claimed(out) + [0]) + 1
        while not _try_claim(out, number):
            number += 1
    claim = out / f"{CLAIM}{number}"
    try:
        yield number
    finally:
        shutil.rmtree(claim, ignore_errors=True)
        if created:  # a failed first export leaves no empty model folder behind
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


def _try_claim(out: Path, number: int) -> bool:
    """mkdir `.claim-N` (atomic: one process wins); a version already complete is not free either."""
    claim = out / f"{CLAIM}{number}"
    try:
        claim.mkdir()
    except FileExistsError:
        return False
    if (out / str(number)).exists():  # finished by another export, which released its claim after the rename
        shutil.rmtree(claim, ignore_errors=True)
        return False
    (claim / "pid").write_text(str(os.getpid()))
    return True


def remove_stale_claims(out: Path) -> None:
    """Claims and `.tmp-N-PID` folders of exports that were killed (their process is gone)."""
    for path in list(out.glob(CLAIM + "*")) + list(out.glob(".tmp-*-*")):
        pid = _owner(path)
        if pid is None:
            if path.name.startswith(CLAIM) and time.time() - _mtime(path) > _UNNAMED_CLAIM_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _owner(path: Path) -> int | None:
    if path.name.startswith(CLAIM):
        try:
            text = (path / "pid").read_text().strip()
        except OSError:
            return None
    else:
        text = path.name.rsplit("-", 1)[-1]
    return int(text) if text.isdigit() else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
