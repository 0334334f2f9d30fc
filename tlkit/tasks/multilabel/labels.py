"""Multi-label data from a folder of images plus a CSV that lists each image's labels.

The CSV has a header row naming a path column and a labels column, e.g.::

    path,labels
    beach/001.jpg,sea;sky
    beach/002.jpg,"sand sky"
    street/003.jpg,

Labels are separated by `;` or whitespace; an empty labels cell is a negative image
(none of the classes). Paths are relative to the CSV's folder unless absolute.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError

PATH_COLUMNS: tuple[str, ...] = ("path", "image", "file", "filename")
LABEL_COLUMNS: tuple[str, ...] = ("labels", "label", "tags")
_SEPARATORS = re.compile(r"[;\s]+")
_EXPECTED = (
    f"expected a header row with a path column ({', '.join(PATH_COLUMNS)}) "
    f"and a labels column ({', '.join(LABEL_COLUMNS)}), e.g. 'path,labels'"
)


def _columns(header: list[str], where: str) -> tuple[int, int]:
    """Indices of the path and labels columns of the header row."""
    names = [h.strip().lower() for h in header]
    found = []
    for wanted in (PATH_COLUMNS, LABEL_COLUMNS):
        hits = [i for i, n in enumerate(names) if n in wanted]
        if not hits:
            raise TlkitError(f"{where}: header {header} has no {wanted[0]} column; {_EXPECTED}")
        found.append(hits[0])
    return found[0], found[1]


def _parse_rows(reader, csv_path: Path, path_col: int, label_col: int) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []
    first_line: dict[str, int] = {}
    folder = csv_path.parent
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{csv_path}:{line}"
        name = row[path_col].strip() if path_col < len(row) else ""
        if not name:
            raise TlkitError(f"{where}: row has no image path; put the image path in column {path_col + 1}")
        full = os.path.normpath(os.path.join(folder, os.path.expanduser(name)))
        if full in first_line:
            raise TlkitError(
                f"{where}: image {name} is listed twice (first on line {first_line[full]}); "
                "keep one row per image with all its labels"
            )
        first_line[full] = line
        cell = row[label_col] if label_col < len(row) else ""
        rows.append((full, sorted({t for t in _SEPARATORS.split(cell) if t})))
    return rows


def read_label_csv(path: str | os.PathLike) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Rows (absolute image path, its sorted distinct labels) and the sorted class names.

    Class order is sorted names, as everywhere in tlkit, so it does not depend on row order.
    Image files are not opened here: the decoder reports unreadable ones.
    """
    csv_path = Path(path).expanduser().absolute()
    if not csv_path.is_file():
        raise TlkitError(f"label CSV {csv_path} not found: give the path of a CSV file ({_EXPECTED})")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.reader(f, skipinitialspace=True)
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise TlkitError(f"{csv_path}:1: the file is empty; {_EXPECTED}")
        path_col, label_col = _columns(header, f"{csv_path}:{reader.line_num}")
        rows = _parse_rows(reader, csv_path, path_col, label_col)
    if not rows:
        raise TlkitError(f"{csv_path}: no image rows after the header; add one row per image: path,labels")
    classes = sorted({label for _, labels in rows for label in labels})
    if len(classes) < 2:
        raise TlkitError(
            f"{csv_path}: {len(classes)} class(es) in total ({', '.join(classes) or 'none'}); "
            "multi-label classification needs at least 2 classes, label more images"
        )
    return rows, classes


def multi_hot(label_lists: Sequence[Sequence[str]], class_names: Sequence[str]) -> np.ndarray:
    """float32 [N, C] with 1 where image n has class c: the model's training targets."""
    index = {name: i for i, name in enumerate(class_names)}
    out = np.zeros((len(label_lists), len(index)), dtype=np.float32)
    for n, labels in enumerate(label_lists):
        for label in labels:
            if label not in index:
                raise TlkitError(f"label '{label}' is not one of the classes ({', '.join(class_names)}); fix the label")
            out[n, index[label]] = 1.0
    return out


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded shuffle of row indices into train/val/test, each sorted, train never empty.

    Not stratified: with several labels per image there is no single class to stratify
    on; `unused_labels` catches a class that the shuffle left out of train.
    """
    if n < 1:
        raise TlkitError("no images to split: list at least one image in the label CSV")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise TlkitError(f"data.{name} {frac} is out of range: use a value in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise TlkitError("data.val_fraction + data.test_fraction must be below 1 to leave training images")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    n_test = min(n_test, max(n - 1 - n_val, 0))  # keep one training row: shrink test, then val
    n_val = min(n_val, n - 1 - n_test)
    return {
        "train": np.sort(order[n_val + n_test :]),
        "val": np.sort(order[:n_val]),
        "test": np.sort(order[n_val : n_val + n_test]),
    }


def unused_labels(multi_hot_train: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Classes that no training row has: the model could never learn them."""
    counts = np.asarray(multi_hot_train).reshape(-1, len(class_names)).sum(axis=0)
    return [name for name, count in zip(class_names, counts) if count == 0]
