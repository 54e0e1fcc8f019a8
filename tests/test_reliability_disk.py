"""Reliability campaign, disk faults (CI size): failing writes, syncs and renames during save.

Injected faults (tools.faults.disk) need nothing special; the real ones (a full or read-only
tmpfs in a private mount namespace) need CAP_SYS_ADMIN and are skipped without it. The long
run is `python -m tools.bench faults`. test_commit.py has single-call failures of commit_pair
with a stand-in state; here real VM saves and rebases fail at every kind of call.
"""
from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Iterator

import pytest

from tools.faults import disk, scenarios
from tools.faults.corpus import build_corpus, scratch_directory
from tools.faults.outcome import Verdict


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with scratch_directory("disk-") as d:
        yield d


@pytest.fixture(scope="module")
def found(root: Path) -> dict[str, scenarios.Scenario]:
    corpus = build_corpus(root / "corpus")
    workdir = root / "scenarios"
    found = scenarios.save_scenarios(corpus, workdir)
    if scenarios.rebase_available():
        found += scenarios.rebase_scenarios(corpus, workdir)
    return {s.name: s for s in found}


@pytest.mark.parametrize("name", ["full over full", "diff over diff", "rebase into a new name"])
def test_a_failing_call_leaves_the_previous_snapshot_and_no_temporaries(found: dict[str, scenarios.Scenario], name: str) -> None:
    if name not in found:
        pytest.skip("snapshot.chain (rebase) is not there yet")
    s = found[name]
    rng = random.Random(name)
    counts = disk.count_calls(s)
    assert {"open", "pwrite", "fsync", "replace"} <= set(counts)
    picked = [f for f in disk.faults_for(counts, rng, per_call=1) if f.call in ("pwrite", "fsync", "replace") and (f.nth == 1 or f.call == "replace")]
    trials = [disk.run_injected(s, fault) for fault in picked]
    assert [str(t) for t in trials if not t.ok] == []
    outcomes = {tag for t in trials for tag in t.tags if tag.startswith("outcome:")}
    assert outcomes == {"outcome:refused", "outcome:committed"}  # both sides of the commit point


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_each_errno_is_named_in_a_one_line_snapshot_error(found: dict[str, scenarios.Scenario], code: int) -> None:
    s = found["full over full"]
    trial = disk.run_injected(s, disk.Fault("pwrite", 1, code))
    assert trial.ok and "outcome:refused" in trial.tags, str(trial)


def test_judge_flags_what_a_careless_save_would_do(found: dict[str, scenarios.Scenario]) -> None:
    """The checks can fail: an unnamed errno, a leftover temporary file and a non-snapshot
    exception are each reported."""
    s = found["full over full"]
    s.prepare()
    before = {n: (s.directory / n).stat().st_ino for n in sorted(p.name for p in s.directory.iterdir())}
    refused = {"raised": "SnapshotError", "message": "atomic commit failed: writing: no space", "errno": errno.ENOSPC, "committed": False}
    assert disk.judge(s, before, refused, errno.ENOSPC)[0] is Verdict.VIOLATION
    (s.directory / ".vm.mem.tmp-1-0123456789abcdef").write_bytes(b"x")
    named = dict(refused, message="atomic commit failed: writing: ENOSPC (No space left on device)")
    verdict, detail, _ = disk.judge(s, before, named, errno.ENOSPC)
    assert verdict is Verdict.VIOLATION and "temporary files left" in detail
    assert disk.judge(s, before, {"raised": "other", "message": "OSError"}, None)[0] is Verdict.WRONG_EXCEPTION


def test_a_real_full_or_read_only_filesystem(found: dict[str, scenarios.Scenario]) -> None:
    if not disk.real_filesystems_available():
        pytest.skip("needs CAP_SYS_ADMIN for a private tmpfs mount")
    s = found["full over full"]
    faults = disk.real_faults(s, steps=2)
    trials = [disk.run_real(s, fault) for fault in faults]
    assert [str(t) for t in trials if not t.ok] == []
    outcomes = {(t.tags[0], t.tags[1]) for t in trials}
    assert ("real:enospc", "outcome:refused") in outcomes  # the smallest size really ran out
    assert ("real:erofs", "outcome:refused") in outcomes
    assert ("real:efbig", "outcome:refused") in outcomes
