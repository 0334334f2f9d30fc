"""Test-time augmentation: the mean of the probabilities of an image and of its mirror image.

One forward pass over `[images; flipped images]`, then the two halves averaged. A task
whose output is per pixel (`Task.per_pixel`, e.g. masks) gets the flipped half's output
flipped back first, so each pixel averages with itself. Works on NumPy arrays and on
tensors inside a SavedModel signature alike (TensorFlow ops only).
"""

from __future__ import annotations

from typing import Any, Callable

#: the views averaged, in order: what metadata.json and the model card record
VIEWS = ("identity", "horizontal_flip")
WIDTH_AXIS = 2  # images [B, H, W, 3]; per-pixel outputs [B, H, W, C]


def averaged(probabilities: Callable[[Any], Any], per_pixel: bool) -> Callable[[Any], Any]:
    """images -> the mean of `probabilities` over `VIEWS` (a tensor)."""
    import tensorflow as tf

    def tta(images: Any) -> Any:
        images = tf.convert_to_tensor(images)
        n = tf.shape(images)[0]
        both = tf.convert_to_tensor(probabilities(tf.concat([images, tf.reverse(images, [WIDTH_AXIS])], axis=0)))
        plain, mirrored = both[:n], both[n:]
        if per_pixel:
            mirrored = tf.reverse(mirrored, [WIDTH_AXIS])
        return (plain + mirrored) / 2.0

    return tta


def describe() -> dict[str, Any]:
    """What an export with TTA inside records in metadata.json."""
    return {"views": list(VIEWS), "mean_of": "probabilities"}
