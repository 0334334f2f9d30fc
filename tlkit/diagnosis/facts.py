"""Dataset facts for the summary: classes and balance, image sizes, aspects, modes, and mask statistics."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tlkit.diagnosis.passes import Scanned

_SHOWN = 5  # most common sizes / examples listed


def class_facts(scan: Scanned, class_names: list[str], mask_target: bool) -> dict[str, Any]:
    """Images per class (multi-label: images carrying each label) and the largest / smallest class ratio."""
    if mask_target or scan.size == 0:
        return {}
    labels = scan.labels
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels.astype(np.int64), minlength=len(class_names))
    per_class = {name: int(c) for name, c in zip(class_names, counts)}
    smallest = min(per_class.values())
    imbalance = round(max(per_class.values()) / smallest, 2) if smallest else None
    return {"classes": per_class, "imbalance": imbalance}


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def image_facts(scan: Scanned) -> dict[str, Any]:
    """Sizes and aspect ratios (width / height) of the decoded images."""
    if scan.size == 0:
        return {}
    sizes = Counter(f"{w}x{h}" for w, h in zip(scan.width.tolist(), scan.height.tolist()))
    aspect = scan.width / np.maximum(scan.height, 1)
    return {
        "width": _spread(scan.width),
        "height": _spread(scan.height),
        "aspect_ratio": {k: round(v, 3) for k, v in _spread(aspect).items()},
        "most_common_sizes": dict(sizes.most_common(_SHOWN)),
        "distinct_sizes": len(sizes),
    }


def file_facts(paths: list[str] | None) -> dict[str, Any]:
    """Stored format and colour mode of each file, from its header only (no pixels decoded)."""
    if not paths:
        return {}
    from PIL import Image

    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    for path in paths:
        try:
            with Image.open(path) as im:  # lazy: reads the header
                modes[im.mode] += 1
                formats[im.format or "unknown"] += 1
        except Exception:  # noqa: BLE001 - PIL refuses some files TensorFlow reads (and the reverse)
            modes["unknown"] += 1
            formats["unknown"] += 1
    return {"modes": dict(modes.most_common()), "formats": dict(formats.most_common())}


def mask_facts(scan: Scanned, class_names: list[str], lookup: np.ndarray | None, skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """Per-class pixel shares, values outside the mapping, masks of one value only, masks of another size."""
    hist = scan.masks["mask_hist"].astype(np.int64)
    total = hist.sum(axis=0)
    present = [int(v) for v in np.flatnonzero(total)]
    single = np.count_nonzero(hist, axis=1) <= 1
    mismatch = (scan.masks["mask_height"] != scan.height) | (scan.masks["mask_width"] != scan.width)
    out: dict[str, Any] = {"values": {str(v): int(total[v]) for v in present}}
    if lookup is not None:
        shares = np.zeros(len(class_names))
        for v in present:
            if 0 <= lookup[v] < len(class_names):
                shares[lookup[v]] += total[v]
        out["pixel_shares"] = {n: round(float(s / max(total.sum(), 1)), 4) for n, s in zip(class_names, shares)}
        unexpected = [v for v in present if lookup[v] < 0]
    else:
        unexpected = []
    refused = [p for p, why in skipped if "mask values" in why]  # a folder source refuses such masks when it scans
    out["unexpected_values"] = {"values": unexpected, "masks_refused": len(refused), "examples": refused[:_SHOWN]}
    out["empty_masks"] = {"count": int(single.sum()), "examples": [scan.paths[i] for i in np.flatnonzero(single)[:_SHOWN]]}
    out["size_mismatches"] = {"count": int(mismatch.sum()), "examples": [scan.paths[i] for i in np.flatnonzero(mismatch)[:_SHOWN]]}
    return out
