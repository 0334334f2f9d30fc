"""Stage policy on small and large data: BatchNorm mode, rates and lengths of the two pretrained stages.

    python bench/stage_policy.py --data flowers|pets [--size N] [--json] CONFIG [CONFIG ...]

Runs BASE (the two-stage flowers recipe as it was before issue 15: MobileNet 0.25 with the
real weights from ../shared/data/weights, head then top-36 fine-tune) with each CONFIG's overrides on
- flowers: ../shared/data/classification/flowers_128 (3,453 train / 864 val, 128 px photos), the "large" case;
- pets: the 600 Oxford pets photos as 3 breeds (480 train / 120 val, ~500x375 px), the "small" case,
  viewed through symlinks in a temporary folder.
Prints per config: val accuracy after stage 1, the lowest val accuracy during stage 2,
the final (best-checkpoint) accuracy, optimizer steps per stage and seconds, plus each
config's seconds as a ratio to the first config's (same run, same machine load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_photos import class_view  # noqa: E402  (the pets photos as 3 breed folders, one definition)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FLOWERS = SHARED / "classification" / "flowers_128"
PETS = SHARED / "segmentation" / "oxford_pets_sample" / "images"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

BASE = {
    "name": "stage_policy",
    "seed": 1337,
    "data": {"val_fraction": 0.2, "augment": {"flip": "horizontal", "rotation": 0.05}},
    "model": {"backbone": "mobilenet", "options": {"alpha": 0.25}, "head": {"dropout": 0.2}},
    "train": {
        "batch_size": 32,
        "stages": [
            {"name": "head", "epochs": 2, "unfreeze": "none", "optimizer": "adam", "learning_rate": 0.003},
            {
                "name": "finetune", "epochs": 6, "unfreeze": 36, "batchnorm": "train", "optimizer": "sgd",
                "momentum": 0.9, "learning_rate": 0.01, "schedule": "cosine", "warmup_epochs": 1,
            },
        ],
    },
}
_HEAD10 = ["train.stages.0.epochs=10"]
CONFIGS: dict[str, list[str]] = {
    # the shipped recipe before issue 15: head 2 epochs, fine-tune SGD 0.01 with BatchNorm training
    "today": ["train.stages.0.epochs=2", "train.stages.1.batchnorm=train", "train.stages.1.learning_rate=0.01"],
    "head10_bntrain_sgd01": [*_HEAD10, "train.stages.1.batchnorm=train", "train.stages.1.learning_rate=0.01"],
    "head10_bntrain_sgd003": [*_HEAD10, "train.stages.1.batchnorm=train", "train.stages.1.learning_rate=0.003"],
    "head10_bnfrozen_sgd003": [*_HEAD10, "train.stages.1.batchnorm=frozen", "train.stages.1.learning_rate=0.003"],
    "head10_bnfrozen_sgd01": [*_HEAD10, "train.stages.1.batchnorm=frozen", "train.stages.1.learning_rate=0.01"],
    "head10_bnfrozen_adam3e4": [
        *_HEAD10, "train.stages.1.batchnorm=frozen", "train.stages.1.optimizer=adam", "train.stages.1.learning_rate=0.0003",
    ],
    "head10_bnfrozen_adam1e4": [
        *_HEAD10, "train.stages.1.batchnorm=frozen", "train.stages.1.optimizer=adam", "train.stages.1.learning_rate=0.0001",
    ],
    "adabn_head10_bntrain_sgd01": [
        *_HEAD10, "train.adapt_batchnorm=200", "train.stages.1.batchnorm=train", "train.stages.1.learning_rate=0.01",
    ],
    "adabn_head10_bntrain_sgd003": [
        *_HEAD10, "train.adapt_batchnorm=200", "train.stages.1.batchnorm=train", "train.stages.1.learning_rate=0.003",
    ],
    "head10_bntrain_adam3e4": [
        *_HEAD10, "train.stages.1.batchnorm=train", "train.stages.1.optimizer=adam", "train.stages.1.learning_rate=0.0003",
    ],
}


def run(source: Path, size: int, overrides: list[str], tmp: Path, name: str) -> dict:
    import tlkit

    start = time.perf_counter()
    result = tlkit.finetune(
        BASE,
        overrides=[f"model.input_size={size}", *overrides],
        data=str(source),
        weights=str(WEIGHTS),
        run_dir=tmp / name,
        export=False,
        report=False,
        quiet=True,
    )
    seconds = time.perf_counter() - start
    accs = [round(float(h.get("val_accuracy", float("nan"))), 4) for h in result.history]
    first = result.stages[0]["epochs"]
    return {
        "config": name,
        "after_stage1": accs[first - 1],
        "lowest_in_stage2": min(accs[first:]) if accs[first:] else None,
        "final": round(float(result.metrics["accuracy"]), 4),
        "last_epoch": accs[-1],
        "val_accuracy_per_epoch": accs,
        "stage_seconds": [t["seconds"] for t in result.stages],
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("flowers", "pets"), default="flowers")
    parser.add_argument("--size", type=int, default=None, help="input size (default 128 flowers, 224 pets)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("configs", nargs="+", help=f"any of: {', '.join(CONFIGS)}")
    args = parser.parse_args()
    if not WEIGHTS.is_file() or not FLOWERS.is_dir() or not PETS.is_dir():
        print(f"needs {SHARED} (flowers_128, the pets sample, the MobileNet 0.25 weights)", file=sys.stderr)
        return 2
    size = args.size or (128 if args.data == "flowers" else 224)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = FLOWERS if args.data == "flowers" else class_view(Path(tmp))
        for name in args.configs:
            rows.append(run(source, size, CONFIGS[name], Path(tmp), name))
            row = rows[-1]
            row["seconds_ratio"] = round(row["seconds"] / rows[0]["seconds"], 3)
            print(json.dumps(row) if args.json else
                  f"{args.data}@{size} {name:<26} stage1 {row['after_stage1']:.4f} low2 {row['lowest_in_stage2']} "
                  f"final {row['final']:.4f} last {row['last_epoch']:.4f} {row['seconds']:.1f}s (x{row['seconds_ratio']}) "
                  f"per-epoch {row['val_accuracy_per_epoch']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
