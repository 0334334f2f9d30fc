"""tlkit doctor: planted copies, leaks, near copies, blank frames and corrupt files are found; the JSON other
tools read keeps its keys; the files of --out are written; data.exclude leaves the listed files out."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_data, run_cli
from tlkit.diagnosis.findings import ISSUES
from tlkit.recipe import Data

CLASSES = ("cat", "dog")
TINY = ["--backbone", "scratch", "--weights", "none", "--input-size", "32", "--quiet"]


def _photo(rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A smooth random picture: distinct perceptual hashes, stable under resizing."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> dict[str, Path]:
    """train/ and val/ class folders with one of each planted problem."""
    root = tmp_path_factory.mktemp("dirty")
    rng = np.random.default_rng(3)
    for split, count in (("train", 8), ("val", 3)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                _photo(rng).save(root / split / name / f"{name}{i}.png")
    t = root / "train"
    planted = {
        "dup": t / "cat" / "cat0_copy.png", "conflict": t / "dog" / "cat1.png", "leak": root / "val" / "dog" / "dog2_seen.png",
        "near": t / "cat" / "cat3_small.jpg", "blank": t / "dog" / "blank.png", "corrupt": t / "cat" / "broken.jpg",
    }
    shutil.copy(t / "cat" / "cat0.png", planted["dup"])
    shutil.copy(t / "cat" / "cat1.png", planted["conflict"])
    shutil.copy(t / "dog" / "dog2.png", planted["leak"])
    Image.open(t / "cat" / "cat3.png").resize((24, 24), Image.BILINEAR).save(planted["near"], quality=90)
    Image.new("RGB", (32, 32), (128, 128, 128)).save(planted["blank"])
    planted["corrupt"].write_bytes(b"<html>not an image</html>")
    return {"root": root, **planted}


def _with(findings: list[dict], issue: str, path: Path) -> list[dict]:
    return [f for f in findings if f["issue"] == issue and str(path) in f["paths"]]


def test_doctor_finds_planted_problems_and_writes_its_files(dirty, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("doctor", str(dirty["root"]), *TINY, "--json", "--out", str(out))
    report = json.loads(proc.stdout)
    assert set(report) == {"summary", "findings"}
    findings = report["findings"]
    for f in findings:  # the keys and names other tools read
        assert set(f) == {"issue", "paths", "labels", "score", "suggested_label"} and f["issue"] in ISSUES
        assert len(f["labels"]) == len(f["paths"]) and isinstance(f["score"], float)
    t = dirty["root"] / "train"
    assert _with(findings, "unreadable", dirty["corrupt"])
    assert report["summary"]["unreadable"][0]["reason"].startswith("not an image")
    assert {str(t / "cat" / "cat0.png"), str(dirty["dup"])} == set(_with(findings, "duplicate", dirty["dup"])[0]["paths"])
    conflict = _with(findings, "conflicting_labels", dirty["conflict"])[0]
    assert sorted(conflict["labels"]) == ["cat", "dog"]
    assert _with(findings, "leak", dirty["leak"])[0]["paths"] == [str(t / "dog" / "dog2.png"), str(dirty["leak"])]
    near = _with(findings, "near_duplicate", dirty["near"])
    assert near and str(t / "cat" / "cat3.png") in near[0]["paths"]
    assert _with(findings, "outlier", dirty["blank"])[0]["score"] == 1.0
    summary = report["summary"]
    assert summary["images"] == 2 * 11 + 5 and summary["classes"] == {"cat": 13, "dog": 14}
    assert summary["image_sizes"]["most_common_sizes"]["32x32"] == 26 and summary["modes"]["RGB"] == 27
    assert summary["findings"]["unreadable"] == 1 and "pHash" in summary["near_duplicate_method"]
    assert summary["auto_input_size"] == 32  # 32 px images on the scratch stack: no upsampling

    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 8 and "http" not in page.replace("http-equiv", "")
    rows = list(csv.DictReader((out / "findings.csv").open()))
    assert {r["issue"] for r in rows} == {f["issue"] for f in findings}
    excluded = [l for l in (out / "exclude.txt").read_text().splitlines() if not l.startswith("#")]
    assert str(dirty["corrupt"]) in excluded and str(dirty["conflict"]) in excluded
    assert str(dirty["dup"]) in excluded and str(t / "cat" / "cat0.png") not in excluded  # one copy stays
    assert str(dirty["leak"]) in excluded and str(t / "dog" / "dog2.png") not in excluded  # the training copy stays
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_data_exclude_leaves_files_out_of_every_split(tmp_path):
    from conftest import write_images

    write_images(tmp_path / "data", {"red": (220, 20, 20), "blue": (20, 20, 220)}, per_class=10)
    everything = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))
    listed = everything[::4]
    lists = tmp_path / "lists"
    lists.mkdir()
    # relative entries resolve against the exclude file's folder, as doctor's absolute ones need not
    (lists / "exclude.txt").write_text("# comment\n\n" + "".join(os.path.relpath(p, lists) + "\n" for p in listed))
    bundle = load_data(Data(source=str(tmp_path / "data"), exclude=str(lists / "exclude.txt")), seed=0)
    kept = [p for s in bundle.splits.values() for p in s.paths]
    assert len(kept) == 20 - len(listed) and not set(kept) & set(listed)
    assert sorted(bundle.excluded) == listed
    baseline = load_data(Data(source=str(tmp_path / "data")), seed=0)
    assert set(bundle.splits["val"].paths) == set(baseline.splits["val"].paths) - set(listed)  # nothing else moves


def test_recipe_exclude_is_relative_to_the_recipe(tmp_path):
    from tlkit.tasks import load_recipe

    (tmp_path / "r.yaml").write_text("name: r\ndata:\n  source: data\n  exclude: exclude.txt\n")
    recipe = load_recipe(str(tmp_path / "r.yaml"))
    assert recipe.data.exclude == str((tmp_path / "exclude.txt").resolve())


def test_mask_facts(tmp_path):
    """Image + mask folders: pixel shares, an empty mask and a mask of another size are counted."""
    import tlkit

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        _photo(rng).save(tmp_path / "images" / f"p{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[: 8 * (i % 3)] = 255  # i % 3 == 0: an empty mask
        Image.fromarray(mask).resize((16, 16) if i == 5 else (32, 32), Image.NEAREST).save(tmp_path / "masks" / f"p{i}.png")
    result = tlkit.doctor(str(tmp_path), task="segmentation", backbone="scratch", weights="none", input_size=32, progress=False)
    masks = result.summary["masks"]
    assert masks["empty_masks"]["count"] == 2 and masks["size_mismatches"]["count"] == 1
    shares = masks["pixel_shares"]
    foreground = (8 + 16 + 8) * 32 + 8 * 16  # rows of 32 px; the last mask is 16 x 16
    assert shares["foreground"] == pytest.approx(foreground / (5 * 32 * 32 + 16 * 16), abs=1e-3)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert "classes" not in result.summary and not [f for f in result.findings if f.issue == "label"]


def test_tfds_source_from_a_recipe(tfds_dir, tmp_path):
    """A recipe as DATA (its data and backbone), on a TFDS source: examples are named SPLIT/INDEX, which
    data.exclude takes too."""
    import tlkit
    from tlkit.tasks import load_data as load_recipe_data, load_recipe

    recipe = tmp_path / "shapes.yaml"
    recipe.write_text(
        f"name: shapes\ndata: {{source: 'builtin:shapes/tiny', tfds_data_dir: '{tfds_dir}'}}\n"
        "model: {backbone: scratch, weights: none, input_size: 32, blocks: [{filters: 8}, {filters: 16}]}\n"
    )
    result = tlkit.doctor(str(recipe), progress=False)
    summary = result.summary
    assert summary["splits"] == {"train": 120, "val": 40, "test": 40} and len(summary["classes"]) == 4
    assert "scratch" in summary["features"] and "modes" not in summary  # no files to read headers from
    assert all(p.split("/")[0] in ("train", "val", "test") for f in result.findings for p in f.paths)
    (tmp_path / "exclude.txt").write_text("val/0\nval/3\n")
    bundle = load_recipe_data(load_recipe(str(recipe), {"data.exclude": str(tmp_path / "exclude.txt")}), progress=False)
    assert bundle.splits["val"].size == 38 and sorted(bundle.excluded) == ["val/0", "val/3"]


def test_model_of_a_run_gives_the_features(dirty, tiny_run):
    """--model RUN_DIR: the run's own pooled features (and its input size) find the same planted problems."""
    proc = run_cli("doctor", str(dirty["root"]), "--model", str(tiny_run), "--json", "--quiet")
    report = json.loads(proc.stdout)
    summary, findings = report["summary"], report["findings"]
    assert str(tiny_run) in summary["features"] and "32x32" in summary["features"]
    assert _with(findings, "conflicting_labels", dirty["conflict"]) and _with(findings, "unreadable", dirty["corrupt"])
    assert all(f["suggested_label"] in (None, *CLASSES) for f in findings if f["issue"] == "label")
    bad = run_cli("doctor", str(dirty["root"]), "--model", str(dirty["root"]), check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and str(dirty["root"]) in bad.stderr
