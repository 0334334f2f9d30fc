"""Fine-tune recipes/flowers_mobilenet.yaml on ../shared/data/classification/flowers_128 and print figures.

    python bench/flowers_finetune.py [--epochs N] [--json]

Prints val accuracy, wall seconds and images/second per stage. Needs the real
data and MobileNet 0.25 weights in ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs of every stage (default: the recipe's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "classification" / "flowers_128").is_dir():
        print(f"needs {SHARED}/classification/flowers_128", file=sys.stderr)
        return 2

    import tlkit
    from tlkit.train import read_history

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = tlkit.finetune(
            ROOT / "recipes" / "flowers_mobilenet.yaml",
            epochs=args.epochs,
            run_dir=Path(tmp) / "run",
            export=False,
            quiet=args.json,
        )
        wall = time.perf_counter() - started
        recipe = tlkit.load_recipe(Path(tmp) / "run" / "recipe.yaml")
        history = read_history(result.run_dir)
    n_train = sum(result.metrics["per_class"][c]["support"] for c in result.class_names) * 4  # 80/20 split
    rows, epoch = [], 0
    for stage in recipe.train.stages:
        part = history[epoch : epoch + stage.epochs]
        epoch += stage.epochs
        rows.append({"stage": stage.name, "epochs": stage.epochs, "val_accuracy": part[-1].get("val_accuracy") if part else None})
    figures = {"val_accuracy": result.metrics["accuracy"], "wall_seconds": round(wall, 1), "stages": rows, "train_images_approx": n_train}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"flowers_mobilenet: val accuracy {figures['val_accuracy']:.4f} in {wall:.1f} s")
        for r in rows:
            print(f"  {r['stage']:<10} {r['epochs']} epochs  val_accuracy {r['val_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
