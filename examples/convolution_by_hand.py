"""The ideas tlkit grew from, on a 5x5 image small enough to check by hand.

A 2x2 all-ones kernel slides over the image with stride 1 and no padding: each
output is the sum of the 2x2 patch under it (cross-correlation), and the output
side follows  out = floor((in + 2*pad - kernel) / stride) + 1 = (5 + 0 - 2) / 1 + 1 = 4.
ReLU then clips negatives to 0, and 2x2 max pooling (stride 2) keeps the largest
value of each block: 4 -> 2. The same three layers run in Keras and are read back
with tlkit's inspection API, which is what `tlkit inspect` prints and draws.

    python examples/convolution_by_hand.py [--out DIR]

It checks that Keras and the hand computation agree, prints the layer table
(receptive fields: 2, 2, 3), saves DIR/conv_by_hand.keras for
`tlkit inspect DIR/conv_by_hand.keras`, and writes DIR/conv_by_hand.png.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tlkit.inspection import draw_feature_maps, feature_maps, format_table  # noqa: E402

IMAGE = np.array(
    [
        [1, 2, 0, -1, 3],
        [0, 1, -2, 2, 1],
        [3, -1, 1, 0, -2],
        [2, 0, -3, 1, 1],
        [-1, 2, 1, -2, 0],
    ],
    dtype=np.float32,
)
KERNEL = np.ones((2, 2), np.float32)


def by_hand(image: np.ndarray, kernel: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Slide the kernel: every output is the weighted sum of the patch under it."""
    image = np.pad(image, pad)
    k = kernel.shape[0]
    side = (image.shape[0] - k) // stride + 1  # out = floor((in + 2*pad - kernel) / stride) + 1 (pad added above)
    out = np.zeros((side, side), np.float32)
    for i in range(side):
        for j in range(side):
            out[i, j] = (image[i * stride : i * stride + k, j * stride : j * stride + k] * kernel).sum()
    return out


def max_pool(x: np.ndarray, size: int = 2) -> np.ndarray:
    side = x.shape[0] // size
    return x[: side * size, : side * size].reshape(side, size, side, size).max(axis=(1, 3))


def build_model() -> keras.Model:
    inputs = keras.Input((5, 5, 1), name="image")
    x = keras.layers.Conv2D(1, 2, strides=1, padding="valid", use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    return keras.Model(inputs, x, name="conv_by_hand")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for conv_by_hand.keras and conv_by_hand.png")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)

    conv = by_hand(IMAGE, KERNEL)
    relu = np.maximum(conv, 0)
    pooled = max_pool(relu)
    print("image (5x5):\n", IMAGE.astype(int))
    print("kernel (2x2, all ones), stride 1, no padding: out = floor((5 + 2*0 - 2) / 1) + 1 = 4")
    print("convolution by hand (4x4):\n", conv.astype(int))
    print("ReLU:\n", relu.astype(int))
    print("2x2 max pooling, stride 2 (2x2):\n", pooled.astype(int))

    model = build_model()
    for layer, expected in (("conv", conv), ("relu", relu), ("pool", pooled)):
        got = feature_maps(model, IMAGE[..., None], layer)[..., 0]
        assert np.array_equal(got, expected), f"{layer}: Keras gives\n{got}\nby hand\n{expected}"
    print("Keras agrees with the hand computation at every layer.\n")
    print(format_table(model))

    path = out / "conv_by_hand.keras"
    model.save(path)
    draw_feature_maps(feature_maps(model, IMAGE[..., None], "conv"), out / "conv_by_hand.png", "conv: 2x2 all-ones kernel", IMAGE[..., None])
    print(f"\nsaved {path} (try: tlkit inspect {path}) and {out / 'conv_by_hand.png'}")


if __name__ == "__main__":
    main()
