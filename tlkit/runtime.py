"""Where and how a run executes (the recipe's `runtime` section): small functions, one per setting.

None of these change what a recipe means; they change how reproducibly (or,
later, where and in which precision) it runs. `finetune` calls them once,
before any model or dataset exists.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_and_determinism(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic`, make every op deterministic too.

    Determinism (`tf.config.experimental.enable_op_determinism`) is what lets an
    interrupted and resumed run end with the same weights as an uninterrupted
    one: parallel tf.data maps with random ops then run in a fixed order. It is
    slower, and once on it stays on for the rest of the Python process (TF has no
    public switch back).
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
