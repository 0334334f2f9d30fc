"""Issue 7: a diverging loss, a kill during export and a full disk each leave the files before them intact.

NaN/Inf loss: one error naming epoch and step; best.keras and history.csv stay at the last good epoch.
Kill during export: the previous version still serves; no partial version; the next export cleans up.
Full disk: one clear error ("no space left"); the previous export / checkpoint / metrics unchanged,
no temporary file left. Simulated everywhere by a write that fails with ENOSPC half-way, and for
real on a 2 MB tmpfs where this process may mount one (root), else that variant skips.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, tiny_recipe
from tlkit import runs
from tlkit.errors import TlkitError

pytestmark = pytest.mark.slow

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir) -> tuple[Path, Path]:
    """A finished tiny run and its first SavedModel export (version folder)."""
    import tlkit

    root = tmp_path_factory.mktemp("finished")
    recipe = tiny_recipe(tfds_dir, root)
    recipe["train"]["stages"][0]["epochs"] = 1
    result = tlkit.finetune(recipe, run_dir=root / "run", quiet=True, export=False, report=False)
    version = tlkit.export(result.run_dir, out=root / "first", quiet=True)
    return result.run_dir, version


def _with_version_1(finished: tuple[Path, Path], out: Path) -> Path:
    """OUT/1 as a copy of the first export: each test gets its own model folder."""
    shutil.copytree(finished[1], out / "1")
    return out / "1"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _serves(version: Path) -> None:
    """A fresh load of the SavedModel answers with probabilities."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version))
    probs = loaded.signatures["serving_default"](images=tf.zeros([2, 40, 40, 3], tf.uint8))["probabilities"].numpy()
    assert probs.shape[0] == 2 and np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _leftovers(folder: Path) -> list[str]:
    """Temporary names tlkit writes under (.NAME.tmp-PID..., .tmp-VERSION-PID, .NAME.XXXX.tmp)."""
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _history_epochs(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / runs.HISTORY).open() as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- NaN / Inf loss


