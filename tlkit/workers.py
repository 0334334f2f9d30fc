"""Several workers on this machine: the local proof of a multi-worker run.

`run_local_workers(2, ["finetune", "recipe.yaml"])` starts two `tlkit` processes
whose TF_CONFIG places them in one cluster on free loopback ports, exactly as
several machines would be configured (each with its own TF_CONFIG). Worker 0
is the chief: it writes the run directory and the export.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Sequence

from tlkit.errors import TlkitError


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports nobody listens on now (held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(n: int, host: str = "127.0.0.1") -> list[dict]:
    """One TF_CONFIG per worker of an n-worker cluster on this machine."""
    if n < 1:
        raise TlkitError(f"the number of workers must be at least 1, got {n}")
    addresses = [f"{host}:{port}" for port in free_ports(n, host)]
    return [{"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}} for i in range(n)]


def _relay(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


def _stop(procs: list[subprocess.Popen], grace: float = 30.0) -> None:
    """SIGTERM (training stops at the last finished epoch), then SIGKILL for a worker stuck in a collective."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_local_workers(n: int, args: Sequence[str], host: str = "127.0.0.1") -> int:
    """Run `tlkit ARGS` as n workers of one cluster; return 0 when all succeed, else the first failure's code.

    When one worker fails the others cannot finish (every step waits for all of
    them), so they are stopped. Ctrl-C stops them all the way SIGTERM does: at
    the last finished epoch, resumable with `--resume`.
    """
    if not args:
        raise TlkitError("give the tlkit command the workers run, e.g. `tlkit local-workers 2 finetune RECIPE`")
    procs: list[subprocess.Popen] = []
    threads = []
    for i, config in enumerate(local_cluster(n, host)):
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tlkit.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        procs.append(proc)
        thread = threading.Thread(target=_relay, args=(proc, f"[worker{i}] "), daemon=True)
        thread.start()
        threads.append(thread)
    failure = 0
    try:
        pending = set(range(n))
        while pending:
            for i in sorted(pending):
                try:
                    code = procs[i].wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                pending.discard(i)
                if code != 0 and not failure:
                    failure = code
                    print(f"[local-workers] worker{i} exited with {code}; stopping the others", flush=True)
                    _stop([procs[j] for j in pending])
    except KeyboardInterrupt:
        _stop(procs)
        failure = failure or 130
    for thread in threads:
        thread.join(timeout=5)
    return failure
