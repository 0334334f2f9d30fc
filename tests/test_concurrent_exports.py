"""Exports running at the same time, a reader during an export, and a run exported while it trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tlkit import runs
from tlkit.errors import TlkitError

pytest.importorskip("ai_edge_litert", reason="needs the export extra: pip install 'tlkit[export]'")

ROOT = Path(__file__).resolve().parents[1]

#: what each process runs: claim a version as export_run does, fill it slowly, rename it into place
WRITER = """
import sys, time
from pathlib import Path
from tlkit import runs
from tlkit.errors import TlkitError
from tlkit.model_folder import claim_version
out, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process starts at the same instant
with claim_version(out) as number:
    with runs.atomic_folder(out / str(number)) as tmp:
        (tmp / "model.tflite").write_bytes(b"x" * 1000)
        time.sleep(0.05)
        (tmp / "pid").write_text(sys.argv[3])
print(number)
"""


def test_processes_exporting_into_one_folder_get_distinct_versions(tmp_path):
    out = tmp_path / "models"
    (out / "1").mkdir(parents=True)  # an existing version stays as it is
    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(start), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    numbers = sorted(int(r[0]) for r in results)
    assert numbers == [2, 3, 4, 5, 6, 7]  # no two processes share a version, none is lost
    assert sorted(p.name for p in out.iterdir()) == [str(n) for n in range(1, 8)]  # no claims or temporaries left
    writers = sorted((out / str(n) / "pid").read_text() for n in numbers)
    assert writers == [str(i) for i in range(6)]


def test_a_claim_left_by_a_killed_export_is_taken_over(tmp_path):
    from tlkit.model_folder import claim_version

    out = tmp_path / "models"
    (out / ".claim-1").mkdir(parents=True)
    (out / ".claim-1" / "pid").write_text("999999999")  # no such process
    with claim_version(out) as number:
        assert number == 1
    with pytest.raises(TlkitError, match="another export is writing it"):
        with claim_version(out, 2):
            with claim_version(out, 2):
                pass


def test_a_reader_never_sees_a_partial_version(tiny_run, tmp_path):
    import tlkit
    from tlkit.formats import load_runner

    out = tmp_path / "models"
    seen: list[str] = []
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:  # what a server polling the model folder sees, until one last look after the exports
        while True:
            last = stop.is_set()
            for version in sorted(p for p in out.glob("*") if p.name.isdigit()) if out.is_dir() else []:
                names = {p.name for p in version.iterdir()}
                if names != {"model.tflite", "labels.txt", "metadata.json", "README.md"}:
                    problems.append(f"{version.name}: {sorted(names)}")
                seen.append(version.name)
            if last:
                return
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(2):
            tlkit.export(tiny_run, out=out, format="tflite", quiet=True)
    finally:
        stop.set()
        thread.join()
    assert not problems and {"1", "2"} <= set(seen)
    assert load_runner(out)[1] == out / "2" / "model.tflite"  # the model folder resolves to its newest version


def test_a_run_still_training_exports_its_best_checkpoint_so_far(tiny_run, tmp_path):
    import tlkit

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns(runs.METRICS, runs.TASK_STATE, "saved_models"))
    stop = threading.Event()

    def trainer() -> None:  # a new best checkpoint written the way training writes it, again and again
        data = (tiny_run / runs.BEST).read_bytes()
        while not stop.is_set():
            with runs.atomic_path(run_dir / runs.BEST) as tmp:
                tmp.write_bytes(data)

    thread = threading.Thread(target=trainer)
    thread.start()
    try:
        folder = tlkit.export(run_dir, out=tmp_path / "models", format="tflite", quiet=True)
    finally:
        stop.set()
        thread.join()
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["training_finished"] is False and meta["epochs_done"] == 1 and meta["verification"]["ok"]
    assert (folder / "model.tflite").is_file()

    (run_dir / runs.BEST).unlink()  # still in its first epoch: one clear line, nothing written
    with pytest.raises(tlkit.TlkitError, match="has not finished its first epoch"):
        tlkit.export(run_dir, out=tmp_path / "models", format="tflite", quiet=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["1"]
