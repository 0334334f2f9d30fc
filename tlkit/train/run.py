"""A fine-tuning run as an object with small steps: prepare() -> stages() -> evaluate() -> finish().

Each stage is small verbs composed: apply the freezing policy, compile with the
stage's optimizer and schedule, fit with the shared callbacks. State between
stages lives in the run directory (stage weights + state.json), so an
interrupted run resumes from its folder alone.
"""

from __future__ import annotations

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

from tlkit import distribute, runs
from tlkit.data.scan import scan_options, scan_summary
from tlkit.data.sources import require_source
from tlkit.errors import TlkitError
from tlkit.models.parts import probability_fn
from tlkit.models.stages import apply_stage, fetch_pretrained, input_size, load_run_model, resolve_batchnorm, weights_of
from tlkit.recipe import Recipe, Stage, parse_override, shortcut_overrides
from tlkit.runtime import seed_and_determinism
from tlkit.tasks import get_task, load_data, load_recipe
from tlkit.train.adapt import resolve_auto, scan_size
from tlkit.train.batchnorm import adapt_batchnorm
from tlkit.train.callbacks import (
    BestCheckpoint,
    EpochEstimate,
    HistoryCSV,
    LogEpoch,
    ResumePoint,
    StopOnNonFinite,
    best_so_far,
    restore_resume_point,
)
from tlkit.train.features import feature_head
from tlkit.train.schedules import make_optimizer


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
    task: str = ""  # the recipe's task name, for get_task(result.task) (the CLI's headline metric)


def finetune(
    recipe: "str | Path | dict[str, Any] | Recipe | None" = None,
    *,
    overrides: "dict[str, Any] | list[str] | None" = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    export: bool | None = None,
    report: bool = True,
    rescan: bool = False,
    **flags: Any,
) -> RunResult:
    """Train a model as the recipe says; return metrics, run directory and export path.

    `flags` are shortcuts (`data=`, `backbone=`, `weights=`, `epochs=`, `batch_size=`,
    `input_size=`) or dotted keys written with `__` (`train__label_smoothing=0.1`).
    `resume=RUN_DIR` continues an interrupted run from its own folder.
    `report=False` skips the pictures and index.html in RUN_DIR/report/.
    `rescan=True` checks every image file again instead of trusting the verdicts remembered for the folder.
    """
    started = time.perf_counter()
    run_path, state = None, {}
    if resume is not None:
        if recipe is not None or overrides or any(v is not None for v in flags.values()):
            raise TlkitError("--resume continues a run exactly as it was recorded: give no recipe or overrides with it")
        run_path = runs.require_run_dir(resume)
        rec = load_recipe(run_path / runs.RECIPE)
        if (run_path / runs.METRICS).exists():
            return export_only(run_path, rec, export, quiet, started)
        state = runs.read_json(run_path / runs.STATE) if (run_path / runs.STATE).is_file() else {}
    else:
        rec = run_recipe(recipe, overrides, **flags)
    with distribute.placed(rec.runtime) as place, scan_options(rescan=rescan, **scan_size(rec), **place.scan_sharing()):
        run = FineTuneRun(
            rec, place, run_path, state, run_dir=run_dir, quiet=quiet, export=export, report=report, started=started
        )
        return run.execute()


def run_recipe(
    recipe: "str | Path | dict[str, Any] | Recipe | None" = None,
    overrides: "dict[str, Any] | list[str] | None" = None,
    **flags: Any,
) -> Recipe:
    """The recipe `finetune` would run: overrides, then the shortcut flags; no recipe picks the shipped default.

    `--backbone` without `--weights` takes that backbone's own default weights (imagenet; scratch:
    none), so `--backbone scratch` works from a pretrained recipe.
    """
    merged = dict(map(parse_override, overrides)) if isinstance(overrides, list) else dict(overrides or {})
    merged.update(shortcut_overrides(**flags))
    if flags.get("backbone") is not None and flags.get("weights") is None and "model.weights" not in merged:
        merged["model.weights"] = None
    return load_recipe(recipe, merged)


