"""Run reports: every finetune leaves real pictures and an index.html that links only to files that exist."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, tiny_recipe


def _two_stage_recipe(tfds_dir: Path, root: Path) -> dict:
    recipe = tiny_recipe(tfds_dir, root)
    recipe["train"]["stages"] = [
        {"name": "warmup", "epochs": 2, "learning_rate": 0.003},
        {"name": "finetune", "epochs": 2, "learning_rate": 0.001, "schedule": "cosine"},
    ]
    recipe["export"]["enabled"] = False
    return recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tfds_dir) -> Path:
    """A two-stage tiny run made by the CLI in a fresh process, as a user would."""
    root = tmp_path_factory.mktemp("report")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(_two_stage_recipe(tfds_dir, root)))
    proc = run_cli("finetune", str(recipe_path), "--run-dir", str(root / "run"), "--quiet")
    assert "run directory:" in proc.stdout
    return root / "run"


def _cli_here(*args: str):
    """The CLI in this process (TensorFlow is already loaded): for checks that need no fresh process."""
    from click.testing import CliRunner

    from tlkit.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_finetune_writes_real_pictures(run_dir):
    from tlkit.figures import DPI, GRID_TILES, confusion_inches, grid_inches
    from tlkit.report import CURVES_INCHES

    report = run_dir / "report"
    side = round(confusion_inches(4) * DPI)
    expected = {
        "curves.png": (round(CURVES_INCHES[1] * DPI), round(CURVES_INCHES[0] * DPI)),
        "confusion_matrix.png": (side, side),
        # 40 validation images, so a full grid of 24
        "predictions.png": tuple(round(v * DPI) for v in reversed(grid_inches(GRID_TILES))),
    }
    for name, (height, width) in expected.items():
        pixels = _picture(report / name)
        assert pixels.shape == (height, width, 3), name
        assert pixels.std() > 10, f"{name} is (nearly) uniform"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{name} has too few colours to be a chart"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_index_is_self_contained_and_complete(run_dir):
    report = run_dir / "report"
    text = (report / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert {"curves.png", "confusion_matrix.png", "predictions.png"} <= set(parser.refs)
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), f"index.html fetches {ref}"
        assert (report / ref).is_file(), f"index.html references missing {ref}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in text
    for name in ("circle", "square", "star", "triangle", "precision", "recall"):
        assert name in text
    assert "warmup" in text and "finetune" in text  # stage timings
    assert "learning_rate: 0.003" in text  # the recipe
    assert "<script" not in text


def test_report_command_regenerates(run_dir):
    import shutil

    shutil.rmtree(run_dir / "report")
    proc = _cli_here("report", str(run_dir), "--max-images", "16")
    assert "index.html" in proc.output
    for name in ("index.html", "curves.png", "confusion_matrix.png", "predictions.png"):
        assert (run_dir / "report" / name).is_file()
    # 16 images: the grid shrinks to them
    from tlkit.figures import DPI, grid_inches

    assert _picture(run_dir / "report" / "predictions.png").shape[:2] == tuple(round(v * DPI) for v in reversed(grid_inches(16)))
    from tlkit.report import write_report

    before = (run_dir / "report" / "predictions.png").stat().st_mtime_ns
    write_report(run_dir, max_images=40)  # over an existing report: swapped in whole
    assert (run_dir / "report" / "predictions.png").stat().st_mtime_ns != before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    from tlkit.errors import TlkitError
    from tlkit.report import write_report

    with pytest.raises(TlkitError, match="not a tlkit run directory"):
        write_report(tmp_path)


def test_worst_mistakes_come_first():
    from tlkit.tasks.classification.figures import worst_first

    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.05, 0.95]])
    # wrong: 1 (60% sure of the wrong class); right: 2 (55%), 0 (90%), 3 (95%)
    assert worst_first(labels, probs).tolist() == [1, 2, 0, 3]


def test_report_failure_warns_and_keeps_the_run(tmp_path, tfds_dir, monkeypatch, capsys):
    import tlkit
    import tlkit.report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tlkit.report, "plot_curves", broken)
    recipe = _two_stage_recipe(tfds_dir, tmp_path)
    recipe["train"]["stages"] = recipe["train"]["stages"][:1]
    result = tlkit.finetune(recipe, run_dir=tmp_path / "run", quiet=True)
    assert (result.run_dir / "metrics.json").is_file() and (result.run_dir / "best.keras").is_file()
    err = capsys.readouterr().err
    assert "disk full" in err and f"tlkit report {result.run_dir}" in err
    assert not (result.run_dir / "report").exists()
    assert not [p for p in result.run_dir.iterdir() if p.name.startswith(".report")]


def test_no_report_flag(tmp_path, tfds_dir):
    recipe = _two_stage_recipe(tfds_dir, tmp_path)
    recipe["train"]["stages"] = recipe["train"]["stages"][:1]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    _cli_here("finetune", str(path), "--run-dir", str(tmp_path / "run"), "--no-report", "--quiet")
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "report").exists()
