"""Copies: the same pixels (duplicate, conflicting_labels, leak) and the same photo altered (near_duplicate).

Exact copies are found by a fingerprint of the decoded pixels with the image size,
so byte-identical files and re-saved files with identical pixels both count. Near
copies are found by a 64-bit perceptual hash (DCT pHash of the grey image, as the
imagehash library computes it) within NEAR_MAX_DISTANCE differing bits; see
bench/doctor_flowers.py for how that threshold was measured.
"""

from __future__ import annotations

import numpy as np

from tlkit.diagnosis.findings import Finding
from tlkit.diagnosis.passes import Scanned

#: pHash bits that may differ between near copies. Measured on flowers_128 (bench/doctor_flowers.py hash, 1000
#: photos): copies resized to 50-80% or re-encoded at JPEG quality 40-90 differ in at most 2 bits (99%), copies
#: cropped by 5% a side in 10 (median: 40% of them are found); of 499,500 pairs of distinct photos none is
#: within 8 bits (the closest: 10)
NEAR_MAX_DISTANCE = 8
_BLOCK_ELEMENTS = 4_000_000  # rows x columns of one block of pairwise distances (memory stays flat)


def exact_groups(scan: Scanned) -> list[np.ndarray]:
    """Indices of images with identical pixels (and size), groups of two or more, in scan order."""
    if scan.size == 0:
        return []
    keys = np.stack([scan.pixel_key, scan.height.astype(np.uint64), scan.width.astype(np.uint64)], axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    groups = [g for g in np.split(order, bounds) if len(g) > 1]
    return sorted(groups, key=lambda g: int(g[0]))


def copy_findings(scan: Scanned, labels: list[str]) -> tuple[list[Finding], list[np.ndarray]]:
    """One finding per group of exact copies: conflicting_labels (different targets), leak (several splits),
    else duplicate. Also returns the groups."""
    findings = []
    groups = exact_groups(scan)
    for group in groups:
        if len(set(scan.target_key[group].tolist())) > 1:
            issue = "conflicting_labels"
        elif len(set(scan.splits[group].tolist())) > 1:
            issue = "leak"
        else:
            issue = "duplicate"
        findings.append(Finding(issue, [scan.paths[i] for i in group], [labels[i] for i in group], 1.0,
                                members=[int(i) for i in group]))
    return findings, groups


def hamming_pairs(codes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j whose 64-bit codes differ in at most `max_distance` bits; blockwise."""
    n = len(codes)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    pairs = []
    for start in range(0, n, rows):
        block = codes[start : start + rows]
        dist = np.bitwise_count(block[:, None] ^ codes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        keep = j > i + start
        pairs += [(int(a + start), int(b), int(dist[a, b])) for a, b in zip(i[keep], j[keep])]
    return pairs


def near_findings(scan: Scanned, labels: list[str], exact: list[np.ndarray],
                  max_distance: int = NEAR_MAX_DISTANCE) -> list[Finding]:
    """Groups of images within `max_distance` pHash bits, exact copies counted once (they are reported already)."""
    copies = {int(i) for g in exact for i in g[1:]}
    reps = np.array([i for i in range(scan.size) if i not in copies], np.int64)
    parent = list(range(len(reps)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    closest: dict[int, int] = {}
    for a, b, d in hamming_pairs(scan.phash[reps], max_distance):
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
        closest[a] = min(closest.get(a, 64), d)
        closest[b] = min(closest.get(b, 64), d)
    members: dict[int, list[int]] = {}
    for a in closest:
        members.setdefault(root(a), []).append(a)
    findings = []
    for group in members.values():
        idx = sorted(int(reps[a]) for a in group)
        best = min(closest[a] for a in group)
        findings.append(Finding("near_duplicate", [scan.paths[i] for i in idx], [labels[i] for i in idx],
                                1.0 - best / 64.0, members=idx))
    return findings