def export_only(run_path: Path, rec: Recipe, export: bool | None, quiet: bool, started: float) -> RunResult:
    """`--resume` of a run that was stopped after its metrics: only the export is left to do."""
    from tlkit.exporting import export_of_run, export_run

    wanted = export if export is not None else rec.export.enabled
    if not wanted or export_of_run(run_path, rec) is not None:
        raise TlkitError(f"run {run_path} already finished (it has {runs.METRICS}); nothing to resume")
    export_dir = export_run(run_path, quiet=quiet)
    metrics = runs.read_json(run_path / runs.METRICS)
    history, seconds = runs.read_history(run_path), time.perf_counter() - started
    return RunResult(run_path, metrics, runs.read_labels(run_path), history, export_dir, seconds, task=rec.task)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
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


def replay(dataset: Any, passes: int, iterators: int, quiet: bool) -> None:
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


def _say(quiet: bool, text: str = "") -> None:
    if not quiet:
        print(text, flush=True)


@dataclass
class _Feed:
    """What one stage's fit() trains and reads: the whole model on images, or its head on cached features."""

    model: keras.Model
    train: Any
    val: Any
    steps: int
    setup_seconds: float = 0.0
    on_features: bool = False
    train_count: int | None = None  # examples per epoch, all workers together (for a sharded pipeline)
    val_count: int | None = None


