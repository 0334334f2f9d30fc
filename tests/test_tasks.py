"""One harness for every registered task: build, train, evaluate, export, predict in a fresh process, report.

Parametrized over the task registry, so a newly registered task runs the same checks
(as KerasHub's TestCase and timm's registry-parametrized tests do). Each task says
which built-in data its seconds-long run uses (`Task.quick_recipe`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_pngs, run_cli, tiny_recipe

import tlkit
from tlkit.errors import TlkitError
from tlkit.tasks import TASKS, get_task, load_recipe


def _recipe(name: str, tfds_dir: Path, tmp_path: Path) -> dict:
    task = TASKS[name]
    recipe = tiny_recipe(tfds_dir, tmp_path, name=f"tiny_{name}", task=name)
    if "head" not in task.recipe.model_fields["model"].annotation.model_fields:
        recipe["model"].pop("head", None)
    for section, values in task.quick_recipe.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    recipe["train"]["stages"] = [{"name": "train", "epochs": 1, "learning_rate": 0.003}]
    return recipe


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_run(request, tfds_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"task_{request.param}")
    recipe = _recipe(request.param, tfds_dir, tmp)
    result = tlkit.finetune(recipe, run_dir=tmp / "run", quiet=True)
    return request.param, result, tmp


def test_recipe_validates_for_its_task_only(task_run, tfds_dir, tmp_path):
    name, _, _ = task_run
    recipe = load_recipe(_recipe(name, tfds_dir, tmp_path))
    assert isinstance(recipe, TASKS[name].recipe) and recipe.task == name
    foreign = {
        key for other in TASKS.values() if other.name != name
        for key in other.recipe.model_fields["train"].annotation.model_fields
    } - set(TASKS[name].recipe.model_fields["train"].annotation.model_fields)
    for key in sorted(foreign)[:1]:
        with pytest.raises(TlkitError, match=f"train.{key}.*a field of task"):
            load_recipe(_recipe(name, tfds_dir, tmp_path), {f"train.{key}": "auto"})


def test_model_outputs_one_logit_per_class(task_run, tfds_dir, tmp_path):
    name, result, _ = task_run
    task = get_task(name)
    recipe = load_recipe(_recipe(name, tfds_dir, tmp_path))
    model = task.build_model(recipe, len(result.class_names))
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert out.shape[0] == 2 and out.shape[-1] == len(result.class_names)


def test_run_records_the_headline_metric_and_evaluate_agrees(task_run):
    name, result, _ = task_run
    headline = get_task(name).headline
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved[headline] == pytest.approx(result.metrics[headline]) and 0.0 <= saved[headline] <= 1.0
    again = tlkit.evaluate(result.run_dir, split=saved["split"])
    assert again[headline] == pytest.approx(saved[headline], abs=1e-6)
    from_export = tlkit.evaluate(result.export_dir, split=saved["split"])
    assert from_export[headline] == pytest.approx(saved[headline], abs=2e-3)


def test_export_predicts_in_a_fresh_process(task_run):
    name, result, tmp = task_run
    images = random_pngs(tmp)
    out = run_cli("predict", str(result.export_dir), *images, "--json", "--out", str(tmp / "predicted"))
    rows = json.loads(out.stdout)
    assert [r["path"] for r in rows] == images and not any("error" in r for r in rows)
    text = run_cli("predict", str(result.export_dir), images[0])
    assert text.stdout.startswith(images[0])
    meta = json.loads((result.export_dir / "metadata.json").read_text())
    assert meta["task"] == name and meta["labels"] == result.class_names


def test_report_has_the_curves_and_the_task_figures(task_run):
    name, result, _ = task_run
    index = result.run_dir / "report" / "index.html"
    html = index.read_text()
    pictures = [p for p in (result.run_dir / "report").glob("*.png")]
    assert "curves.png" in html and len(pictures) >= 2, (name, pictures)
    assert all(p.name in html for p in pictures)
