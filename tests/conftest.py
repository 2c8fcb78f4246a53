"""Shared fixtures: one trained digits baseline per test session (training it twice would double CI time)."""

import json

import pytest

from tdexport.cli import main


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
