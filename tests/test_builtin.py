"""Tests of the built-in `tlkit_shapes` TFDS dataset, on its fast `tiny` config."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tlkit.data import shapes

SPLIT_COUNTS = {"train": 120, "validation": 40, "test": 40}
SIZE = 32


def _load_split(data_dir, split: str) -> dict[str, np.ndarray]:
    ds = tfds.load("tlkit_shapes/tiny", data_dir=str(data_dir), split=split)
    rows = list(tfds.as_numpy(ds))
    return {k: np.stack([r[k] for r in rows]) for k in ("image", "mask", "label")}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    shapes.prepare("tiny", data_dir=str(data_dir))
    return data_dir


@pytest.fixture(scope="module")
def train(tiny_dir):
    return _load_split(tiny_dir, "train")


def test_registered_and_default_config_first():
    assert "tlkit_shapes" in tfds.list_builders()
    assert [c.name for c in shapes.TlkitShapes.BUILDER_CONFIGS][:2] == ["default", "tiny"]
    assert tfds.builder("tlkit_shapes", data_dir="/nonexistent").builder_config.name == "default"
    assert shapes.CLASS_NAMES == sorted(shapes.CLASS_NAMES) == ["circle", "square", "star", "triangle"]


def test_prepare_prints_only_when_generating(tmp_path, capsys):
    shapes.prepare("tiny", data_dir=str(tmp_path))
    assert "generating built-in dataset tlkit_shapes/tiny into" in capsys.readouterr().out
    builder = shapes.prepare("tiny", data_dir=str(tmp_path))
    assert "generating" not in capsys.readouterr().out
    assert builder.info.splits["train"].num_examples == SPLIT_COUNTS["train"]


def test_tfds_load_generates_offline(tmp_path, monkeypatch):
    """A plain `tfds.load` prepares the data on first use without touching the network."""

    def no_network(*args, **kwargs):
        raise AssertionError("tlkit_shapes tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ds = tfds.load("tlkit_shapes/tiny", data_dir=str(tmp_path), split="validation")
    assert sum(1 for _ in ds) == SPLIT_COUNTS["validation"]


def test_tfds_load_counts_shapes_dtypes(tiny_dir):
    builder = tfds.builder("tlkit_shapes/tiny", data_dir=str(tiny_dir))
    assert builder.info.features["label"].names == shapes.CLASS_NAMES
    assert builder.info.supervised_keys == ("image", "label")
    for split, count in SPLIT_COUNTS.items():
        data = _load_split(tiny_dir, split)
        assert data["image"].shape == (count, SIZE, SIZE, 3)
        assert data["mask"].shape == (count, SIZE, SIZE, 1)
        assert data["image"].dtype == np.uint8 and data["mask"].dtype == np.uint8
        assert set(np.unique(data["mask"])) <= {0, 1}
        assert data["label"].min() >= 0 and data["label"].max() < 4


def test_as_supervised(tiny_dir):
    ds = tfds.load("tlkit_shapes/tiny", data_dir=str(tiny_dir), split="test", as_supervised=True)
    image, label = next(iter(ds))
    assert image.shape == (SIZE, SIZE, 3) and label.shape == ()


def test_every_class_in_train(train):
    counts = np.bincount(train["label"], minlength=4)
    assert (counts > 0).all(), counts


def test_deterministic_across_data_dirs(tmp_path, tiny_dir, train):
    builder = shapes.prepare("tiny", data_dir=str(tmp_path))
    again = _load_split(tmp_path, "train")
    for k in ("image", "mask", "label"):
        np.testing.assert_array_equal(train[k], again[k])
    # Same version + config -> byte-identical record files.
    first = tfds.builder("tlkit_shapes/tiny", data_dir=str(tiny_dir)).data_path
    records = sorted(p.name for p in builder.data_path.iterdir() if ".tfrecord" in p.name)
    assert len(records) == 3
    for name in records:
        assert (first / name).read_bytes() == (builder.data_path / name).read_bytes()


def test_splits_differ(tiny_dir, train):
    test = _load_split(tiny_dir, "test")
    flat_train = {img.tobytes() for img in train["image"]}
    assert not any(img.tobytes() in flat_train for img in test["image"])


def test_mask_agrees_with_image(train):
    pixels = SIZE * SIZE
    for image, mask in zip(train["image"], train["mask"]):
        inside = mask[..., 0].astype(bool)
        assert 0 < inside.sum() < pixels
        mean_in = image[inside].astype(float).mean(axis=0)
        mean_out = image[~inside].astype(float).mean(axis=0)
        # The shape colour is drawn far from the background colour.
        assert np.linalg.norm(mean_in - mean_out) > 40


def _fill_ratio(mask: np.ndarray) -> float:
    """Mask area over its bounding-box area."""
    ys, xs = np.nonzero(mask[..., 0])
    return len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


def test_classes_differ_in_geometry(train):
    ratios = {name: [] for name in shapes.CLASS_NAMES}
    for mask, label in zip(train["mask"], train["label"]):
        ratios[shapes.CLASS_NAMES[label]].append(_fill_ratio(mask))
    mean = {k: float(np.mean(v)) for k, v in ratios.items()}
    assert mean["circle"] > 0.7  # pi/4 ~ 0.785
    assert mean["circle"] > mean["triangle"] > mean["star"]
    assert mean["square"] > mean["triangle"]


def test_render_is_pure_function_of_rng():
    a = shapes.render_example(np.random.default_rng([3, 0, 7]), 48, 2)
    b = shapes.render_example(np.random.default_rng([3, 0, 7]), 48, 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape == (48, 48, 3) and a[1].shape == (48, 48, 1)


def test_encode_png_round_trips():
    import tensorflow as tf

    image, mask = shapes.render_example(np.random.default_rng(0), 40, 1)
    np.testing.assert_array_equal(tf.io.decode_png(shapes.encode_png(image)).numpy(), image)
    np.testing.assert_array_equal(tf.io.decode_png(shapes.encode_png(mask)).numpy(), mask)
