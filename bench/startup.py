"""How long does a command take to print, and what else does it print? Before and after, in one run.

    python bench/startup.py [--before REV] [--reps 5]

Runs `tlkit backbones`, `tlkit --help` and `tlkit inspect scratch --input-size 32`
(a command that imports TensorFlow and runs it) in fresh processes, alternating
between this tree and the `tlkit` package of commit REV (default: the merge base
with main), extracted into a temporary folder. Prints per command the median
seconds of each, their ratio, and the lines each wrote to stderr (TensorFlow's
start-up lines). Timings mean something only as ratios: the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["backbones"], ["--help"], ["inspect", "scratch", "--input-size", "32"])


def extract(rev: str, into: Path) -> Path:
    """The `tlkit` package of commit `rev` (git archive; nothing in the repository changes)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "tlkit"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(tree: Path, args: list[str], cwd: Path) -> tuple[float, list[str]]:
    """Seconds and stderr lines of `tlkit ARGS` from `tree`, run in the neutral `cwd` (`-m` puts the cwd first on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TLKIT_TF_LOGS")}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tlkit.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tlkit {' '.join(args)} failed in {tree}:\n{proc.stderr}")
    return seconds, proc.stderr.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="commit of the baseline (default: merge-base HEAD main)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    rev = args.before or subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": extract(rev, Path(tmp) / "before"), "after": ROOT}
        (Path(tmp) / "cwd").mkdir()
        print(f"before: {rev[:10]}   after: this tree   reps: {args.reps} (alternating, median)")
        print(f"{'command':<36} {'before s':>9} {'after s':>9} {'after/before':>13}  stderr lines before -> after")
        for command in COMMANDS:
            seconds: dict[str, list[float]] = {"before": [], "after": []}
            lines: dict[str, list[str]] = {}
            for _ in range(args.reps):
                for name, tree in trees.items():
                    s, lines[name] = timed(tree, command, Path(tmp) / "cwd")
                    seconds[name].append(s)
            before, after = statistics.median(seconds["before"]), statistics.median(seconds["after"])
            print(f"{'tlkit ' + ' '.join(command):<36} {before:>9.2f} {after:>9.2f} {after / before:>13.3f}  "
                  f"{len(lines['before'])} -> {len(lines['after'])}")
            for name in trees:
                for line in lines[name]:
                    print(f"    {name} wrote: {line}")


if __name__ == "__main__":
    main()
