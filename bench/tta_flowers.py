"""What test-time augmentation (the mean over an image and its mirror image) buys on flowers.

    python bench/tta_flowers.py [RUN_DIR] [--split val]

Without RUN_DIR it first trains recipes/flowers_mobilenet.yaml on ../shared's
flowers_128 with the MobileNet 0.25 weights (a few minutes on 2 cores). Then it
evaluates the run's best checkpoint on the split with and without `--tta`, in the
same process, and prints accuracy, loss and seconds of each, the differences, the
time ratio and each class's recall.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = SHARED / "classification" / "flowers_128"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def train(into: Path) -> Path:
    import tlkit

    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {DATA} and {WEIGHTS}, or a RUN_DIR")
    started = time.perf_counter()
    result = tlkit.finetune(
        str(ROOT / "recipes" / "flowers_mobilenet.yaml"), run_dir=into / "run", quiet=True, export=False, report=False,
        data=str(DATA), weights=str(WEIGHTS),
    )
    print(f"trained {result.run_dir} in {time.perf_counter() - started:.0f} s: val accuracy {result.metrics['accuracy']:.4f}")
    return result.run_dir


def timed_evaluate(run_dir: Path, split: str, tta: bool) -> tuple[dict, float]:
    import tlkit

    started = time.perf_counter()
    metrics = tlkit.evaluate(run_dir, split=split, tta=tta)
    return metrics, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or train(Path(tmp))
        timed_evaluate(run_dir, args.split, False)  # warm-up: data scan, model load, tracing
        plain, plain_s = timed_evaluate(run_dir, args.split, False)
        tta, tta_s = timed_evaluate(run_dir, args.split, True)
    print(f"split {args.split}: {plain['num_examples']} images, run {run_dir}")
    print(f"{'':<10} {'accuracy':>9} {'loss':>8} {'top-k':>7} {'seconds':>8}")
    for name, m, s in (("plain", plain, plain_s), ("tta", tta, tta_s)):
        print(f"{name:<10} {m['accuracy']:>9.4f} {m['loss']:>8.4f} {m['top_k_accuracy']:>7.4f} {s:>8.1f}")
    print(f"tta - plain: accuracy {tta['accuracy'] - plain['accuracy']:+.4f} "
          f"({(tta['accuracy'] - plain['accuracy']) * plain['num_examples']:+.0f} images), loss {tta['loss'] - plain['loss']:+.4f}; "
          f"time ratio tta/plain {tta_s / plain_s:.2f}")
    print("per class recall plain -> tta: " + ", ".join(
        f"{c} {plain['per_class'][c]['recall']:.3f}->{tta['per_class'][c]['recall']:.3f}" for c in plain["per_class"]))


if __name__ == "__main__":
    sys.exit(main())
