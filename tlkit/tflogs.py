"""TensorFlow's start-up lines kept off the terminal, so a command prints only what tlkit says.

TensorFlow's C++ side writes its start-up lines straight to file descriptor 2, before
Python logging exists and, for the absl ones, whatever TF_CPP_MIN_LOG_LEVEL says:
`WARNING: All log messages before absl::InitializeLog() ...`, `I0000 ... Could not find
cuda drivers`, the CPU-instructions note, and `E0000 ... failed call to cuInit` when the
devices are first listed (a user reads that E-line as an error). `install()` sets
TF_CPP_MIN_LOG_LEVEL=2 (unless the user set it), and when `tensorflow` is first imported,
wherever that happens (tlkit.tfimport), it catches fd 2 during the import and the device listing and
writes back every caught line that is not TensorFlow's own (a failed import gets all of
them back). `TLKIT_TF_LOGS=1` (or `tlkit --tf-logs`) leaves every line alone.

TF_ENABLE_ONEDNN_OPTS is never touched: oneDNN off changes the float results (its own
start-up line says so), and the oneDNN line is an INFO line that TF_CPP_MIN_LOG_LEVEL hides.
This module imports nothing heavy: the CLI installs it before it knows whether a command
needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

from tlkit.tfimport import around_import, remove

ENV = "TLKIT_TF_LOGS"
HOOK = "tflogs"  # its name among the wraps of TensorFlow's import (tlkit.tfimport)
LEVEL = "TF_CPP_MIN_LOG_LEVEL"

#: lines TensorFlow (absl, TSL logging, the CPU-feature guard) writes on its own at start-up
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl: I0000 00:00:1796179771.780037 7388 file.cc:31] ...
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "  # TSL: 2026-12-02 02:48:33.123456: I tensorflow/...
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)

_USER_LEVEL = os.environ.get(LEVEL)  # what the user's environment said before tlkit set anything


def shown() -> bool:
    """Whether the user asked for TensorFlow's own lines (TLKIT_TF_LOGS set to anything but '' or 0)."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def is_noise(line: str) -> bool:
    return bool(NOISE.match(line))


def show_tf_logs() -> None:
    """`tlkit --tf-logs`: every TensorFlow line from here on (and in the processes this one starts)."""
    os.environ[ENV] = "1"
    uninstall()
    if _USER_LEVEL is None:
        os.environ.pop(LEVEL, None)
    else:
        os.environ[LEVEL] = _USER_LEVEL


def quiet_level() -> None:
    """TF_CPP_MIN_LOG_LEVEL=2 (warnings and errors only) unless the user set it or asked for TensorFlow's lines."""
    if not shown():
        os.environ.setdefault(LEVEL, "2")


def install() -> None:
    """Quiet TensorFlow's start-up in this process, unless the user asked for its lines or it is already imported."""
    if shown():
        return
    quiet_level()
    around_import(HOOK, lambda _module: caught_stderr())


def uninstall() -> None:
    remove(HOOK)


@contextlib.contextmanager
def caught_stderr() -> Iterator[None]:
    """Everything written to fd 2 inside goes to a file; afterwards the lines that are not TF noise are written back."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to catch (closed): nothing would reach a terminal anyway
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if failed or not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
