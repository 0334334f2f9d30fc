"""Objects kept until the process ends because letting go of them stalls it, and an exit that skips them.

A multi-worker run feeds `fit()` through tf.distribute iterators. Dropping one
can block the dropping thread for seconds: tf.data's autotuning thread of each
of its pipelines can miss the cancellation's wake-up and sleep out the rest of
its period (which doubles with the iterator's age, up to a minute). On 2 workers:
a stall at most epoch ends and a 7-8 s one after `fit()`, out of a 30 s run.
Worker processes hold those iterators instead (`hold`), and the command line
ends such a process without tearing them down (`skip_teardown`). Kept apart
from `tlkit.distribute` so that the command line imports it without TensorFlow,
before anything registers an exit function (see `_end`).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

_HELD: dict[int, Any] = {}
_EXIT_CODE: list[int] = []


def hold(thing: Any) -> None:
    """Keep `thing` alive until the process ends."""
    _HELD[id(thing)] = thing


def skip_teardown(code: int | str | None) -> None:
    """The process is exiting with `code` (as `sys.exit` takes it): if anything is held, end it with that code
    once the exit functions registered after this module have run, before what is held is torn down."""
    _EXIT_CODE[:] = [1 if isinstance(code, str) else int(code or 0)]


@atexit.register
def _end() -> None:
    """Exit functions run last-registered first, so this one runs after those of everything imported later
    (autograph's removal of its temporary files, for one); then the process ends, skipping the rest of the
    shutdown (the older exit functions, and the objects' teardown). Whatever a run writes is closed by then."""
    if _HELD and _EXIT_CODE:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(_EXIT_CODE[0])
