"""Reliability campaign, saves over a VM's own chain (CI size): every save to every link of
chains of up to 3 snapshots, full and diff, from the run's VM and from VMs restored from each
link; no save may leave a snapshot unrestorable (tools.faults.saves)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tools.faults import saves
from tools.faults.corpus import scratch_directory

PLANS = list(saves.plans(max_links=3))


@pytest.fixture(scope="module")
def scratch() -> Path:
    with scratch_directory("saves-") as d:
        yield d


@pytest.mark.parametrize("plan", PLANS, ids=[f"{n}-{r}-{t}-{k}" for n, r, t, k in PLANS])
def test_no_save_leaves_a_snapshot_unrestorable(scratch: Path, plan: tuple[int, int | None, str, str]) -> None:
    trial = saves.run_trial(scratch / "case", *plan)
    assert trial.ok, str(trial)


def test_the_rule_refuses_the_issue_sequence() -> None:
    """A, B (diff), A (diff): refused; and the campaign covers both outcomes."""
    assert saves.refused(2, None, "s0", "diff")
    outcomes = {saves.refused(*plan) for plan in PLANS}
    assert outcomes == {True, False}
