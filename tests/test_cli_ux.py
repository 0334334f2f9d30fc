"""A quick, quiet start: commands print only what tlkit says, and the light ones never import TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tlkit import tfimport, tflogs

# what TensorFlow 2.21 wrote on this machine before tlkit caught it (one of each kind)
TF_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796179695.969389    5925 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1796179784.188898    7388 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "2026-12-02 02:48:33.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796179696.231350    5925 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU "
    "instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
]


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in {**os.environ, **env}.items() if k != tflogs.ENV or env.get(k)},
    )


LIGHT = [["backbones"], ["--help"], ["predict", "--help"], ["export", "--format", "nope", "run"],
         ["predict", "no/such/export", "photo.jpg"], ["recipe", "quickstart"]]


def test_light_commands_and_argument_errors_never_import_tensorflow():
    code = (
        "import sys\nfrom tlkit.cli import cli\n"
        f"for args in {LIGHT!r}:\n"
        "    try:\n        cli(args, prog_name='tlkit')\n    except SystemExit as e:\n        code = e.code\n"
        "    heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "    print('IMPORTED', heavy, 'EXIT', code, args, file=sys.stderr)\n"
    )
    proc = _fresh(code)
    assert proc.stderr.count("IMPORTED [] EXIT") == len(LIGHT), proc.stderr
    assert "EXIT 2 ['predict', 'no/such/export'" in proc.stderr  # a one-line error, without loading a model
    assert not [line for line in proc.stderr.splitlines() if tflogs.is_noise(line)]


def test_the_cli_imports_tensorflow_without_garbage_collections_and_quietly():
    """The collector stays out of TensorFlow's import (a second of start-up) and is back on after it."""
    code = (
        "import gc, sys\nfrom tlkit import cli, tfimport, tflogs\n"
        "runs = []\ngc.callbacks.append(lambda phase, info: phase == 'start' and runs.append(info['generation']))\n"
        "tfimport.around_import('gc', tfimport.without_gc)\n"
        "import tensorflow\nduring = len(runs)\nobjects = [[i] for i in range(100_000)]\n"
        "print('DURING', during, 'AFTER', len(runs) - during, 'ON', gc.isenabled(), file=sys.stderr)\n"
    )
    proc = _fresh(code)
    assert "DURING 0 AFTER " in proc.stderr and "ON True" in proc.stderr, proc.stderr
    assert int(proc.stderr.split("AFTER ")[1].split()[0]) > 0  # later garbage is still collected
    assert not [line for line in proc.stderr.splitlines() if tflogs.is_noise(line)]  # both wraps ran


def test_backbones_prints_the_registry_table_with_parameter_counts():
    from tlkit.models.backbones import list_backbones

    proc = subprocess.run([sys.executable, "-m", "tlkit.cli", "backbones"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [spec.name for spec in list_backbones()]
    assert "3,228,864" in next(line for line in lines if line.startswith("mobilenet "))


@pytest.mark.parametrize("line", TF_LINES)
def test_tensorflow_start_up_lines_are_recognised(line):
    assert tflogs.is_noise(line)


@pytest.mark.parametrize("line", ["error: 'x' is not an export", "Predicting  [####]  3/10", "E0000 is a name", "I think so"])
def test_other_lines_are_not(line):
    assert not tflogs.is_noise(line)


def test_caught_stderr_gives_back_everything_but_tensorflow_lines(capfd):
    with tflogs.caught_stderr():
        os.write(2, ("\n".join([TF_LINES[0], "a warning of ours", TF_LINES[2], ""])).encode())
    assert capfd.readouterr().err == "a warning of ours\n"
    with pytest.raises(ImportError), tflogs.caught_stderr():  # a failed import keeps every line, to diagnose it
        os.write(2, (TF_LINES[1] + "\n").encode())
        raise ImportError("broken")
    assert capfd.readouterr().err == TF_LINES[1] + "\n"


def test_tf_logs_env_and_flag_leave_tensorflow_alone(monkeypatch):
    monkeypatch.setenv(tflogs.ENV, "1")
    monkeypatch.delenv(tflogs.LEVEL, raising=False)
    tflogs.install()
    assert tflogs.LEVEL not in os.environ and not tfimport.hooked(tflogs.HOOK)
    monkeypatch.setenv(tflogs.ENV, "0")
    assert not tflogs.shown()
    from click.testing import CliRunner

    from tlkit.cli import cli

    monkeypatch.delenv(tflogs.ENV)
    assert CliRunner().invoke(cli, ["--tf-logs", "recipe", "quickstart"]).exit_code == 0
    assert tflogs.shown()  # and so in every process the command starts (local-workers)
