"""Recipes: strict validation with helpful messages, overrides, shipped recipes."""

from __future__ import annotations

import pytest
import yaml

from tlkit.errors import TlkitError
from tlkit.recipe import RECIPES_DIR, Recipe, parse_override, shortcut_overrides
from tlkit.tasks import load_recipe, recipe_reference


def test_every_shipped_recipe_validates():
    paths = sorted(RECIPES_DIR.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"quickstart", "scratch_folder", "flowers_mobilenet"}
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.name == path.stem


def test_unknown_key_names_key_allowed_keys_and_closest_match():
    with pytest.raises(TlkitError) as err:
        load_recipe({"train": {"stages": [{"optimiser": "sgd"}]}})
    text = str(err.value)
    assert "train.stages.0.optimiser" in text
    assert "did you mean 'optimizer'" in text
    assert "learning_rate" in text  # the allowed keys are listed


def test_wrong_type_and_bad_values_name_the_field():
    with pytest.raises(TlkitError, match=r"train\.batch_size"):
        load_recipe({"train": {"batch_size": "many"}})
    with pytest.raises(TlkitError, match=r"train\.batch_size"):
        load_recipe({"train": {"batch_size": 0}})
    with pytest.raises(TlkitError, match=r"data\.on_bad_file"):
        load_recipe({"data": {"on_bad_file": "ignore"}})
    with pytest.raises(TlkitError, match="val_fraction"):
        load_recipe({"data": {"val_fraction": 0.6, "test_fraction": 0.5}})


def test_overrides_reach_nested_fields_and_list_items():
    recipe = load_recipe(
        "quickstart",
        ["train.batch_size=8", "train.stages.0.learning_rate=1e-4", "model.blocks.1.activation=gelu", "data.augment.rotation=0.1"],
    )
    assert recipe.train.batch_size == 8
    assert recipe.train.stages[0].learning_rate == pytest.approx(1e-4)
    assert recipe.model.blocks[1].activation == "gelu"
    assert recipe.data.augment.rotation == pytest.approx(0.1)


def test_star_override_sets_every_stage():
    recipe = load_recipe("flowers_mobilenet", shortcut_overrides(epochs=1))
    assert len(recipe.train.stages) >= 2
    assert all(s.epochs == 1 for s in recipe.train.stages)


def test_override_errors_are_user_errors():
    with pytest.raises(TlkitError, match="section.key=value"):
        parse_override("train.batch_size")
    with pytest.raises(TlkitError, match="out of range"):
        load_recipe("quickstart", ["train.stages.5.epochs=1"])
    with pytest.raises(TlkitError, match="did you mean 'batch_size'"):
        load_recipe("quickstart", ["train.batchsize=3"])


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe("quickstart", {"train.batch_size": 16})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again.to_dict() == {**recipe.to_dict(), "name": recipe.name}


def test_relative_folder_resolves_against_the_recipe_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"data": {"source": "images"}}))
    assert load_recipe(tmp_path / "r.yaml").data.source == str((tmp_path / "images").resolve())


def test_unknown_recipe_name_lists_shipped_ones():
    with pytest.raises(TlkitError, match="quickstart"):
        load_recipe("no-such-recipe")


def test_reference_documents_every_field():
    table = recipe_reference()
    for key in ("data.source", "data.on_bad_file", "model.backbone", "model.blocks[].kernel_size", "train.stages[].unfreeze", "export.dir"):
        assert f"`{key}`" in table
    assert Recipe().task == "classification"
