"""Building blocks of the multi-label task: metrics, loss, label CSV, splits, `shapes/multi`."""

from __future__ import annotations

import hashlib
import itertools

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tlkit.data import shapes
from tlkit.errors import TlkitError
from tlkit.tasks.multilabel import labels as ml_labels
from tlkit.tasks.multilabel import losses as ml_losses
from tlkit.tasks.multilabel import metrics as ml_metrics

# ---------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------

# 3 positives; the two 0.8 scores (one positive, one negative) are one threshold.
AP_Y = [1, 0, 1, 0, 1]
AP_S = [0.9, 0.8, 0.8, 0.4, 0.3]
# threshold  tp fp  precision  recall
#   0.9       1  0    1         1/3
#   0.8       2  1    2/3       2/3
#   0.4       2  2    1/2       2/3
#   0.3       3  2    3/5       1
# AP = 1/3 * 1 + 1/3 * 2/3 + 0 * 1/2 + 1/3 * 3/5 = 15/45 + 10/45 + 9/45 = 34/45
AP_HAND = 34 / 45


def test_average_precision_by_hand():
    assert ml_metrics.average_precision(AP_Y, AP_S) == pytest.approx(AP_HAND)
    # order of tied rows does not matter (a per-row walk would give 38/45 here)
    assert ml_metrics.average_precision([1, 1, 0, 0, 1], [0.9, 0.8, 0.8, 0.4, 0.3]) == pytest.approx(AP_HAND)
    assert ml_metrics.average_precision([0, 0, 0], [0.1, 0.5, 0.9]) is None
    assert ml_metrics.average_precision([0, 1, 1], [0.1, 0.5, 0.9]) == pytest.approx(1.0)


def test_precision_recall_curve_by_hand():
    precision, recall, thresholds = ml_metrics.precision_recall_curve(AP_Y, AP_S)
    np.testing.assert_allclose(thresholds, [0.3, 0.4, 0.8, 0.9])
    np.testing.assert_allclose(precision, [3 / 5, 1 / 2, 2 / 3, 1, 1])
    np.testing.assert_allclose(recall, [1, 2 / 3, 2 / 3, 1 / 3, 0])
    # the step-wise area under the curve is the AP
    assert -np.sum(np.diff(recall) * precision[:-1]) == pytest.approx(AP_HAND)


