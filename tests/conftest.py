"""Shared fixtures: one trained digits baseline per test session (training it twice would double CI time)."""

import json
import os
import tempfile

import pytest

from tdexport.cli import main

# Layer timings measured by tests go to a throwaway cache, never the user's (shared by the whole session so
# identical geometries are timed once; subprocesses inherit it).
os.environ.setdefault("TDEXPORT_CACHE_DIR", tempfile.mkdtemp(prefix="tdexport-test-costs-"))


def run_cli(args):
    """Run the CLI in-process; returns its exit code."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


@pytest.fixture(name="cli", scope="session")
def cli_fixture():
    """The in-process CLI runner `run_cli`, as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    """A ResNet-20 trained 6 epochs on digits: (run directory, its metrics.json)."""
    out = tmp_path_factory.mktemp("train") / "base"
    assert run_cli(["train", "resnet20", "--data", "digits", "--epochs", "6", "--out", str(out), "-q"]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def _interrupt_after_first_epoch(args, metrics_path, env, timeout=300):
    """Run ``args`` and press Ctrl-C (SIGINT) once ``metrics_path`` records a finished epoch.

    Returns (exit code, stderr) of the interrupted process.
    """
    import signal
    import subprocess
    import time

    def default_sigint():
        # The child must turn SIGINT into KeyboardInterrupt, whatever this test process inherited or set:
        # a signal ignored or blocked here (libraries' helper processes do both) stays so across exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics_path.is_file() and json.loads(metrics_path.read_text())["epochs"]:
            break
        time.sleep(0.05)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if finished_first:
        err = f"[the process ended before it could be interrupted]\n{err}"
    return proc.returncode, err


@pytest.fixture(name="interrupt_after_first_epoch", scope="session")
def interrupt_fixture():
    """`_interrupt_after_first_epoch` as a fixture: (args, metrics.json path, env) -> (exit code, stderr)."""
    return _interrupt_after_first_epoch