def test_nan_loss_stops_the_run_naming_epoch_and_step_and_keeps_the_last_good_epoch(tmp_path, tfds_dir):
    import keras

    import tlkit

    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["train"]["stages"] = [  # one good epoch, then a rate that overflows the weights within two steps
        {"name": "warm", "epochs": 1, "learning_rate": 0.003},
        {"name": "diverge", "epochs": 2, "optimizer": "sgd", "learning_rate": 1e30},
    ]
    run_dir = tmp_path / "run"
    with pytest.raises(TlkitError) as err:
        tlkit.finetune(recipe, run_dir=run_dir, quiet=True, report=False)
    message = str(err.value)
    found = re.search(r"training loss became (nan|inf|-inf) at epoch 2, step (\d+) of (\d+) \(stage 'diverge'\)", message)
    assert found and 1 <= int(found.group(2)) <= int(found.group(3)), message
    assert "\n" not in message and str(run_dir) in message and "learning_rate" in message

    rows = _history_epochs(run_dir)  # only the good epoch, every number in it finite
    assert [int(r["epoch"]) for r in rows] == [0]
    assert all(math.isfinite(float(v)) for r in rows for k, v in r.items() if k != "epoch")
    best = keras.saving.load_model(run_dir / runs.BEST, compile=False)
    assert all(np.all(np.isfinite(w)) for w in best.get_weights())
    good = keras.models.clone_model(best)
    good.load_weights(run_dir / "stage0.weights.h5")  # the weights at the end of the good epoch
    for a, b in zip(best.get_weights(), good.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not (run_dir / runs.METRICS).exists() and not (tmp_path / "saved_models").exists()
    assert not _leftovers(run_dir)


# ----------------------------------------------------------------------------- kill during export


def test_sigkill_during_export_keeps_the_previous_version_and_the_next_export_cleans_up(finished, tmp_path):
    run_dir, _ = finished
    out = tmp_path / "models"
    first = _with_version_1(finished, out)
    before = _snapshot(first)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlkit.cli", "export", str(run_dir), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    partial = out / f".tmp-2-{proc.pid}"
    deadline = time.monotonic() + 300
    while not any(partial.glob("*")):  # killed while the SavedModel is being written
        assert proc.poll() is None, f"export ended before it could be killed:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)  # reaped: its pid is gone, as after a real crash
    assert partial.is_dir()  # what a kill leaves behind ...
    assert not (out / "2").exists()  # ... is never a version a server would load
    assert _snapshot(first) == before
    _serves(first)

    again = run_cli("export", str(run_dir), "--out", str(out))
    assert f"exported savedmodel to {out / '2'}" in again.stdout
    assert not partial.exists() and not _leftovers(out)  # the dead export's folder is removed
    assert sorted(p.name for p in out.iterdir()) == ["1", "2"]
    assert _snapshot(first) == before
    _serves(out / "2")


# ----------------------------------------------------------------------------- full disk, simulated


class _HalfWritten:
    """A file whose write stores half the text, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, text: str) -> int:
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> "_HalfWritten":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _full_disk_for(monkeypatch, name: str) -> None:
    """runs.atomic_write_text of a file called `name` hits a full disk half-way (the real code path runs)."""
    real_write, real_fdopen = runs.atomic_write_text, os.fdopen

    def write(path, text):
        if Path(path).name != name:
            return real_write(path, text)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, "fdopen", lambda *a, **k: _HalfWritten(real_fdopen(*a, **k)))
            return real_write(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", write)


def _savedmodel_full_disk(monkeypatch) -> None:
    """The SavedModel is written (keras ExportArchive.write_out calls tf.saved_model.save), then the disk is full."""
    import tensorflow as tf
    import tensorflow.saved_model.experimental  # noqa: F401 - as write_out does: it rebinds tf.saved_model once

    real = tf.saved_model.save

    def save(obj, export_dir, *args, **kwargs):
        real(obj, export_dir, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(export_dir))

    monkeypatch.setattr(tf.saved_model, "save", save)


@pytest.mark.parametrize("where", ["savedmodel", "metadata"])
def test_full_disk_during_export_keeps_the_previous_version(finished, tmp_path, monkeypatch, where):
    import tlkit

    run_dir, _ = finished
    out = tmp_path / "models"
    first = _with_version_1(finished, out)
    before = _snapshot(first)
    if where == "savedmodel":
        _savedmodel_full_disk(monkeypatch)
    else:
        _full_disk_for(monkeypatch, "metadata.json")
    with pytest.raises(TlkitError) as err:
        tlkit.export(run_dir, out=out, quiet=True)
    message = str(err.value)
    assert message.startswith("no space left on the device while writing") and "\n" not in message
    assert str(out / "2") in message and ".tmp" not in message  # names the version, not a temporary folder
    assert sorted(p.name for p in out.iterdir()) == ["1"]  # no version 2, no temporary folder
    assert _snapshot(first) == before
    _serves(first)


def test_full_disk_while_rewriting_metrics_keeps_the_old_file(finished, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    metrics = folder / runs.METRICS
    shutil.copy(finished[0] / runs.METRICS, metrics)
    before = metrics.read_bytes()
    _full_disk_for(monkeypatch, runs.METRICS)
    with pytest.raises(TlkitError, match=r"^no space left on the device while writing .*metrics\.json"):
        runs.write_json(metrics, {"accuracy": 1.0, "padding": "x" * 10000})
    assert metrics.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [runs.METRICS]


def test_full_disk_during_training_keeps_the_last_resume_point_and_resume_finishes(tmp_path, tfds_dir, monkeypatch):
    """The disk fills while epoch 2's resume point is written: epoch 1 stays resumable, and resumes once there is room."""
    import keras

    import tlkit

    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["export"]["enabled"] = False
    run_dir = tmp_path / "run"
    real = keras.Model.save_weights

    def save_weights(self, filepath, *args, **kwargs):
        real(self, filepath, *args, **kwargs)
        if "epoch2" in Path(filepath).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    with monkeypatch.context() as m:
        m.setattr(keras.Model, "save_weights", save_weights)
        with pytest.raises(TlkitError, match=r"^no space left on the device while writing .*epoch2\.weights\.h5"):
            tlkit.finetune(recipe, run_dir=run_dir, quiet=True, report=False)
    backup = run_dir / runs.BACKUP / "stage0"
    assert runs.read_json(backup / "resume.json")["epoch"] == 1
    assert sorted(p.name for p in backup.iterdir()) == ["epoch1.weights.h5", "resume.json"]
    assert not _leftovers(run_dir) and not (run_dir / runs.METRICS).exists()

    result = tlkit.finetune(resume=run_dir, quiet=True, report=False)  # space freed: continue where it stopped
    assert [int(r["epoch"]) for r in result.history] == [0, 1]
    assert (run_dir / runs.METRICS).is_file() and not backup.exists()


def test_atomic_folder_swaps_a_folder_in_whole_or_leaves_everything_as_it_was(tmp_path, monkeypatch):
    final = tmp_path / "out" / "report"

    def names() -> list[str]:
        return sorted(p.name for p in final.parent.iterdir())

    with runs.atomic_folder(final) as tmp:
        assert tmp.parent == final.parent and tmp.name == f".tmp-report-{os.getpid()}" and not final.exists()
        (tmp / "a.txt").write_text("one")
    assert names() == ["report"] and sorted(os.listdir(final)) == ["a.txt"]
    with pytest.raises(TlkitError, match="already exists"):
        with runs.atomic_folder(final):
            pass
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):  # a failure or Ctrl-C while filling it
        with pytest.raises(type(exc)):
            with runs.atomic_folder(final, replace=True) as tmp:
                (tmp / "b.txt").write_text("two")
                raise exc
        assert names() == ["report"] and sorted(os.listdir(final)) == ["a.txt"]
    with pytest.raises(TlkitError) as err:  # a full disk names the final folder, not the temporary one
        with runs.atomic_folder(final, replace=True) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "big.bin"))
    assert str(err.value).startswith(f"no space left on the device while writing {final}:") and ".tmp" not in str(err.value)
    assert names() == ["report"] and sorted(os.listdir(final)) == ["a.txt"]

    real_replace = os.replace

    def replace(src, dst):  # the rename of the new folder fails after the old one was set aside
        if Path(src).name.startswith(".tmp-"):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(OSError):
            with runs.atomic_folder(final, replace=True) as tmp:
                (tmp / "b.txt").write_text("two")
    assert names() == ["report"] and sorted(os.listdir(final)) == ["a.txt"]  # the old folder is back in place
    with runs.atomic_folder(final, replace=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert names() == ["report"] and sorted(os.listdir(final)) == ["b.txt"]  # replaced, the old one removed


def test_full_disk_in_the_cli_is_one_line_and_exit_2(finished, tmp_path):
    run_dir, _ = finished
    out = tmp_path / "models"
    first = _with_version_1(finished, out)
    before = _snapshot(first)
    code = (
        "import errno, os, sys, tensorflow as tf, tensorflow.saved_model.experimental\n"
        "real = tf.saved_model.save\n"
        "def save(obj, path, *a, **k):\n"
        "    real(obj, path, *a, **k)\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))\n"
        "tf.saved_model.save = save\n"
        "from tlkit.cli import main\n"
        "sys.argv[0] = 'tlkit'\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", str(run_dir), "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device") and str(out / "2") in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["1"] and _snapshot(first) == before


# ----------------------------------------------------------------------------- full disk, for real


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    """A real 2 MB tmpfs (needs root and mount rights; skipped elsewhere, e.g. unprivileged CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Take all the space but `leave` bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_full_disk_for_real_keeps_the_previous_export_and_metrics(finished, tiny_disk):
    run_dir, _ = finished
    out = tiny_disk / "models"
    first = _with_version_1(finished, out)  # fits: the tiny SavedModel is about 450 kB
    metrics = tiny_disk / runs.METRICS
    shutil.copy(run_dir / runs.METRICS, metrics)
    before, before_metrics = _snapshot(first), metrics.read_bytes()
    _fill(tiny_disk, 64 * 1024)  # less than a second version needs

    proc = run_cli("export", str(run_dir), "--out", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device") and str(out / "2") in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["1"]
    assert _snapshot(first) == before
    _serves(first)

    with pytest.raises(TlkitError, match="^no space left on the device"):
        runs.write_json(metrics, {"accuracy": 1.0, "padding": "x" * 200_000})
    assert metrics.read_bytes() == before_metrics
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", runs.METRICS, "models"]
