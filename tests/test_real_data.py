"""Real photos and real ImageNet weights from ../shared/data (skipped without them)."""

from __future__ import annotations

import os

import pytest

from conftest import shared_path


@pytest.fixture(scope="module")
def flowers_subset(tmp_path_factory):
    """100 real flower photos per class, linked into a small class-folder dataset."""
    source = shared_path("classification/flowers_128")
    root = tmp_path_factory.mktemp("flowers")
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir()
        for f in sorted(class_dir.iterdir())[:100]:
            os.symlink(f, root / class_dir.name / f.name)
    return root


def test_linear_probe_on_extracted_features_matches_frozen_stage(flowers_subset, tmp_path):
    """A one-layer classifier on `extract` features does what tlkit's frozen stage does, within 2 points (measured: equal)."""
    import keras

    import tlkit

    weights = str(shared_path("weights/mobilenet_2_5_224_tf_no_top.h5"))
    epochs = 40
    recipe = {
        "name": "probe",
        "data": {"source": str(flowers_subset), "augment": {"flip": "none"}},  # default seed and split, as extract uses
        "model": {"backbone": "mobilenet", "options": {"alpha": 0.25}, "weights": weights, "input_size": 96, "head": {"dropout": 0.0}},
        "train": {"batch_size": 32, "stages": [{"name": "head", "epochs": epochs, "unfreeze": "none", "learning_rate": 0.003}]},
        "export": {"enabled": False},
    }
    result = tlkit.finetune(recipe, run_dir=tmp_path / "run", quiet=True)
    frozen = result.history[-1]["val_accuracy"]

    feats = tlkit.extract("mobilenet", str(flowers_subset), weights=weights, input_size=96, options={"alpha": 0.25}, progress=False)
    train, val = feats["splits"] == "train", feats["splits"] == "val"
    assert feats["features"].shape == (500, 256) and train.sum() == 400 and val.sum() == 100
    keras.utils.set_random_seed(3)
    probe = keras.Sequential([keras.Input((256,)), keras.layers.Dense(5)])
    probe.compile(keras.optimizers.Adam(0.003), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    probe.fit(feats["features"][train], feats["labels"][train], batch_size=32, epochs=epochs, verbose=0)
    linear = probe.evaluate(feats["features"][val], feats["labels"][val], verbose=0)[1]
    assert frozen > 0.5  # real ImageNet features separate real flowers
    assert abs(linear - frozen) <= 0.02, (linear, frozen)

