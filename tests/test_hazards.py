"""Issue 7: a scraped folder with every kind of bad file, bad recipes and untrusted model files.

Each hazard has one documented outcome (README, "What happens to each kind of
file"): used, ignored (never listed), skipped with a reason (skipped_files.txt),
or one clear error before training starts. Never a traceback.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_cli, tiny_recipe
from conftest import load_data
from tlkit.errors import TlkitError
from tlkit.recipe import Data

NON_UTF8 = b"caf\xe9.png"  # Latin-1 bytes: not valid UTF-8


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _solid(colour, size=(24, 24)) -> bytes:
    rng = np.random.default_rng(sum(colour))
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return _encode(Image.fromarray(arr), "PNG")


def _huge_png(side: int = 12000) -> bytes:
    """A valid 1-bit 12000x12000 PNG: 18 kB on disk, 432 MB once decoded to RGB."""
    raw = zlib.compress(b"".join(b"\0" + b"\0" * ((side + 7) // 8) for _ in range(side)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    """40 wide x 20 high, left half red, right half blue, tagged 'rotate 90 CW to display' (orientation 6)."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 200, 0, 255, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    return _encode(img, "PNG", transparency=1)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in [(250, 0, 0), (0, 250, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG", quality=90)
    return data[: len(data) // 2]


# file (relative to the data folder) -> outcome: "used", "ignored" or the start of the skip reason
OUTCOMES: dict[str, str] = {
    "cats/zero.jpg": "empty file",
    "cats/truncated.jpg": "truncated or corrupt JPEG",
    "cats/text.jpg": "not an image (starts with b'just som'",
    "cats/page.png": "not an image (starts with b'<!DOCTYP'",
    "cats/cmyk.jpg": "used",
    "cats/gray16.png": "used",
    "cats/palette_trns.png": "used",
    "cats/animated.gif": "used",
    "cats/pixel.png": "used",
    "cats/nested/deeper/inner.png": "used",
    "cats/selfloop.jpg": "cannot read file (Too many levels of symbolic links)",
    "cats/notes.txt": "ignored",
    "cats/.hidden.png": "ignored",
    "cats/.DS_Store": "ignored",
    "cats/.thumbs/thumb.png": "ignored",
    "dogs/huge.png": "image too large: 12000x12000 PNG (144 megapixels)",
    "dogs/huge.jpg": "used",
    "dogs/rotated.jpg": "used",
    "dogs/" + os.fsdecode(NON_UTF8): "used",
    "dogs/alias.png": "used",
    "owls/only.png": "used",
    "stray.jpg": "ignored",
    "README.txt": "ignored",
}


@pytest.fixture(scope="module")
def hazard_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hazards") / "scraped"
    for name, colour in (("cats", (230, 40, 40)), ("dogs", (40, 40, 230))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            (root / name / f"good_{i}.png").write_bytes(_solid(colour))
    cats, dogs = root / "cats", root / "dogs"
    (cats / "zero.jpg").write_bytes(b"")
    (cats / "truncated.jpg").write_bytes(_truncated_jpeg())
    (cats / "text.jpg").write_bytes(b"just some text that was saved with the wrong name\n")
    (cats / "page.png").write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    (cats / "cmyk.jpg").write_bytes(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    (cats / "gray16.png").write_bytes(_encode(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG"))
    (cats / "palette_trns.png").write_bytes(_palette_with_transparency())
    (cats / "animated.gif").write_bytes(_animated_gif())
    (cats / "pixel.png").write_bytes(_encode(Image.new("RGB", (1, 1), (250, 0, 0)), "PNG"))
    (cats / "nested" / "deeper").mkdir(parents=True)
    (cats / "nested" / "deeper" / "inner.png").write_bytes(_solid((230, 40, 40)))
    os.symlink("selfloop.jpg", cats / "selfloop.jpg")  # a link to itself: ELOOP on open
    os.symlink("..", cats / "loop")  # a folder link back up: a walk that followed it would never end
    (cats / "notes.txt").write_text("not an image extension")
    (cats / ".hidden.png").write_bytes(_solid((0, 0, 0)))
    (cats / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cats / ".thumbs").mkdir()
    (cats / ".thumbs" / "thumb.png").write_bytes(_solid((0, 0, 0)))
    (dogs / "huge.png").write_bytes(_huge_png())
    (dogs / "huge.jpg").write_bytes(_encode(Image.new("L", (12000, 12000), 90), "JPEG", quality=50))
    (dogs / "rotated.jpg").write_bytes(_exif_rotated())
    with open(os.path.join(os.fsencode(dogs), NON_UTF8), "wb") as f:
        f.write(_solid((40, 40, 230)))
    outside = root.parent / "outside.png"
    outside.write_bytes(_solid((40, 40, 230)))
    os.symlink(outside, dogs / "alias.png")
    (root / "owls").mkdir()
    (root / "owls" / "only.png").write_bytes(_solid((200, 200, 200)))
    (root / "stray.jpg").write_bytes(_solid((1, 2, 3)))
    (root / "README.txt").write_text("downloaded from the web")
    return root


def _rel(root: Path, path: str) -> str:
    return os.path.relpath(path, root)


def test_every_file_hazard_has_its_documented_outcome(hazard_folder):
    bundle = load_data(Data(source=str(hazard_folder), val_fraction=0.0), seed=0, progress=False)
    assert bundle.class_names == ["cats", "dogs", "owls"]
    used = {_rel(hazard_folder, p) for p in bundle.splits["train"].paths}
    skipped = {_rel(hazard_folder, p): why for p, why in bundle.skipped}
    for name, outcome in OUTCOMES.items():
        if outcome == "used":
            assert name in used, (name, skipped.get(name))
        elif outcome == "ignored":
            assert name not in used and name not in skipped, name
        else:
            assert skipped.get(name, "").startswith(outcome), (name, skipped.get(name))
    assert used - set(OUTCOMES) == {f"{c}/good_{i}.png" for c in ("cats", "dogs") for i in range(6)}
    assert set(skipped) <= set(OUTCOMES)
    labels = dict(zip(bundle.splits["train"].paths, bundle.splits["train"].labels))
    assert labels[str(hazard_folder / "cats/nested/deeper/inner.png")] == 0  # nested files belong to their class
    # every used file streams through the tf.data pipeline as RGB (the non-UTF-8 name too)
    images = [image.numpy() for image, _ in bundle.splits["train"].dataset]
    assert len(images) == len(used) and all(im.ndim == 3 and im.shape[-1] == 3 for im in images)


def test_large_and_odd_images_decode_within_bounds(hazard_folder):
    from tlkit.data.decode import MAX_DECODE_PIXELS, decode_image_file

    huge = decode_image_file(hazard_folder / "dogs/huge.jpg")
    assert huge.shape == (6000, 6000, 3)  # 12000x12000 JPEG decoded at 1/2 scale
    assert huge.shape[0] * huge.shape[1] <= MAX_DECODE_PIXELS
    with pytest.raises(TlkitError, match="image too large: 12000x12000 PNG"):
        decode_image_file(hazard_folder / "dogs/huge.png")
    rotated = decode_image_file(hazard_folder / "dogs/rotated.jpg").numpy()
    assert rotated.shape == (20, 40, 3)  # EXIF orientation is not applied: pixels as stored
    assert rotated[10, 5, 0] > 200 and rotated[10, 35, 2] > 200  # red left half, blue right half
    assert decode_image_file(hazard_folder / "cats/pixel.png").shape == (1, 1, 3)
    gif = decode_image_file(hazard_folder / "cats/animated.gif").numpy()
    assert gif[0, 0, 0] > 200 and gif[0, 0, 1] < 50  # the first (red) frame


@pytest.mark.parametrize(
    "layout, words",
    [
        ({"only": 3}, "has 1 class folder(s): a classifier needs at least 2"),
        ({"a": 3, "b": 0}, "class folder(s) with no usable training image: b"),
        ({"a": 0, "b": 0}, "no images found under"),
        ({"a": 3, "b": -2}, "class folder(s) with no usable training image: b"),  # -2: two bad files only
        ({}, "has 0 class folder(s)"),
    ],
)
def test_folder_level_hazards_are_one_error_before_training(tmp_path, layout, words):
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        for i in range(abs(count)):
            data = _solid((10 * i, 50, 50)) if count > 0 else b"<html>oops</html>"
            (tmp_path / name / f"{i}.png").write_bytes(data)
    with pytest.raises(TlkitError) as err:
        load_data(Data(source=str(tmp_path)), seed=0, progress=False)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_non_utf8_class_folder_is_a_clear_error(tmp_path):
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    (tmp_path / "tea").mkdir()
    for folder in (os.fsdecode(b"caf\xe9"), "tea"):
        (tmp_path / folder / "x.png").write_bytes(_solid((9, 9, 9)))
    with pytest.raises(TlkitError, match="not valid UTF-8: rename it"):
        load_data(Data(source=str(tmp_path)), seed=0, progress=False)


def test_hazard_folder_trains_in_a_fresh_process_and_lists_what_it_skipped(hazard_folder, tmp_path, tfds_dir):
    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["data"] = {"source": str(hazard_folder), "val_fraction": 0.25}
    recipe["train"]["stages"][0]["epochs"] = 1
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    proc = run_cli("finetune", str(path), "--run-dir", str(run_dir), "--no-export")
    assert "Traceback" not in proc.stderr
    assert "skipped   6 unreadable file(s)" in proc.stdout
    # the summary's scan line (checked now, or remembered: other tests may have scanned this folder already)
    assert re.search(r"^  scan      \d+ files", proc.stdout, re.M), proc.stdout[:900]
    listed = (run_dir / "skipped_files.txt").read_bytes().decode("utf-8").splitlines()
    reasons = {_rel(hazard_folder, line.split("\t")[0]): line.split("\t")[1] for line in listed}
    assert set(reasons) == {k for k, v in OUTCOMES.items() if v not in ("used", "ignored")}
    assert (run_dir / "labels.txt").read_text().split() == ["cats", "dogs", "owls"]



def test_strict_mode_stops_before_training_and_writes_nothing(hazard_folder, tmp_path, tfds_dir):
    import tlkit

    recipe = tiny_recipe(tfds_dir, tmp_path)
    recipe["data"] = {"source": str(hazard_folder), "on_bad_file": "fail"}
    with pytest.raises(TlkitError) as err:
        tlkit.finetune(recipe, run_dir=tmp_path / "strict", quiet=True)
    assert "6 file(s) are not decodable images" in str(err.value) and "huge.png: image too large" in str(err.value)
    assert not (tmp_path / "strict").exists()  # nothing written before the data is known to be usable


# ----------------------------------------------------------------------------- bad recipes


@pytest.mark.parametrize(
    "override, words",
    [
        ({"train.stages.0.optimiser": "sgd"}, ["'train.stages.0.optimiser'", "did you mean 'optimizer'", "learning_rate"]),
        ({"train.batch_size": "many"}, ["'train.batch_size' = 'many'", "valid integer"]),
        ({"train.batch_size": 0}, ["'train.batch_size' = 0", "greater than 0"]),
        ({"train.stages.0.epochs": -3}, ["'train.stages.0.epochs' = -3", "positive number"]),
        ({"train.stages.0.learning_rate": 0}, ["'train.stages.0.learning_rate' = 0", "greater than 0"]),
        ({"train.stages.0.optimizer": "rmsprop"}, ["'train.stages.0.optimizer' = 'rmsprop'", "'adam', 'adamw' or 'sgd'"]),
        ({"model.head.dropout": -0.5}, ["'model.head.dropout' = -0.5", "greater than or equal to 0"]),
        ({"data.val_fraction": 1.5}, ["'data.val_fraction' = 1.5", "less than 1"]),
        ({"model.input_size": 0}, ["'model.input_size' = 0", "positive number"]),
        # scratch's smallest input follows its blocks: the first block whose map would vanish is named
        ({"model.input_size": 2}, ["scratch block 2: max pooling 2 (stride 2) on 1x1 gives 0x0", "model.input_size"]),
        (
            {"model.input_size": 8, "model.blocks.1.padding": "valid", "model.blocks.1.kernel_size": 7},
            ["scratch block 2: input 4x4 with kernel 7", "gives 0x0", "raise input_size (model.input_size)"],
        ),
        ({"model.blocks.0.padding": -1}, ["'model.blocks.0.padding' = -1", "non-negative integer"]),
        ({"model.backbone": "mobilenet", "model.input_size": 16}, ["mobilenet needs input_size >= 32, got 16"]),
        ({"model.backbone": "mobilenet", "model.options": {"depth": 3}}, ["option 'depth' is not available for mobilenet", "alpha"]),
        ({"model.backbone": "mobilenet", "model.weights": "missing.h5"}, ["weights file 'missing.h5' not found"]),
        ({"runtime.deterministic": "sometimes"}, ["'runtime.deterministic' = 'sometimes'", "valid boolean"]),
    ],
)
def test_bad_recipe_is_one_line_naming_field_value_and_what_is_allowed(tmp_path, tfds_dir, override, words):
    import tlkit

    recipe = tiny_recipe(tfds_dir, tmp_path)
    if "model.backbone" in override:
        recipe["model"] = {"weights": "none"}
    with pytest.raises(TlkitError) as err:
        tlkit.finetune(recipe, overrides=override, run_dir=tmp_path / "run", quiet=True)
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, (word, text)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_relative_input_paths_resolve_against_the_recipe_folder(tmp_path):
    from tlkit.tasks import load_recipe

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "r.yaml").write_text(
        yaml.safe_dump({"data": {"source": "../images", "tfds_data_dir": "tfds"}, "model": {"weights": "w.weights.h5"}})
    )
    rec = load_recipe(tmp_path / "cfg" / "r.yaml")
    assert rec.data.source == str((tmp_path / "images").resolve())
    assert rec.data.tfds_data_dir == str((tmp_path / "cfg" / "tfds").resolve())
    assert rec.model.weights == str((tmp_path / "cfg" / "w.weights.h5").resolve())
    assert rec.export.dir == "saved_models"  # outputs stay relative to where tlkit runs


def test_recipe_yaml_is_loaded_safely(tmp_path):
    from tlkit.tasks import load_recipe

    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(TlkitError, match="not valid YAML"):
        load_recipe(tmp_path / "evil.yaml")
    assert not marker.exists()


# ----------------------------------------------------------------------------- untrusted model files


@pytest.fixture(scope="module")
def lambda_run(tmp_path_factory, tfds_dir):
    """A finished tiny run whose best.keras was replaced by one with a Lambda layer that leaves a marker file."""
    import tlkit

    root = tmp_path_factory.mktemp("lambda")
    recipe = tiny_recipe(tfds_dir, root)
    recipe["train"]["stages"][0]["epochs"] = 1
    recipe["export"]["enabled"] = False
    result = tlkit.finetune(recipe, run_dir=root / "run", quiet=True)
    return root, result.run_dir


def test_keras_file_with_lambda_is_refused_unless_unsafe(lambda_run, monkeypatch):
    import keras

    root, run_dir = lambda_run
    marker = root / "foreign_code_ran"
    monkeypatch.setenv("TLKIT_TEST_MARKER", str(marker))  # the payload's code touches this file when it runs
    trusted = keras.saving.load_model(run_dir / "best.keras")
    inputs = keras.Input(trusted.input_shape[1:])
    payload = lambda x: (open(__import__("os").environ["TLKIT_TEST_MARKER"], "a").close(), x)[1]  # noqa: E731
    touched = keras.layers.Lambda(payload, name="payload")(inputs)
    evil = keras.Model(inputs, trusted(touched))
    marker.unlink(missing_ok=True)
    evil.save(run_dir / "best.keras")
    marker.unlink(missing_ok=True)  # saving traced the lambda; only loading counts from here

    proc = run_cli("evaluate", str(run_dir), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "contains Python code" in proc.stderr and "--unsafe" in proc.stderr
    assert not marker.exists()

    import tlkit

    with pytest.raises(TlkitError, match="contains Python code"):
        tlkit.export(run_dir, out=root / "exp")
    with pytest.raises(TlkitError, match="contains Python code"):
        tlkit.extract(run_dir, "builtin:shapes/tiny", progress=False)
    assert not marker.exists() and not (root / "exp").exists()
    metrics = tlkit.evaluate(run_dir, unsafe=True)  # the user vouches for the file
    assert marker.exists() and 0 <= metrics["accuracy"] <= 1


def test_no_pickle_or_unsafe_loading_in_the_package():
    """Guard for the whole package: no pickle, no unsafe YAML, safe mode off only behind --unsafe."""
    package = Path(__file__).resolve().parents[1] / "tlkit"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for banned in ("import pickle", "cPickle", "allow_pickle=True", "yaml.load(", "unsafe_load", "yaml.Loader", "marshal."):
            assert banned not in text, (path, banned)
        if "safe_mode=" in text:
            assert "safe_mode=not unsafe" in text and path.name == "stages.py", path
