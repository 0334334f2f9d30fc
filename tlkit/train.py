"""Fine-tuning: stages of fit() over one model, with schedules, callbacks and resume.

Each stage is small verbs composed: apply the freezing policy, compile with the
stage's optimizer and schedule, fit with the shared callbacks. State between
stages lives in the run directory (stage weights + state.json), so an
interrupted run resumes from its folder alone.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np

from tlkit import runs
from tlkit.data.pipeline import make_pipeline
from tlkit.data.sources import DataBundle, load_data
from tlkit.errors import TlkitError
from tlkit.evaluation import evaluate_keras_model
from tlkit.models.classifier import apply_stage, build_classifier, check_model, input_size, resolve_batchnorm
from tlkit.recipe import Recipe, Stage, load_recipe, parse_override, shortcut_overrides


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    class_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    export_dir: Path | None = None
    seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)  # per stage: seconds, images/s (this process)


# ----------------------------------------------------------------------------- schedules


@keras.saving.register_keras_serializable(package="tlkit")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to the base rate, then constant, step or cosine decay."""

    def __init__(
        self,
        base: float,
        warmup_steps: int,
        kind: str = "constant",
        total_steps: int = 1,
        step_every: int = 1,
        step_factor: float = 0.1,
    ):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.total_steps = int(max(total_steps, 1))
        self.step_every = int(max(step_every, 1))
        self.step_factor = float(step_factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        after = ops.maximum(step - self.warmup_steps, 0.0)
        if self.kind == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            decayed = 0.5 * self.base * (1.0 + ops.cos(math.pi * ops.minimum(after / span, 1.0)))
        elif self.kind == "step":
            decayed = self.base * ops.power(self.step_factor, ops.floor(after / self.step_every))
        else:
            decayed = ops.convert_to_tensor(self.base, "float32")
        if self.warmup_steps <= 0:
            return decayed
        return ops.where(step < self.warmup_steps, self.base * (step + 1.0) / warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "total_steps": self.total_steps,
            "step_every": self.step_every,
            "step_factor": self.step_factor,
        }


class _PlateauWarmup(keras.callbacks.Callback):
    """Warm-up for reduce-on-plateau, which needs a plain rate it can lower later."""

    def __init__(self, base: float, warmup_steps: int):
        super().__init__()
        self.base, self.warmup_steps = base, warmup_steps

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step < self.warmup_steps:
            self.model.optimizer.learning_rate = self.base * (step + 1) / self.warmup_steps
        elif step == self.warmup_steps:
            self.model.optimizer.learning_rate = self.base


class _EpochEstimate(keras.callbacks.Callback):
    """After the first batches, say how long an epoch will take: the user decides early whether to wait."""

    def __init__(self, steps: int, after: int = 8):
        super().__init__()
        self.steps, self.after, self.start, self.done = steps, after, 0.0, False

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1 and not self.done:  # batch 0 includes tracing: time from the second one
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.done or batch != min(self.after, self.steps - 1) or batch < 1:
            return
        self.done = True
        per_step = (time.perf_counter() - self.start) / batch
        print(f"  estimated time per epoch: {per_step * self.steps:.1f} s ({per_step * 1000:.0f} ms/step, {self.steps} steps)", flush=True)


class _LogEpoch(keras.callbacks.Callback):
    """Put the rate and the epoch's wall seconds in the logs, so history.csv and TensorBoard show them.

    `setup_seconds` (e.g. computing cached features) is charged to the stage's first epoch.
    """

    def __init__(self, setup_seconds: float = 0.0):
        super().__init__()
        self.setup, self.start = setup_seconds, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["epoch_seconds"] = round(time.perf_counter() - self.start + self.setup, 3)
        self.setup = 0.0


class _BestCheckpoint(keras.callbacks.Callback):
    """Save `target` (the whole classifier, whatever model fit() trains) when `monitor` improves.

    Written beside and renamed, so a kill during the save keeps the previous best.
    """

    def __init__(self, target: keras.Model, path: Path, monitor: str, best: float | None):
        super().__init__()
        self.target, self.path, self.monitor, self.best = target, Path(path), monitor, best
        self.lower_is_better = "loss" in monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is not None and (value >= self.best if self.lower_is_better else value <= self.best):
            return
        self.best = value
        tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.target.save(tmp)
        os.replace(tmp, self.path)


def make_optimizer(stage: Stage, steps_per_epoch: int) -> tuple[keras.optimizers.Optimizer, list[keras.callbacks.Callback]]:
    warmup = int(round(stage.warmup_epochs * steps_per_epoch))
    total = stage.epochs * steps_per_epoch
    callbacks: list[keras.callbacks.Callback] = []
    if stage.schedule == "plateau":
        rate: Any = stage.learning_rate
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(factor=stage.step_factor, patience=stage.plateau_patience, verbose=0)
        )
        if warmup:
            callbacks.append(_PlateauWarmup(stage.learning_rate, warmup))
    elif stage.schedule == "constant" and not warmup:
        rate = stage.learning_rate
    else:
        rate = WarmupSchedule(
            stage.learning_rate,
            warmup,
            kind=stage.schedule,
            total_steps=total,
            step_every=stage.step_every * steps_per_epoch,
            step_factor=stage.step_factor,
        )
    common: dict[str, Any] = {"learning_rate": rate}
    if stage.clipnorm:
        common["clipnorm"] = stage.clipnorm
    if stage.optimizer == "sgd":
        opt = keras.optimizers.SGD(momentum=stage.momentum, weight_decay=stage.weight_decay or None, **common)
    elif stage.optimizer == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=stage.weight_decay, **common)
    else:
        opt = keras.optimizers.Adam(weight_decay=stage.weight_decay or None, **common)
    return opt, callbacks


