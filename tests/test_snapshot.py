"""Snapshots of running guests: run(N + M) == run(N) -> save -> load -> run(M), byte for byte."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot.errors import (
    CrcMismatchError,
    IncompatibleError,
    MemoryFileMismatchError,
    MissingParentError,
    ParentMismatchError,
    SnapshotError,
)
from snapshot.describe import describe
from vmm.persist import MACHINE
from vmm import MicroVM, StopReason, VmConfig
from vmm.testing import assert_vms_equal

Q = 2_000  # quantum of every VM here; pauses land on multiples of it

GUESTS = {
    "smp": VmConfig(guest="smp", vcpus=3, quantum=Q, track_dirty_pages=True, params={"iterations": 20_000}),
    "memwalk": VmConfig(guest="memwalk", quantum=Q, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 300}),
    "compute": VmConfig(guest="compute", quantum=Q, track_dirty_pages=True, params={"iterations": 60_000}),
    "mmds": VmConfig(guest="mmds", quantum=Q, track_dirty_pages=True),
    # Interrupts in flight and vCPUs asleep in WFI at the pause points:
    "ticker": VmConfig(guest="ticker", quantum=Q, track_dirty_pages=True, params={"period_ns": 6_000, "ticks": 12}),
    "ipi": VmConfig(guest="ipi", vcpus=3, quantum=Q, track_dirty_pages=True, params={"rounds": 40}),
}


MMDS_DATA = {"latest": {"meta-data": {"instance-id": "i-123", "zone": "z"}}}


def _mmds_data(name: str) -> dict | None:
    return MMDS_DATA if name == "mmds" else None


def _fresh(name: str) -> MicroVM:
    vm = MicroVM(GUESTS[name])
    if name == "mmds":
        vm.mmds.put(MMDS_DATA)
    return vm


def _reference(name: str, total: int) -> tuple[str, bytes, StopReason]:
    vm = _fresh(name)
    r = vm.run(total)
    return vm.state_digest(), vm.console_output, r.reason


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(GUESTS)),
    steps=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    tail=st.integers(0, 40),
    backend=st.sampled_from(["copy", "mmap"]),
    diffs=st.booleans(),
)
def test_restored_vm_continues_bit_for_bit(tmp_path, name: str, steps: list[int], tail: int, backend: str, diffs: bool) -> None:
    directory = Path(os.path.join(tmp_path, f"{name}-{len(os.listdir(tmp_path))}"))
    directory.mkdir()
    total = (sum(steps) + tail) * Q
    digest, console, reason = _reference(name, total)

    vm = _fresh(name)
    printed = b""
    for i, n in enumerate(steps):
        vm.run(n * Q)
        kind = "diff" if diffs and i > 0 else "full"
        vm.save_snapshot(directory / f"s{i}", kind)
    printed = vm.console_output
    restored = MicroVM.load_snapshot(directory / f"s{len(steps) - 1}", backend)
    assert restored.state_digest() == vm.state_digest()
    r = restored.run(tail * Q)
    assert restored.state_digest() == digest
    assert printed + restored.console_output == console
    if reason is not StopReason.BUDGET:
        assert r.reason is reason


def test_a_snapshot_of_a_stopped_vm_stays_stopped(microvm, snapshot_dir) -> None:
    vm = microvm("hello")
    vm.run()
    vm.save_snapshot(snapshot_dir / "off")
    restored = microvm.restore(snapshot_dir / "off")
    assert_vms_equal(vm, restored, console=False)
    assert restored.stopped is StopReason.POWER_OFF
    assert restored.run().reason is StopReason.POWER_OFF


def test_diff_needs_tracking_and_a_base(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", params={"rounds": 0}))
    vm.run(10_000)
    with pytest.raises(IncompatibleError, match="dirty-page tracking"):
        vm.save_snapshot(tmp_path / "d", "diff")
    vm = MicroVM(VmConfig(guest="memwalk", track_dirty_pages=True, params={"rounds": 0}))
    with pytest.raises(IncompatibleError, match="earlier snapshot"):
        vm.save_snapshot(tmp_path / "d", "diff")
    assert not list(tmp_path.iterdir())  # nothing written


def test_diff_files_hold_only_dirty_pages_and_clear_the_bitmap_after_commit(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", track_dirty_pages=True, params={"rounds": 0, "writes": 16, "pattern": 3, "hot_pages": 4}))
    vm.run(200_000)
    full = vm.save_snapshot(tmp_path / "base")
    assert vm.dirty.count() == 0
    vm.run(200_000)
    dirty = vm.dirty.count()
    diff = vm.save_snapshot(tmp_path / "next", "diff")
    assert 0 < diff.pages_written == dirty < full.pages_written
    assert os.stat(tmp_path / "next.mem").st_blocks * 512 < 64 * 4096  # holes, not data
    assert vm.dirty.count() == 0


def test_chain_links_are_checked(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", track_dirty_pages=True, params={"rounds": 0}))
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "a")
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "b", "diff")
    other = MicroVM(VmConfig(guest="memwalk", track_dirty_pages=True, params={"rounds": 0}))
    other.run(300_000)
    other.save_snapshot(tmp_path / "z")
    with pytest.raises(ParentMismatchError):
        MicroVM.load_snapshot(tmp_path / "b", base=tmp_path / "z")
    os.rename(tmp_path / "a.snap", tmp_path / "gone.snap")
    with pytest.raises(MissingParentError):
        MicroVM.load_snapshot(tmp_path / "b")
    # The chain survives a move of both files to another directory.
    os.rename(tmp_path / "gone.snap", tmp_path / "a.snap")
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("a.snap", "a.mem", "b.snap", "b.mem"):
        os.rename(tmp_path / name, moved / name)
    assert_vms_equal(MicroVM.load_snapshot(moved / "b"), vm, console=False)


def test_corrupt_or_mismatched_files_are_refused_and_the_snapshot_survives(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", params={"rounds": 0}))
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "good")
    blob = (tmp_path / "good.snap").read_bytes()
    (tmp_path / "bad.snap").write_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
    os.link(tmp_path / "good.mem", tmp_path / "bad.mem")
    with pytest.raises(CrcMismatchError):
        MicroVM.load_snapshot(tmp_path / "bad")
    with pytest.raises(SnapshotError):
        describe(tmp_path / "bad", schema=MACHINE)
    # A memory file from another snapshot: caught by the pair digest.
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "later")
    (tmp_path / "mixed.snap").write_bytes(blob)
    os.link(tmp_path / "later.mem", tmp_path / "mixed.mem")
    with pytest.raises(MemoryFileMismatchError):
        MicroVM.load_snapshot(tmp_path / "mixed")
    assert describe(tmp_path / "mixed", verify=True, schema=MACHINE)["pair_ok"] is False
    assert describe(tmp_path / "good", verify=True, schema=MACHINE)["pair_ok"] is True
    assert MicroVM.load_snapshot(tmp_path / "good").clock == 100_000


def test_describe_reports_the_format_fields(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="smp", vcpus=2))
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "s")
    info = describe(tmp_path / "s.snap", schema=MACHINE)
    assert info["magic"] == "0x07101984aaaa0000"
    assert info["vcpus"] == 2 and info["kind"] == "full" and info["mmds_present"] is True
    assert info["memory_size"] == 128 * 1024 * 1024 and info["crc_ok"] is True
    assert info["pair_ok"] is None  # the memory file is not read without verify


@pytest.mark.parametrize("name", sorted(GUESTS))
@pytest.mark.parametrize("backend", ["copy", "mmap"])
def test_every_guest_continues_identically_after_a_diff_chain(microvm, snapshot_dir, name: str, backend: str) -> None:
    steps, tail = [3, 2, 4, 1, 2], 30  # a full snapshot and a chain of four diffs
    reference = microvm(GUESTS[name], mmds=_mmds_data(name))
    reference.run((sum(steps) + tail) * Q)
    vm = microvm(GUESTS[name], mmds=_mmds_data(name))
    for i, n in enumerate(steps):
        vm.run(n * Q)
        vm.save_snapshot(snapshot_dir / f"s{i}", "full" if i == 0 else "diff")
    restored = microvm.restore(snapshot_dir / f"s{len(steps) - 1}", backend)
    restored.run(tail * Q)
    assert_vms_equal(reference, restored, console=False)  # a readable diff if not
    assert vm.console_output + restored.console_output == reference.console_output
