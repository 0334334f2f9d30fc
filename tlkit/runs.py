"""The run directory: every file a run leaves behind, written atomically.

Later commands (evaluate, export, predict, resume) read only what is here, so
a run can be repeated or continued from its own folder.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from tlkit.errors import TlkitError

RECIPE = "recipe.yaml"
LABELS = "labels.txt"
HISTORY = "history.csv"
METRICS = "metrics.json"
BEST = "best.keras"
FINAL = "final.keras"
SKIPPED = "skipped_files.txt"
VERSIONS = "versions.json"
STATE = "state.json"
BACKUP = "backup"
EXPORT_METADATA = "metadata.json"  # beside every export: what the model is, its labels, metrics and recipe
TASK_STATE = "task_state.json"  # what a task fitted after training (e.g. thresholds), read by evaluate/export


def selection_note(metrics: dict[str, Any]) -> str | None:
    """A warning when the split that picked the best checkpoint (`selected_on`) is also the one reported."""
    split = metrics.get("split")
    if not split or metrics.get("selected_on") != split:
        return None
    return (
        f"note: the {split} split also picked the best epoch, so this figure is optimistic; "
        "hold out a test split (data.test_fraction) for an unbiased one"
    )


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC (or a quota) from Python, h5py or TensorFlow's file layer, which each say it differently.

    Also tlkit's own `disk_full_error`, so an outer writer (an export folder) can name its own path instead.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if isinstance(exc, TlkitError) and text.startswith(_DISK_FULL):
        return True
    return "No space left on device" in text or "Disk quota exceeded" in text


_DISK_FULL = "no space left on the device while writing"


def disk_full_error(path: str | os.PathLike[str]) -> TlkitError:
    return TlkitError(
        f"{_DISK_FULL} {os.fspath(path)}: free some space or choose another folder, "
        "then run again (files written before are unchanged)"
    )


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary name beside `path` (same suffixes, which Keras checks) that becomes `path` on success.

    A failure or a kill while writing leaves the previous `path` as it was; a
    full disk becomes one clear TlkitError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    tmp = path.with_name(f".{path.name[: len(path.name) - len(suffix)]}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.exists():
            tmp.unlink()
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


@contextmanager
def atomic_folder(final: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """A fresh folder `.tmp-NAME-PID` beside `final` to fill; on success it becomes `final` whole.

    `replace=True`: an existing `final` is moved aside and removed only once the new one is in
    place; `replace=False`: an existing `final` is an error. On any failure (Ctrl-C too) the
    temporary folder is removed and `final` is as it was; a full disk becomes one TlkitError
    naming `final`.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise TlkitError(f"{final} already exists; nothing was written")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own leftover of an earlier failure
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, final, replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(final) from None
        raise


def _swap_in(tmp: Path, final: Path, replace: bool) -> None:
    """Rename `tmp` to `final`; a `final` already there is set aside first (put back if the rename fails)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if not replace:
        raise TlkitError(f"{final} appeared while it was being written; nothing was written")
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    Surrogate-escaped characters (file names that are not UTF-8) are written back as their bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_labels(folder: Path, names: list[str]) -> None:
    atomic_write_text(Path(folder) / LABELS, "".join(f"{n}\n" for n in names))


def read_labels(folder: Path) -> list[str]:
    path = Path(folder) / LABELS
    if not path.is_file():
        raise TlkitError(f"{folder} has no {LABELS}: it is not a tlkit run directory or export")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("tlkit", "tensorflow", "keras", "tensorflow-datasets", "numpy", "pydantic", "click", "pyyaml"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_run_dir(name: str, run_dir: str | Path | None = None, root: str | Path = "runs") -> Path:
    """`runs/NAME-YYYYmmdd-HHMMSS` unless the user chose a folder; never reuse a finished run."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / f"{name}-{stamp}-{n}"
    else:
        path = Path(run_dir)
        if (path / METRICS).exists():
            raise TlkitError(
                f"run directory {path} already holds a finished run; choose another --run-dir "
                f"(or `tlkit finetune --resume {path}` to continue an interrupted one)"
            )
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise TlkitError(f"run directory '{path}' does not exist")
    if not (path / RECIPE).is_file():
        raise TlkitError(f"'{path}' is not a tlkit run directory: it has no {RECIPE}")
    return path


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """history.csv as a list of rows; a resumed epoch's later row replaces the earlier one."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            rows[int(r["epoch"])] = {k: float(v) for k, v in r.items() if v not in (None, "")}
    return [rows[k] for k in sorted(rows)]
