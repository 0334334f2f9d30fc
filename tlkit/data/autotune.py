"""tf.data pipelines without the autotuning thread (TensorFlow 2.21 makes dropping an iterator wait on it).

Each iterator of a pipeline with autotuning on starts a thread that re-tunes it
on a period that doubles up to a minute; destroying the iterator can wait for the
rest of that thread's current sleep (seen with gdb: the main thread in
`RootDataset::Iterator::~Iterator`, the tuning thread in a timed wait in
`Model::OptimizeLoop`; `TF_CPP_VMODULE=model=2` shows the thread, woken by the
cancellation before it reads as cancelled, going back to sleep for the rest).
Keras drops its training iterator every epoch and its validation iterator
every validation pass, so on 2 cores a 5-epoch fit spent 0.8-4 s at each epoch
boundary doing nothing. Without autotuning, parallel maps
run at min(16, cores) calls and prefetch buffers still grow on demand.
`TLKIT_DATA_AUTOTUNE=1` keeps TensorFlow's autotuning.
"""

from __future__ import annotations

import os

import tensorflow as tf


def untuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data autotuning off, unless TLKIT_DATA_AUTOTUNE=1 asks to keep it."""
    if os.environ.get("TLKIT_DATA_AUTOTUNE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return ds
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
