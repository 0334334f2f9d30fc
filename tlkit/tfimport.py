"""Work done around TensorFlow's first import in a process, wherever that import happens.

A command imports TensorFlow only if it needs it (`tlkit cache` does not), deep inside
what it calls, so the CLI hooks the import instead of importing TensorFlow itself:
`around_import(name, wrap)` runs the import (and its device listing) inside
`wrap(module)`, a context manager. tlkit.tflogs catches TensorFlow's start-up lines
this way, and `without_gc` keeps the cyclic garbage collector out of the import.
This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable, ContextManager, Iterator

Wrap = Callable[[Any], ContextManager[Any]]

_wraps: dict[str, Wrap] = {}


def around_import(name: str, wrap: Wrap) -> None:
    """Run TensorFlow's import inside `wrap(module)` (by `name`: a second call replaces it), unless it is imported."""
    if "tensorflow" in sys.modules:
        return
    _wraps[name] = wrap
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def remove(name: str) -> None:
    _wraps.pop(name, None)
    if not _wraps:
        _unhook()


def _unhook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def hooked(name: str) -> bool:
    """Whether TensorFlow's import, still to come, will run inside the wrap registered as `name`."""
    return name in _wraps and any(isinstance(f, _Finder) for f in sys.meta_path)


@contextlib.contextmanager
def without_gc(_module: Any = None) -> Iterator[None]:
    """The collector off during the import, then everything the import built frozen (`gc.freeze`).

    A command's imports (TensorFlow most of it) build about 380,000 objects that live as long as the
    process, and each full collection walks all of them again: nine during a CLI start-up on 2 cores,
    1.2 s of it; with TensorFlow's import wrapped, three and 0.08 s. Frozen, later collections skip them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class _Loader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow`, then lists its devices, inside every registered wrap."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        wraps = list(_wraps.values())
        _wraps.clear()
        with contextlib.ExitStack() as stack:
            for wrap in wraps:
                stack.enter_context(wrap(module))
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # TensorFlow's device start-up (and its cuInit line) inside too


class _Finder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once (through the other finders) and hands its import to `_Loader`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        _unhook()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec
