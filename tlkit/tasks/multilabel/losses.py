"""Training loss, class weights and in-training metrics of the multi-label task.

The model outputs one logit per class (no sigmoid layer): the loss and metrics take
logits, because the cross-entropy computed from logits stays finite where one computed
from saturated float32 probabilities does not. The loss is a registered Keras
serializable, so a run's `best.keras` loads by its package name alone.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tlkit.errors import TlkitError

# Cap of the `auto` positive weights, see `positive_weights`.
POSITIVE_WEIGHT_CAP = 10.0


def _log_sigmoids(logits: Any) -> tuple[Any, Any]:
    """(log sigmoid(z), log(1 - sigmoid(z))), stable for any |z|: no exp of a large number."""
    tail = ops.log1p(ops.exp(-ops.abs(logits)))
    return -(ops.relu(-logits) + tail), -(ops.relu(logits) + tail)


@keras.saving.register_keras_serializable(package="tlkit")
class MultiLabelLoss(keras.losses.Loss):
    """Per-class binary cross-entropy on logits, averaged over classes and the batch.

    `label_smoothing` s moves targets to y(1-s) + s/2, so the model is not pushed to
    infinite logits on labels that may be wrong. `positive_weights` (one per class)
    scales the positive term, to counter rare classes. `focal_gamma` > 0 multiplies
    each term by (1 - p_t)^gamma (focal loss): (1-p)^gamma on the positive term and
    p^gamma on the negative one, so easy, confident examples stop dominating.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        positive_weights: list[float] | None = None,
        focal_gamma: float = 0.0,
        name: str = "multilabel_loss",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise TlkitError(f"label_smoothing {label_smoothing} is out of range: use a value in [0, 1)")
        if focal_gamma < 0:
            raise TlkitError(f"focal_gamma {focal_gamma} is negative: use 0 (plain cross-entropy) or more")
        if positive_weights is not None and any(not w > 0 for w in positive_weights):
            raise TlkitError("positive_weights must all be > 0: give one positive weight per class, or none")
        self.label_smoothing = float(label_smoothing)
        self.positive_weights = [float(w) for w in positive_weights] if positive_weights is not None else None
        self.focal_gamma = float(focal_gamma)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        logits = ops.cast(y_pred, "float32")
        y = ops.cast(y_true, "float32")
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        log_p, log_not_p = _log_sigmoids(logits)
        positive, negative = -y * log_p, -(1.0 - y) * log_not_p
        if self.focal_gamma:
            # (1-p)^g and p^g as exp(g * log(.)): finite gradients even where p is exactly 0 or 1
            positive = positive * ops.exp(self.focal_gamma * log_not_p)
            negative = negative * ops.exp(self.focal_gamma * log_p)
        if self.positive_weights is not None:
            positive = positive * ops.convert_to_tensor(self.positive_weights, "float32")
        # one value per example; Keras' reduction then averages over the batch
        return ops.mean(positive + negative, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "positive_weights": self.positive_weights,
            "focal_gamma": self.focal_gamma,
        }


def positive_weights(multi_hot: Any, cap: float = POSITIVE_WEIGHT_CAP) -> list[float]:
    """The `auto` positive weights: negatives / positives per class, clipped to [1/cap, cap].

    The ratio makes a class's positives weigh as much in the loss as its negatives.
    Cap 10 (a class in fewer than ~9% of the images stops gaining weight): a class with
    3 positives in 1000 images would otherwise get ~330, so each of its few (possibly
    mislabelled) images would dominate the gradient and flood the predictions with false
    positives; within 10x the loss stays on the scale the recipes' learning rates were
    tuned for. The floor 1/cap keeps a class present in (almost) every image from losing
    its positive term altogether. A class with no positives gets 1.0.
    """
    if not cap >= 1.0:
        raise TlkitError(f"positive weight cap {cap} is below 1: use a cap of 1 or more")
    y = np.asarray(multi_hot) > 0.5
    if y.ndim != 2:
        raise ValueError(f"multi-hot labels must be [N, C], got shape {y.shape}")
    pos = y.sum(axis=0).astype(np.float64)
    neg = y.shape[0] - pos
    ratio = np.divide(neg, pos, out=np.ones_like(pos), where=pos > 0)
    ratio = np.where(pos > 0, np.clip(ratio, 1.0 / cap, cap), 1.0)
    return [float(w) for w in ratio]


def training_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """Fresh metric objects (Keras metrics hold state: never share them between models).

    "mean_average_precision" is Keras' macro PR-AUC, the checkpoint monitor
    (`val_mean_average_precision`); it interpolates over 200 thresholds, so it is close
    to, not equal to, the step-wise mAP of the evaluation.
    """
    return [
        keras.metrics.AUC(
            curve="PR",
            multi_label=True,
            num_labels=num_classes,
            from_logits=True,
            name="mean_average_precision",
        ),
        keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=0.0),
    ]
