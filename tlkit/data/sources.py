"""Data sources: where images come from, behind one registry; what they mean is the task's.

A source kind is a prefix (`tfds:NAME`, `builtin:shapes/CONFIG`; a plain path is a
folder or file) and a function that finds the data. The task (any object with the
`folder`, `tfds` and `builtin` methods of `tlkit.tasks.base.Task`) reads it in its own
layout: class folders, images + masks, a CSV of labels, the TFDS features it needs.
Adding a kind of source is one `register_source` entry.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from tlkit.data.bundle import DataBundle
from tlkit.errors import TlkitError

SourceFn = Callable[[str, Any, int, Any, bool], DataBundle]  # (rest, data section, seed, task, progress)
SOURCES: dict[str, SourceFn] = {}


def register_source(prefix: str) -> Callable[[SourceFn], SourceFn]:
    """Register a source for `prefix:REST` strings."""

    def wrap(fn: SourceFn) -> SourceFn:
        SOURCES[prefix] = fn
        return fn

    return wrap


def load_data(data: Any, seed: int, task: Any, progress: bool = True) -> DataBundle:
    """Resolve `data.source` through the registry and let `task` read it, then leave out `data.exclude`'s files."""
    bundle = _load(data, seed, task, progress)
    if getattr(data, "exclude", None):
        from tlkit.data.exclude import apply_exclude

        bundle = apply_exclude(bundle, data.exclude)
    return bundle


def require_source(data: Any) -> None:
    """A plain path that is not there fails now, before any download (the task's reader would only say it later)."""
    source = data.source.strip()
    prefix, sep, rest = source.partition(":")
    if rest.startswith("//") or (sep and len(prefix) > 1) or Path(source).exists():
        return
    raise TlkitError(f"data source '{source}' does not exist: give a folder of your images, tfds:NAME or builtin:shapes")


def _load(data: Any, seed: int, task: Any, progress: bool) -> DataBundle:
    """A plain path is the task's folder layout; `prefix:REST` goes to the registered source."""
    source = data.source.strip()
    prefix, sep, rest = source.partition(":")
    if rest.startswith("//"):  # a URL (gs://, s3://, ram://): a folder read through tf.io.gfile
        return task.folder(source, data, seed, progress)
    if sep and prefix in SOURCES:
        return SOURCES[prefix](rest, data, seed, task, progress)
    if sep and len(prefix) > 1 and not Path(source).exists():
        close = difflib.get_close_matches(prefix, list(SOURCES), n=1)
        hint = f" Did you mean '{close[0]}:{rest}'?" if close else ""
        raise TlkitError(
            f"unknown data source kind '{prefix}:' in '{source}'. Use a folder path, "
            f"{', '.join(p + ':NAME' for p in SOURCES)}.{hint}"
        )
    return task.folder(source, data, seed, progress)


@register_source("tfds")
def tfds_source(name: str, data: Any, seed: int, task: Any, progress: bool = True) -> DataBundle:
    """Any TFDS dataset whose features the task can read."""
    from tlkit.data.tfds import prepare_builder

    return task.tfds(prepare_builder(name, data.tfds_data_dir), name, data, seed)


@register_source("builtin")
def builtin_source(name: str, data: Any, seed: int, task: Any, progress: bool = True) -> DataBundle:
    """The generated shapes dataset: `builtin:shapes`, `builtin:shapes/tiny`, `builtin:shapes/multi`."""
    from tlkit.data import shapes

    dataset, _, config = (name or "shapes").partition("/")
    if dataset != "shapes":
        raise TlkitError(f"unknown built-in dataset '{dataset}': the built-in dataset is 'builtin:shapes[/CONFIG]'")
    configs = [c.name for c in shapes.TlkitShapes.BUILDER_CONFIGS]
    if config and config not in configs:
        raise TlkitError(f"unknown built-in config 'shapes/{config}'; configs: {', '.join(configs)}")
    builder = shapes.prepare(config or "default", data_dir=data.tfds_data_dir)
    return task.builtin(builder, f"builtin:{name}", data, seed)