class FineTuneRun:
    """One run of `finetune` once the recipe is resolved and the strategy and precision are in place.

    `run_path`/`state` are those of a run being resumed (None/{} for a new run). On the other
    workers of a multi-worker run `run_path` becomes a scratch copy and nothing is printed.
    """

    def __init__(
        self,
        rec: Recipe,
        place: distribute.Placement,
        run_path: Path | None = None,
        state: dict[str, Any] | None = None,
        *,
        run_dir: str | Path | None = None,
        quiet: bool = False,
        export: bool | None = None,
        report: bool = True,
        started: float | None = None,
    ):
        self.rec, self.place, self.run_path, self.run_dir = rec, place, run_path, run_dir
        self.quiet, self.export, self.report = quiet, export, report
        state = state or {}
        self.done = int(state.get("completed_stages", 0))
        self.passes = int(state.get("train_passes", 0))
        self.iterators = int(state.get("train_extra_iterators", 0))
        self.started = time.perf_counter() if started is None else started
        self.task = get_task(rec)
        self.epoch = 0
        self.timings: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}

    def execute(self) -> RunResult:
        self.prepare()
        self.stages()
        if not self.place.chief:
            return self.worker_result()
        self.evaluate()
        return self.finish()

    # ------------------------------------------------------------------------- prepare

    def prepare(self) -> None:
        """Data, run directory, pipelines and model, then the summary."""
        self.task.check(self.rec)
        require_source(self.rec.data)  # a wrong path fails before any download
        fetch_pretrained(self.rec)  # offline, fail before reading the data, not after
        seed_and_determinism(self.rec.seed, self.rec.runtime.deterministic)
        self._load_data()
        self.rec, self.auto_notes = resolve_auto(self.rec, self.bundle, self.place.replicas)  # auto size and lengths
        self._open_run_dir()
        self.rec = self.place.effective(self.rec)  # per-replica batch -> global batch (and the learning-rate rule, if asked)
        self.cache = self.run_path / "cache"
        shutil.rmtree(self.cache, ignore_errors=True)  # a killed run leaves partial cache files and locks
        # each worker of a multi-worker run reads, decodes and caches only its shard of the image files
        self.train_ds, self.plain_train_ds, self.val_ds = self.task.pipelines(self.place.shard_bundle(self.bundle), self.rec, self.cache)
        self.steps = max(1, math.ceil(self.bundle.splits["train"].size / self.rec.train.batch_size))
        keras.utils.set_random_seed(self.rec.seed)  # again: generating a built-in dataset draws from the global RNG
        with self.place.scope():
            self.model = self.task.build_model(self.rec, self.num_classes)
        if self.done == 0 and self.rec.train.adapt_batchnorm:
            count = adapt_batchnorm(self.model, self.plain_train_ds, self.rec.train.adapt_batchnorm)
            self.auto_notes.append(f"batchnorm statistics re-estimated on {count} training batch(es) (train.adapt_batchnorm)")
        params = [apply_stage(self.model, s, resolve_batchnorm(self.rec, s)) for s in self.rec.train.stages]
        self._summary(params)
        # later stages rebuild the model and load the previous stage's weights: no pretrained download again
        self.fresh = self.rec.model_copy(update={"model": self.rec.model.model_copy(update={"weights": "none"})})

    @property
    def num_classes(self) -> int:
        return len(self.bundle.class_names)

    def _load_data(self) -> None:
        self.bundle = load_data(self.rec, progress=not self.quiet)
        if "val" not in self.bundle.splits:
            raise TlkitError(
                "no validation images: set data.val_fraction above 0 or give the source a validation split "
                "(the best checkpoint is chosen on it)"
            )

    def _open_run_dir(self) -> None:
        """A new run directory (chief), the resumed one (its classes checked), or a worker's scratch copy."""
        place, bundle = self.place, self.bundle
        given = Path(self.run_dir) if self.run_dir is not None else None
        self.chief_dir = self.run_path if self.run_path is not None or place.chief or given is None else given
        if self.run_path is None and place.chief:
            self.run_path = runs.new_run_dir(self.rec.name, self.run_dir)
            self._write_run_files()
        elif self.run_path is not None and runs.read_labels(self.run_path) != bundle.class_names:
            raise TlkitError(f"the data's classes changed since {self.run_path} started; resume needs the same classes")
        if not place.chief:  # other workers train alongside, silently, writing to a scratch copy
            _say(self.quiet, f"{place.task}: training with the chief ({place.describe()})")
            self.run_path, self.quiet = place.write_dir(self.chief_dir), True

    def _write_run_files(self) -> None:
        path, bundle = self.run_path, self.bundle
        runs.write_labels(path, bundle.class_names)
        runs.write_json(path / runs.VERSIONS, runs.package_versions())
        runs.atomic_write_text(path / runs.SKIPPED, "".join(f"{p}\t{why}\n" for p, why in bundle.skipped))
        runs.atomic_write_text(path / runs.RECIPE, self.rec.to_yaml())  # last: a run dir with a recipe is complete

    def _summary(self, params: list[dict[str, int]]) -> None:
        if self.quiet:
            return
        rec, bundle = self.rec, self.bundle
        size = input_size(rec)
        lines = [f"tlkit finetune: {rec.name} -> {self.run_path}", f"  data      {bundle.description}"]
        lines += [f"  {line}" for line in self.task.describe(rec, bundle)]  # the task's lines, indented as the rest
        lines.append("  splits    " + ", ".join(f"{k} {v.size}" for k, v in bundle.splits.items()))
        scanned = scan_summary()
        if scanned:
            lines.append(f"  scan      {scanned}")
        if bundle.skipped:
            lines.append(f"  skipped   {len(bundle.skipped)} unreadable file(s), listed in {self.run_path / runs.SKIPPED}")
        if bundle.excluded:
            lines.append(f"  excluded  {len(bundle.excluded)} file(s) listed in data.exclude ({rec.data.exclude})")
        lines.append(f"  backbone  {rec.model.backbone} (weights: {weights_of(rec)}) at {size}x{size}")
        lines += [f"  {note}" for note in self.auto_notes]
        runtime = self.place.describe()
        if runtime:
            lines.append(f"  runtime   {runtime}, global batch {rec.train.batch_size}")
        for stage, p in zip(rec.train.stages, params):
            lines.append(
                f"  stage     {stage.name}: {stage.epochs} epoch(s), {stage.optimizer} lr {stage.learning_rate:g} "
                f"{stage.schedule}, unfreeze {stage.unfreeze}, batchnorm {resolve_batchnorm(rec, stage)}, "
                f"trainable params {p['trainable']:,} (frozen {p['frozen']:,})"
            )
        for line in lines:
            print(line)
        print(flush=True)

    # ------------------------------------------------------------------------- stages

    def stages(self) -> None:
        """Every stage not finished yet; Ctrl-C or SIGTERM keep what the last finished epoch wrote."""
        try:
            with sigterm_as_interrupt():
                if self.rec.runtime.deterministic:
                    replay(self.train_ds, self.passes, self.iterators, self.quiet)
                for index, stage in enumerate(self.rec.train.stages):
                    if index < self.done:
                        self.epoch += stage.epochs
                    else:
                        self.run_stage(index, stage)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: progress up to the last finished epoch is saved in {self.run_path}.\n"
                f"resume with: tlkit finetune --resume {self.run_path}",
                file=sys.stderr,
                flush=True,
            )
            raise
        shutil.rmtree(self.cache, ignore_errors=True)

    def run_stage(self, index: int, stage: Stage) -> None:
        """Train stage `index`, then record it: stage weights, state.json, timing; its resume point goes."""
        if index > 0:  # a fresh model per stage: a resumed fit() leaves state on the model object
            with self.place.scope():
                self.model = self.task.build_model(self.fresh, self.num_classes)
            self.model.load_weights(self.run_path / f"stage{index - 1}.weights.h5")
        start, first_epoch = time.perf_counter(), self.epoch
        passes, iterators = self.fit_stage(index, stage)
        self.epoch += stage.epochs
        self.passes, self.iterators = self.passes + passes, self.iterators + iterators
        seconds = time.perf_counter() - start
        self.timings.append(
            {
                "stage": stage.name,
                "epochs": self.epoch - first_epoch,
                "seconds": round(seconds, 2),
                "train_images_per_second": round(self.bundle.splits["train"].size * stage.epochs / seconds, 1),
            }
        )
        with runs.atomic_path(self.run_path / f"stage{index}.weights.h5") as tmp:
            self.model.save_weights(tmp)
        runs.write_json(
            self.run_path / runs.STATE,
            {
                "completed_stages": index + 1,
                "epoch": self.epoch,
                "train_passes": self.passes,
                "train_extra_iterators": self.iterators,
            },
        )
        shutil.rmtree(self.run_path / runs.BACKUP / f"stage{index}", ignore_errors=True)

    def fit_stage(self, index: int, stage: Stage) -> tuple[int, int]:
        """fit() one stage from `self.epoch`; the (full passes, extra iterators) it made over the training stream."""
        apply_stage(self.model, stage, resolve_batchnorm(self.rec, stage))
        _say(self.quiet, f"stage {index + 1}/{len(self.rec.train.stages)}: {stage.name}")
        feed = self._feed(stage)
        trained = self.place.for_fit(feed.model)
        resume_dir = self.run_path / runs.BACKUP / f"stage{index}"
        schedule_callbacks, class_weight, start = self._compile(trained, stage, feed.steps, resume_dir)
        if self.rec.runtime.deterministic:
            replay(feed.train, start - self.epoch, start - self.epoch, self.quiet)
        batch, place = self.rec.train.batch_size, self.place
        train = place.shard(feed.train, feed.train_count, batch, class_weight, training=True)
        val = place.shard(feed.val, feed.val_count, batch)
        with self.place.scope():
            history = trained.fit(
                train,
                validation_data=val,
                initial_epoch=start,
                epochs=self.epoch + stage.epochs,
                steps_per_epoch=place.steps_per_epoch(feed.train_count, batch),
                class_weight=None if place.takes_shards else class_weight,
                shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data stream
                callbacks=[*self._callbacks(stage, feed, schedule_callbacks, resume_dir), *place.fit_callbacks()],
                verbose=0 if self.quiet else (1 if sys.stdout.isatty() else 2),
            )
        # what the stage did to the shared training stream (see replay): the augmented feature views, or fit() epochs
        ran = (history.epoch[-1] + 1 if history.epoch else start) - self.epoch
        return (self.rec.train.feature_views - 1, 0) if feed.on_features else (ran, ran)

    def _feed(self, stage: Stage) -> _Feed:
        """A head-only stage trains on cached backbone features where the recipe, task and placement allow it."""
        rec = self.rec
        cached = stage.unfreeze == "none" and rec.train.cache_features and self.task.cache_features
        counts = self.bundle.splits["train"].size, self.bundle.splits["val"].size
        if not (cached and self.place.caches_features):
            return _Feed(self.model, self.train_ds, self.val_ds, self.steps, train_count=counts[0], val_count=counts[1])
        setup = time.perf_counter()
        head, train, val = feature_head(self.model, self.train_ds, self.plain_train_ds, self.val_ds, rec, self.quiet)
        views = counts[0] * rec.train.feature_views  # all workers' feature rows
        steps = max(1, math.ceil(views / rec.train.batch_size))
        return _Feed(head, train, val, steps, time.perf_counter() - setup, True, views, counts[1])

    def _compile(self, trained: keras.Model, stage: Stage, steps: int, resume_dir: Path) -> tuple[list[Any], Any, int]:
        """Compile with the stage's optimizer and fresh loss and metrics, then load the stage's resume point if any.

        Returns (schedule callbacks, class weights for fit, the epoch fit() starts at).
        """
        with self.place.scope():  # optimizer and metric variables are created here
            optimizer, schedule_callbacks = make_optimizer(stage, steps)
            loss, metrics, class_weight = self.task.objective(self.rec, self.bundle)
            trained.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=self.rec.train.jit_compile)
            start = restore_resume_point(trained, resume_dir) or self.epoch
        return schedule_callbacks, class_weight, start

    def _callbacks(
        self, stage: Stage, feed: _Feed, schedule_callbacks: list[Any], resume_dir: Path
    ) -> list[keras.callbacks.Callback]:
        """The NaN stop first; the resume point after every file of the epoch (an epoch counts once all is written)."""
        rec, run_path = self.rec, self.run_path
        monitor = self.task.monitor(rec)
        best = best_so_far(run_path / runs.HISTORY, monitor)
        callbacks: list[keras.callbacks.Callback] = [
            StopOnNonFinite(stage.name, feed.steps, run_path),
            *schedule_callbacks,
            LogEpoch(feed.setup_seconds),
            BestCheckpoint(self.model, run_path / runs.BEST, monitor, best),
            HistoryCSV(run_path / runs.HISTORY),
            ResumePoint(resume_dir),
        ]
        if not self.quiet:
            callbacks.append(EpochEstimate(feed.steps))
        es = rec.train.early_stopping
        if es.enabled:
            callbacks.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, restore_best_weights=False))
        if rec.train.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(run_path / "tensorboard")))
        return callbacks

    # ------------------------------------------------------------------------- evaluate, finish

    def worker_result(self) -> RunResult:
        """A non-chief worker's end: it wrote only its scratch copy; the chief evaluates and writes."""
        print(f"{self.place.task}: training finished; the chief writes the run directory", flush=True)
        seconds = time.perf_counter() - self.started
        history = runs.read_history(self.run_path)
        run_dir = self.chief_dir or self.run_path
        return RunResult(run_dir, {}, self.bundle.class_names, history, None, seconds, self.timings, False, self.rec.task)

    def evaluate(self) -> None:
        """The best checkpoint on the test split (val without one): the task's fitted state, then metrics.json."""
        rec, task, run_path = self.rec, self.task, self.run_path
        best = run_path / runs.BEST
        if best.is_file() and rec.runtime.precision != "float32":
            distribute.save_float32(best, lambda: task.build_model(self.fresh, self.num_classes))
        if best.is_file():
            self.model = load_run_model(run_path)
        split = "test" if "test" in self.bundle.splits else "val"
        prob_fn = probability_fn(self.model, task.activation)
        state = task.fit_state(prob_fn, self.bundle, rec)
        if state:
            runs.write_json(run_path / runs.TASK_STATE, state)
        batches = task.eval_pipeline(self.bundle, rec, split, rec.train.batch_size)
        selected_on = "val" if task.monitor(rec).startswith("val_") else "train"  # the split that picked best.keras
        metrics = task.evaluate(prob_fn, batches, self.bundle.class_names, state)
        self.metrics = {"split": split, "selected_on": selected_on, **metrics}
        runs.write_json(run_path / runs.METRICS, self.metrics)
        headline = task.headline
        _say(
            self.quiet,
            f"{split} {headline} {self.metrics[headline]:.4f}, loss {self.metrics['loss']:.4f}  ({run_path / runs.METRICS})",
        )

    def finish(self) -> RunResult:
        """Export (if the recipe or caller asks) and the report; a failed report only warns."""
        export_dir = None
        if self.export if self.export is not None else self.rec.export.enabled:
            from tlkit.exporting import export_run

            export_dir = export_run(self.run_path, quiet=self.quiet, bundle=self.bundle)  # check images from the loaded data
        if self.report:  # curves, confusion matrix, predictions in run/report/
            from tlkit.report import report_after_training

            report_after_training(self.run_path, model=self.model, bundle=self.bundle, quiet=self.quiet)
        history = runs.read_history(self.run_path)
        seconds = time.perf_counter() - self.started
        names = self.bundle.class_names
        return RunResult(self.run_path, self.metrics, names, history, export_dir, seconds, self.timings, task=self.rec.task)
