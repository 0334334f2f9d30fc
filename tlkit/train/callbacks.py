"""The callbacks of every stage's fit(): what Keras lacks or writes unsafely.

Every file they write is renamed into place (`runs.atomic_path`), so a kill at
any moment leaves the last complete epoch: history.csv, best.keras and the
resume point each point at a finished epoch.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tlkit import runs
from tlkit.errors import TlkitError

RESUME_POINT = "resume.json"


class EpochEstimate(keras.callbacks.Callback):
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


class LogEpoch(keras.callbacks.Callback):
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


def lower_is_better(monitor: str) -> bool:
    return "loss" in monitor


def best_so_far(history_path: Path, monitor: str) -> float | None:
    """The best `monitor` value history.csv holds (None: no file or no such column), for a resumed run."""
    if not history_path.is_file():
        return None
    with history_path.open() as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "")]
    if not values:
        return None
    return min(values) if lower_is_better(monitor) else max(values)


class BestCheckpoint(keras.callbacks.Callback):
    """Save `target` (the whole model, whatever model fit() trains) when `monitor` improves.

    Written beside and renamed, so a kill during the save keeps the previous best.
    """

    def __init__(self, target: keras.Model, path: Path, monitor: str, best: float | None):
        super().__init__()
        self.target, self.path, self.monitor, self.best = target, Path(path), monitor, best
        self.lower_is_better = lower_is_better(monitor)

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


def seed_variables(model: keras.Model) -> list[Any]:
    """The layers' random-seed state (dropout masks): in `variables` but not in `weights`, so not in weight files."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


class ResumePoint(keras.callbacks.Callback):
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
        seeds = [keras.ops.convert_to_numpy(v).tolist() for v in seed_variables(self.model)]
        runs.write_json(self.folder / RESUME_POINT, {"epoch": epoch + 1, "weights": name, "seeds": seeds})
        for old in self.folder.glob("epoch*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


def restore_resume_point(model: keras.Model, folder: Path) -> int | None:
    """Load a stage's last resume point into the compiled `model`; the epoch to continue from, or None."""
    path = Path(folder) / RESUME_POINT
    if not path.is_file():
        return None
    point = runs.read_json(path)
    model.optimizer.build(model.trainable_variables)  # so the optimizer state in the file has a place to go
    model.load_weights(Path(folder) / point["weights"])
    seeds = seed_variables(model)
    if len(seeds) == len(point.get("seeds", [])):
        for variable, value in zip(seeds, point["seeds"]):
            variable.assign(value)
    return int(point["epoch"])


class StopOnNonFinite(keras.callbacks.Callback):
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


class HistoryCSV(keras.callbacks.Callback):
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