# ----------------------------------------------------------------------------- helpers


def class_weights(recipe: Recipe, bundle: DataBundle) -> dict[int, float] | None:
    setting = recipe.train.class_weights
    if setting == "none":
        return None
    names = bundle.class_names
    if setting == "auto":
        counts = np.bincount(bundle.splits["train"].labels, minlength=len(names)).astype(float)
        total = counts.sum()
        return {i: float(total / (len(names) * c)) if c else 0.0 for i, c in enumerate(counts)}
    unknown = sorted(set(setting) - set(names))
    if unknown:
        raise TlkitError(f"train.class_weights names unknown class(es) {unknown}; the classes are: {', '.join(names)}")
    return {i: float(setting.get(n, 1.0)) for i, n in enumerate(names)}


def _best_so_far(history_path: Path, monitor: str) -> float | None:
    if not history_path.is_file():
        return None
    with history_path.open() as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "")]
    if not values:
        return None
    return min(values) if "loss" in monitor else max(values)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """history.csv as a list of rows; a resumed epoch's later row replaces the earlier one."""
    path = Path(run_dir) / runs.HISTORY
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            rows[int(r["epoch"])] = {k: float(v) for k, v in r.items() if v not in (None, "")}
    return [rows[k] for k in sorted(rows)]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends training the same way Ctrl-C does, so the resumable state is kept."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(quiet: bool, text: str = "") -> None:
    if not quiet:
        print(text, flush=True)


def _summary(recipe: Recipe, bundle: DataBundle, run_dir: Path, params: list[dict[str, int]], quiet: bool) -> None:
    if quiet:
        return
    size = input_size(recipe)
    print(f"tlkit finetune: {recipe.name} -> {run_dir}")
    print(f"  data      {bundle.description}")
    counts = bundle.counts("train")
    width = max(len(n) for n in bundle.class_names)
    print(f"  classes   {len(bundle.class_names)} (train count each)")
    for name in bundle.class_names:
        print(f"    {name:<{width}}  {counts[name]}")
    sizes = ", ".join(f"{k} {v.size}" for k, v in bundle.splits.items())
    print(f"  splits    {sizes}")
    if bundle.skipped:
        print(f"  skipped   {len(bundle.skipped)} unreadable file(s), listed in {run_dir / runs.SKIPPED}")
    print(f"  backbone  {recipe.model.backbone} (weights: {recipe.model.weights}) at {size}x{size}")
    for stage, p in zip(recipe.train.stages, params):
        print(
            f"  stage     {stage.name}: {stage.epochs} epoch(s), {stage.optimizer} lr {stage.learning_rate:g} "
            f"{stage.schedule}, unfreeze {stage.unfreeze}, batchnorm {resolve_batchnorm(recipe, stage)}, "
            f"trainable params {p['trainable']:,} (frozen {p['frozen']:,})"
        )
    print(flush=True)


# ----------------------------------------------------------------------------- finetune


