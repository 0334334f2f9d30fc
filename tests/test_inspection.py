"""`tlkit inspect`: receptive fields, feature maps, kernels and Grad-CAM against hand-computed answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _stack(nested: bool = False):
    """Two 3x3 stride-1 convolutions, then 2x2 stride-2 max pooling (optionally inside a 'backbone')."""
    import keras

    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.MaxPooling2D(2, name="p")(x)
    model = keras.Model(inputs, x, name="backbone")
    if not nested:
        return model
    outer_in = keras.Input((12, 12, 3), name="outer")
    y = model(keras.layers.Rescaling(1 / 255, name="scale")(outer_in))
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(outer_in, keras.layers.Dense(3, name="logits")(y))


def test_receptive_fields_of_a_small_stack():
    from tlkit.inspection import layer_table

    rows = {r.name: r for r in layer_table(_stack())}
    assert [rows[n].receptive_field[0] for n in ("c1", "c2", "p")] == [3, 5, 6]
    assert [rows[n].jump[0] for n in ("c1", "c2", "p")] == [1, 1, 2]
    assert rows["c1"].output_shape == (10, 10, 4) and rows["p"].output_shape == (4, 4, 4)
    assert (rows["c2"].kernel, rows["c2"].stride, rows["c2"].padding) == ((3, 3), (1, 1), "valid")
    # multiply-adds: out positions x kernel area x in channels x out channels
    assert rows["c1"].macs == 10 * 10 * 9 * 3 * 4 and rows["c2"].macs == 8 * 8 * 9 * 4 * 4


def test_nested_models_are_flattened():
    from tlkit.inspection import layer_table, totals

    model = _stack(nested=True)
    rows = layer_table(model)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["outer", "scale", "backbone/c1", "backbone/c2", "backbone/p", "gap", "logits"]
    assert [by_name[f"backbone/{n}"].receptive_field[0] for n in ("c1", "c2", "p")] == [3, 5, 6]
    # global pooling over the 4x4 map at jump 2: 6 + (4-1)*2 = 12, the whole image
    assert by_name["gap"].receptive_field == (12, 12)
    assert totals(model, rows)["params"] == model.count_params() == sum(r.params for r in rows)


def test_dilation_and_branches():
    import keras

    from tlkit.inspection import layer_table

    inputs = keras.Input((32, 32, 3))
    a = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="dilated")(inputs)  # k_eff 5
    b = keras.layers.Conv2D(4, 1, name="shortcut")(inputs)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.Multiply(name="excite")([x, gate])  # a 1x1 gate does not widen the field
    x = keras.layers.Conv2D(4, 3, strides=2, name="down")(x)
    rows = {r.name: r for r in layer_table(keras.Model(inputs, x))}
    assert rows["dilated"].receptive_field[0] == 5 and rows["shortcut"].receptive_field[0] == 1
    assert rows["add"].receptive_field[0] == 5 and rows["excite"].receptive_field[0] == 5
    assert rows["down"].receptive_field[0] == 7 and rows["down"].jump[0] == 2


def test_all_ones_kernel_feature_map_equals_hand_sums():
    import keras

    from tlkit.inspection import feature_maps

    image = np.array([[1, 2, 0, 3], [4, 1, 1, 0], [0, 2, 5, 1], [3, 0, 1, 2]], np.float32)
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(1, 2, use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2, strides=1, name="pool")(x)
    model = keras.Model(inputs, x)
    # each output is the sum of the 2x2 patch under the kernel: out = floor((4 - 2) / 1) + 1 = 3
    expected = np.array([[8, 4, 4], [7, 9, 7], [5, 8, 9]], np.float32)
    np.testing.assert_array_equal(feature_maps(model, image, "conv")[..., 0], expected)
    np.testing.assert_array_equal(feature_maps(model, image, "pool")[..., 0], [[9, 9], [9, 9]])


def test_example_script_walks_through_the_arithmetic(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "convolution_by_hand.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Keras agrees with the hand computation" in proc.stdout
    assert "[[4 5]\n [4 0]]" in proc.stdout  # ReLU then 2x2 max pooling of the README's example
    assert (tmp_path / "conv_by_hand.keras").is_file() and (tmp_path / "conv_by_hand.png").is_file()


def test_inspect_cli_on_a_keras_file(tmp_path):
    from PIL import Image

    model = _stack(nested=True)
    path = tmp_path / "stack.keras"
    model.save(path)
    image = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(image)
    # one fresh process for the table; pictures through the same entry point in this process
    table = run_cli("inspect", str(path)).stdout
    assert "backbone/c2" in table and "MaxPooling2D" in table and f"{model.count_params():,} parameters" in table

    from click.testing import CliRunner

    from tlkit.cli import cli

    def here(*args):
        return CliRunner().invoke(cli, ["inspect", str(path), *args], catch_exceptions=False)

    maps = here("--image", str(image), "--layer", "c2", "--out", str(tmp_path / "maps.png"))
    kernels = here("--filters", "--out", str(tmp_path / "filters.png"))
    assert maps.exit_code == 0 and kernels.exit_code == 0, maps.output + kernels.output
    for name in ("maps.png", "filters.png"):
        with Image.open(tmp_path / name) as img:
            pixels = np.asarray(img.convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 10
    wrong = here("--image", str(image), "--layer", "c3")
    assert wrong.exit_code == 2 and "no layer 'c3'" in wrong.output and "c1" in wrong.output


def test_inspect_recipe_flattens_the_classifier():
    from tlkit.inspection import inspect_model

    result = inspect_model("quickstart")
    rows = {r.name: r for r in result["rows"]}
    # 48 px input, 3x3 'same' convolutions each followed by 2x2 max pooling
    assert [rows[f"backbone/block{i}_conv"].receptive_field[0] for i in (1, 2, 3, 4)] == [3, 8, 18, 38]
    assert [rows[f"backbone/block{i}_pool"].jump[0] for i in (1, 2, 3)] == [2, 4, 8]
    assert rows["logits"].output_shape == (4,)  # the built-in data has 4 classes
    assert result["totals"]["multiply_adds"] > 0


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory, tfds_dir):
    """A scratch CNN trained on the built-in shapes (3000 images at 32 px) well enough to look at shapes."""
    import tlkit

    root = tmp_path_factory.mktemp("gradcam")
    recipe = {
        "name": "gradcam",
        "seed": 7,
        "data": {
            "source": "builtin:shapes",
            "tfds_data_dir": str(tfds_dir),
            "val_split": "validation[:100]",
            "test_split": "test[:100]",
        },
        "model": {
            "backbone": "scratch",
            "input_size": 32,
            "blocks": [{"filters": 16}, {"filters": 32}, {"filters": 64}, {"filters": 64, "pool": "none"}],
            "head": {"dropout": 0.0},
        },
        "train": {"batch_size": 64, "stages": [{"epochs": 6, "learning_rate": 0.005, "schedule": "cosine"}]},
        "export": {"enabled": False},
    }
    result = tlkit.finetune(recipe, run_dir=root / "run", quiet=True, report=False)
    return result.run_dir


def test_gradcam_is_highest_over_the_shape(shapes_model, tfds_dir, tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from tlkit.data import shapes
    from tlkit.inspection import gradcam, inspect_model
    from tlkit.models.stages import load_run_model

    model = load_run_model(shapes_model)
    builder = shapes.prepare("default", data_dir=str(tfds_dir))
    inside, outside = [], []
    for ex in tfds.as_numpy(builder.as_dataset(split="test[100:160]")):
        cam = gradcam(model, ex["image"], int(ex["label"]))
        assert cam["heatmap"].shape == (32, 32) and cam["layer"] == "backbone/block4_act"
        mask = tf.image.resize(ex["mask"], (32, 32), method="nearest").numpy()[..., 0] > 0
        inside.append(cam["heatmap"][mask].mean())
        outside.append(cam["heatmap"][~mask].mean())
    assert np.mean(inside) > 1.2 * np.mean(outside), (np.mean(inside), np.mean(outside))

    from PIL import Image

    image = tmp_path / "shape.png"
    Image.fromarray(ex["image"]).save(image)
    out = tmp_path / "cam.png"
    result = inspect_model(shapes_model, gradcam_image=image, class_name="star", out=out)
    assert result["label"] == "star" and result["written"] == [out]
    with Image.open(out) as img:
        assert np.asarray(img.convert("RGB")).std() > 10


def test_backbone_name_known_receptive_field():
    from tlkit.inspection import inspect_model

    result = inspect_model("mobilenet", options={"alpha": 0.25}, input_size=96)
    rows = result["rows"]
    assert [r.name for r in rows[:3]] == ["image", "preprocess", "backbone/conv1"]  # its input scaling in front
    # MobileNet v1: 3x3 conv at stride 2, then 13 depthwise 3x3 (4 of them strided): 315 pixels, jump 32
    assert (rows[-1].receptive_field, rows[-1].jump, rows[-1].output_shape) == ((315, 315), (32, 32), (3, 3, 256))
    assert result["totals"]["params"] == sum(r.params for r in rows)
