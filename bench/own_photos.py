"""Full-size photos of your own: the no-recipe default against the Keras guide and a linear probe, in one process.

    python bench/own_photos.py [--json] [--skip CONTENDER ...]

The 600 Oxford pets photos of ../shared/data/segmentation/oxford_pets_sample as
3 breeds (class = file name up to its last '_': Abyssinian, Bengal,
american_bulldog; ~500x375 px), viewed as class folders through symlinks in a
temporary folder (nothing is copied). Every contender uses the same seeded
80/20 split (tlkit's stratified split, seed 1337: 480 train / 120 val) and the
only real ImageNet weights here, MobileNet v1 alpha 0.25
(../shared/data/weights/mobilenet_2_5_224_tf_no_top.h5). Contenders:

- default_auto: `tlkit finetune --data DIR --weights FILE --option alpha=0.25` (no recipe:
  recipes/own_images.yaml, input_size auto);
- default_128: the same at `--input-size 128`;
- keras_guide_224: the Keras guide "Transfer learning & fine-tuning" script at 224 px (augmentation
  in the model, frozen base with training=False, GAP, dropout 0.2, dense; 5 epochs Adam 1e-3, then
  the whole base unfrozen for 5 epochs at Adam 1e-5; batch 32), its last-epoch val accuracy;
- linear_probe_224: multinomial logistic regression (L2, C=1, as scikit-learn's default, solved by
  full-batch gradient descent on standardized features) on the frozen backbone's pooled 224 px features.

Prints accuracy (tlkit: the best checkpoint's, with the last epoch's beside it) and wall seconds,
each also as a ratio to the Keras guide's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PETS = SHARED / "segmentation" / "oxford_pets_sample" / "images"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SEED, BATCH = 1337, 32


def class_view(tmp: Path) -> Path:
    """The pets photos as class folders (class = file name up to its last '_'), by symlink."""
    root = tmp / "pets3"
    for image in sorted(PETS.iterdir()):
        if image.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
            continue
        folder = root / image.stem.rsplit("_", 1)[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.name).symlink_to(image)
    return root


def tlkit_default(data: Path, tmp: Path, name: str, extra: dict) -> dict:
    import tlkit

    start = time.perf_counter()
    result = tlkit.finetune(
        None,
        overrides={"model.options.alpha": 0.25},
        data=str(data),
        weights=str(WEIGHTS),
        run_dir=tmp / name,
        export=False,
        report=False,
        quiet=True,
        **extra,
    )
    seconds = time.perf_counter() - start
    from tlkit import runs

    rec = yaml_load(result.run_dir / runs.RECIPE)
    accs = [round(float(h["val_accuracy"]), 4) for h in result.history]
    return {
        "accuracy": round(float(result.metrics["accuracy"]), 4),
        "last_epoch_accuracy": accs[-1],
        "selected_on": result.metrics.get("selected_on"),
        "input_size": rec["model"]["input_size"],
        "epochs": [s["epochs"] for s in rec["train"]["stages"]],
        "val_accuracy_per_epoch": accs,
        "stage_seconds": [t["seconds"] for t in result.stages],
        "seconds": round(seconds, 1),
    }


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def keras_guide(train, val, num_classes: int, size: int = 224) -> dict:
    import keras
    import tensorflow as tf

    start = time.perf_counter()

    def dataset(split):
        ds = tf.data.Dataset.from_tensor_slices((list(split.paths), split.labels))
        read = lambda p, y: (  # noqa: E731 - decode_image: one "jpg" is a GIF, one a PNG
            tf.image.resize(tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False), (size, size)), y
        )
        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE).cache()

    train_ds, val_ds = dataset(train).shuffle(200, seed=SEED), dataset(val)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=0.25, include_top=False, weights=str(WEIGHTS))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(augmentation(inputs))
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Dropout(0.2)(x)))
    accs = []
    for trainable, rate in ((False, 1e-3), (True, 1e-5)):
        base.trainable = trainable
        model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        accs += model.fit(train_ds, epochs=5, validation_data=val_ds, verbose=0).history["val_accuracy"]
    return {
        "accuracy": round(float(accs[-1]), 4),
        "val_accuracy_per_epoch": [round(float(a), 4) for a in accs],
        "seconds": round(time.perf_counter() - start, 1),
    }


def logistic_regression(x: np.ndarray, y: np.ndarray, classes: int, c: float = 1.0, steps: int = 3000) -> tuple:
    """Multinomial logistic regression with L2 (scikit-learn's C), full-batch gradient descent; returns (W, b)."""
    n, d = x.shape
    w, b = np.zeros((d, classes)), np.zeros(classes)
    onehot = np.eye(classes)[y]
    lr = 0.5
    for _ in range(steps):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / n
        w -= lr * (x.T @ grad + w / (c * n))
        b -= lr * grad.sum(axis=0)
    return w, b


def linear_probe(data: Path, size: int = 224) -> dict:
    import tlkit

    start = time.perf_counter()
    feats = tlkit.extract(
        "mobilenet", str(data), weights=str(WEIGHTS), input_size=size, options={"alpha": 0.25}, progress=False
    )
    x, y, splits = feats["features"], np.asarray(feats["labels"]), np.asarray(feats["splits"]).astype(str)
    train, val = splits == "train", splits == "val"
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    xs = (x - mean) / std
    w, b = logistic_regression(xs[train], y[train], len(feats["label_names"]))
    accuracy = float(np.mean(np.argmax(xs[val] @ w + b, axis=1) == y[val]))
    return {"accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - start, 1), "features": int(x.shape[1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    args = parser.parse_args()
    if not PETS.is_dir() or not WEIGHTS.is_file():
        print(f"needs {PETS} and {WEIGHTS} (../shared/data)", file=sys.stderr)
        return 2
    from tlkit.tasks import load_data, load_recipe

    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = class_view(Path(tmp))
        bundle = load_data(load_recipe({"seed": SEED, "data": {"source": str(data), "val_fraction": 0.2}}), progress=False)
        train, val = bundle.splits["train"], bundle.splits["val"]
        report["images"] = {"train": train.size, "val": val.size, "classes": bundle.class_names}
        contenders = {
            "keras_guide_224": lambda: keras_guide(train, val, len(bundle.class_names)),
            "default_auto": lambda: tlkit_default(data, Path(tmp), "auto", {}),
            "default_128": lambda: tlkit_default(data, Path(tmp), "d128", {"input_size": 128}),
            "linear_probe_224": lambda: linear_probe(data),
        }
        for name, fn in contenders.items():
            if name in args.skip:
                continue
            report[name] = fn()
            print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)
    base = report.get("keras_guide_224")
    if base:
        for name in contenders:
            if name in report and name != "keras_guide_224":
                report[name]["seconds_ratio_to_keras_guide"] = round(report[name]["seconds"] / base["seconds"], 3)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"\npets as 3 breeds: {report['images']['train']} train / {report['images']['val']} val, MobileNet 0.25 weights")
    print(f"{'contender':<18} {'accuracy':>8} {'last ep':>8} {'size':>5} {'seconds':>8} {'x guide':>8}")
    for name in contenders:
        if name not in report:
            continue
        r = report[name]
        size = r.get("input_size", 224 if "224" in name else "")
        print(f"{name:<18} {r['accuracy']:>8.4f} {r.get('last_epoch_accuracy', r['accuracy']):>8.4f} {size!s:>5} "
              f"{r['seconds']:>8.1f} {r.get('seconds_ratio_to_keras_guide', 1.0):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
