"""Defaults that adapt to the data: the no-recipe choice, input_size auto, stages in steps, honest figures."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from tlkit.data.autosize import auto_input_size, candidate_sizes
from tlkit.errors import TlkitError
from tlkit.recipe import Stage
from tlkit.runs import selection_note
from tlkit.tasks import load_recipe
from tlkit.train.adapt import stage_epochs, steps_per_epoch


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(128, 128)] * 9, 128),  # flowers_128: its own size, not upsampled to 224
        ([(375, 500), (500, 375), (333, 500)], 224),  # full-size photos: the native size
        ([(120, 160)] * 3, 128),  # 6.7% up is fine
        ([(100, 100)] * 3, 96),  # 128 would be 1.28x: the next size down
        ([(20, 24)], 32),  # below the backbone's smallest input: its minimum
        ([], 224),  # nothing known: native
    ],
)
def test_auto_input_size_from_median_short_side(sizes, expected):
    choice = auto_input_size(sizes, native=224, min_size=32, backbone="mobilenet")
    assert choice.size == expected
    assert f"{expected} px" in choice.reason and "\n" not in choice.reason


def test_auto_size_never_upsamples_far_and_uses_the_median():
    # one huge image among small ones does not move the choice
    assert auto_input_size([(64, 64)] * 5 + [(4000, 3000)], 224, 32).size == 64
    for side in range(32, 400, 7):
        size = auto_input_size([(side, side + 10)], 224, 32).size
        assert size <= max(32, side * 1.15) and size in candidate_sizes(224, 32)


def test_stage_epochs_by_hand():
    stage = Stage(epochs="auto", steps=500, min_epochs=2, max_epochs=10)
    # 300 images, batch 32: ceil(300/32) = 10 steps an epoch; 500/10 = 50 epochs, capped at 10
    assert steps_per_epoch(300, 32) == 10 and stage_epochs(stage, 10) == 10
    # 3,453 images (flowers): 108 steps; ceil(500/108) = 5 epochs = 540 steps
    assert steps_per_epoch(3453, 32) == 108 and stage_epochs(stage, 108) == 5
    # 40,000 images: 1,250 steps; ceil(500/1250) = 1, raised to min_epochs 2 = 2,500 steps
    assert steps_per_epoch(40_000, 32) == 1250 and stage_epochs(stage, 1250) == 2
    assert stage_epochs(Stage(epochs=7), 1250) == 7  # a number stays itself


def test_warmup_in_steps_replaces_warmup_epochs():
    from tlkit.train.schedules import learning_rate

    schedule, _ = learning_rate(Stage(epochs=3, schedule="cosine", warmup_epochs=1, warmup_steps=40), 100)
    assert schedule.warmup_steps == 40 and schedule.total_steps == 300
    schedule, _ = learning_rate(Stage(epochs=1, schedule="cosine", warmup_steps=500), 100)
    assert schedule.warmup_steps == 100  # never longer than the stage


def test_no_recipe_picks_quickstart_or_the_own_images_default(tmp_path):
    assert load_recipe(None).name == "quickstart"
    assert load_recipe(None, {"data.source": "builtin:shapes/tiny"}).name == "quickstart"
    own = load_recipe(None, {"data.source": str(tmp_path)})
    assert own.name == "own_images" and own.model.weights == "imagenet" and own.model.input_size == "auto"
    assert all(stage.epochs == "auto" for stage in own.train.stages)
    with pytest.raises(TlkitError, match="input_size"):
        load_recipe("quickstart", {"model.input_size": 0})


def test_selection_note_only_when_the_reported_split_picked_the_epoch():
    assert "optimistic" in selection_note({"split": "val", "selected_on": "val"})
    assert selection_note({"split": "test", "selected_on": "val"}) is None
    assert selection_note({"split": "val"}) is None


def test_own_folder_default_with_backbone_scratch_adapts_to_the_images(tmp_path):
    """`tlkit finetune --data DIR --backbone scratch`: the own-images default, offline, sized from the images."""
    from PIL import Image

    from conftest import load_data
    from tlkit.data.imagesizes import image_sizes
    from tlkit.recipe import Data
    from tlkit.tasks import get_task
    from tlkit.train.adapt import resolve_auto
    from tlkit.train.run import run_recipe

    for i in range(16):  # short sides 20 (12 images) and 200 (4): the median is 20
        side = 20 if i % 4 else 200
        (tmp_path / "ab"[i % 2]).mkdir(exist_ok=True)
        Image.new("RGB", (side + 7, side)).save(tmp_path / "ab"[i % 2] / f"{i}.png")
    bundle = load_data(Data(source=str(tmp_path), val_fraction=0.25), seed=0)  # the scan's sizes, as finetune reads them
    assert sorted(image_sizes(bundle))[0] == (20, 27) and len(image_sizes(bundle)) == 16
    header_only = SimpleNamespace(info={}, splits={"train": bundle.splits["train"]})  # a source without recorded sizes
    assert sorted(image_sizes(header_only))[0] == (20, 27)

    rec = run_recipe(data=str(tmp_path), backbone="scratch", batch_size=8)
    assert rec.name == "own_images" and rec.model.weights is None  # scratch's own default: no weights to fetch
    get_task(rec).check(rec)
    resolved, notes = resolve_auto(rec, bundle)
    assert resolved.model.input_size == 16  # 20 px images: 16 (24 would be 1.2x up)
    assert "input     16 px: the median image short side is 20 px" in notes[0]
    # 16 train images at batch 8 = 2 steps an epoch: the head's 1000 steps capped at 30 epochs, the fine-tune's 500 at 5
    assert [s.epochs for s in resolved.train.stages] == [30, 5]
    assert "head: 30 epoch(s) x 2 steps = 60 steps" in notes[1]
    assert load_recipe(resolved.to_dict()).model.input_size == 16  # what recipe.yaml stores validates again


def test_offline_imagenet_error_names_the_file_and_both_ways_out(tmp_path, monkeypatch):
    from tlkit.models.backbones import keras_models_dir

    if (keras_models_dir() / "mobilenet_1_0_224_tf_no_top.h5").exists():
        pytest.skip("the ImageNet file is cached in ~/.keras/models, so nothing is downloaded")
    import tlkit

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in this test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    (tmp_path / "data").mkdir()  # empty: the weights are fetched before the data is read
    with pytest.raises(TlkitError) as err:
        tlkit.finetune(data=str(tmp_path / "data"), run_dir=tmp_path / "run", quiet=True)
    text = str(err.value)
    assert "mobilenet_1_0_224_tf_no_top.h5" in text and "--weights PATH" in text and "--backbone scratch" in text
    assert "\n" not in text


def test_adapt_batchnorm_sets_the_average_of_the_batch_statistics():
    import keras
    import numpy as np
    import tensorflow as tf

    from tlkit.tasks import get_task
    from tlkit.train.batchnorm import adapt_batchnorm

    rec = load_recipe({"model": {"backbone": "scratch", "input_size": 16, "blocks": [{"filters": 4}]}})
    model = get_task(rec).build_model(rec, 2)
    backbone = model.get_layer("backbone")
    bn = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    x = np.random.default_rng(0).uniform(0, 255, (48, 16, 16, 3)).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros(48))).batch(16)
    momentum = bn.momentum
    assert adapt_batchnorm(model, batches, max_batches=10) == 3
    conv = keras.Model(backbone.input, bn.input)
    batch_means = [conv(model.get_layer("preprocess")(x[i : i + 16])).numpy().mean(axis=(0, 1, 2)) for i in (0, 16, 32)]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(batch_means, axis=0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == momentum and bn.trainable  # the layer is left as it was