def finetune(
    recipe: "str | Path | dict[str, Any] | Recipe | None" = None,
    *,
    overrides: "dict[str, Any] | list[str] | None" = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    export: bool | None = None,
    **flags: Any,
) -> RunResult:
    """Train a classifier as the recipe says; return metrics, run directory and export path.

    `flags` are shortcuts (`data=`, `backbone=`, `weights=`, `epochs=`, `batch_size=`,
    `input_size=`) or dotted keys written with `__` (`train__label_smoothing=0.1`).
    `resume=RUN_DIR` continues an interrupted run from its own folder.
    """
    started = time.perf_counter()
    if resume is not None:
        if recipe is not None or overrides or any(v is not None for v in flags.values()):
            raise TlkitError("--resume continues a run exactly as it was recorded: give no recipe or overrides with it")
        run_path = runs.require_run_dir(resume)
        if (run_path / runs.METRICS).exists():
            raise TlkitError(f"run {run_path} already finished (it has {runs.METRICS}); nothing to resume")
        rec = load_recipe(run_path / runs.RECIPE)
        state = runs.read_json(run_path / runs.STATE) if (run_path / runs.STATE).is_file() else {}
    else:
        merged = dict(map(parse_override, overrides)) if isinstance(overrides, list) else dict(overrides or {})
        merged.update(shortcut_overrides(**flags))
        rec = load_recipe(recipe, merged)
        run_path = None
        state = {}

    check_model(rec)
    keras.utils.set_random_seed(rec.seed)
    bundle = load_data(rec.data, rec.seed, progress=not quiet)
    if "val" not in bundle.splits:
        raise TlkitError(
            "no validation images: set data.val_fraction above 0 or give the source a validation split "
            "(the best checkpoint is chosen on it)"
        )
    if run_path is None:
        run_path = runs.new_run_dir(rec.name, run_dir)
        runs.atomic_write_text(run_path / runs.RECIPE, rec.to_yaml())
        runs.write_labels(run_path, bundle.class_names)
        runs.write_json(run_path / runs.VERSIONS, runs.package_versions())
        runs.atomic_write_text(run_path / runs.SKIPPED, "".join(f"{p}\t{why}\n" for p, why in bundle.skipped))
    elif runs.read_labels(run_path) != bundle.class_names:
        raise TlkitError(f"the data's classes changed since {run_path} started; resume needs the same classes")

    num_classes = len(bundle.class_names)
    size = input_size(rec)
    batch = rec.train.batch_size
    cache = run_path / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # a killed run leaves partial cache files and locks
    train_ds = make_pipeline(
        bundle.splits["train"], size, num_classes, batch, training=True, augment=rec.data.augment, seed=rec.seed,
        cache_dir=cache / "train",
    )
    val_ds = make_pipeline(bundle.splits["val"], size, num_classes, batch, cache_dir=cache / "val")
    plain_train_ds = make_pipeline(bundle.splits["train"], size, num_classes, batch, cache_dir=cache / "train_plain")
    steps = max(1, math.ceil(bundle.splits["train"].size / batch))
    weights = class_weights(rec, bundle)

    model = build_classifier(rec, num_classes)
    params = [apply_stage(model, s, resolve_batchnorm(rec, s)) for s in rec.train.stages]
    _summary(rec, bundle, run_path, params, quiet)
    fresh = rec.model_copy(update={"model": rec.model.model_copy(update={"weights": "none"})})
    done = int(state.get("completed_stages", 0))
    timings: list[dict[str, Any]] = []
    epoch = 0
    try:
        with _sigterm_as_interrupt():
            for i, stage in enumerate(rec.train.stages):
                if i < done:
                    epoch += stage.epochs
                    continue
                if i > 0:
                    # a fresh model per stage: a resumed fit() leaves state on the model object
                    model = build_classifier(fresh, num_classes)
                    model.load_weights(run_path / f"stage{i - 1}.weights.h5")
                stage_start, first_epoch = time.perf_counter(), epoch
                epoch = _run_stage(
                    model, rec, stage, i, run_path, train_ds, plain_train_ds, val_ds, steps, epoch, weights, quiet
                )
                seconds = time.perf_counter() - stage_start
                timings.append(
                    {
                        "stage": stage.name,
                        "epochs": epoch - first_epoch,
                        "seconds": round(seconds, 2),
                        "train_images_per_second": round(bundle.splits["train"].size * stage.epochs / seconds, 1),
                    }
                )
                model.save_weights(run_path / f"stage{i}.weights.h5")
                runs.write_json(run_path / runs.STATE, {"completed_stages": i + 1, "epoch": epoch})
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: progress up to the last finished epoch is saved in {run_path}.\n"
            f"resume with: tlkit finetune --resume {run_path}",
            file=sys.stderr,
            flush=True,
        )
        raise

    shutil.rmtree(cache, ignore_errors=True)
    best = run_path / runs.BEST
    if best.is_file():
        model = keras.saving.load_model(best)
    eval_split = "test" if "test" in bundle.splits else "val"
    metrics = evaluate_keras_model(
        model, make_pipeline(bundle.splits[eval_split], size, num_classes, batch), bundle.class_names
    )
    metrics = {"split": eval_split, **metrics}
    runs.write_json(run_path / runs.METRICS, metrics)
    _say(quiet, f"{eval_split} accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}  ({run_path / runs.METRICS})")

    export_dir = None
    if export if export is not None else rec.export.enabled:
        from tlkit.exporting import export_run

        export_dir = export_run(run_path, quiet=quiet, bundle=bundle)  # the check images come from the loaded data
    return RunResult(
        run_path, metrics, bundle.class_names, read_history(run_path), export_dir, time.perf_counter() - started, timings
    )


