"""finetune -> export -> predict through the CLI, in fresh processes, on the tiny built-in dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import random_pngs, run_cli, tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
    """One tiny run shared by the tests of this module: (recipe dir, run dir, export dir)."""
    root = tmp_path_factory.mktemp("e2e")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(tfds_dir, root)))
    run_dir = root / "run"
    proc = run_cli("finetune", str(recipe_path), "--run-dir", str(run_dir), "--set", "train.batch_size=16")
    assert "export:" in proc.stdout
    export_dir = root / "saved_models" / "tiny" / "1"
    return root, run_dir, export_dir


def test_run_directory_holds_everything(trained):
    _, run_dir, _ = trained
    for name in ("recipe.yaml", "labels.txt", "history.csv", "metrics.json", "best.keras", "versions.json", "skipped_files.txt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "labels.txt").read_text().split() == ["circle", "square", "star", "triangle"]
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["train"]["batch_size"] == 16  # the override is part of the resolved recipe
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("split", "accuracy", "loss", "top_k_accuracy", "per_class", "confusion_matrix"):
        assert key in metrics
    assert metrics["split"] == "test" and metrics["selected_on"] == "val"  # a held-out test split: honest
    assert set(metrics["per_class"]) == {"circle", "square", "star", "triangle"}
    assert set(metrics["per_class"]["star"]) == {"precision", "recall", "f1", "support"}
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["num_examples"] == 40
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert "learning_rate" in rows[0] and "val_accuracy" in rows[0]


def test_export_layout(trained):
    _, _, export_dir = trained
    assert (export_dir / "saved_model.pb").is_file() and (export_dir / "variables").is_dir()
    assert (export_dir / "labels.txt").read_text().split() == ["circle", "square", "star", "triangle"]
    meta = json.loads((export_dir / "metadata.json").read_text())
    assert meta["backbone"] == "scratch" and meta["input_size"] == 32 and meta["labels"][0] == "circle"
    assert "accuracy" in meta["metrics"] and meta["recipe"]["name"] == "tiny"
    assert not [p for p in export_dir.parent.iterdir() if p.name.startswith(".tmp")]


def test_predict_in_fresh_process_matches_keras_model(trained, tmp_path):
    import tensorflow as tf

    from tlkit.data.decode import decode_image
    from tlkit.data.pipeline import resize_image
    from tlkit.models.stages import load_run_model

    _, run_dir, export_dir = trained
    paths = random_pngs(tmp_path)
    jpeg = tmp_path / "img3.jpg"
    jpeg.write_bytes(tf.io.encode_jpeg(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).numpy())
    paths.append(str(jpeg))

    proc = run_cli("predict", str(export_dir.parent), *paths, "--top-k", "4", "--json")
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == paths

    model = load_run_model(run_dir)
    labels = (run_dir / "labels.txt").read_text().split()
    for r, path in zip(results, paths):
        image = resize_image(decode_image(tf.io.read_file(path)), 32)[None]
        expected = tf.nn.softmax(model(image, training=False))[0].numpy()
        got = np.zeros(4)
        for p in r["predictions"]:
            got[labels.index(p["label"])] = p["score"]
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_evaluate_run_and_export_agree(trained):
    _, run_dir, export_dir = trained
    from_run = json.loads(run_cli("evaluate", str(run_dir), "--json").stdout)
    from_export = json.loads(run_cli("evaluate", str(export_dir), "--json").stdout)
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert from_run["accuracy"] == pytest.approx(stored["accuracy"])
    assert from_export["accuracy"] == pytest.approx(stored["accuracy"])
    assert from_export["confusion_matrix"] == stored["confusion_matrix"]


def test_second_export_gets_next_version(trained):
    root, run_dir, export_dir = trained
    run_cli("export", str(run_dir), "--out", str(export_dir.parent))
    assert (export_dir.parent / "2" / "saved_model.pb").is_file()
    again = run_cli("export", str(run_dir), "--out", str(export_dir.parent), "--version", "1", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path):
    for args, needle in [
        (["finetune", "--data", str(tmp_path / "nowhere")], "does not exist"),
        (["finetune", "--backbone", "mobilenet_v9", "--no-export"], "mobilenet"),
        (["finetune", "--set", "train.stages.0.optimiser=sgd"], "did you mean 'optimizer'"),
        (["predict", str(tmp_path), str(tmp_path / "x.jpg")], "is not an export"),
    ]:
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr


def test_resume_after_interruption(tmp_path, tfds_dir, monkeypatch):
    """Interrupt in the middle of stage 2; --resume finishes the run without redoing epochs."""
    import tlkit
    from tlkit.train.callbacks import HistoryCSV

    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["train"]["stages"] = [
        {"name": "a", "epochs": 2, "learning_rate": 0.003},
        {"name": "b", "epochs": 2, "learning_rate": 0.001, "optimizer": "sgd"},
    ]
    recipe["export"]["enabled"] = False
    original = HistoryCSV.on_epoch_end

    def interrupt_at_epoch_2(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(HistoryCSV, "on_epoch_end", interrupt_at_epoch_2)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tlkit.finetune(recipe, run_dir=run_dir, quiet=True)
    assert not (run_dir / "metrics.json").exists()
    assert json.loads((run_dir / "state.json").read_text())["completed_stages"] == 1
    monkeypatch.setattr(HistoryCSV, "on_epoch_end", original)

    result = tlkit.finetune(resume=run_dir, quiet=True)
    assert [int(r["epoch"]) for r in result.history] == [0, 1, 2, 3]
    with (run_dir / "history.csv").open() as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]  # epoch 2 died before its resume point: redone, and its row replaced, not repeated
    assert (run_dir / "metrics.json").is_file()
    assert json.loads((run_dir / "state.json").read_text())["completed_stages"] == 2


def test_extract_from_run_and_export_agree(trained, tmp_path, tfds_dir):
    _, run_dir, export_dir = trained
    out = tmp_path / "feats.npz"
    proc = run_cli("extract", str(run_dir), "--data", "builtin:shapes/tiny", "--out", str(out), "--split", "test")
    assert "wrote 40 x 16 features" in proc.stdout
    with np.load(out) as z:
        assert z["features"].shape == (40, 16) and z["features"].dtype == np.float32
        assert list(z["label_names"]) == ["circle", "square", "star", "triangle"]
        assert z["labels"].shape == (40,) and set(z["splits"]) == {"test"}
        from_run = z["features"]

    import tlkit

    from_export = tlkit.extract(export_dir, "builtin:shapes/tiny", split="test", progress=False)
    np.testing.assert_allclose(from_export["features"], from_run, atol=1e-4)
    maxed = tlkit.extract(run_dir, "builtin:shapes/tiny", split="test", layer="block1_act", pool="max", progress=False)
    assert maxed["features"].shape == (40, 8)


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_stage_trains_only_the_head(tmp_path, tfds_dir, cache):
    """unfreeze: none keeps the backbone bit-identical, cached features or not, and still learns."""
    import tlkit
    from tlkit.models.heads import build_classifier
    from tlkit.tasks import load_recipe

    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["train"]["cache_features"] = cache
    recipe["train"]["stages"] = [
        {"name": "all", "epochs": 1, "learning_rate": 0.003},
        {"name": "head", "epochs": 3, "unfreeze": "none", "learning_rate": 0.01},
    ]
    recipe["export"]["enabled"] = False
    result = tlkit.finetune(recipe, run_dir=tmp_path / "run", quiet=True)
    assert [int(r["epoch"]) for r in result.history] == [0, 1, 2, 3]
    assert (result.run_dir / "best.keras").is_file() and result.metrics["num_examples"] == 40

    rec = load_recipe(result.run_dir / "recipe.yaml")
    first, last = build_classifier(rec, 4), build_classifier(rec, 4)
    first.load_weights(result.run_dir / "stage0.weights.h5")
    last.load_weights(result.run_dir / "stage1.weights.h5")
    for a, b in zip(first.get_layer("backbone").weights, last.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first.get_layer("logits").weights[0].numpy(), last.get_layer("logits").weights[0].numpy())