def test_choose_thresholds_best_f1_midpoint():
    # class 0: the AP case; F1 at 0.9/0.8/0.4/0.3 = 1/2, 2/3, 4/7, 3/4 -> 0.3, the lowest
    #   score, so the midpoint with 0: 0.15
    # class 1: scores desc 0.9+ 0.65- 0.6+ 0.2- 0.1-: F1 = 2/3, 1/2, 4/5, 2/3, 4/7
    #   -> 0.6, midpoint with the next lower score 0.2: 0.4
    # class 2: no positives -> 0.5
    y = np.array([AP_Y, [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]).T
    p = np.array([AP_S, [0.9, 0.65, 0.6, 0.2, 0.1], [0.3, 0.2, 0.9, 0.1, 0.4]]).T
    np.testing.assert_allclose(ml_metrics.choose_thresholds(y, p), [0.15, 0.4, 0.5])
    # the chosen threshold reproduces the best decisions on these images
    f1 = ml_metrics.compute_metrics(y, p, ["a", "b", "c"], ml_metrics.choose_thresholds(y, p))["per_class"]
    assert f1["a"]["f1"] == pytest.approx(3 / 4) and f1["b"]["f1"] == pytest.approx(4 / 5)


def test_compute_metrics_by_hand():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    p = np.array([[0.8, 0.45, 0.1], [0.6, 0.7, 0.6], [0.9, 0.4, 0.2]], dtype=np.float32)
    m = ml_metrics.compute_metrics(y, p, ["a", "b", "c"], [0.5, 0.5, 0.5])
    # decisions [[1,0,0],[1,1,1],[1,0,0]]: row 0 right, row 1 two FPs, row 2 one FN
    assert m["num_examples"] == 3
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["hamming_loss"] == pytest.approx(3 / 9)
    # a: tp 2 fp 1 -> P 2/3 R 1 F1 4/5; b: tp 1 fn 1 -> P 1 R 1/2 F1 2/3; c: fp 1, no support
    pa, pb, pc = (m["per_class"][k] for k in "abc")
    assert (pa["precision"], pa["recall"], pa["f1"]) == pytest.approx((2 / 3, 1, 4 / 5))
    assert (pb["precision"], pb["recall"], pb["f1"]) == pytest.approx((1, 1 / 2, 2 / 3))
    assert pc == {"average_precision": None, "precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 0.5, "support": 0}
    assert (pa["support"], pb["support"]) == (2, 2)
    # micro: tp 3, fp 2, fn 1 -> P 3/5, R 3/4, F1 6/9; macro F1 over a, b (c has no support)
    assert (m["micro_precision"], m["micro_recall"], m["micro_f1"]) == pytest.approx((3 / 5, 3 / 4, 2 / 3))
    assert m["macro_f1"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    # AP a = 1; AP b: 0.7+ (P 1, R 1/2), 0.45- , 0.4+ (P 2/3, R 1) -> 1/2 + 1/3 = 5/6
    assert pa["average_precision"] == pytest.approx(1.0) and pb["average_precision"] == pytest.approx(5 / 6)
    assert m["mean_average_precision"] == pytest.approx((1 + 5 / 6) / 2)
    right_probs = [0.8, 0.4, 0.9, 0.55, 0.7, 0.4, 0.9, 0.4, 0.8]  # probability of the true value
    assert m["loss"] == pytest.approx(-np.mean(np.log(right_probs)), rel=1e-6)
    assert m["labels"] == ["a", "b", "c"] and m["thresholds"] == [0.5, 0.5, 0.5]
    assert set(m) == {
        "num_examples", "mean_average_precision", "loss", "subset_accuracy", "hamming_loss",
        "micro_precision", "micro_recall", "micro_f1", "macro_f1", "per_class", "labels", "thresholds",
    }


def test_compute_metrics_edges():
    with pytest.raises(TlkitError, match="cannot compute metrics on an empty split"):
        ml_metrics.compute_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], [0.5, 0.5])
    # prob == threshold is a positive decision; saturated probabilities give a finite loss
    m = ml_metrics.compute_metrics([[1, 0]], [[0.5, 1.0]], ["a", "b"], [0.5, 0.5])
    assert m["per_class"]["a"]["recall"] == 1.0 and m["hamming_loss"] == 0.5
    assert np.isfinite(m["loss"]) and m["loss"] == pytest.approx((-np.log(0.5) - np.log(1e-7)) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------


def _numpy_loss(y, z, smoothing=0.0, weights=None, gamma=0.0):
    y = y * (1 - smoothing) + 0.5 * smoothing
    p = 1 / (1 + np.exp(-z))
    pos = -y * np.log(p) * (1 - p) ** gamma
    neg = -(1 - y) * np.log(1 - p) * p**gamma
    if weights is not None:
        pos = pos * np.asarray(weights)
    return float(np.mean(pos + neg))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"label_smoothing": 0.1},
        {"positive_weights": [3.0, 1.0, 0.5]},
        {"focal_gamma": 2.0},
        {"label_smoothing": 0.2, "positive_weights": [2.0, 10.0, 1.0], "focal_gamma": 1.5},
    ],
)
def test_loss_matches_numpy(kwargs):
    rng = np.random.default_rng(0)
    y = (rng.random((6, 3)) < 0.4).astype(np.float32)
    z = rng.normal(0, 3, (6, 3)).astype(np.float32)
    loss = ml_losses.MultiLabelLoss(**kwargs)
    expected = _numpy_loss(
        y.astype(np.float64), z.astype(np.float64),
        kwargs.get("label_smoothing", 0.0), kwargs.get("positive_weights"), kwargs.get("focal_gamma", 0.0),
    )
    assert float(loss(y, z)) == pytest.approx(expected, rel=1e-5)


def test_loss_is_stable_on_large_logits():
    y = np.array([[1, 0, 1, 0]], np.float32)
    z = np.array([[100.0, -100.0, -100.0, 100.0]], np.float32)  # two right, two wrong by 100
    assert float(ml_losses.MultiLabelLoss()(y, z)) == pytest.approx(50.0, rel=1e-5)
    assert np.isfinite(float(ml_losses.MultiLabelLoss(focal_gamma=2.0)(y, z)))


def test_loss_serialization_round_trip():
    loss = ml_losses.MultiLabelLoss(label_smoothing=0.1, positive_weights=[2.0, 0.5], focal_gamma=1.0)
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"] == "tlkit>MultiLabelLoss"
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, ml_losses.MultiLabelLoss) and again.get_config() == loss.get_config()
    y, z = np.array([[1.0, 0.0]], np.float32), np.array([[0.3, -1.2]], np.float32)
    assert float(again(y, z)) == pytest.approx(float(loss(y, z)))


def test_loss_rejects_bad_settings():
    for kwargs in ({"label_smoothing": 1.0}, {"focal_gamma": -1.0}, {"positive_weights": [1.0, 0.0]}):
        with pytest.raises(TlkitError):
            ml_losses.MultiLabelLoss(**kwargs)


