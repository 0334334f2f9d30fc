"""Backbone input normalization as a layer, so every saved model normalizes by itself."""

from __future__ import annotations

from typing import Any

import keras

MODES = ("tf", "torch", "caffe", "unit", "none")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlkit")
class Preprocess(keras.layers.Layer):
    """float32 RGB in [0, 255] -> what the backbone was trained on.

    tf: [-1, 1] (MobileNet/V2, ResNetV2, Xception, InceptionV3); torch: ImageNet
    mean/std (DenseNet); caffe: BGR minus mean (ResNet50); unit: [0, 1] (scratch);
    none: the backbone normalizes inside (EfficientNet, MobileNetV3, ConvNeXt).
    """

    def __init__(self, mode: str = "tf", **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode '{mode}'; one of {MODES}")
        self.mode = mode

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.array(_IMAGENET_MEAN)) / ops.array(_IMAGENET_STD)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.array(_CAFFE_MEAN_BGR)
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
