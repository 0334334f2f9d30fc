"""Issue 7: interruptions lose no finished work; a deterministic resumed run ends where an uninterrupted one does.

Every run here is a real `tlkit` process, stopped with real signals.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, tiny_recipe

pytestmark = pytest.mark.slow


def _restore_sigint() -> None:
    """A child inherits its parent's ignored signals and blocked-signal mask (a background job of a
    non-interactive shell, as CI may be, ignores SIGINT); a user's terminal does neither, so the child
    gets Python's usual Ctrl-C handling back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlkit.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        preexec_fn=_restore_sigint,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until `condition()`; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    raise TimeoutError("condition not reached")


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def max_abs_difference(a: Path, b: Path) -> float:
    """Largest difference between two weight files (model and optimizer state), key by key."""
    x, y = _h5_arrays(a), _h5_arrays(b)
    assert x.keys() == y.keys() and x
    return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)), initial=0.0)) for k in x)


def _deterministic_recipe(tfds_dir: Path, root: Path) -> Path:
    """Two stages (full, then head-only on cached features with an augmented view), augmentation and dropout:
    every source of randomness a resumed run has to reproduce."""
    recipe = tiny_recipe(tfds_dir, root)
    recipe["runtime"] = {"deterministic": True}
    recipe["data"]["augment"] = {"flip": "horizontal", "rotation": 0.05}
    recipe["model"]["head"] = {"dropout": 0.3}
    recipe["train"]["batch_size"] = 16
    recipe["train"]["feature_views"] = 2
    recipe["train"]["stages"] = [
        {"name": "all", "epochs": 3, "learning_rate": 0.003},
        {"name": "head", "epochs": 3, "unfreeze": "none", "learning_rate": 0.01},
    ]
    path = root / "deterministic.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sigkill_at_a_random_moment_then_resume_matches_an_uninterrupted_run(tmp_path, tfds_dir):
    recipe = _deterministic_recipe(tfds_dir, tmp_path)
    reference = tmp_path / "reference"
    proc = _start("finetune", str(recipe), "--run-dir", str(reference), "--no-export")
    _wait_for(lambda: (reference / "recipe.yaml").is_file(), proc)
    ready = time.monotonic()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    span = time.monotonic() - ready  # from the run directory's recipe to the end

    rng = random.Random(int(os.environ.get("TLKIT_KILL_SEED", time.time_ns())))
    delay = rng.uniform(0.0, span)
    killed = tmp_path / "killed"
    proc = _start("finetune", str(recipe), "--run-dir", str(killed), "--no-export")
    _wait_for(lambda: (killed / "recipe.yaml").is_file(), proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    finished_before_kill = (killed / "metrics.json").is_file()
    print(f"SIGKILL {delay:.2f} s into a {span:.2f} s run; epochs on record then: {_epochs(killed)}")

    if not finished_before_kill:
        resumed = run_cli("finetune", "--resume", str(killed), "--no-export")
        assert "Traceback" not in resumed.stderr
    assert sorted(set(_epochs(killed))) == list(range(6))  # an epoch cut short is redone: its row comes twice
    difference = max_abs_difference(reference / "stage1.weights.h5", killed / "stage1.weights.h5")
    print(f"max abs difference of the final weights, resumed vs uninterrupted: {difference}")
    assert difference == 0.0
    with (reference / "history.csv").open() as f, (killed / "history.csv").open() as g:
        ref_rows = {r["epoch"]: r for r in csv.DictReader(f)}
        got_rows = {r["epoch"]: r for r in csv.DictReader(g)}
    for epoch, row in ref_rows.items():
        assert got_rows[epoch]["loss"] == row["loss"] and got_rows[epoch]["val_accuracy"] == row["val_accuracy"]
    assert (reference / "metrics.json").read_text() == (killed / "metrics.json").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_keep_a_resumable_state_and_exit_nonzero(tmp_path, tfds_dir, signum):
    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["train"]["batch_size"] = 8
    recipe["train"]["stages"][0]["epochs"] = 20  # long enough that the signal lands mid-training on a busy machine
    recipe["export"]["enabled"] = False
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    proc = _start("finetune", str(path), "--run-dir", str(run_dir), "--no-report")
    resume_point = run_dir / "backup" / "stage0" / "resume.json"
    assert _wait_for(resume_point.is_file, proc), proc.communicate()[1]  # one epoch is fully on disk
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)  # like a shell's Ctrl-C: non-zero
    assert f"resume with: tlkit finetune --resume {run_dir}" in err
    assert "Traceback" not in err
    assert not (run_dir / "metrics.json").exists()
    done = _epochs(run_dir)
    assert resume_point.is_file() and done

    import tlkit

    result = tlkit.finetune(resume=run_dir, quiet=True, report=False)
    assert [int(r["epoch"]) for r in result.history] == list(range(20))
    assert _epochs(run_dir)[: len(done)] == done  # finished epochs were kept, not redone from scratch
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "backup" / "stage0").exists()