def test_positive_weights_known_matrix():
    y = np.zeros((12, 5), np.float32)
    y[:3, 0] = 1  # 9 / 3 = 3
    # class 1: no positives -> 1.0
    y[:1, 2] = 1  # 11 / 1 = 11 -> cap 10
    y[:, 3] = 1  # 0 / 12 -> floor 1/10
    y[:6, 4] = 1  # 6 / 6 = 1
    assert ml_losses.positive_weights(y) == pytest.approx([3.0, 1.0, 10.0, 0.1, 1.0])
    assert ml_losses.positive_weights(y, cap=5.0) == pytest.approx([3.0, 1.0, 5.0, 0.2, 1.0])
    with pytest.raises(TlkitError):
        ml_losses.positive_weights(y, cap=0.5)


def test_training_metrics_fresh_and_named():
    first, second = ml_losses.training_metrics(3), ml_losses.training_metrics(3)
    assert [m.name for m in first] == ["mean_average_precision", "binary_accuracy"]
    assert all(a is not b for a, b in zip(first, second))
    auc, acc = first
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], np.float32)
    logits = np.where(y > 0, 2.0, -2.0).astype(np.float32)  # perfect, on logits
    auc.update_state(y, logits)
    acc.update_state(y, logits)
    assert float(auc.result()) == pytest.approx(1.0, abs=1e-3) and float(acc.result()) == 1.0


# ---------------------------------------------------------------------------------
# label CSV, multi-hot, splits
# ---------------------------------------------------------------------------------


def _csv(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_label_csv(tmp_path):
    elsewhere = tmp_path / "other" / "abs.png"
    path = _csv(
        tmp_path,
        "path,labels\n"
        "a.png,cat;dog\n"
        "sub/b.png,dog  bird\n"
        '"sub/with, comma.png", "cat; bird ;;"\n'
        "\n"
        "empty.png,\n"
        f"{elsewhere},dog\n",
    )
    rows, classes = ml_labels.read_label_csv(path)
    assert classes == ["bird", "cat", "dog"]
    assert rows == [
        (str(tmp_path / "a.png"), ["cat", "dog"]),
        (str(tmp_path / "sub" / "b.png"), ["bird", "dog"]),
        (str(tmp_path / "sub" / "with, comma.png"), ["bird", "cat"]),
        (str(tmp_path / "empty.png"), []),
        (str(elsewhere), ["dog"]),
    ]
    # other column names, extra columns, a missing labels cell
    path = _csv(tmp_path, "id,Filename,Tags\n1,x.png,a b\n2,y.png\n", "alt.csv")
    rows, classes = ml_labels.read_label_csv(path)
    assert rows == [(str(tmp_path / "x.png"), ["a", "b"]), (str(tmp_path / "y.png"), [])]


@pytest.mark.parametrize(
    "text, where, fragment",
    [
        ("", ":1:", "path column"),
        ("name,classes\na.png,cat\n", ":1:", "labels"),
        ("image,whatever\na.png,cat\n", ":1:", "labels column"),
        ("path,labels\na.png,cat\n,dog\n", ":3:", "no image path"),
        ("path,labels\na.png,cat\nb.png,dog\n./a.png,dog\n", ":4:", "listed twice (first on line 2)"),
        ("path,labels\n", "labels.csv:", "no image rows"),
        ("path,labels\na.png,cat\nb.png,\n", "labels.csv:", "at least 2 classes"),
    ],
)
def test_read_label_csv_errors(tmp_path, text, where, fragment):
    path = _csv(tmp_path, text)
    with pytest.raises(TlkitError) as err:
        ml_labels.read_label_csv(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and where in message and fragment in message


def test_read_label_csv_missing_file(tmp_path):
    with pytest.raises(TlkitError, match="nope.csv not found"):
        ml_labels.read_label_csv(tmp_path / "nope.csv")


def test_multi_hot_and_unused_labels():
    y = ml_labels.multi_hot([["b"], [], ["a", "b"]], ["a", "b", "c"])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 1, 0], [0, 0, 0], [1, 1, 0]])
    assert ml_labels.unused_labels(y, ["a", "b", "c"]) == ["c"]
    assert ml_labels.unused_labels(y[:1], ["a", "b", "c"]) == ["a", "c"]
    with pytest.raises(TlkitError, match="'z'"):
        ml_labels.multi_hot([["z"]], ["a", "b"])


