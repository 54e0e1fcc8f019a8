"""Reliability campaign, hostile guests (CI size): the VM stops or the guest sees the
architected error, with a clear reason; nothing else in the process notices.

The catalog (tools.faults.hostile) covers wild jumps, execution from MMIO, unmapped addresses
and the VMM stub page, undefined instructions, unaligned exclusive and atomic accesses, MMIO
holes, PSCI abuse, interrupt storms, guests that never halt and MMDS buffers outside RAM;
each guest is also saved for post-mortem, described and loaded back. test_vm_core.py has the
basic fault reports and PSCI return codes; the long run is `python -m tools.bench faults`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

from tools.faults import hostile
from tools.faults.corpus import scratch_directory
from tools.faults.outcome import Verdict
from vmm import StopReason
from vmm.native_fill import ENV_SWITCH

pytest.importorskip("keystone")

CATALOG = {g.name: g for g in hostile.catalog()}


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with scratch_directory("hostile-") as d:
        yield d


@pytest.fixture
def work(root: Path, request: pytest.FixtureRequest) -> Path:
    """A directory of this test's own (its post-mortem snapshots)."""
    d = root / str(abs(hash(request.node.name)))
    d.mkdir()
    return d


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_hostile_guest(name: str, work: Path) -> None:
    trial = hostile.run_guest(CATALOG[name], work)
    assert trial.ok, str(trial)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_hostile_guest_on_the_python_paths(name: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same catalog on the reference paths (Python TLB fill and system registers,
    Unicorn's count=): they must end each guest the same way."""
    monkeypatch.setenv(ENV_SWITCH, "0")
    trial = hostile.run_guest(CATALOG[name], work)
    assert trial.ok, str(trial)


def test_random_jumps_and_random_programs(work: Path) -> None:
    guests = list(hostile.random_guests(random.Random(5), jumps=10, soups=4, budget=10_000))
    trials = [hostile.run_guest(g, work) for g in guests]
    assert [str(t) for t in trials if not t.ok] == []


def test_other_vms_in_the_process_are_unaffected(work: Path) -> None:
    bystander = hostile.Bystander()
    names = ["execute from MMIO (UART) (no vector table)", "timer interrupt storm", "unaligned LDXR (vector table)",
             "SYSTEM_RESET from a secondary", "MMDS buffers outside RAM", "never halts"]
    for name in names:
        assert hostile.run_guest(CATALOG[name], work, bystander).ok
    trial = bystander.check()
    assert trial.ok and bystander.slices == len(names), str(trial)


def test_the_checks_can_fail(work: Path) -> None:
    """A guest that powers off where a fault is expected, or whose handler sees the wrong
    syndrome, is reported."""
    jump = CATALOG["jump to a hole (vector table)"]
    wrong_stop = hostile.HostileGuest("expects a fault", jump.source, (StopReason.FAULT,))
    assert hostile.run_guest(wrong_stop, work).verdict is Verdict.VIOLATION
    wrong_view = hostile.HostileGuest("expects a PC alignment fault", jump.source, (StopReason.POWER_OFF,),
                                      check=hostile._architected(0x22))
    trial = hostile.run_guest(wrong_view, work)
    assert trial.verdict is Verdict.VIOLATION and "saw the wrong thing" in trial.detail
    assert hostile.unclear("vCPU 0 fault at pc=0x9000000: emulation stopped: Unhandled CPU exception")


def test_a_faulted_vm_is_described_for_post_mortem(work: Path) -> None:
    from snapshot.describe import describe
    from vmm.persist import MACHINE
    from vmm.machine import MicroVM

    guest = CATALOG["jump to a hole (no vector table)"]
    assert hostile.run_guest(guest, work).ok  # includes the save/describe/load round trip
    info = describe(work / "post-mortem", verify=True, schema=MACHINE)
    assert info["pair_ok"] is True and info["kind"] == "full"
    restored = MicroVM.load_snapshot(work / "post-mortem")
    assert restored.stopped is StopReason.FAULT
    assert "instruction fetch from unmapped guest physical address 0x70000000" in restored.scheduler.stop_detail
