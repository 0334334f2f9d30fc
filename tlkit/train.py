"""Fine-tuning: stages of fit() over one model, with schedules, callbacks and resume.

Each stage is small verbs composed: apply the freezing policy, compile with the
stage's optimizer and schedule, fit with the shared callbacks. State between
stages lives in the run directory (stage weights + state.json), so an
interrupted run resumes from its folder alone.
"""

from __future__ import annotations

import csv
import io
import math
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

from tlkit import distribute, runs
from tlkit.data.sources import DataBundle, load_data
from tlkit.errors import TlkitError
from tlkit.models.classifier import apply_stage, input_size, load_run_model, resolve_batchnorm
from tlkit.recipe import Recipe, Stage, load_recipe, parse_override, shortcut_overrides
from tlkit.runtime import seed_and_determinism
from tlkit.tasks import get_task


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    class_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)
    export_dir: Path | None = None
    seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)  # per stage: seconds, images/s (this process)
    chief: bool = True  # False on the other workers of a multi-worker run: they write nothing, metrics stay empty


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
        with runs.atomic_path(self.path) as tmp:
            self.target.save(tmp)


RESUME_POINT = "resume.json"


def _seed_variables(model: keras.Model) -> list[Any]:
    """The layers' random-seed state (dropout masks): in `variables` but not in `weights`, so not in weight files."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


class _ResumePoint(keras.callbacks.Callback):
    """After every epoch: weights, optimizer state, seed state and the next epoch, crash-safe.

    Used instead of keras BackupAndRestore, which overwrites its weights file in
    place (a kill mid-write corrupts it, and weights and epoch can disagree) and
    drops the seed state. Each epoch gets its own file under a temporary name;
    only then does `resume.json` (renamed into place) point at it.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch{epoch + 1}.weights.h5"
        with runs.atomic_path(self.folder / name) as tmp:
            self.model.save_weights(tmp)
        seeds = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_variables(self.model)]
        runs.write_json(self.folder / RESUME_POINT, {"epoch": epoch + 1, "weights": name, "seeds": seeds})
        for old in self.folder.glob("epoch*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _restore_resume_point(model: keras.Model, folder: Path) -> int | None:
    """Load a stage's last resume point into the compiled `model`; the epoch to continue from, or None."""
    path = Path(folder) / RESUME_POINT
    if not path.is_file():
        return None
    point = runs.read_json(path)
    model.optimizer.build(model.trainable_variables)  # so the optimizer state in the file has a place to go
    model.load_weights(Path(folder) / point["weights"])
    seeds = _seed_variables(model)
    if len(seeds) == len(point.get("seeds", [])):
        for variable, value in zip(seeds, point["seeds"]):
            variable.assign(value)
    return int(point["epoch"])


def _replay(dataset, passes: int, iterators: int, quiet: bool) -> None:
    """Bring the training stream's random state to where the interrupted process had it, without training.

    The stream's state is two counters: the reshuffle seed advances once per
    iterator created, the augmentation seeds once per batch drawn. Keras fit()
    creates two iterators per epoch (it opens the next one as soon as an epoch
    ends) and draws one full pass, so replaying an epoch of fit() is a full pass
    plus one extra iterator. `tests/test_interruptions.py` checks the result
    bit for bit against an uninterrupted run.
    """
    if passes <= 0 and iterators <= 0:
        return
    _say(quiet, f"  replaying {passes} pass(es) of the input stream (runtime.deterministic: same batches as before)")
    for _ in range(passes):
        for _ in dataset:
            pass
    for _ in range(iterators):
        iter(dataset)


class _StopOnNonFinite(keras.callbacks.Callback):
    """Stop at the first NaN/Inf training loss, naming epoch and step; nothing of that epoch is saved.

    Raising (rather than keras TerminateOnNaN's stop_training) ends fit() before
    any epoch-end callback, so best.keras and the resume point stay at the last
    good epoch.
    """

    def __init__(self, stage: str, steps: int, run_path: Path):
        super().__init__()
        self.stage, self.steps, self.run_path, self.epoch = stage, steps, run_path, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(keras.ops.convert_to_numpy(loss))
        if not math.isfinite(value):
            raise TlkitError(
                f"the training loss became {value} at epoch {self.epoch + 1}, step {batch + 1} of {self.steps} "
                f"(stage '{self.stage}'), so training stopped; {self.run_path} keeps the last good epoch "
                f"({runs.BEST} and the resume point). Start a new run with a lower learning_rate or a clipnorm, "
                "or check the data"
            )


class _HistoryCSV(keras.callbacks.Callback):
    """history.csv, one row per epoch, rewritten whole and renamed (keras CSVLogger appends in place)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                # an epoch redone after an interruption (killed before its resume point) replaces its old row
                rows = [r for r in csv.DictReader(f) if int(float(r["epoch"])) < epoch]
        row: dict[str, Any] = {"epoch": epoch}
        for key, value in (logs or {}).items():
            array = np.asarray(keras.ops.convert_to_numpy(value))
            row[key] = float(array) if array.ndim == 0 else value
        rows.append(row)
        keys = ["epoch"] + sorted({k for r in rows for k in r if k != "epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        runs.atomic_write_text(self.path, out.getvalue())


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


def _summary(
    recipe: Recipe, bundle: DataBundle, run_dir: Path, params: list[dict[str, int]], quiet: bool, runtime: str = ""
) -> None:
    if quiet:
        return
    size = input_size(recipe)
    print(f"tlkit finetune: {recipe.name} -> {run_dir}")
    print(f"  data      {bundle.description}")
    if bundle.mapping is not None:
        values = ", ".join(f"{v}: {n}" for v, n in sorted(bundle.mapping.values.items()))
        ignored = f"; ignored values {list(bundle.mapping.ignore)}" if bundle.mapping.ignore else ""
        print(f"  classes   {len(bundle.class_names)} mask classes ({values}){ignored}")
        print(f"  decoder   {recipe.model.decoder.type}, widths {recipe.model.decoder.widths}, {recipe.model.decoder.upsample}")
    else:
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
    if runtime:
        print(f"  runtime   {runtime}, global batch {recipe.train.batch_size}")
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
    report: bool = True,
    **flags: Any,
) -> RunResult:
    """Train a classifier as the recipe says; return metrics, run directory and export path.

    `flags` are shortcuts (`data=`, `backbone=`, `weights=`, `epochs=`, `batch_size=`,
    `input_size=`) or dotted keys written with `__` (`train__label_smoothing=0.1`).
    `resume=RUN_DIR` continues an interrupted run from its own folder.
    `report=False` skips the pictures and index.html in RUN_DIR/report/.
    """
    started = time.perf_counter()
    if resume is not None:
        if recipe is not None or overrides or any(v is not None for v in flags.values()):
            raise TlkitError("--resume continues a run exactly as it was recorded: give no recipe or overrides with it")
        run_path = runs.require_run_dir(resume)
        rec = load_recipe(run_path / runs.RECIPE)
        if (run_path / runs.METRICS).exists():
            return _finish_export(run_path, rec, export, quiet, started)
        state = runs.read_json(run_path / runs.STATE) if (run_path / runs.STATE).is_file() else {}
    else:
        merged = dict(map(parse_override, overrides)) if isinstance(overrides, list) else dict(overrides or {})
        merged.update(shortcut_overrides(**flags))
        rec = load_recipe(recipe, merged)
        run_path = None
        state = {}

    with distribute.placed(rec.runtime) as place:
        return _train(rec, run_path, state, place, run_dir=run_dir, quiet=quiet, export=export, report=report, started=started)


def _train(
    rec: Recipe,
    run_path: Path | None,
    state: dict[str, Any],
    place: distribute.Placement,
    *,
    run_dir: str | Path | None,
    quiet: bool,
    export: bool | None,
    report: bool,
    started: float,
) -> RunResult:
    """finetune() once the recipe is resolved and the strategy and precision are in place."""
    task = get_task(rec)
    task.check(rec)
    seed_and_determinism(rec.seed, rec.runtime.deterministic)
    bundle = load_data(rec.data, rec.seed, progress=not quiet, task=rec.task)
    if "val" not in bundle.splits:
        raise TlkitError(
            "no validation images: set data.val_fraction above 0 or give the source a validation split "
            "(the best checkpoint is chosen on it)"
        )
    chief_dir = run_path if run_path is not None or place.chief or run_dir is None else Path(run_dir)
    if run_path is None and place.chief:
        run_path = runs.new_run_dir(rec.name, run_dir)
        runs.write_labels(run_path, bundle.class_names)
        runs.write_json(run_path / runs.VERSIONS, runs.package_versions())
        runs.atomic_write_text(run_path / runs.SKIPPED, "".join(f"{p}\t{why}\n" for p, why in bundle.skipped))
        runs.atomic_write_text(run_path / runs.RECIPE, rec.to_yaml())  # last: a run dir with a recipe is complete
    elif run_path is not None and runs.read_labels(run_path) != bundle.class_names:
        raise TlkitError(f"the data's classes changed since {run_path} started; resume needs the same classes")
    if not place.chief:  # other workers train alongside, silently, writing to a scratch copy
        _say(quiet, f"{place.task}: training with the chief ({place.describe()})")
        run_path, quiet = place.write_dir(chief_dir), True
    rec = place.effective(rec)  # per-replica batch -> global batch (and the learning-rate rule, if asked)

    num_classes = len(bundle.class_names)
    batch = rec.train.batch_size
    cache = run_path / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # a killed run leaves partial cache files and locks
    train_ds, plain_train_ds, val_ds = task.pipelines(bundle, rec, cache)
    steps = max(1, math.ceil(bundle.splits["train"].size / batch))

    def objective() -> tuple[Any, list[Any], Any]:  # fresh loss and metric objects for every compile
        return task.objective(rec, bundle)

    keras.utils.set_random_seed(rec.seed)  # again: generating a built-in dataset draws from the global RNG
    with place.scope():
        model = task.build_model(rec, num_classes)
    params = [apply_stage(model, s, resolve_batchnorm(rec, s)) for s in rec.train.stages]
    _summary(rec, bundle, run_path, params, quiet, place.describe())
    fresh = rec.model_copy(update={"model": rec.model.model_copy(update={"weights": "none"})})
    done = int(state.get("completed_stages", 0))
    timings: list[dict[str, Any]] = []
    epoch = 0
    passes, iterators = int(state.get("train_passes", 0)), int(state.get("train_extra_iterators", 0))
    try:
        with _sigterm_as_interrupt():
            if rec.runtime.deterministic:
                _replay(train_ds, passes, iterators, quiet)
            for i, stage in enumerate(rec.train.stages):
                if i < done:
                    epoch += stage.epochs
                    continue
                if i > 0:
                    # a fresh model per stage: a resumed fit() leaves state on the model object
                    with place.scope():
                        model = task.build_model(fresh, num_classes)
                    model.load_weights(run_path / f"stage{i - 1}.weights.h5")
                stage_start, first_epoch = time.perf_counter(), epoch
                epoch, (stage_passes, stage_iterators) = _run_stage(
                    model, rec, stage, i, run_path, train_ds, plain_train_ds, val_ds, steps, epoch, objective, quiet, place
                )
                passes, iterators = passes + stage_passes, iterators + stage_iterators
                seconds = time.perf_counter() - stage_start
                timings.append(
                    {
                        "stage": stage.name,
                        "epochs": epoch - first_epoch,
                        "seconds": round(seconds, 2),
                        "train_images_per_second": round(bundle.splits["train"].size * stage.epochs / seconds, 1),
                    }
                )
                with runs.atomic_path(run_path / f"stage{i}.weights.h5") as tmp:
                    model.save_weights(tmp)
                runs.write_json(
                    run_path / runs.STATE,
                    {"completed_stages": i + 1, "epoch": epoch, "train_passes": passes, "train_extra_iterators": iterators},
                )
                shutil.rmtree(run_path / runs.BACKUP / f"stage{i}", ignore_errors=True)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: progress up to the last finished epoch is saved in {run_path}.\n"
            f"resume with: tlkit finetune --resume {run_path}",
            file=sys.stderr,
            flush=True,
        )
        raise

    shutil.rmtree(cache, ignore_errors=True)
    if not place.chief:
        print(f"{place.task}: training finished; the chief writes the run directory", flush=True)
        seconds = time.perf_counter() - started
        return RunResult(chief_dir or run_path, {}, bundle.class_names, read_history(run_path), None, seconds, timings, chief=False)
    best = run_path / runs.BEST
    if best.is_file() and rec.runtime.precision != "float32":
        distribute.save_float32(best, lambda: task.build_model(fresh, num_classes))
    if best.is_file():
        model = load_run_model(run_path)
    eval_split = "test" if "test" in bundle.splits else "val"
    import tensorflow as tf

    probabilities = tf.function(lambda x: tf.nn.softmax(model(x, training=False), axis=-1), reduce_retracing=True)
    metrics = task.evaluate(probabilities, task.eval_pipeline(bundle, rec, eval_split, batch), bundle.class_names)
    metrics = {"split": eval_split, **metrics}
    runs.write_json(run_path / runs.METRICS, metrics)
    _say(
        quiet,
        f"{eval_split} {task.headline} {metrics[task.headline]:.4f}, loss {metrics['loss']:.4f}  ({run_path / runs.METRICS})",
    )

    export_dir = None
    if export if export is not None else rec.export.enabled:
        from tlkit.exporting import export_run

        export_dir = export_run(run_path, quiet=quiet, bundle=bundle)  # the check images come from the loaded data
    if report:  # curves, confusion matrix, predictions in run/report/; a failure only warns
        from tlkit.report import report_after_training

        report_after_training(run_path, model=model, bundle=bundle, quiet=quiet)
    return RunResult(
        run_path, metrics, bundle.class_names, read_history(run_path), export_dir, time.perf_counter() - started, timings
    )


def _finish_export(run_path: Path, rec: Recipe, export: bool | None, quiet: bool, started: float) -> RunResult:
    """`--resume` of a run that was stopped after its metrics: only the export is left to do."""
    from tlkit.exporting import export_of_run, export_run

    wanted = export if export is not None else rec.export.enabled
    done = export_of_run(run_path, rec)
    if not wanted or done is not None:
        raise TlkitError(f"run {run_path} already finished (it has {runs.METRICS}); nothing to resume")
    export_dir = export_run(run_path, quiet=quiet)
    metrics = runs.read_json(run_path / runs.METRICS)
    return RunResult(
        run_path, metrics, runs.read_labels(run_path), read_history(run_path), export_dir, time.perf_counter() - started
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
    objective: Any,
    quiet: bool,
    place: distribute.Placement | None = None,
) -> tuple[int, tuple[int, int]]:
    """Train one stage; (the next epoch number, (full passes, extra iterators) it made over `train_ds`)."""
    apply_stage(model, stage, resolve_batchnorm(rec, stage))
    if not quiet:
        print(f"stage {index + 1}/{len(rec.train.stages)}: {stage.name}", flush=True)
    place = place or distribute.Placement(None, "default", rec.runtime.precision)
    trained, setup = model, 0.0
    on_features = stage.unfreeze == "none" and rec.train.cache_features and get_task(rec).cache_features and place.caches_features
    if on_features:
        setup = time.perf_counter()
        trained, train_ds, val_ds = _feature_head(model, train_ds, plain_train_ds, val_ds, rec, quiet)
        setup = time.perf_counter() - setup
        steps = int(train_ds.cardinality())
    trained = place.for_fit(trained)
    with place.scope():  # optimizer and metric variables are created here
        optimizer, schedule_callbacks = make_optimizer(stage, steps)
        loss, metrics, weights = objective()
        trained.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=rec.train.jit_compile)
        monitor = rec.monitor
        resume_dir = run_path / runs.BACKUP / f"stage{index}"
        start = _restore_resume_point(trained, resume_dir) or epoch
    if rec.runtime.deterministic:
        _replay(train_ds, start - epoch, start - epoch, quiet)
    callbacks: list[keras.callbacks.Callback] = [
        _StopOnNonFinite(stage.name, steps, run_path),
        *schedule_callbacks,
        _LogEpoch(setup),
        _BestCheckpoint(model, run_path / runs.BEST, monitor, _best_so_far(run_path / runs.HISTORY, monitor)),
        _HistoryCSV(run_path / runs.HISTORY),
        _ResumePoint(resume_dir),  # last: an epoch counts as done only once everything of it is written
    ]
    if not quiet:
        callbacks.append(_EpochEstimate(steps))
    es = rec.train.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, restore_best_weights=False))
    if rec.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_path / "tensorboard")))
    with place.scope():
        history = trained.fit(
            place.shard(train_ds),
            validation_data=place.shard(val_ds),
            initial_epoch=start,
            epochs=epoch + stage.epochs,
            class_weight=weights,
            shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
            callbacks=callbacks,
            verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
        )
    # what the stage did to the shared training stream (see _replay): the augmented feature views, or fit() epochs
    ran = (history.epoch[-1] + 1 if history.epoch else start) - epoch
    used = (rec.train.feature_views - 1, 0) if on_features else (ran, ran)
    return epoch + stage.epochs, used


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
            xs.append(call(images).numpy().astype(np.float32))  # float16 under mixed_float16
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