def _run_stage(
    model: keras.Model,
    rec: Recipe,
    stage: Stage,
    index: int,
    run_path: Path,
    train_ds,
    plain_train_ds,
    val_ds,
    steps: int,
    epoch: int,
    weights: dict[int, float] | None,
    quiet: bool,
) -> int:
    apply_stage(model, stage, resolve_batchnorm(rec, stage))
    if not quiet:
        print(f"stage {index + 1}/{len(rec.train.stages)}: {stage.name}", flush=True)
    trained, setup = model, 0.0
    if stage.unfreeze == "none" and rec.train.cache_features:
        setup = time.perf_counter()
        trained, train_ds, val_ds = _feature_head(model, train_ds, plain_train_ds, val_ds, rec, quiet)
        setup = time.perf_counter() - setup
        steps = int(train_ds.cardinality())
    optimizer, schedule_callbacks = make_optimizer(stage, steps)
    num_classes = model.output_shape[-1]
    k = min(5, max(1, num_classes - 1))
    trained.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=rec.train.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.TopKCategoricalAccuracy(k, name="top_k_accuracy")],
        jit_compile=rec.train.jit_compile,
    )
    monitor = rec.train.monitor
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_path / runs.BACKUP / f"stage{index}")),
        *schedule_callbacks,
        _LogEpoch(setup),
        keras.callbacks.TerminateOnNaN(),
        _BestCheckpoint(model, run_path / runs.BEST, monitor, _best_so_far(run_path / runs.HISTORY, monitor)),
        keras.callbacks.CSVLogger(str(run_path / runs.HISTORY), append=True),
    ]
    if not quiet:
        callbacks.append(_EpochEstimate(steps))
    es = rec.train.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, restore_best_weights=False))
    if rec.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_path / "tensorboard")))
    trained.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=epoch,
        epochs=epoch + stage.epochs,
        class_weight=weights,
        shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
        callbacks=callbacks,
        verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
    )
    return epoch + stage.epochs


def _feature_head(model: keras.Model, train_ds, plain_train_ds, val_ds, rec: Recipe, quiet: bool):
    """A frozen backbone gives the same features every epoch: compute them once, train the head on them.

    Returns (head model sharing the classifier's head layers, train features, val features).
    With `feature_views: N`, the train features hold the plain view plus N-1 augmented views.
    """
    import tensorflow as tf

    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    call = tf.function(lambda x: pooled(x, training=False), reduce_retracing=True)

    def features(batches) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for images, labels in batches:
            xs.append(call(images).numpy())
            ys.append(labels.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    start = time.perf_counter()
    views = [features(plain_train_ds)] + [features(train_ds) for _ in range(rec.train.feature_views - 1)]
    train_x = np.concatenate([v[0] for v in views])
    train_y = np.concatenate([v[1] for v in views])
    val_x, val_y = features(val_ds)
    _say(quiet, f"  backbone features cached: {len(train_x)} train, {len(val_x)} val, {train_x.shape[1]} wide, "
         f"{time.perf_counter() - start:.1f} s")
    inputs = keras.Input((train_x.shape[1],), name="features")
    x = inputs
    names = [layer.name for layer in model.layers]
    for name in names[names.index("pool") + 1 :]:
        x = model.get_layer(name)(x)
    head = keras.Model(inputs, x, name="head")
    batch = rec.train.batch_size
    train = (
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(len(train_x), seed=rec.seed, reshuffle_each_iteration=True)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(batch)
    return head, train, val
