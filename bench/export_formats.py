"""Every export format of the flowers model against the Keras model, measured in one process by `tlkit.benchmark`.

    python bench/export_formats.py [--run-dir RUN] [--set KEY=VALUE ...] [--out DIR] [--single N] [--json]

Without --run-dir, trains recipes/flowers_mobilenet.yaml (MobileNet alpha 0.25 at
128 px, the real weights from ../shared/data/weights; `--set` overrides, e.g.
`--set 'train.stages.*.epochs=1'` for a quick model). Then `tlkit.benchmark` exports
the run in every format and quantization (each verified by its own engine) and
measures each on the whole val split: file size, accuracy, top-1 agreement with the
Keras model, p50/p95 latency at batch 1 and images/s at batch 32, each timing also
as a ratio to the Keras row of the same run (the CPUs are shared: compare ratios,
not absolute figures across runs). Two more int8 rows come in as exports: without
bias correction, and with uint8 input/output.

Targets (issue 17): int8 accuracy within 1.0 point of float and top-1 agreement >= 95%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FLOWERS = SHARED / "classification" / "flowers_128"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

#: int8 variants benchmarked as exports beside the run's own rows
EXTRA_EXPORTS = {
    "int8-no-bias-correction": {"quantize": "int8", "bias_correction": False},
    "int8-uint8-io": {"quantize": "int8", "integer_io": True},
}


def train(out: Path, overrides: list[str]) -> Path:
    import tlkit

    result = tlkit.finetune(ROOT / "recipes" / "flowers_mobilenet.yaml", overrides=overrides or None, data=str(FLOWERS),
                            weights=str(WEIGHTS), run_dir=out / "run", export=False, quiet=True)
    print(f"trained {result.run_dir}: val accuracy {result.metrics['accuracy']:.4f} in {result.seconds:.0f} s", flush=True)
    return result.run_dir


def targets(rows: list[dict]) -> list[str]:
    keras = rows[0]
    out = []
    for r in rows:
        if r["quantize"] != "int8":
            continue
        change = (r["accuracy"] - keras["accuracy"]) * 100
        ok = change >= -1.0 and r["agreement"] >= 0.95
        out.append(f"{'PASS' if ok else 'MISS'} {r['path']}: accuracy {change:+.2f} points vs float (target >= -1.0), "
                   f"agreement {r['agreement']:.2%} (target >= 95%)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a finished flowers run to reuse (default: train one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override when training")
    parser.add_argument("--out", help="folder for the run, the exports and the results (default runs/bench-export-formats-TIME)")
    parser.add_argument("--formats", action="append", help="FORMAT[:QUANT] rows (default: all)")
    parser.add_argument("--single", type=int, default=100, help="one-image calls per row")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if not args.run_dir and (not FLOWERS.is_dir() or not WEIGHTS.is_file()):
        print(f"needs {FLOWERS} and {WEIGHTS} (../shared/data), or --run-dir", file=sys.stderr)
        return 2
    out = Path(args.out or ROOT / "runs" / f"bench-export-formats-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    import tlkit
    from tlkit.benchmarking import format_table

    run_dir = Path(args.run_dir) if args.run_dir else train(out, args.set)
    data = str(FLOWERS) if FLOWERS.is_dir() else None
    extra = [tlkit.export(run_dir, out=out / "exports" / name, format="tflite", data=data, quiet=True, **options)
             for name, options in EXTRA_EXPORTS.items()]
    rows = tlkit.benchmark([run_dir, *extra], formats=args.formats, data=data, single=args.single,
                           out=out / "exports", quiet=args.json)
    checks = targets(rows)
    (out / "results.json").write_text(json.dumps({"run_dir": str(run_dir), "rows": rows, "targets": checks}, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\n" + format_table(rows) + "\n\n" + "\n".join(checks) + f"\n\nresults.json in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
