"""`model.input_size: auto`: the input size a backbone should take for these images.

A pretrained backbone is most accurate near its native size (224 for MobileNet),
but upsampling small images past their own resolution adds no detail and costs
time quadratically in the side. So the rule is: the images' median short side
(what most images have), rounded to a size the backbone supports, never more
than a little above the images (`max_upsample`), never above the native size
and never below the backbone's minimum. Pure arithmetic on plain numbers, so the
data scan, `tlkit doctor` and the tests can all ask it without building anything.
"""

from __future__ import annotations

import statistics
from typing import Iterable, NamedTuple, Sequence

STEP = 32  # stride-32 networks: a multiple of 32 keeps every feature map whole
FINE_STEP = 8  # below one stride step (from-scratch stacks take 8-31 px)
MAX_UPSAMPLE = 1.15  # at most 15% above the images' own size (rounding up 120 -> 128 is fine, 64 -> 96 is not)


class AutoSize(NamedTuple):
    """The chosen side in pixels and one line saying why (printed in the run summary)."""

    size: int
    reason: str


def median_short_side(image_sizes: Iterable[tuple[int, int]]) -> int | None:
    """Median of min(height, width) over the images (None when there are none)."""
    sides = [min(int(h), int(w)) for h, w in image_sizes if h and w]
    return int(statistics.median(sides)) if sides else None


def candidate_sizes(native: int, min_size: int, supported: Sequence[int] | None = None, step: int = STEP) -> list[int]:
    """The sizes to choose from: `supported` when the backbone lists them, else multiples of `step` up to native
    (and of 8 below `step`, for backbones that take such small inputs)."""
    if supported:
        sizes = sorted({int(s) for s in supported if min_size <= int(s) <= native})
        if sizes:
            return sizes
    fine = [s for s in range(FINE_STEP, step, FINE_STEP) if min_size <= s <= native]  # tiny images, tiny networks
    first = max(step, -(-min_size // step) * step)
    sizes = fine + list(range(first, native + 1, step))
    if not sizes or sizes[-1] != native:
        sizes.append(native)
    return sorted(set(s for s in sizes if s >= min_size)) or [max(native, min_size)]


def auto_input_size(
    image_sizes: Iterable[tuple[int, int]],
    native: int,
    min_size: int,
    supported: Sequence[int] | None = None,
    max_upsample: float = MAX_UPSAMPLE,
    backbone: str = "the backbone",
) -> AutoSize:
    """The input size for images of `image_sizes` ((height, width) pairs) on a backbone of this native and minimum size.

    - median short side >= native: the native size (more pixels than the network was trained
      on buy little and cost quadratically);
    - smaller: the largest candidate size <= median * `max_upsample` (so 128 px images get 128,
      120 px images 128, 100 px images 96), but at least the backbone's minimum;
    - no sizes known: the native size.
    """
    sizes = candidate_sizes(native, min_size, supported)
    top = sizes[-1]
    median = median_short_side(image_sizes)
    if median is None:
        return AutoSize(top, f"{top} px: the native size of {backbone} (image sizes unknown)")
    if median >= top:
        return AutoSize(top, f"{top} px: the native size of {backbone} (median image short side {median} px)")
    fitting = [s for s in sizes if s <= median * max_upsample]
    if not fitting:
        return AutoSize(
            sizes[0],
            f"{sizes[0]} px: the smallest size {backbone} takes (median image short side {median} px is smaller)",
        )
    size = fitting[-1]
    return AutoSize(
        size,
        f"{size} px: the median image short side is {median} px, below the native {top} of {backbone} "
        f"(never more than {max_upsample:g}x the images)",
    )
