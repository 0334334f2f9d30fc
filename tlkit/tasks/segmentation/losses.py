"""Per-pixel losses and metrics that leave `ignore` pixels (class index 255) out.

Registered as Keras serializables so a run's `best.keras` loads without tlkit
code being trusted beyond its own package names.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

IGNORE = 255


def _valid(y_true: Any, num_classes: int) -> tuple[Any, Any]:
    """(class indices clipped into range, float mask of pixels that count)."""
    y = ops.cast(ops.squeeze(y_true, -1) if len(y_true.shape) == 4 else y_true, "int32")
    valid = ops.cast(ops.logical_and(y >= 0, y < num_classes), "float32")
    return ops.clip(y, 0, num_classes - 1), valid


@keras.saving.register_keras_serializable(package="tlkit")
class SegmentationLoss(keras.losses.Loss):
    """cross_entropy * CE + dice * (1 - soft Dice) + focal * focal loss, over valid pixels.

    Class weights scale each pixel's CE/focal term by its true class's weight.
    """

    def __init__(
        self,
        num_classes: int,
        cross_entropy: float = 1.0,
        dice: float = 0.0,
        focal: float = 0.0,
        focal_gamma: float = 2.0,
        class_weights: list[float] | None = None,
        name: str = "segmentation_loss",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ce, self.dice, self.focal, self.gamma = cross_entropy, dice, focal, focal_gamma
        self.class_weights = list(class_weights) if class_weights is not None else None

    def call(self, y_true, y_pred):
        y, valid = _valid(y_true, self.num_classes)
        logits = ops.cast(y_pred, "float32")
        weight = valid
        if self.class_weights is not None:
            weight = weight * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), y)
        denom = ops.maximum(ops.sum(valid), 1.0)
        total = 0.0
        log_probs = ops.log_softmax(logits, axis=-1)
        onehot = ops.one_hot(y, self.num_classes)
        log_pt = ops.sum(log_probs * onehot, axis=-1)
        if self.ce:
            total = total + self.ce * ops.sum(-log_pt * weight) / denom
        if self.focal:
            pt = ops.exp(log_pt)
            total = total + self.focal * ops.sum(-((1.0 - pt) ** self.gamma) * log_pt * weight) / denom
        if self.dice:
            probs = ops.exp(log_probs) * valid[..., None]
            target = onehot * valid[..., None]
            inter = ops.sum(probs * target, axis=(0, 1, 2))
            sums = ops.sum(probs, axis=(0, 1, 2)) + ops.sum(target, axis=(0, 1, 2))
            total = total + self.dice * (1.0 - ops.mean((2.0 * inter + 1.0) / (sums + 1.0)))
        # Keras reduces over the batch: return one value per example
        return ops.ones((ops.shape(logits)[0],)) * total

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "cross_entropy": self.ce,
            "dice": self.dice,
            "focal": self.focal,
            "focal_gamma": self.gamma,
            "class_weights": self.class_weights,
        }


@keras.saving.register_keras_serializable(package="tlkit")
class PixelAccuracy(keras.metrics.Metric):
    """Share of valid pixels whose argmax class is right."""

    def __init__(self, num_classes: int, name: str = "pixel_accuracy", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.right = self.add_variable(shape=(), initializer="zeros", name="right")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, valid = _valid(y_true, self.num_classes)
        pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        self.right.assign_add(ops.sum(ops.cast(ops.equal(pred, y), "float32") * valid))
        self.total.assign_add(ops.sum(valid))

    def result(self):
        return self.right / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.right.assign(0.0)
        self.total.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


def segmentation_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    return [
        keras.metrics.MeanIoU(num_classes, name="mean_iou", ignore_class=IGNORE, sparse_y_pred=False),
        PixelAccuracy(num_classes),
    ]
