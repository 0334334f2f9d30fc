"""One harness for every registered task: build, train, evaluate, export, predict in a fresh process, report.

Parametrized over the task registry, so a newly registered task runs the same checks
(as KerasHub's TestCase and timm's registry-parametrized tests do). Each task says
which built-in data its seconds-long run uses (`Task.quick_recipe`).
"""

from __future__ import annotations

import csv
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


def test_pipelines_run_without_tf_data_autotuning(task_run, tfds_dir, tmp_path, monkeypatch):
    """What fit() iterates has tf.data autotuning off: in TensorFlow 2.21 dropping an autotuned iterator, as Keras
    does every epoch and every validation pass, waits out its tuning thread's sleep (seconds). TLKIT_DATA_AUTOTUNE=1
    keeps TensorFlow's autotuning."""
    from conftest import load_data

    name, _, _ = task_run
    task, recipe = get_task(name), load_recipe(_recipe(name, tfds_dir, tmp_path))
    bundle = load_data(recipe.data, recipe.seed, task=name)
    pipelines = [*task.pipelines(bundle, recipe, tmp_path / "cache"), task.eval_pipeline(bundle, recipe, "val", 4)]
    assert [ds.options().autotune.enabled for ds in pipelines] == [False] * 4
    monkeypatch.setenv("TLKIT_DATA_AUTOTUNE", "1")
    assert task.pipelines(bundle, recipe, tmp_path / "cache2")[0].options().autotune.enabled is not False


def test_run_records_the_headline_metric_and_evaluate_agrees(task_run):
    name, result, _ = task_run
    headline = get_task(name).headline
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved[headline] == pytest.approx(result.metrics[headline]) and 0.0 <= saved[headline] <= 1.0
    again = tlkit.evaluate(result.run_dir, split=saved["split"])
    assert again[headline] == pytest.approx(saved[headline], abs=1e-6)
    from_export = tlkit.evaluate(result.export_dir, split=saved["split"])
    assert from_export[headline] == pytest.approx(saved[headline], abs=2e-3)


def _folder_of_images(tmp: Path, images: list[str]) -> tuple[Path, list[str]]:
    """A folder with an image, a nested folder with an image and a corrupt .jpg, a text file and a hidden file."""
    folder = tmp / "folder"
    (folder / "nested").mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(Path(images[0]).read_bytes())
    (folder / "nested" / "b.png").write_bytes(Path(images[1]).read_bytes())
    (folder / "nested" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    (folder / "notes.txt").write_text("not listed")
    (folder / ".hidden.png").write_bytes(Path(images[0]).read_bytes())
    return folder, [str(folder / "a.png"), str(folder / "nested" / "b.png"), str(folder / "nested" / "broken.jpg")]


def test_export_predicts_in_a_fresh_process(task_run):
    """Files and a folder (recursively) in one command, a CSV row per image, and nothing from TensorFlow on stderr."""
    from tlkit.tflogs import is_noise

    name, result, tmp = task_run
    images = random_pngs(tmp)
    folder, inside = _folder_of_images(tmp, images)
    csv_file = tmp / "predictions.csv"
    out = run_cli("predict", str(result.export_dir), *images, str(folder), "--json", "--out", str(tmp / "predicted"),
                  "--csv", str(csv_file), check=False)
    assert out.returncode == 1, out.stderr  # one unreadable file: reported, not a stop
    assert not [line for line in out.stderr.splitlines() if is_noise(line)], out.stderr
    rows = json.loads(out.stdout)
    assert [r["path"] for r in rows] == images + inside
    assert [("error" in r) for r in rows] == [False] * 5 + [True] and "not an image" in rows[-1]["error"]
    with csv_file.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == images + inside and table[-1]["error"] == rows[-1]["error"]
    task = get_task(name)
    columns = task.csv_columns(result.class_names, {"top_k": 3})
    assert list(table[0]) == ["path", *columns, "error"]
    for row, answer in zip(table[:5], rows[:5]):  # the task's cells of the same answer, nothing else
        assert row == {"path": answer["path"], "error": "", **{c: str(task.csv_row(answer).get(c, "")) for c in columns}}
    if "mask" in rows[0]:  # written outputs keep the folder's layout: nested files of one name do not collide
        assert Path(rows[4]["mask"]) == tmp / "predicted" / "nested" / "b_mask.png" and Path(rows[4]["mask"]).is_file()
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


def _square_pngs(folder: Path, size: int = 32, n: int = 3) -> list[str]:
    """Images at the model's input size, so every path resizes nothing and outputs compare element by element."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = folder / f"square{i}.png"
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).numpy())
        paths.append(str(path))
    return paths


def test_tta_is_the_mean_of_the_image_and_its_mirror(task_run):
    """Hand-computed: p(x) and p(flip x) (flipped back for per-pixel outputs), averaged."""
    from tlkit.models.parts import probability_fn
    from tlkit.models.stages import load_run_model
    from tlkit.prediction import Predictor

    name, result, _ = task_run
    task = get_task(name)
    images = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    probs = probability_fn(load_run_model(result.run_dir), task.activation)
    plain, mirrored = np.asarray(probs(images)), np.asarray(probs(images[:, :, ::-1].copy()))
    if task.per_pixel:
        mirrored = mirrored[:, :, ::-1]
    got = Predictor(result.run_dir, tta=True).runner(images)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-6  # the flip changed something: the test can fail


def test_tta_export_serves_what_predict_tta_computes_on_the_run(task_run):
    from tlkit.exporting import export_run
    from tlkit.prediction import Predictor

    name, result, tmp = task_run
    folder = export_run(result.run_dir, out=tmp / "tta_export", tta=True, quiet=True)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["tta"]["views"] == ["identity", "horizontal_flip"] and meta["verification"]["ok"]
    assert "mean over test-time views (identity, horizontal_flip)" in (folder / "README.md").read_text()
    files = [Path(p).read_bytes() for p in _square_pngs(tmp)]
    exported = Predictor(folder).runner.encoded(files)  # the SavedModel's own decoder and its averaged signature
    on_run = Predictor(result.run_dir, tta=True).runner.encoded(files)
    np.testing.assert_allclose(exported, on_run, atol=2e-5)
