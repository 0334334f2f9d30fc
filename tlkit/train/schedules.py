"""Learning rates and optimizers of a stage: warm-up, constant/step/cosine decay, reduce-on-plateau."""

from __future__ import annotations

import math
from typing import Any

import keras

from tlkit.recipe import Stage


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


class PlateauWarmup(keras.callbacks.Callback):
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


def learning_rate(stage: Stage, steps_per_epoch: int) -> tuple[Any, list[keras.callbacks.Callback]]:
    """The stage's rate (a float or a WarmupSchedule) and the callbacks that drive it (plateau)."""
    warmup = stage.warmup_steps if stage.warmup_steps is not None else int(round(stage.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, int(stage.epochs) * steps_per_epoch)
    if stage.schedule == "plateau":
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.ReduceLROnPlateau(factor=stage.step_factor, patience=stage.plateau_patience, verbose=0)
        ]
        if warmup:
            callbacks.append(PlateauWarmup(stage.learning_rate, warmup))
        return stage.learning_rate, callbacks
    if stage.schedule == "constant" and not warmup:
        return stage.learning_rate, []
    schedule = WarmupSchedule(
        stage.learning_rate,
        warmup,
        kind=stage.schedule,
        total_steps=stage.epochs * steps_per_epoch,
        step_every=stage.step_every * steps_per_epoch,
        step_factor=stage.step_factor,
    )
    return schedule, []


def make_optimizer(stage: Stage, steps_per_epoch: int) -> tuple[keras.optimizers.Optimizer, list[keras.callbacks.Callback]]:
    """The stage's optimizer (adam, adamw, sgd with momentum) and its schedule callbacks."""
    rate, callbacks = learning_rate(stage, steps_per_epoch)
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
