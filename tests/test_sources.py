"""Data sources: class order, splits, bad files, TFDS datasets."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_images
from tlkit.data.pipeline import make_pipeline
from conftest import load_data
from tlkit.errors import TlkitError
from tlkit.recipe import Data

COLORS = {"zebra": (250, 250, 250), "apple": (220, 20, 20), "mango": (240, 180, 20)}


def test_folder_classes_sorted_and_split_is_stratified_and_seeded(tmp_path):
    write_images(tmp_path, COLORS, per_class=10)
    bundle = load_data(Data(source=str(tmp_path), val_fraction=0.2, test_fraction=0.1), seed=1, progress=False)
    assert bundle.class_names == ["apple", "mango", "zebra"]
    assert {k: v.size for k, v in bundle.splits.items()} == {"train": 21, "val": 6, "test": 3}
    assert bundle.counts("val") == {"apple": 2, "mango": 2, "zebra": 2}
    again = load_data(Data(source=str(tmp_path), val_fraction=0.2, test_fraction=0.1), seed=1, progress=False)
    assert again.splits["val"].paths == bundle.splits["val"].paths
    other = load_data(Data(source=str(tmp_path), val_fraction=0.2, test_fraction=0.1), seed=2, progress=False)
    assert other.splits["val"].paths != bundle.splits["val"].paths
    # no file in two splits
    seen = [p for s in bundle.splits.values() for p in s.paths]
    assert len(seen) == len(set(seen)) == 30


def test_labels_follow_folders(tmp_path):
    write_images(tmp_path, COLORS, per_class=4)
    bundle = load_data(Data(source=str(tmp_path), val_fraction=0.25), seed=0, progress=False)
    for image, label in bundle.splits["train"].dataset:
        mean = image.numpy().reshape(-1, 3).mean(0)
        assert np.abs(mean - np.array(COLORS[bundle.class_names[int(label)]])).max() < 20


def test_explicit_split_folders(tmp_path):
    write_images(tmp_path / "train", COLORS, per_class=5)
    write_images(tmp_path / "val", COLORS, per_class=2, seed=1)
    write_images(tmp_path / "test", COLORS, per_class=1, seed=2)
    bundle = load_data(Data(source=str(tmp_path)), seed=0, progress=False)
    assert bundle.class_names == ["apple", "mango", "zebra"]
    assert {k: v.size for k, v in bundle.splits.items()} == {"train": 15, "val": 6, "test": 3}


def test_bad_files_skipped_and_listed_or_fatal_before_training(tmp_path):
    write_images(tmp_path, COLORS, per_class=4)
    (tmp_path / "apple" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    (tmp_path / "mango" / "empty.png").write_bytes(b"")
    bundle = load_data(Data(source=str(tmp_path)), seed=0, progress=False)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in bundle.skipped) == ["broken.jpg", "empty.png"]
    assert sum(s.size for s in bundle.splits.values()) == 12
    with pytest.raises(TlkitError) as err:
        load_data(Data(source=str(tmp_path), on_bad_file="fail"), seed=0, progress=False)
    assert "broken.jpg" in str(err.value) and "empty.png" in str(err.value) and "on_bad_file" in str(err.value)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(TlkitError, match="does not exist"):
        load_data(Data(source=str(tmp_path / "missing")), seed=0)
    write_images(tmp_path / "one", {"only": (1, 2, 3)}, per_class=3)
    with pytest.raises(TlkitError, match="at least 2"):
        load_data(Data(source=str(tmp_path / "one")), seed=0)
    with pytest.raises(TlkitError, match="unknown data source kind"):
        load_data(Data(source="tfsd:mnist"), seed=0)


def test_pipeline_batches_are_float_images_and_one_hot(tmp_path):
    write_images(tmp_path, COLORS, per_class=4, size=17)
    bundle = load_data(Data(source=str(tmp_path), val_fraction=0.25), seed=0, progress=False)
    ds = make_pipeline(bundle.splits["train"], 24, 3, batch_size=4, training=True, augment=Data().augment, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (4, 24, 24, 3) and images.dtype.name == "float32"
    assert labels.shape == (4, 3) and np.allclose(labels.numpy().sum(1), 1)
    assert 0 <= images.numpy().min() and images.numpy().max() <= 255


def test_tfds_dataset_by_name_with_sorted_labels(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        bundle = load_data(Data(source="tfds:tf_flowers", val_fraction=0.25), seed=0, progress=False)
    assert bundle.class_names == sorted(["dandelion", "daisy", "tulips", "sunflowers", "roses"])
    assert set(bundle.splits) == {"train", "val"}
    assert bundle.splits["train"].size > 0 and bundle.splits["val"].size > 0  # mock_data ignores slicing
    for image, label in bundle.splits["train"].dataset.take(2):
        assert image.shape[-1] == 3 and image.dtype.name == "uint8"
        assert 0 <= int(label) < 5


def test_builtin_source(tfds_dir):
    bundle = load_data(Data(source="builtin:shapes/tiny", tfds_data_dir=str(tfds_dir)), seed=0, progress=False)
    assert bundle.class_names == ["circle", "square", "star", "triangle"]
    assert {"train", "val", "test"} <= set(bundle.splits)
