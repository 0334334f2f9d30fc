"""How close does a killed-and-resumed run end to an uninterrupted one?

    python bench/resume_equality.py [--kills 6] [--no-deterministic] [--set KEY=VALUE ...]

One uninterrupted `tlkit finetune` run, then `--kills` runs of the same recipe,
each SIGKILLed at an evenly spread moment of the run (from the moment its run
directory exists to the end) and finished with `tlkit finetune --resume`.
Prints, per kill, the moment, the epochs on record when it died, and the
largest absolute difference between its final weights (model and optimizer
state) and the uninterrupted run's. The recipe is the tiny built-in dataset
with every source of randomness on: augmentation, dropout, a full stage and a
head-only stage on cached features with an augmented view.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def recipe(tfds_dir: Path, deterministic: bool) -> dict:
    return {
        "name": "resume",
        "seed": 7,
        "runtime": {"deterministic": deterministic},
        "data": {"source": "builtin:shapes/tiny", "tfds_data_dir": str(tfds_dir), "augment": {"flip": "horizontal", "rotation": 0.05}},
        "model": {"backbone": "scratch", "weights": "none", "input_size": 32, "blocks": [{"filters": 8}, {"filters": 16}], "head": {"dropout": 0.3}},
        "train": {
            "batch_size": 16,
            "feature_views": 2,
            "stages": [
                {"name": "all", "epochs": 3, "learning_rate": 0.003},
                {"name": "head", "epochs": 3, "unfreeze": "none", "learning_rate": 0.01},
            ],
        },
        "export": {"enabled": False},
    }


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "tlkit.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    while not path.is_file():
        if proc.poll() is not None:
            raise SystemExit(f"run ended before {path} appeared:\n{proc.stderr.read()}")
        time.sleep(0.02)


def epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def arrays(path: Path) -> dict:
    import h5py

    out: dict = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def max_abs_difference(a: Path, b: Path) -> float:
    import numpy as np

    x, y = arrays(a), arrays(b)
    return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)), initial=0.0)) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--no-deterministic", action="store_true")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "r.yaml"
        path.write_text(yaml.safe_dump(recipe(root / "tfds", not args.no_deterministic)))
        sets = [x for s in args.sets for x in ("--set", s)]
        ref = root / "reference"
        proc = start("finetune", str(path), "--run-dir", str(ref), *sets)
        wait_for_file(ref / "recipe.yaml", proc)
        ready = time.monotonic()
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(err)
        span = time.monotonic() - ready
        final = sorted(ref.glob("stage*.weights.h5"))[-1].name
        print(f"uninterrupted: {span:.1f} s from run directory to end; deterministic: {not args.no_deterministic}")
        print(f"{'kill at s':>9}  {'epochs on record':<20} {'resumes':>7}  max abs difference of {final}")
        worst = 0.0
        for i in range(args.kills):
            delay = span * (i + 0.5) / args.kills
            run = root / f"killed{i}"
            proc = start("finetune", str(path), "--run-dir", str(run), *sets)
            wait_for_file(run / "recipe.yaml", proc)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            on_record = epochs(run)
            resumes = 0
            while not (run / "metrics.json").is_file():
                resumed = start("finetune", "--resume", str(run))
                _, err = resumed.communicate()
                resumes += 1
                if resumed.returncode:
                    raise SystemExit(err)
            diff = max_abs_difference(ref / final, run / final)
            worst = max(worst, diff)
            print(f"{delay:9.2f}  {str(on_record):<20} {resumes:>7}  {diff:.3g}")
        print(f"worst: {worst:.3g}")


if __name__ == "__main__":
    main()
