"""The SavedModel export as TF Serving and plain TensorFlow users see it: saved_model_cli and a tlkit-free process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_recipe

LABELS = ["circle", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tfds_dir):
    """(run dir, SavedModel version folder) of one tiny run."""
    import tlkit

    root = tmp_path_factory.mktemp("sm")
    result = tlkit.finetune(tiny_recipe(tfds_dir, root), run_dir=root / "run", quiet=True, export=False)
    folder = tlkit.export(result.run_dir, out=root / "saved_models" / "tiny", quiet=True)
    return result.run_dir, folder


def keras_probabilities(run_dir: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from tlkit.data.pipeline import resize_image
    from tlkit.models.stages import load_run_model

    model = load_run_model(run_dir)
    return tf.nn.softmax(model(resize_image(images, 32), training=False)).numpy()


def saved_model_cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or shutil.which("saved_model_cli")
    if exe is None:
        pytest.skip("saved_model_cli (installed with tensorflow) is not on the PATH")
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_saved_model_cli_shows_the_documented_signatures(exported):
    _, folder = exported
    out = saved_model_cli("show", "--all", "--dir", str(folder)).stdout
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", out, re.S))
    assert {"serving_default", "serving_bytes", "embeddings", "embeddings_bytes"} <= set(blocks)

    def tensor(block: str, name: str) -> tuple[str, str]:
        match = re.search(rf"\['{name}'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", block)
        assert match, f"{name} not in\n{block}"
        return match.group(1), match.group(2)

    # the table in README.md "Exports": these are what a TF Serving client must send and read
    for sig in ("serving_default", "embeddings"):
        assert tensor(blocks[sig], "images") == ("DT_UINT8", "(-1, -1, -1, 3)")
    for sig in ("serving_bytes", "embeddings_bytes"):
        assert tensor(blocks[sig], "image_bytes") == ("DT_STRING", "(-1)")
    for sig in ("serving_default", "serving_bytes"):
        assert tensor(blocks[sig], "probabilities") == ("DT_FLOAT", "(-1, 4)")
        assert tensor(blocks[sig], "classes") == ("DT_STRING", "(-1)")
    dtype, shape = tensor(blocks["embeddings"], "embeddings")
    assert dtype == "DT_FLOAT" and re.fullmatch(r"\(-1, \d+\)", shape)


def test_saved_model_cli_run_matches_keras(exported, tmp_path):
    run_dir, folder = exported
    images = np.random.default_rng(1).integers(0, 256, (3, 45, 30, 3), dtype=np.uint8)  # any size: resized inside
    np.save(tmp_path / "images.npy", images)
    saved_model_cli(
        "run", "--dir", str(folder), "--tag_set", "serve", "--signature_def", "serving_default",
        "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out"),
    )
    probs = np.load(tmp_path / "out" / "probabilities.npy")
    np.testing.assert_allclose(probs, keras_probabilities(run_dir, images), atol=1e-5)
    classes = np.load(tmp_path / "out" / "classes.npy", allow_pickle=True)
    assert [c.decode() for c in classes] == [LABELS[i] for i in probs.argmax(1)]


def test_fresh_process_with_only_tensorflow_gets_the_same_outputs(exported, tmp_path):
    import tensorflow as tf

    run_dir, folder = exported
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    png = tmp_path / "a.png"
    png.write_bytes(tf.io.encode_png(images[0]).numpy())
    script = f"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load({str(folder)!r})
images = np.load({str(tmp_path / 'x.npy')!r})
out = model.signatures["serving_default"](images=tf.constant(images))
by_bytes = model.signatures["serving_bytes"](image_bytes=tf.constant([open({str(png)!r}, "rb").read()]))
emb = model.signatures["embeddings"](images=tf.constant(images))["embeddings"]
print(json.dumps({{
    "probabilities": out["probabilities"].numpy().tolist(),
    "classes": [c.decode() for c in out["classes"].numpy()],
    "bytes_probabilities": by_bytes["probabilities"].numpy().tolist(),
    "embeddings_shape": list(emb.shape),
    "tlkit_imported": any(m == "tlkit" or m.startswith("tlkit.") for m in sys.modules),
}}))
"""
    np.save(tmp_path / "x.npy", images)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={k: v for k, v in {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}.items() if k != "PYTHONPATH"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tlkit_imported"] is False
    expected = keras_probabilities(run_dir, images)
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(got["bytes_probabilities"], expected[:1], atol=1e-5)  # PNG is lossless
    assert got["classes"] == [LABELS[i] for i in expected.argmax(1)]
    assert got["embeddings_shape"][0] == 2


def test_savedmodel_export_is_verified_and_carries_a_model_card(exported):
    run_dir, folder = exported
    meta = json.loads((folder / "metadata.json").read_text())
    check = meta["verification"]
    assert check["ok"] and check["images"] == 32 and check["source"] == "val-split"
    assert check["max_abs_diff"] < 1e-3 and check["top1_agreement"] == 1.0
    card = (folder / "README.md").read_text()
    stored = json.loads((run_dir / "metrics.json").read_text())
    for needle in ("## Labels", *LABELS, "## Input and output", "serving_bytes", "## Metrics on the test split",
                   f"{stored['accuracy']:.4f}", "## Training recipe", "TF Serving", "curl", "PredictRequest",
                   "tf.saved_model.load", "LiteRT"):
        assert needle in card, needle