def test_split_indices():
    split = ml_labels.split_indices(10, 0.2, 0.2, seed=3)
    assert [len(split[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(10))
    assert all((np.diff(v) > 0).all() for v in split.values())
    again = ml_labels.split_indices(10, 0.2, 0.2, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = ml_labels.split_indices(10, 0.2, 0.2, seed=4)
    assert any(not np.array_equal(split[k], other[k]) for k in split)
    none = ml_labels.split_indices(5, 0.0, 0.0, seed=0)
    assert none["train"].tolist() == [0, 1, 2, 3, 4] and none["val"].size == none["test"].size == 0
    tiny = ml_labels.split_indices(2, 0.4, 0.4, seed=0)  # rounding would leave no train row
    assert len(tiny["train"]) == 1 and len(tiny["val"]) + len(tiny["test"]) == 1
    for bad in ((0, 0.1, 0.1), (10, 0.6, 0.4), (10, -0.1, 0.0)):
        with pytest.raises(TlkitError):
            ml_labels.split_indices(*bad, seed=0)


# ---------------------------------------------------------------------------------
# shapes/multi
# ---------------------------------------------------------------------------------


def _generator_digest(config: str, per_split: int) -> str:
    builder = shapes.TlkitShapes(config=config, data_dir="/nonexistent")
    h = hashlib.sha256()
    for split in shapes.SPLITS:
        for key, ex in itertools.islice(builder._generate_examples(split), per_split):
            h.update(str(key).encode())
            h.update(ex["image"])
            h.update(ex["mask"])
            h.update(str(ex["label"]).encode())
    return h.hexdigest()


def test_single_label_configs_unchanged():
    """Digests of the first generated examples, taken before the `multi` config existed.

    They depend on numpy's Generator streams and float32 arithmetic: a different numpy
    may change them, but then it changes every shapes config, which is worth knowing.
    """
    assert _generator_digest("tiny", 8) == "ebbb4021e10552c1add98192f7c1b100fc2db77ecb67a21a4c312d17eddab06b"
    assert _generator_digest("default", 4) == "bc720593b00ce7bbab43152a60796471d7405ad960a6b6e1c8da7c7f67d05cc8"
    features = shapes.TlkitShapes(config="tiny", data_dir="/nonexistent").info.features
    assert set(features) == {"image", "mask", "label"}


def test_multi_config_values():
    assert [c.name for c in shapes.TlkitShapes.BUILDER_CONFIGS] == ["default", "tiny", "multi", "multi_tiny"]
    cfg = shapes.TlkitShapes.builder_configs["multi"]
    assert (cfg.image_size, cfg.num_train, cfg.num_validation, cfg.num_test, cfg.grid) == (64, 2000, 400, 400, 2)
    assert cfg.empty_cell_probability**4 == pytest.approx(0.08)


def test_render_multi_example():
    a = shapes.render_multi_example(np.random.default_rng([2, 0, 5]), 64, 2, 0.5)
    b = shapes.render_multi_example(np.random.default_rng([2, 0, 5]), 64, 2, 0.5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and len(a[1]) == 4 and all(-1 <= c < 4 for c in a[1])
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    full = shapes.render_multi_example(np.random.default_rng(1), 64, 2, 0.0)[1]
    none = shapes.render_multi_example(np.random.default_rng(1), 64, 2, 1.0)[1]
    assert -1 not in full and none == [-1, -1, -1, -1]


def test_multi_prepared(tmp_path, monkeypatch):
    # fewer examples than the real 2000/400/400, same code path: seconds instead of ~7 s
    cfg = shapes.TlkitShapes.builder_configs["multi"]
    counts = {"num_train": 200, "num_validation": 40, "num_test": 40}
    for field, value in counts.items():
        monkeypatch.setattr(cfg, field, value)
    builder = shapes.prepare("multi", data_dir=str(tmp_path))
    assert builder.info.supervised_keys == ("image", "labels")
    assert builder.info.features["labels"].feature.names == shapes.CLASS_NAMES
    for split, count in zip(shapes.SPLITS, counts.values()):
        rows = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(rows) == count
        images = np.stack([r["image"] for r in rows])
        assert images.shape == (count, 64, 64, 3) and images.dtype == np.uint8
        for r in rows:
            labels = r["labels"].tolist()
            assert labels == sorted(set(labels)) and all(0 <= c < 4 for c in labels)
        if split == "train":
            empty = sum(r["labels"].size == 0 for r in rows)
            assert 0.02 * count <= empty <= 0.16 * count  # ~8%
            prevalence = np.mean([[c in r["labels"] for c in range(4)] for r in rows], axis=0)
            assert (prevalence > 0.25).all() and (prevalence < 0.55).all()  # ~0.39 each
    # the stored labels are the renderer's distinct cell labels
    rng = np.random.default_rng([cfg.seed, 0, 0])
    image, cells = shapes.render_multi_example(rng, 64, cfg.grid, cfg.empty_cell_probability)
    key, first = next(builder._generate_examples("train"))
    assert key == 0 and first["image"] == shapes.encode_png(image)
    assert first["labels"] == sorted({c for c in cells if c >= 0})
