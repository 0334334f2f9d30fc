"""TFLite and ONNX exports: verified by their own engines, labels beside them, one predict for every format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_pngs, run_cli, tiny_recipe

pytest.importorskip("ai_edge_litert", reason="needs the export extra: pip install 'tlkit[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'tlkit[export]'")
pytest.importorskip("tf2onnx", reason="needs the export extra: pip install 'tlkit[export]'")

LABELS = ["circle", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tfds_dir):
    """(root, run dir) of one tiny run, not exported."""
    import tlkit

    root = tmp_path_factory.mktemp("formats")
    result = tlkit.finetune(tiny_recipe(tfds_dir, root), run_dir=root / "run", quiet=True, export=False)
    return root, result.run_dir


@pytest.fixture(scope="module")
def exports(run):
    """One export per format: {name: version folder}."""
    from tlkit.exporting import export_run

    root, run_dir = run
    return {
        "savedmodel": export_run(run_dir, out=root / "sm", quiet=True),
        "tflite": export_run(run_dir, out=root / "tfl", format="tflite", quiet=True),
        "onnx": export_run(run_dir, out=root / "onnx", format="onnx", quiet=True),
    }


def test_files_labels_and_cards_travel_together(exports):
    for name, file in (("tflite", "model.tflite"), ("onnx", "model.onnx")):
        folder = exports[name]
        assert folder.name == "1"
        assert sorted(p.name for p in folder.iterdir()) == sorted(["README.md", "labels.txt", "metadata.json", file])
        assert (folder / "labels.txt").read_text().split() == LABELS
        meta = json.loads((folder / "metadata.json").read_text())
        assert meta["format"] == name and meta["file"] == file and meta["verification"]["ok"]
        assert meta["verification"]["max_abs_diff"] < 1e-3
        assert meta["size_bytes"] == (folder / file).stat().st_size
        card = (folder / "README.md").read_text()
        for needle in ("## Labels", *LABELS, "## Input and output", "[batch, 32, 32, 3]", "## Metrics", "## Training recipe",
                       "TF Serving", "LiteRT", "Python"):
            assert needle in card, (name, needle)
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exports["onnx"] / "model.onnx")).metadata_props}
    assert json.loads(props["labels"]) == LABELS  # the .onnx file alone still knows its labels


def _images(tmp_path: Path) -> list[str]:
    return random_pngs(tmp_path)


def test_one_predict_for_every_format_gives_the_same_top1(run, exports, tmp_path):
    import tlkit

    _, run_dir = run
    paths = _images(tmp_path)
    targets = {
        "savedmodel": exports["savedmodel"].parent,  # model folder: newest version
        "tflite": exports["tflite"] / "model.tflite",  # the file itself, labels.txt beside it
        "onnx": exports["onnx"] / "model.onnx",
    }
    scores = {}
    for name, target in targets.items():
        results = tlkit.predict(target, paths, top_k=4)
        scores[name] = np.array([[dict((p["label"], p["score"]) for p in r["predictions"])[c] for c in LABELS] for r in results])
    for name in ("tflite", "onnx"):
        assert (scores[name].argmax(1) == scores["savedmodel"].argmax(1)).all(), name
        np.testing.assert_allclose(scores[name], scores["savedmodel"], atol=1e-4)
    # and from the command line, in a fresh process, on the .tflite file
    proc = run_cli("predict", str(targets["tflite"]), *paths, "--json")
    fresh = json.loads(proc.stdout)
    assert [r["predictions"][0]["label"] for r in fresh] == [LABELS[i] for i in scores["savedmodel"].argmax(1)]


def test_every_format_predicts_a_folder_into_a_csv_with_tta(run, exports, tmp_path):
    """Nested folders, an empty file as a row with its reason, and the same TTA scores from every engine."""
    import csv

    import tlkit
    from tlkit.errors import TlkitError

    _, run_dir = run
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    random_pngs(folder)
    (folder / "sub" / "img0.png").write_bytes((folder / "img1.png").read_bytes())
    (folder / "sub" / "empty.jpg").write_bytes(b"")
    targets = {"run": run_dir, "savedmodel": exports["savedmodel"], "tflite": exports["tflite"] / "model.tflite",
               "onnx": exports["onnx"] / "model.onnx"}
    scores = {}
    for name, target in targets.items():
        rows = tlkit.predict(target, [folder], top_k=4, tta=True, csv_path=tmp_path / f"{name}.csv")
        assert [Path(r["path"]).relative_to(folder).as_posix() for r in rows] == [
            "img0.png", "img1.png", "img2.png", "sub/empty.jpg", "sub/img0.png"]
        assert rows[3] == {"path": str(folder / "sub" / "empty.jpg"), "error": "empty file"}
        with open(tmp_path / f"{name}.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert [r["error"] for r in table] == ["", "", "", "empty file", ""] and table[0]["label_4"] in LABELS
        good = [r for r in rows if "error" not in r]
        scores[name] = np.array([[dict((p["label"], p["score"]) for p in r["predictions"])[c] for c in LABELS] for r in good])
    np.testing.assert_allclose(scores["run"][1], scores["run"][3], atol=1e-6)  # the same image twice
    for name in ("savedmodel", "tflite", "onnx"):
        np.testing.assert_allclose(scores[name], scores["run"], atol=2e-3, err_msg=name)  # SavedModel: uint8 rounding
    with pytest.raises(TlkitError, match="--tta is not available for --format tflite.*predict --tta"):
        tlkit.export(run_dir, format="tflite", tta=True)


def test_evaluate_runs_a_tflite_export_on_its_own_engine(run, exports):
    import tlkit

    _, run_dir = run
    stored = json.loads((run_dir / "metrics.json").read_text())
    for name in ("tflite", "onnx"):
        metrics = tlkit.evaluate(exports[name])
        assert metrics["split"] == "test"
        assert metrics["confusion_matrix"] == stored["confusion_matrix"], name
    averaged = tlkit.evaluate(exports["tflite"], tta=True)  # test-time flips around the LiteRT engine
    assert averaged["tta"] and averaged["confusion_matrix"] == tlkit.evaluate(run_dir, tta=True)["confusion_matrix"]
    assert averaged["loss"] != pytest.approx(metrics["loss"], abs=1e-6)


@pytest.mark.parametrize(
    "quantize, integer_io",
    [("float16", False), ("dynamic", False), ("int8", False), ("int8", True)],
)
def test_quantized_tflite_is_verified_and_smaller(run, exports, quantize, integer_io):
    from tlkit.exporting import export_run

    root, run_dir = run
    folder = export_run(run_dir, format="tflite", quantize=quantize, integer_io=integer_io, quiet=True)
    assert folder.parent.name == "tiny-tflite-" + quantize + ("io" if integer_io else "")  # default: saved_models/NAME-tflite-QUANT
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["quantize"] == quantize and meta["verification"]["ok"]
    assert (folder / "model.tflite").stat().st_size < (exports["tflite"] / "model.tflite").stat().st_size
    tensors = meta["tensors"]
    assert tensors["input"]["dtype"] == ("uint8" if integer_io else "float32")
    assert tensors["output"]["dtype"] == ("uint8" if integer_io else "float32")
    if quantize == "int8":
        assert meta["calibration"]["images"] == 120  # the whole tiny training split (fewer than 200)
    if integer_io:  # raw pixels in: scale 1, zero point 0, so the card can say "feed the pixels as they are"
        assert tensors["input"]["quantization"]["scale"] == pytest.approx(1.0, abs=0.01)
        assert tensors["input"]["quantization"]["zero_point"] == 0
        import tlkit

        paths = _images(root)
        top1 = [r["predictions"][0]["label"] for r in tlkit.predict(folder / "model.tflite", paths)]
        reference = [r["predictions"][0]["label"] for r in tlkit.predict(exports["tflite"], paths)]
        assert sum(a == b for a, b in zip(top1, reference)) >= 2


def test_export_refuses_a_file_its_engine_disagrees_with(run, monkeypatch):
    from tlkit import formats
    from tlkit.errors import TlkitError
    from tlkit.exporting import export_run

    root, run_dir = run
    original = formats.TFLiteRunner.__call__

    def broken(self, images):  # as if the converter had mixed up the classes
        probs = original(self, images)
        return np.eye(probs.shape[1], dtype=np.float32)[(probs.argmax(1) + 1) % probs.shape[1]]

    monkeypatch.setattr(formats.TFLiteRunner, "__call__", broken)
    out = root / "broken"
    with pytest.raises(TlkitError, match="disagrees with the Keras model.*nothing was written"):
        export_run(run_dir, out=out, format="tflite", quiet=True)
    assert not out.exists()  # neither a version folder, a temporary one, nor the empty model folder


def test_unsupported_ops_are_named(tmp_path):
    import keras
    import tensorflow as tf

    from tlkit import formats
    from tlkit.errors import TlkitError

    class Special(keras.layers.Layer):
        def __init__(self, fn, **kwargs):
            super().__init__(**kwargs)
            self.fn = fn

        def call(self, x):
            return self.fn(x)

    def job(fn):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(2, 3)(inputs)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(Special(fn)(x)))
        return formats.ExportJob(model=model, inference=model, output_name="probabilities", labels=["a", "b"], size=8)

    with pytest.raises(TlkitError, match="TFLite cannot hold this model: op\\(s\\) Digamma"):
        formats.FORMATS["tflite"].write(job(tf.math.digamma), tmp_path)
    with pytest.raises(TlkitError, match="ONNX cannot hold this model: TensorFlow op\\(s\\) Lgamma"):
        formats.FORMATS["onnx"].write(job(tf.math.lgamma), tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_option_and_dependency_errors(run, monkeypatch):
    from tlkit.errors import TlkitError
    from tlkit.exporting import export_run

    root, run_dir = run
    with pytest.raises(TlkitError, match="--quantize int8 is not available for --format onnx.*use --format tflite"):
        export_run(run_dir, format="onnx", quantize="int8")
    with pytest.raises(TlkitError, match="--integer-io needs --quantize int8"):
        export_run(run_dir, format="tflite", quantize="float16", integer_io=True)
    with pytest.raises(TlkitError, match="int8 quantization calibrates on the run's training data.*--data"):
        export_run(run_dir, format="tflite", quantize="int8", data=str(root / "gone"), out=root / "nodata", quiet=True)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if the extra were not installed
    with pytest.raises(TlkitError, match=r"pip install 'tlkit\[export\]'"):
        export_run(run_dir, format="tflite")
    assert not (root / "nodata").exists()


def test_float_export_without_the_data_checks_on_synthetic_images(run):
    from tlkit.exporting import export_run

    root, run_dir = run
    folder = export_run(run_dir, out=root / "moved", format="onnx", data=str(root / "gone"), quiet=True)
    assert json.loads((folder / "metadata.json").read_text())["verification"]["source"] == "synthetic"


def test_cli_export_flags(run):
    root, run_dir = run
    bad = run_cli("export", str(run_dir), "--format", "onnx", "--quantize", "dynamic", check=False)
    assert bad.returncode == 2 and "not available for --format onnx" in bad.stderr and "Traceback" not in bad.stderr
    proc = run_cli("export", str(run_dir), "--format", "tflite", "--quantize", "float16", "--out", str(root / "cli"))
    assert "agrees" in proc.stdout and (root / "cli" / "1" / "model.tflite").is_file()
