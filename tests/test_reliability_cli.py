"""Reliability campaign, signal and CLI-input classes (CI size; the long run is
`python -m tools.bench faults`): every hostile input is one line and exit 2, decided at once;
Ctrl-C/SIGTERM pause at a round end that continues like an uninterrupted run."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from tools.faults import cli_input, signals
from tools.faults.outcome import Verdict

SEED = 15


@pytest.mark.parametrize("case", cli_input.fixed_cases(), ids=lambda c: c.name)
def test_fixed_cli_inputs(case: cli_input.CliCase, tmp_path: Path) -> None:
    trial = cli_input.run_case(case, tmp_path)
    assert trial.verdict is Verdict.SURVIVED, str(trial)


def test_random_cli_inputs(tmp_path: Path) -> None:
    failures = [str(t) for t in (cli_input.run_case(c, tmp_path) for c in cli_input.random_cases(random.Random(SEED), 40)) if not t.ok]
    assert failures == []


@pytest.mark.parametrize("case", cli_input.stdout_cases(), ids=lambda c: c[0])
def test_unwritable_stdout(case: tuple[str, str, int, str]) -> None:
    trial = cli_input.run_stdout_case(*case)
    assert trial.verdict is Verdict.SURVIVED, str(trial)


def test_signals_in_process() -> None:
    rng = random.Random(SEED)
    failures = [str(t) for t in (signals.run_inprocess(signals.draw(rng)) for _ in range(4)) if not t.ok]
    assert failures == []


def test_signals_to_the_cli(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    failures = [str(t) for t in (signals.run_cli(signals.draw(rng), tmp_path / str(i)) for i in range(2)) if not t.ok]
    assert failures == []
