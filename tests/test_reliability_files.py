"""Reliability campaign, corrupted and hostile files (CI size): mutated state and memory files.

Every mutation of a real snapshot chain (tools.faults.mutate) must end in a SnapshotError or
an intact snapshot, for load, describe and verify alike; the long run (`python -m tools.bench
faults`) draws 10,000 cases and bounds their time and memory.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import resource
from pathlib import Path
from typing import Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot.errors import EncodingError, InvalidPathError, SnapshotError
from snapshot.describe import describe
from vmm.persist import MACHINE
from vmm.machine import MicroVM
from tools.faults import mutate
from tools.faults.child import call_in_child
from tools.faults.corpus import build_corpus, link_files, scratch_directory
from tools.faults.outcome import Verdict

CASES = 150  # hypothesis cases; with the per-family, boundary and regression cases ~250 files
# Bombs cost ~0.3 s of CPU each (a 10 MB state file decoded three times): they run in
# test_every_family_is_exercised and test_bombs_stay_within_bounded_memory instead.
HYPOTHESIS_FAMILIES = [f for f in mutate.FAMILIES if f != "bomb"]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with scratch_directory("files-") as d:
        yield d


@pytest.fixture(scope="module")
def info(root: Path) -> mutate.CorpusInfo:
    return mutate.load_info(build_corpus(root / "corpus"))


@pytest.fixture
def work(root: Path, request: pytest.FixtureRequest) -> Path:
    """A directory of this test's own, on the corpus's filesystem (hard links)."""
    d = root / request.node.name
    d.mkdir()
    return d


@settings(max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=True), family=st.sampled_from(HYPOTHESIS_FAMILIES))
def test_every_mutation_ends_in_a_snapshot_error_or_an_intact_snapshot(
    info: mutate.CorpusInfo, root: Path, rng: random.Random, family: str
) -> None:
    trial = mutate.run_case(info, mutate.draw(rng, info, family), root / "hypothesis-case")
    assert trial.ok, str(trial)


@pytest.mark.parametrize("family", mutate.FAMILIES)
def test_every_family_is_exercised(info: mutate.CorpusInfo, work: Path, family: str) -> None:
    rng = random.Random(family)
    trials = [mutate.run_case(info, mutate.draw(rng, info, family), work / "case") for _ in range(3)]
    assert [str(t) for t in trials if not t.ok] == []


def test_truncation_at_region_boundaries(info: mutate.CorpusInfo, work: Path) -> None:
    """Every 25th boundary here; the long run truncates at all of them."""
    cuts = list(mutate.truncations(info))
    assert len(cuts) > 1000
    trials = [mutate.run_case(info, m, work / "case") for m in cuts[::25]]
    assert [str(t) for t in trials if not t.ok] == []


def _bomb_loads_in_bounded_memory(info: mutate.CorpusInfo, d: Path, seed: int) -> list[str]:
    """In a child limited to 256 MiB more address space than it starts with: a bomb (or a
    huge declared length) in a state file, loaded, described and verified. Returns failures."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), resource.RLIM_INFINITY))
    rng = random.Random(seed)
    failures = []
    for family in ("bomb", "huge-length") * 3:
        trial = mutate.run_case(info, mutate.draw(rng, info, family), d)
        if not trial.ok:
            failures.append(str(trial))
    return failures


def test_bombs_stay_within_bounded_memory(info: mutate.CorpusInfo, work: Path) -> None:
    end = call_in_child(lambda: _bomb_loads_in_bounded_memory(info, work / "case", 3), time_limit=300)
    assert end.ending == "done", end.error
    assert end.result == []


def test_decode_memory_is_measured_and_bounded(info: mutate.CorpusInfo, work: Path) -> None:
    link_files(info.corpus.directory, work)
    n = 50_000  # empty arrays (~60 bytes each decoded), in arrays short enough to be decoded
    inner = 2_500
    (work / "flood.snap").write_bytes(
        mutate.seal(b"\xdc" + (n // inner).to_bytes(2, "big") + (b"\xdc" + inner.to_bytes(2, "big") + b"\x90" * inner) * (n // inner))
    )
    peak = mutate.decode_peak(work / "flood.snap")
    assert 20 * n < peak < mutate.DECODE_MEMORY_BOUND


def test_the_campaign_catches_silent_corruption(info: mutate.CorpusInfo, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks can fail: with memory digests not verified, a flipped bit in a memory file
    loads as a different state, which is reported as lost data."""
    import vmm.persist

    real = vmm.persist.read_into

    def unverified(src, ram, info, verify_digest=True, **kwargs):  # type: ignore[no-untyped-def]
        return real(src, ram, info, False, **kwargs)

    monkeypatch.setattr(vmm.persist, "read_into", unverified)
    flip = mutate.Mutation("bitflip", "base", "mem", "a bit in the image", lambda d: mutate._patch(d / "base.mem", [(4096, b"\x01")]))
    trial = mutate.run_case(info, flip, work / "case")
    assert trial.verdict is Verdict.LOST_DATA, str(trial)


# --- regressions found by the campaign ------------------------------------------------------
def _forge(d: Path, name: str, edit) -> None:  # type: ignore[no-untyped-def]
    path = d / f"{name}.snap"
    envelope = msgpack.unpackb(path.read_bytes()[:-8], raw=False)
    edit(envelope["data"])
    os.unlink(path)
    path.write_bytes(mutate.seal(msgpack.packb(envelope, use_bin_type=True)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data["devices"]["mmds"].update(status=2**64 - 1), "devices.mmds.status: expected int in 0..2**32-1"),
        (lambda data: data["devices"]["mmds"].update(data_json="{"), "MMDS data is not valid JSON"),
        (lambda data: data["devices"]["mmds"].update(version=0), "devices.mmds.version: expected int in 1..2"),
        (lambda data: data["scheduler"].update(stopped="exploded"), "scheduler.stopped: 'exploded' is not a stop reason"),
        (lambda data: data["scheduler"].update(quantum=0), "scheduler.quantum: expected int in 1..100000000"),
        (lambda data: data["scheduler"].update(quantum=-5), "scheduler.quantum: expected int in 1..100000000"),
        (lambda data: data["scheduler"].update(clock=-1), "scheduler.clock: expected int in 0..4611686018427387904"),
    ],
)
def test_a_forged_device_or_scheduler_state_is_an_encoding_error(info: mutate.CorpusInfo, work: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    """MmdsStateError escaped load_snapshot; a bad scheduler stop reason raised ValueError; a
    zero quantum loaded and then divided by zero, a negative one ran forever."""
    link_files(info.corpus.directory, work)
    _forge(work, "base", edit)
    with pytest.raises(EncodingError, match=re.escape(message)):
        MicroVM.load_snapshot(work / "base")
    with contextlib.suppress(EncodingError):  # describe checks the structure, not device state
        describe(work / "base", schema=MACHINE)


def test_a_parent_name_in_a_symlink_loop_is_an_invalid_path(info: mutate.CorpusInfo, work: Path) -> None:
    """Path.resolve raised RuntimeError for the parent of a diff that is a symlink loop."""
    link_files(info.corpus.directory, work)
    os.unlink(work / "base.snap")
    (work / "base.snap").symlink_to("base.snap")
    with pytest.raises(InvalidPathError, match="cannot resolve the parent's name"):
        MicroVM.load_snapshot(work / "top")
    with pytest.raises(SnapshotError):
        describe(work / "base", schema=MACHINE)
