"""Backbone input scaling as a Keras layer, so a saved model carries its own preprocessing.

Every tlkit model takes float32 RGB images in [0, 255]. Pretrained backbones were
trained on differently scaled inputs; `Preprocess(mode)` maps [0, 255] to what
the backbone expects, with the same arithmetic as the matching
`keras.applications.<module>.preprocess_input`. Being a layer (not a tf.data
map) it is part of the exported model, so serving cannot forget it.
"""

from __future__ import annotations

from typing import Any

import keras

MODES: dict[str, str] = {
    "tf": "x / 127.5 - 1 (MobileNet, MobileNetV2, ResNetV2, Xception, InceptionV3)",
    "torch": "x / 255, minus the ImageNet mean, divided by its std (DenseNet)",
    "caffe": "RGB -> BGR, minus the ImageNet BGR mean (ResNet50)",
    "none": "identity: the backbone includes its own preprocessing (EfficientNet, MobileNetV3, ConvNeXt)",
    "unit": "x / 255 (from-scratch stack)",
}

_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlkit")
class Preprocess(keras.layers.Layer):
    """Scale [0, 255] RGB images the way the backbone was trained (see `MODES`)."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode '{mode}'; expected one of: {', '.join(MODES)}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
            return keras.ops.flip(x, axis=-1) - mean
        return x  # "none"

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
