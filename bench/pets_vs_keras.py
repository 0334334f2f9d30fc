"""tlkit's pets U-Net recipe against the keras-io U-Net-like example, in one process.

    python bench/pets_vs_keras.py [--json] [--skip-baseline] [--epochs N] [--set KEY=VALUE ...]

Same seeded 80/20 split (seed 1337, tlkit's split of the folder) of
../shared/data/segmentation/oxford_pets_sample at 128 px, 3 trimap classes.
The baseline is the model of the public keras-io example "Image segmentation
with a U-Net-like architecture" (from scratch: separable-conv encoder with
residuals, transposed-conv decoder), rmsprop 1e-3, sparse categorical
cross-entropy, batch 32, 15 epochs. tlkit runs recipes/pets_unet_mobilenet.yaml
(MobileNet 0.25 encoder with the real ImageNet weights). Both are scored by the
same confusion-matrix code on the val split: mIoU, per-class IoU, seconds.
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
PETS = SHARED / "segmentation" / "oxford_pets_sample"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
RECIPE = ROOT / "recipes" / "pets_unet_mobilenet.yaml"
SIZE, SEED, CLASSES = 128, 1337, ["pet", "background", "border"]


def keras_io_model(num_classes: int):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    for filters in [64, 128, 256]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    for filters in [256, 128, 64, 32]:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous = x
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


def baseline(train_pairs, val_pairs, epochs: int) -> dict:
    import keras
    import tensorflow as tf

    from tlkit.tasks.segmentation.metrics import evaluate_batches

    def load(image_path, mask_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (SIZE, SIZE))
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        mask = tf.image.resize(mask, (SIZE, SIZE), method="nearest")
        return image, tf.cast(mask, tf.int32) - 1  # trimap 1..3 -> 0..2

    def dataset(pairs, shuffle: bool):
        ds = tf.data.Dataset.from_tensor_slices(([p for p, _ in pairs], [m for _, m in pairs]))
        if shuffle:
            ds = ds.shuffle(len(pairs), seed=SEED)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32)

    keras.utils.set_random_seed(SEED)
    model = keras_io_model(len(CLASSES))
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="sparse_categorical_crossentropy")
    start = time.perf_counter()
    model.fit(dataset(train_pairs, True), epochs=epochs, validation_data=dataset(val_pairs, False), verbose=2)
    seconds = time.perf_counter() - start
    metrics = evaluate_batches(lambda x: model(x, training=False), dataset(val_pairs, False), CLASSES)
    return {"seconds": round(seconds, 1), **_scores(metrics)}


def _scores(metrics: dict) -> dict:
    return {
        "mean_iou": round(metrics["mean_iou"], 4),
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "iou": {k: round(v["iou"] or 0.0, 4) for k, v in metrics["per_class"].items()},
    }


def tlkit_run(tmp: Path, overrides: list[str]) -> dict:
    import tlkit
    from tlkit.evaluation import evaluate

    start = time.perf_counter()
    result = tlkit.finetune(RECIPE, overrides=overrides, data=str(PETS), weights=str(WEIGHTS), run_dir=tmp / "run", export=False)
    seconds = time.perf_counter() - start
    metrics = evaluate(result.run_dir, split="val")
    return {"seconds": round(seconds, 1), "stages": result.stages, **_scores(metrics)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--epochs", type=int, default=15, help="baseline epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for tlkit's run")
    args = parser.parse_args()
    if not PETS.is_dir() or not WEIGHTS.is_file():
        print(f"needs {PETS} and {WEIGHTS} (../shared/data)", file=sys.stderr)
        return 2

    from tlkit.tasks import load_data, load_recipe

    rec = load_recipe(RECIPE, {"data.source": str(PETS)})
    bundle = load_data(rec, progress=False)
    masks = {Path(p).stem: str(PETS / "masks" / f"{Path(p).stem}.png") for p in (PETS / "images").iterdir()}
    pairs = {k: [(p, masks[Path(p).stem]) for p in s.paths] for k, s in bundle.splits.items()}
    report: dict = {"train_images": len(pairs["train"]), "val_images": len(pairs["val"]), "skipped": len(bundle.skipped)}
    if not args.skip_baseline:
        report["baseline"] = baseline(pairs["train"], pairs["val"], args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        report["tlkit"] = tlkit_run(Path(tmp), args.set)
    if "baseline" in report:
        report["ratios"] = {
            "mean_iou": round(report["tlkit"]["mean_iou"] / max(report["baseline"]["mean_iou"], 1e-9), 3),
            "seconds": round(report["tlkit"]["seconds"] / report["baseline"]["seconds"], 3),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"\noxford_pets_sample: {report['train_images']} train / {report['val_images']} val at {SIZE}px, {report['skipped']} skipped")
    print(f"{'run':<10} {'mIoU':>6} {'pixacc':>7} " + " ".join(f"{c:>10}" for c in CLASSES) + f" {'seconds':>8}")
    for who in ("baseline", "tlkit"):
        if who in report:
            r = report[who]
            print(f"{who:<10} {r['mean_iou']:>6.3f} {r['pixel_accuracy']:>7.3f} " + " ".join(f"{r['iou'][c]:>10.3f}" for c in CLASSES) + f" {r['seconds']:>8.1f}")
    if "ratios" in report:
        print(f"tlkit/baseline: mIoU x{report['ratios']['mean_iou']}, wall time x{report['ratios']['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
