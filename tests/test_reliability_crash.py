"""Reliability campaign, crash consistency (CI size): SIGKILL real VM saves and rebases.

The long run is `python -m tools.bench faults`; both run tools.faults.crash. test_commit.py
crashes commit_pair with a stand-in state at every call; here whole VM saves are killed at
random calls of every phase and at random times.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

from snapshot.envelope import encode_state
from snapshot.memfile import write_full
from vmm.persist import capture
from snapshot.links import snapshot_paths
from snapshot.plain import to_plain
from tools.faults import crash, scenarios
from tools.faults.corpus import Corpus, build_corpus, sample_vm, scratch_directory
from tools.faults.outcome import Verdict

PHASES_THAT_MATTER = ["memory-write", "state-write", "fsync", "rename"]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with scratch_directory("crash-") as d:
        yield d


@pytest.fixture(scope="module")
def corpus(root: Path) -> Corpus:
    return build_corpus(root / "corpus")


@pytest.fixture
def work(root: Path, request: pytest.FixtureRequest) -> Path:
    """A directory of this test's own, on the corpus's filesystem (hard links)."""
    d = root / request.node.name
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def trace() -> crash.Trace:
    return crash.Trace()


def _kill_each(found: list[scenarios.Scenario], trace: crash.Trace, seed: int, kills: int) -> list[crash.Trial]:
    """`kills` kills per scenario, the phases that matter taken in turn across scenarios,
    with one timed kill in the second scenario."""
    rng = random.Random(seed)
    trials = []
    for i, s in enumerate(found):
        crash.measure(s, trace)
        phases = PHASES_THAT_MATTER[i % 4 :] + PHASES_THAT_MATTER[: i % 4]
        points = list(crash.kill_points(s, rng, kills, timer_every=0, phases=phases))
        if i == 1:
            points += list(crash.kill_points(s, rng, 1, timer_every=1))
        trials += [crash.run_trial(s, kill, trace) for kill in points]
    return trials


def test_sigkill_during_save_loads_as_old_or_new(corpus: Corpus, trace: crash.Trace, work: Path) -> None:
    trials = _kill_each(scenarios.save_scenarios(corpus, work), trace, seed=1, kills=2)
    assert [str(t) for t in trials if not t.ok] == []
    killed_in = {tag.split(":", 1)[1] for t in trials for tag in t.tags if tag.startswith("phase:")}
    assert set(PHASES_THAT_MATTER) <= killed_in
    loaded = {tag for t in trials for tag in t.tags if tag.startswith("loaded:")}
    assert {"loaded:old", "loaded:nothing"} <= loaded


def test_sigkill_during_rebase_keeps_the_chain_and_the_old_output(corpus: Corpus, trace: crash.Trace, work: Path) -> None:
    if not scenarios.rebase_available():
        pytest.skip("snapshot.chain (rebase) is not there yet")
    trials = _kill_each(scenarios.rebase_scenarios(corpus, work), trace, seed=2, kills=2)
    assert [str(t) for t in trials if not t.ok] == []


def test_a_kill_lands_exactly_where_planned(corpus: Corpus, trace: crash.Trace, work: Path) -> None:
    s = scenarios.save_scenarios(corpus, work)[0]
    crash.measure(s, trace)
    rename = s.phases.index("rename") + 1
    trial = crash.run_trial(s, crash.KillPoint(at_call=rename, after=False), trace)
    assert trial.ok and "phase:rename" in trial.tags
    last = len(s.phases)  # after the last rename: the new snapshot is in place
    trial = crash.run_trial(s, crash.KillPoint(at_call=last, after=True), trace)
    assert trial.ok and "loaded:new" in trial.tags
    assert crash.run_in_child(s.action, crash.KillPoint(at_call=1), trace).ending == "killed"


def _torn_save(d: Path) -> None:
    """What squib does: overwrite the memory file in place, then the state file (no commit
    protocol). A kill in between leaves a mismatched pair."""
    vm = sample_vm(3)
    snap, mem = snapshot_paths(d / "vm")
    info = write_full(str(mem), vm.memory.view())
    snap.write_bytes(encode_state(to_plain(capture(vm, info))))  # not traced: builtin open


def test_the_campaign_catches_a_torn_pair(corpus: Corpus, trace: crash.Trace, work: Path) -> None:
    """The checks can fail: a save without the commit protocol, killed between its memory
    and state writes, is reported as lost data."""
    before = corpus.digests["base"]
    torn = scenarios.Scenario("torn save", work / "torn", {"base": "vm"}, corpus, lambda: None, "vm", before, "", copy=True)
    torn.action = lambda: _torn_save(torn.directory)
    crash.measure(torn, trace)
    trial = crash.run_trial(torn, crash.KillPoint(at_call=len(torn.phases), after=True), trace)
    assert trial.verdict is Verdict.LOST_DATA, str(trial)
    assert "vm does not load" in trial.detail and "does not match its state file" in trial.detail
