"""The images' own sizes, for `model.input_size: auto`: a seam beside the scan, not a second scan.

A source that already knows its sizes (a scan that records them, a TFDS feature
of fixed shape) puts them in `bundle.info["image_sizes"]`; otherwise a seeded
sample of the training files is measured from their headers (Pillow reads only
the header, a few hundred files take well under a second), and a split without
files (TFDS) decodes its first few examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE = 256  # files whose headers are read: the median short side of 256 is stable to a few pixels
DECODED_SAMPLE = 32  # examples decoded when a split has no files


def header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from the file's header (Pillow reads no pixels; `gs://`-style paths through tf.io.gfile)."""
    from PIL import Image

    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f, Image.open(f) as image:
                width, height = image.size
        else:
            with Image.open(path) as image:
                width, height = image.size
    except Exception:  # a header Pillow cannot read is just not counted (the scan decides whether the file is usable)
        return None
    return int(height), int(width)


def sample_paths(paths: list[str], seed: int = 0, sample: int = SAMPLE) -> list[str]:
    """A seeded sample of `paths` (all of them up to `sample`), the same in every process."""
    if len(paths) <= sample:
        return list(paths)
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), sample, replace=False))]


def split_image_sizes(split: Any, seed: int = 0, sample: int = SAMPLE) -> list[tuple[int, int]]:
    """(height, width) of up to `sample` images of a `SplitData`, from file headers or, without files, decoded."""
    if split.paths:
        return [size for size in map(header_size, sample_paths(split.paths, seed, sample)) if size is not None]
    sizes = []
    for image, _ in split.dataset.take(min(sample, DECODED_SAMPLE)):
        sizes.append((int(image.shape[0]), int(image.shape[1])))
    return sizes


def image_sizes(bundle: Any, seed: int = 0) -> list[tuple[int, int]]:
    """The training images' sizes: what the source recorded (`info["image_sizes"]`), else a measured sample."""
    known = bundle.info.get("image_sizes")
    if known:
        return [(int(h), int(w)) for h, w in known]
    return split_image_sizes(bundle.splits["train"], seed)
