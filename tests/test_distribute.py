"""tf.distribute strategies and mixed precision: the same recipe on 2 workers, on 2 devices, in float16.

Distributed runs happen in fresh processes (a multi-worker strategy and logical
devices must be set up before TensorFlow starts). Each is compared with the
single-process run of the same recipe at the same global batch.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, tiny_recipe

PER_REPLICA = 16  # two replicas x 16 = the single run's batch of 32


def _recipe(tfds_dir: Path, root: Path, batch: int) -> dict:
    """The tiny recipe as two stages: the frozen one trains the head on cached features, the other everything."""
    recipe = tiny_recipe(tfds_dir, root, export={"enabled": False})
    recipe["train"]["batch_size"] = batch
    recipe["train"]["stages"] = [
        {"name": "head", "epochs": 1, "unfreeze": "none", "learning_rate": 0.01},
        {"name": "all", "epochs": 1, "unfreeze": "all", "learning_rate": 0.003},
    ]
    return recipe


def _assert_same_training(history: list[dict], reference: list[dict], accuracy: float, reference_accuracy: float) -> None:
    """Same global batch and steps: the loss curves and the accuracy match within tolerance."""
    assert [int(r["epoch"]) for r in history] == [int(r["epoch"]) for r in reference]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in history], [r[key] for r in reference], rtol=0.08, err_msg=key)
    assert abs(accuracy - reference_accuracy) <= 0.15


@pytest.fixture(scope="module")
def single(tmp_path_factory, tfds_dir):
    """The single-process run everything is compared with (it also generates the tiny dataset once)."""
    import tlkit

    root = tmp_path_factory.mktemp("single")
    return tlkit.finetune(_recipe(tfds_dir, root, 2 * PER_REPLICA), run_dir=root / "run", quiet=True)


def test_two_workers_match_single_process_and_resume(single, tmp_path, tfds_dir, monkeypatch):
    """2 workers on 127.0.0.1: interrupted after an epoch, resumed from the chief's backup; only the chief writes."""
    from tlkit.runs import read_history
    from tlkit.workers import local_cluster

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the other worker keeps its scratch copy
    (tmp_path / "tmp").mkdir()
    work = tmp_path / "work"  # the workers' current directory: nothing but the run may appear here
    work.mkdir()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tfds_dir, tmp_path, PER_REPLICA)))
    run_dir = tmp_path / "run"
    args = ["finetune", str(recipe), "--run-dir", str(run_dir), "--set", "runtime.strategy=multi_worker"]

    # round 1: both workers stop after epoch 0 (stage 1), as Ctrl-C/SIGTERM would
    stop_after_first_epoch = textwrap.dedent(
        """
        import sys
        from tlkit.train import callbacks
        original = callbacks.ResumePoint.on_epoch_end  # the last callback of an epoch: epoch 0 is fully recorded
        def stop(self, epoch, logs=None):
            original(self, epoch, logs)
            if epoch == 0:
                raise KeyboardInterrupt
        callbacks.ResumePoint.on_epoch_end = stop
        from tlkit.cli import cli
        cli(sys.argv[1:], prog_name="tlkit")
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", stop_after_first_epoch, *args],
            cwd=work,
            env={**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for config in local_cluster(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [130, 130], outputs
    assert (run_dir / "backup" / "stage0" / "resume.json").is_file()
    assert not (run_dir / "metrics.json").exists()

    # round 2: the documented command, resuming both workers from the chief's run directory
    proc = run_cli("local-workers", "2", "finetune", "--resume", str(run_dir), cwd=work)
    assert "[worker1] worker1: training finished; the chief writes the run directory" in proc.stdout
    assert "[worker0] run directory:" in proc.stdout
    assert "2 workers share this host" in proc.stdout  # each got its part of the cores, not all of them
    for name in ("recipe.yaml", "labels.txt", "history.csv", "metrics.json", "best.keras"):
        assert (run_dir / name).is_file(), name
    with (run_dir / "history.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]  # epoch 0 came from the backup, not trained twice
    assert list(work.iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []  # the other worker wrote nothing
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 40
    _assert_same_training(read_history(run_dir), single.history, metrics["accuracy"], single.metrics["accuracy"])


def test_mirrored_over_two_logical_cpus_matches_single_device(single, tmp_path, tfds_dir):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tfds_dir, tmp_path, PER_REPLICA)))
    script = textwrap.dedent(
        """
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import tlkit
        r = tlkit.finetune(sys.argv[1], run_dir=sys.argv[2], overrides=["runtime.strategy=mirrored",
                           "runtime.devices=[/cpu:0, /cpu:1]"])
        print("RESULT " + json.dumps({"accuracy": r.metrics["accuracy"], "history": r.history}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(recipe), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runtime   mirrored, 2 replica(s), precision float32, global batch 32" in proc.stdout
    result = json.loads(proc.stdout.split("RESULT ")[-1])
    _assert_same_training(result["history"], single.history, result["accuracy"], single.metrics["accuracy"])


def test_mixed_float16_trains_with_float32_logits_and_leaves_no_global_policy(tmp_path, tfds_dir):
    import keras

    import tlkit
    from tlkit.distribute import precision
    from tlkit.models.heads import build_classifier
    from tlkit.tasks import load_recipe

    rec = load_recipe(_recipe(tfds_dir, tmp_path, 32))
    with precision("mixed_float16"):
        model = build_classifier(rec, 4)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
    assert model.get_layer("preprocess").compute_dtype == "float16"
    assert model.output.dtype == "float32"  # softmax and the loss get float32 logits
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # small gradients survive float16
    assert keras.mixed_precision.dtype_policy().name == "float32"

    result = tlkit.finetune(_recipe(tfds_dir, tmp_path, 32), overrides={"runtime.precision": "mixed_float16"}, run_dir=tmp_path / "run", quiet=True)
    assert np.isfinite(result.history[-1]["loss"]) and result.history[-1]["loss"] < result.history[0]["loss"] * 1.1
    assert keras.mixed_precision.dtype_policy().name == "float32"  # a later run in this process is unaffected
    best = keras.saving.load_model(tmp_path / "run" / "best.keras", compile=False)
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}  # evaluate/export/predict run anywhere


def test_segmenter_logits_stay_float32_under_mixed_bfloat16(tmp_path, tfds_dir):
    from tlkit.distribute import precision
    from tlkit.tasks.segmentation.model import build_segmenter
    from tlkit.tasks import load_recipe

    rec = load_recipe(_recipe(tfds_dir, tmp_path, 8), {"task": "segmentation"})
    with precision("mixed_bfloat16"):
        model = build_segmenter(rec, 3)
    assert model.output.dtype == "float32" and tuple(model.output.shape) == (None, 32, 32, 3)


def test_global_batch_and_learning_rate_rule(tfds_dir, tmp_path):
    from tlkit.distribute import Placement
    from tlkit.tasks import load_recipe

    class FourReplicas:  # stands in for a strategy: only its replica count matters here
        num_replicas_in_sync = 4

    rec = load_recipe(_recipe(tfds_dir, tmp_path, 16))
    place = Placement(FourReplicas(), "mirrored", "float32")
    trained = place.effective(rec)
    assert trained.train.batch_size == 64 and trained.train.stages[0].learning_rate == rec.train.stages[0].learning_rate
    scaled = place.effective(rec.model_copy(update={"runtime": rec.runtime.model_copy(update={"scale_learning_rate": True})}))
    assert scaled.train.batch_size == 64
    assert [s.learning_rate for s in scaled.train.stages] == pytest.approx([4 * s.learning_rate for s in rec.train.stages])
    assert rec.train.batch_size == 16  # the recipe itself (what the run directory records) is unchanged


@pytest.mark.parametrize(
    "cluster, task, expected",
    [
        ({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, {"type": "worker", "index": 1}, 2),  # tlkit local-workers 2
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, 1),  # two machines
        ({"chief": ["a:1"], "worker": ["a:2", "b:1", "b:2", "b:3"]}, {"type": "chief", "index": 0}, 2),
        ({"chief": ["a:1"], "worker": ["a:2", "b:1", "b:2", "b:3"]}, {"type": "worker", "index": 2}, 3),
        ({"worker": ["a:1"], "ps": ["a:2"]}, {"type": "worker", "index": 0}, 1),  # a parameter server does not train
    ],
)
def test_workers_sharing_a_host_split_its_cores(cluster, task, expected, monkeypatch):
    """Each of k workers on one host gets cores // k threads: 2 workers x 2 threads on 2 cores fight for them."""
    from tlkit.distribute import worker_threads, workers_on_this_host

    config = {"cluster": cluster, "task": task}
    assert workers_on_this_host(config) == expected
    assert workers_on_this_host(None) == 1 and worker_threads(None) == 0  # no cluster: TensorFlow's own choice
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(config) == (max(1, cores // expected) if expected > 1 else 0)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")  # the user's setting stands
    assert worker_threads(config) == 0


def test_strategy_errors_are_one_line(tmp_path, tfds_dir, monkeypatch):
    from tlkit.distribute import make_strategy
    from tlkit.errors import TlkitError
    from tlkit.recipe import Runtime

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TlkitError, match="needs TF_CONFIG.*local-workers"):
        make_strategy(Runtime(strategy="multi_worker"))
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(TlkitError, match="TF_CONFIG is not valid JSON"):
        make_strategy(Runtime(strategy="auto"))
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(TlkitError, match=r"names '/gpu:7', which this machine does not have; it has: .*/cpu:0"):
        make_strategy(Runtime(strategy="mirrored", devices=["/gpu:7"]))

    import tlkit

    with pytest.raises(TlkitError, match="needs TF_CONFIG"):  # before any data is read or folder made
        tlkit.finetune(_recipe(tfds_dir, tmp_path, 16), overrides={"runtime.strategy": "multi_worker"}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_worker_holding_its_iterators_exits_at_once_with_its_code(tmp_path):
    """What a worker holds (its distributed iterators, whose teardown can stall) is not torn down at exit; its
    output is flushed, its code kept, and exit functions registered later (autograph's temp files) still run."""
    leftover = tmp_path / "__autograph_generated_file.py"
    leftover.write_text("")
    script = textwrap.dedent(
        """
        import atexit, os, sys, time
        from tlkit import lingering

        class SlowToDrop:
            def __del__(self):
                time.sleep(60)

        lingering.hold(SlowToDrop())
        atexit.register(os.remove, sys.argv[1])
        print("trained", end="")
        lingering.skip_teardown(3)
        sys.exit(3)
        """
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, str(leftover)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (3, "trained"), proc.stderr
    assert time.perf_counter() - started < 30
    assert not leftover.exists()


def test_two_workers_on_a_folder_train_on_their_shards_like_one_process(tmp_path):
    """A folder of images: each worker reads its own shard (per-worker batches, a repeated training stream,
    its iterators held to the end); the run matches one process at the same global batch, and both workers
    exit cleanly without leaving anything in their temporary folder."""
    import tlkit
    from conftest import write_images
    from tlkit.runs import read_history

    write_images(tmp_path / "photos", {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}, 40)
    recipe = {
        "name": "folder",
        "seed": 3,
        "data": {"source": str(tmp_path / "photos"), "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "scratch", "weights": "none", "input_size": 16, "blocks": [{"filters": 8}]},
        "train": {"batch_size": 8, "stages": [{"name": "train", "epochs": 5, "learning_rate": 0.01}]},
        "export": {"enabled": False},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    single = tlkit.finetune(str(path), run_dir=tmp_path / "single", quiet=True, report=False)
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tlkit.cli", "local-workers", "2", "finetune", str(path), "--run-dir", str(tmp_path / "two"),
         "--no-report", "--set", "runtime.strategy=multi_worker"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp"), "TLKIT_CACHE_DIR": str(tmp_path / "cache")},  # a first run
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = read_history(tmp_path / "two")
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3, 4]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_examples"] == single.metrics["num_examples"]
    assert metrics["accuracy"] >= min(0.9, single.metrics["accuracy"] - 0.15), (metrics, single.metrics)
    assert list((tmp_path / "tmp").iterdir()) == []  # the exit that skips the iterators' teardown still cleans up
