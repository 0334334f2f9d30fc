"""A copy of a class-folder dataset (symlinks) with a seeded share of its files moved into another class.

Used by bench/doctor_flowers.py; run alone to make one: python bench/doctor_noise.py SRC DST [--fraction 0.05 --seed 0]
prints the number of moved files and writes DST.moved.txt (copy path, tab, true class).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def noisy_copy(source: Path, dest: Path, fraction: float = 0.05, seed: int = 0) -> dict[str, str]:
    """Symlink every image of `source` into `dest`, a `fraction` of them under a random other class.

    Returns {path in dest: true class} of the moved ones.
    """
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(c, f) for c in classes for f in sorted(os.listdir(source / c)) if not f.startswith(".")]
    rng = np.random.default_rng(seed)
    moved_idx = set(rng.choice(len(files), int(round(fraction * len(files))), replace=False).tolist())
    moved: dict[str, str] = {}
    for c in classes:
        (dest / c).mkdir(parents=True, exist_ok=True)
    for i, (c, f) in enumerate(files):
        target = c
        if i in moved_idx:
            target = classes[(classes.index(c) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
        link = dest / target / f
        if link.exists() or link.is_symlink():  # the same file name in two classes (flowers' duplicates)
            link = dest / target / f"{c}_{f}"
        os.symlink(source / c / f, link)
        if target != c:
            moved[str(link)] = c
    return moved


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    moved = noisy_copy(args.source, args.dest, args.fraction, args.seed)
    Path(str(args.dest) + ".moved.txt").write_text("".join(f"{p}\t{c}\n" for p, c in moved.items()))
    print(len(moved))
