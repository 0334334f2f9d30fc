"""Quantization-aware fine-tuning: bounded ReLUs output int8 levels inside the block, and only there."""

from __future__ import annotations

import numpy as np
import pytest


def test_fake_quantized_rounds_relu6_outputs_to_int8_levels_and_restores_them():
    import keras

    from tlkit.qat import fake_quantized

    image = keras.Input((4,))
    hidden = keras.layers.ReLU(6.0)(keras.layers.Dense(8, kernel_initializer="ones")(keras.layers.BatchNormalization()(image)))
    model = keras.Model(image, keras.layers.Dense(2)(hidden))
    probe = keras.Model(model.input, model.layers[3].output)  # the ReLU6 output
    x = np.linspace(0, 1.7, 20, dtype=np.float32).reshape(5, 4)
    before = probe(x).numpy()
    with fake_quantized(model) as count:
        assert count == 1 and not model.layers[1].trainable  # BatchNorm frozen: the converter folds its moving statistics
        inside = probe(x).numpy()
    step = 6.0 / 255
    np.testing.assert_allclose(inside / step, np.round(inside / step), atol=1e-3)  # on the 256-level grid of [0, 6]
    assert np.abs(inside - before).max() <= step / 2 + 1e-6 and not np.allclose(inside, before)
    np.testing.assert_array_equal(probe(x).numpy(), before)  # restored
    assert model.layers[1].trainable


def test_qat_epochs_needs_int8(tiny_run):
    import tlkit

    with pytest.raises(tlkit.TlkitError, match="--qat-epochs needs --quantize int8"):
        tlkit.export(tiny_run, format="tflite", quantize="float16", qat_epochs=1)
