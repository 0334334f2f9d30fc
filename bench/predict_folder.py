"""Does `tlkit predict EXPORT DIR --csv FILE` keep its memory flat in the number of files?

    python bench/predict_folder.py [--files 300 3000]

Trains and exports a tiny model on the built-in data, fills folders with N small
PNGs each (spread over nested folders, one corrupt file per folder of 100), then runs
`tlkit predict EXPORT DIR --csv FILE` in a fresh process per N and prints its peak
resident memory, seconds and seconds per image, each as a ratio to the smallest N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_export(root: Path) -> Path:
    import tlkit

    recipe = {
        "name": "tiny", "seed": 7,
        "data": {"source": "builtin:shapes/tiny", "tfds_data_dir": str(root / "tfds")},
        "model": {"backbone": "scratch", "weights": "none", "input_size": 32, "blocks": [{"filters": 8}, {"filters": 16}]},
        "train": {"batch_size": 32, "stages": [{"name": "train", "epochs": 1, "learning_rate": 0.003}]},
        "export": {"dir": str(root / "saved_models")},
    }
    return tlkit.finetune(recipe, run_dir=root / "run", quiet=True, report=False).export_dir


def fill(folder: Path, n: int, png: bytes) -> None:
    for i in range(n):
        sub = folder / f"part{i // 100:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:06d}.png").write_bytes(b"<html>" if i % 100 == 99 else png)


def measure(export: Path, folder: Path, csv_file: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `tlkit predict` process (its own child, so the peak is its alone)."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"p = subprocess.run([sys.executable, '-m', 'tlkit.cli', 'predict', {str(export)!r}, {str(folder)!r}, '--csv', {str(csv_file)!r}],"
        " capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t, p.returncode)\n"
        "print(p.stdout.strip(), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rss, seconds, _ = proc.stdout.split()
    print(f"    {proc.stderr.strip()}")
    return float(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[300, 3000])
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    png = tf.io.encode_png(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = tiny_export(root)
        rows = []
        for n in sorted(args.files):
            folder = root / f"photos{n}"
            fill(folder, n, png)
            rows.append((n, *measure(export, folder, root / f"p{n}.csv")))
        base = rows[0]
        print(f"{'files':>7} {'peak MiB':>9} {'ratio':>6} {'seconds':>8} {'ms/image':>9} {'ratio':>6}")
        for n, rss, s in rows:
            per = s / n * 1000
            print(f"{n:>7} {rss:>9.0f} {rss / base[1]:>6.2f} {s:>8.1f} {per:>9.2f} {per / (base[2] / base[0] * 1000):>6.2f}")


if __name__ == "__main__":
    sys.exit(main())
