"""Shared fixtures: tiny data, a tiny recipe, and the path to ../shared/data."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# remembered scan verdicts (tlkit.data.scan) go to a scratch folder, not the user's ~/.cache
if "TLKIT_CACHE_DIR" not in os.environ:
    os.environ["TLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tlkit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TLKIT_CACHE_DIR"], True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {path} (the real-data folder beside the repository); absent here")
    return path


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `tlkit ARGS` in a fresh Python process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tlkit {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    """One TFDS data dir for the session, so the tiny built-in dataset is generated once."""
    return tmp_path_factory.mktemp("tfds")


def tiny_recipe(tfds_dir: Path, tmp_path: Path, **extra) -> dict:
    """A recipe that trains in seconds on the tiny built-in dataset."""
    recipe = {
        "name": "tiny",
        "seed": 7,
        "data": {"source": "builtin:shapes/tiny", "tfds_data_dir": str(tfds_dir)},
        "model": {
            "backbone": "scratch",
            "weights": "none",
            "input_size": 32,
            "blocks": [{"filters": 8}, {"filters": 16}],
        },
        "train": {"batch_size": 32, "stages": [{"name": "train", "epochs": 2, "learning_rate": 0.003}]},
        "export": {"dir": str(tmp_path / "saved_models")},
    }
    for key, value in extra.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def write_images(folder: Path, colors: dict[str, tuple[int, int, int]], per_class: int, size: int = 20, seed: int = 0) -> None:
    """Class folders of noisy solid-colour PNGs: an easy, decodable, generated dataset."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for name, color in colors.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.array(color)[None, None, :] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            (folder / name / f"{name}_{i:03d}.png").write_bytes(tf.io.encode_png(img).numpy())


def random_pngs(folder: Path) -> list[str]:
    """Three random-noise PNGs of different sizes (square, portrait, very wide): what predict must accept."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(32, 32), (50, 41), (17, 90)]):
        path = Path(folder) / f"img{i}.png"
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).numpy())
        paths.append(str(path))
    return paths


def load_data(data, seed: int, progress: bool = False, task: str = "classification"):
    """A data section read in a task's layout (tests pass sections, not whole recipes)."""
    from tlkit.data.sources import load_data as load
    from tlkit.tasks import get_task

    return load(data, seed, get_task(task), progress=progress)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tfds_dir) -> Path:
    """One tiny classification run (1 epoch, not exported) for tests that only export or read it."""
    import tlkit

    root = tmp_path_factory.mktemp("tiny_run")
    recipe = tiny_recipe(tfds_dir, root, export={"dir": str(root / "saved_models"), "author": "Ada", "license": "Apache-2.0"},
                         train={"stages": [{"name": "train", "epochs": 1, "learning_rate": 0.003}]})
    return tlkit.finetune(recipe, run_dir=root / "run", quiet=True, export=False).run_dir
