"""Layers tlkit models are built from, registered so that `.keras` files load in safe mode."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tlkit")
class BilinearResize(keras.layers.Layer):
    """Bilinear resize to a fixed size, with no `training` argument.

    keras.layers.Resizing declares `training=True` as its default; Keras then
    records it in the model graph and carries it into the call context, so a
    model called without `training` (Keras's ONNX export does that) runs every
    BatchNormalization after it on batch statistics.
    """

    def __init__(self, height: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, x: Any) -> Any:
        return keras.ops.image.resize(x, (self.height, self.width), interpolation="bilinear")

    def compute_output_shape(self, shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (shape[0], self.height, self.width, shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "height": self.height, "width": self.width}
