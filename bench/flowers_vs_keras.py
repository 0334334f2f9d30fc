"""tlkit's flowers recipe against the Keras guide's transfer-learning script, in one process.

    python bench/flowers_vs_keras.py [--json] [--skip-baseline] [--set KEY=VALUE ...]

Same 80/20 split (seed 1337, tlkit's stratified split of the folder), MobileNet
alpha 0.25 at 128 px with the real weights from ../shared/data/weights. The
baseline is written from the public Keras guide "Transfer learning &
fine-tuning": augmentation inside the model, frozen base called with
training=False, GAP, dropout 0.2, dense; 5 epochs Adam 1e-3, then the whole
base unfrozen for 5 epochs at Adam 1e-5; batch 32. Prints val accuracy, wall
seconds and train images/second per stage, and the tlkit/baseline ratios; then
tlkit's per-epoch seconds and the share of a training epoch the (cached) input
pipeline alone takes. `--set` overrides the recipe, to measure one lever at a time.
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
FLOWERS = SHARED / "classification" / "flowers_128"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SIZE, BATCH, SEED = 128, 32, 1337


def keras_guide_baseline(train_paths, train_labels, val_paths, val_labels, num_classes: int) -> dict:
    import keras
    import tensorflow as tf

    def dataset(paths, labels):
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        ds = ds.map(
            lambda p, y: (tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(p), channels=3), (SIZE, SIZE)), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE).cache()

    train_ds = dataset(train_paths, train_labels).shuffle(200, seed=SEED)
    val_ds = dataset(val_paths, val_labels)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = keras.applications.MobileNet(
        input_shape=(SIZE, SIZE, 3), alpha=0.25, include_top=False, weights=str(WEIGHTS)
    )
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # mobilenet.preprocess_input
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    stages = []
    for name, trainable, rate in (("frozen", False, 1e-3), ("unfrozen", True, 1e-5)):
        base.trainable = trainable
        model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        start = time.perf_counter()
        hist = model.fit(train_ds, epochs=5, validation_data=val_ds, verbose=2)
        seconds = time.perf_counter() - start
        stages.append(
            {
                "stage": name,
                "epochs": 5,
                "seconds": round(seconds, 2),
                "train_images_per_second": round(len(train_paths) * 5 / seconds, 1),
                "val_accuracy": float(hist.history["val_accuracy"][-1]),
            }
        )
    return {"val_accuracy": stages[-1]["val_accuracy"], "seconds": round(sum(s["seconds"] for s in stages), 1), "stages": stages}


def tlkit_run(tmp: Path, overrides: list[str]) -> dict:
    import tlkit

    start = time.perf_counter()
    result = tlkit.finetune(
        ROOT / "recipes" / "flowers_mobilenet.yaml",
        overrides=overrides,
        data=str(FLOWERS),
        weights=str(WEIGHTS),
        run_dir=tmp / "run",
        export=False,
    )
    seconds = time.perf_counter() - start
    stages, epoch = [], 0
    for timing in result.stages:
        first = epoch
        epoch += timing["epochs"]
        stages.append(
            {
                **timing,
                "val_accuracy": result.history[epoch - 1].get("val_accuracy"),
                "epoch_seconds": [round(float(h["epoch_seconds"]), 2) for h in result.history[first:epoch]],
            }
        )
    return {"val_accuracy": result.metrics["accuracy"], "seconds": round(seconds, 1), "stages": stages}


def input_seconds_per_epoch(train, overrides: list[str]) -> float:
    """One epoch of tlkit's training input alone (decoded images cached, augmentation on), no model."""
    from tlkit.data.pipeline import make_pipeline
    from tlkit.tasks import load_recipe

    rec = load_recipe(ROOT / "recipes" / "flowers_mobilenet.yaml", overrides)
    ds = make_pipeline(train, SIZE, 5, rec.train.batch_size, training=True, augment=rec.data.augment, seed=SEED)
    for _ in ds:  # fills the cache, as the first training epoch does
        pass
    start = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for tlkit's run")
    args = parser.parse_args()
    if not FLOWERS.is_dir() or not WEIGHTS.is_file():
        print(f"needs {FLOWERS} and {WEIGHTS} (../shared/data)", file=sys.stderr)
        return 2

    from tlkit.tasks import load_data, load_recipe

    bundle = load_data(load_recipe({"seed": SEED, "data": {"source": str(FLOWERS), "val_fraction": 0.2}}), progress=False)
    train, val = bundle.splits["train"], bundle.splits["val"]
    report: dict = {"train_images": train.size, "val_images": val.size}
    if not args.skip_baseline:
        report["baseline"] = keras_guide_baseline(train.paths, train.labels, val.paths, val.labels, len(bundle.class_names))
    with tempfile.TemporaryDirectory() as tmp:
        report["tlkit"] = tlkit_run(Path(tmp), args.set)
    last = report["tlkit"]["stages"][-1]
    input_s = input_seconds_per_epoch(train, args.set)
    report["input"] = {
        "seconds_per_epoch": round(input_s, 2),
        "fraction_of_last_stage_epoch": round(input_s / (sum(last["epoch_seconds"][1:]) / max(1, len(last["epoch_seconds"]) - 1)), 3),
    }
    if "baseline" in report:
        b, t = report["baseline"], report["tlkit"]
        report["ratios"] = {
            "val_accuracy": round(t["val_accuracy"] / b["val_accuracy"], 3),
            "seconds": round(t["seconds"] / b["seconds"], 3),
            "last_stage_images_per_second": round(
                t["stages"][-1]["train_images_per_second"] / b["stages"][-1]["train_images_per_second"], 3
            ),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"\nflowers_128: {report['train_images']} train / {report['val_images']} val, MobileNet 0.25 @ {SIZE}px, 2 stages each")
    print(f"{'run':<10} {'stage':<10} {'epochs':>6} {'val acc':>8} {'seconds':>8} {'img/s':>7}")
    for who in ("baseline", "tlkit"):
        if who not in report:
            continue
        for s in report[who]["stages"]:
            print(f"{who:<10} {s['stage']:<10} {s['epochs']:>6} {s['val_accuracy']:>8.4f} {s['seconds']:>8.1f} {s['train_images_per_second']:>7.1f}")
        print(f"{who:<10} {'total':<10} {'':>6} {report[who]['val_accuracy']:>8.4f} {report[who]['seconds']:>8.1f}")
    if "ratios" in report:
        r = report["ratios"]
        print(f"tlkit/baseline: accuracy x{r['val_accuracy']}, wall time x{r['seconds']}, last-stage images/s x{r['last_stage_images_per_second']}")
    for s in report["tlkit"]["stages"]:
        print(f"tlkit {s['stage']} epoch seconds: {s['epoch_seconds']}")
    i = report["input"]
    print(f"input pipeline alone (cached, augmented): {i['seconds_per_epoch']} s/epoch = {i['fraction_of_last_stage_epoch']:.1%} of a last-stage epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
