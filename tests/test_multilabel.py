"""Multi-label classification end to end: a CSV folder, TFDS label sequences, thresholds that travel with exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_data, run_cli

import tlkit
from tlkit.errors import TlkitError

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 230)}


def _write_csv_folder(folder: Path, n: int = 120, seed: int = 0) -> list[list[str]]:
    """Images whose left half shows one colour and right half another (or grey): labels = colours present."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows, names = ["path,labels"], list(COLOURS) + [None]
    labels_of = []
    for i in range(n):
        picks = [names[rng.integers(0, 4)], names[rng.integers(0, 4)]]
        image = np.full((24, 24, 3), 128, np.float32)
        for half, name in enumerate(picks):
            if name is not None:
                image[:, 12 * half : 12 * half + 12] = COLOURS[name]
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        (folder / "img" / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
        present = sorted({p for p in picks if p is not None})
        labels_of.append(present)
        rows.append(f"img/{i:03d}.png,{';'.join(present) if i % 2 else ' '.join(present)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return labels_of


def _recipe(folder: Path, tmp_path: Path, epochs: int = 8) -> dict:
    return {
        "name": "colours",
        "task": "multilabel",
        "seed": 3,
        "data": {"source": str(folder), "val_fraction": 0.25, "augment": {"flip": "none"}},
        "model": {"backbone": "scratch", "input_size": 24, "blocks": [{"filters": 8}, {"filters": 16}], "head": {"dropout": 0.0}},
        "train": {"batch_size": 16, "stages": [{"name": "train", "epochs": epochs, "learning_rate": 0.01}]},
        "export": {"dir": str(tmp_path / "saved_models")},
    }


def test_csv_folder_reads_labels_empty_rows_and_relative_paths(tmp_path):
    from tlkit.tasks.multilabel.recipe import MultiLabelData

    labels_of = _write_csv_folder(tmp_path / "data", n=40)
    bundle = load_data(MultiLabelData(source=str(tmp_path / "data"), val_fraction=0.25), seed=0, task="multilabel")
    assert bundle.class_names == ["blue", "green", "red"]
    total = sum(s.size for s in bundle.splits.values())
    assert total == 40
    by_path = {Path(p).name: row for s in bundle.splits.values() for p, row in zip(s.paths, s.labels)}
    for i, present in enumerate(labels_of):  # multi-hot rows in sorted class order; [] is a valid negative
        assert list(by_path[f"{i:03d}.png"]) == [float(n in present) for n in bundle.class_names]
    assert any(not present for present in labels_of)
    image, target = next(iter(bundle.splits["train"].dataset))
    assert image.shape == (24, 24, 3) and target.shape == (3,)


def test_a_label_no_training_image_carries_is_an_error(tmp_path):
    from tlkit.tasks.multilabel.recipe import MultiLabelData

    folder = tmp_path / "data"
    _write_csv_folder(folder, n=12)
    text = (folder / "labels.csv").read_text().splitlines()
    # only a file that does not decode carries 'purple': after the scan no training image has it
    (folder / "img" / "bad.png").write_bytes(b"not an image")
    (folder / "labels.csv").write_text("\n".join([*text, "img/bad.png,purple"]) + "\n")
    with pytest.raises(TlkitError, match="purple.*no training image"):
        load_data(MultiLabelData(source=str(folder), val_fraction=0.25), seed=0, task="multilabel")


def test_tfds_sequence_of_class_labels(tmp_path):
    """Any TFDS dataset with a Sequence(ClassLabel) feature (here the shapes builder's `multi` config, mocked
    from its feature spec; tfds:voc has the same feature but TFDS cannot mock its nested `objects`)."""
    import tensorflow_datasets as tfds

    import tlkit.data.shapes  # noqa: F401 - registers the builder with TFDS
    from tlkit.tasks.multilabel.recipe import MultiLabelData

    with tfds.testing.mock_data(num_examples=8):
        bundle = load_data(MultiLabelData(source="tfds:tlkit_shapes/multi"), seed=0, task="multilabel")
        assert bundle.class_names == ["circle", "square", "star", "triangle"]
        image, target = next(iter(bundle.splits["train"].dataset))
    assert image.shape[-1] == 3 and target.shape == (4,)
    assert set(np.unique(bundle.splits["train"].labels)) <= {0.0, 1.0}
    with pytest.raises(TlkitError, match="sequence-of-class-labels"):
        with tfds.testing.mock_data(num_examples=4):
            load_data(MultiLabelData(source="tfds:tf_flowers"), seed=0, task="multilabel")


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colours")
    _write_csv_folder(tmp / "data")
    result = tlkit.finetune(_recipe(tmp / "data", tmp), run_dir=tmp / "run", quiet=True)
    return result, tmp


def test_learns_an_easy_task_and_keeps_its_thresholds(colour_run):
    result, _ = colour_run
    m = result.metrics
    assert m["mean_average_precision"] >= 0.9, m
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "micro_precision", "micro_recall"):
        assert 0.0 <= m[key] <= 1.0
    state = json.loads((result.run_dir / "task_state.json").read_text())
    assert len(state["thresholds"]) == 3 and all(0.0 < t < 1.0 for t in state["thresholds"])
    assert [m["per_class"][n]["threshold"] for n in result.class_names] == pytest.approx(state["thresholds"])
    meta = json.loads((result.export_dir / "metadata.json").read_text())
    assert meta["task_state"]["thresholds"] == state["thresholds"]
    assert (result.run_dir / "report" / "average_precision.png").is_file()
    assert (result.run_dir / "report" / "precision_recall.png").is_file()


def test_predict_lists_the_labels_over_their_thresholds_best_first(colour_run):
    import tensorflow as tf

    result, tmp = colour_run
    image = np.full((24, 24, 3), 128, np.uint8)
    image[:, :12] = COLOURS["red"]
    image[:, 12:] = COLOURS["blue"]
    path = tmp / "red_blue.png"
    path.write_bytes(tf.io.encode_png(image).numpy())
    rows = json.loads(run_cli("predict", str(result.export_dir), str(path), "--json").stdout)
    labels = [p["label"] for p in rows[0]["predictions"]]
    scores = [p["score"] for p in rows[0]["predictions"]]
    assert sorted(labels) == ["blue", "red"] and scores == sorted(scores, reverse=True)
    served = tf.saved_model.load(str(result.export_dir)).signatures["serving_default"](images=tf.constant(image[None]))
    assert sorted(x for x in served["labels"].numpy()[0].astype(str) if x) == ["blue", "red"]
    text = run_cli("predict", str(result.export_dir), str(path)).stdout
    assert text.startswith(f"{path}: ") and "red" in text and "green" not in text


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_tflite_and_onnx_give_the_same_labels(colour_run, fmt):
    from tlkit.exporting import export_run

    result, tmp = colour_run
    folder = export_run(result.run_dir, out=tmp / fmt, format=fmt, quiet=True)
    images = sorted((tmp / "data" / "img").glob("*.png"))[:12]
    got = tlkit.predict(folder / f"model.{fmt}", images)
    want = tlkit.predict(result.export_dir, images)
    assert [[p["label"] for p in r["predictions"]] for r in got] == [[p["label"] for p in r["predictions"]] for r in want]
    assert json.loads((folder / "metadata.json").read_text())["task_state"]["thresholds"]
    evaluated = tlkit.evaluate(folder / f"model.{fmt}")
    assert evaluated["mean_average_precision"] == pytest.approx(result.metrics["mean_average_precision"], abs=0.02)
