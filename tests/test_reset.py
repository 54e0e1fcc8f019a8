"""In-process reset: after `vm.reset_to(P)` and M more instructions, the VM equals a fresh
`load_snapshot` of P (saved to disk when P was taken) run for M, byte for byte."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asm import RESULTS, RESULTS_PTR, assemble, boot, result
from snapshot.dirty import DirtyBitmap
from snapshot.errors import IncompatibleError
from vmm.errors import GuestMemoryError
from vmm.reset import ResetPoint
from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB, RAM_BASE
from vmm.vcpu import Vcpu

Q = 2_000  # quantum of every VM here; pauses land on multiples of it
MEM = 32 * MIB

GUESTS = {
    "memwalk": VmConfig(guest="memwalk", mem_size=MEM, quantum=Q, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 300}),
    "smp": VmConfig(guest="smp", vcpus=3, mem_size=MEM, quantum=Q, track_dirty_pages=True, params={"iterations": 20_000}),
    "ticker": VmConfig(guest="ticker", mem_size=MEM, quantum=Q, track_dirty_pages=True, params={"period_ns": 6_000, "ticks": 12}),
    "ipi": VmConfig(guest="ipi", vcpus=3, mem_size=MEM, quantum=Q, track_dirty_pages=True, params={"rounds": 40}),
    "mmds": VmConfig(guest="mmds", mem_size=MEM, quantum=Q, track_dirty_pages=True),
    "echo": VmConfig(guest="echo", mem_size=MEM, quantum=Q, track_dirty_pages=True, params={"quit": 256}),
}
MMDS_DATA = {"latest": {"meta-data": {"instance-id": "i-123", "zone": "z"}}}


def _fresh(name: str) -> MicroVM:
    vm = MicroVM(GUESTS[name])
    if name == "mmds":
        vm.mmds.put(MMDS_DATA)
    if name == "echo":
        vm.uart.queue_input(b"hi")
    return vm


class _Reference:
    """(digest, console, stop reason) of a fresh load of the snapshot at `path` run for M."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[int, tuple[str, bytes, StopReason]] = {}

    def after(self, instructions: int) -> tuple[str, bytes, StopReason]:
        if instructions not in self._cache:
            vm = MicroVM.load_snapshot(self.path)
            r = vm.run(instructions)
            self._cache[instructions] = (vm.state_digest(), vm.console_output, r.reason)
        return self._cache[instructions]


# Work done between resets: run, host writes to RAM, MMDS data, UART input.
_work = st.one_of(
    st.tuples(st.just("run"), st.integers(1, 8)),
    st.tuples(st.just("poke"), st.integers(0, MEM // 4096 - 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("mmds"), st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2)),
    st.tuples(st.just("uart"), st.binary(min_size=1, max_size=8)),
)


def _do(vm: MicroVM, work: tuple) -> None:
    kind = work[0]
    if kind == "run":
        vm.run(work[1] * Q)
    elif kind == "poke":
        vm.memory.write(RAM_BASE + work[1] * 4096 + 100, work[2])
    elif kind == "mmds":
        vm.mmds.patch({"extra": work[1] or None})
    else:
        vm.uart.queue_input(work[1])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(GUESTS)),
    before=st.integers(0, 10),
    cycles=st.lists(st.tuples(st.lists(_work, max_size=5), st.integers(0, 12)), min_size=1, max_size=3),
)
def test_reset_continues_like_a_fresh_restore(tmp_path, name: str, before: int, cycles: list) -> None:
    directory = Path(os.path.join(tmp_path, f"{name}-{len(os.listdir(tmp_path))}"))
    directory.mkdir()
    vm = _fresh(name)
    vm.run(before * Q)
    vm.save_snapshot(directory / "p")
    point = vm.snapshot_point()
    at_point = vm.state_digest()
    reference = _Reference(directory / "p")
    for work, after in cycles:
        for w in work:
            _do(vm, w)
        vm.reset_to(point)
        assert vm.state_digest() == at_point
        assert vm.console_output == b""
        r = vm.run(after * Q)
        digest, console, reason = reference.after(after * Q)
        assert (vm.state_digest(), vm.console_output) == (digest, console)
        assert r.reason is reason


def test_repeated_resets_with_guest_work_give_the_same_run_every_time() -> None:
    vm = _fresh("memwalk")
    vm.run(3 * Q)
    point = vm.snapshot_point()
    outcomes = set()
    for extra in (0, 5, 1, 9):
        vm.run(extra * Q)  # different guest work (and dirty pages) before each reset
        vm.reset_to(point)
        vm.run(7 * Q)
        outcomes.add((vm.state_digest(), vm.console_output))
    assert len(outcomes) == 1
    plain = _fresh("memwalk")
    plain.run(3 * Q)
    printed = len(plain.console_output)
    plain.run(7 * Q)
    assert outcomes == {(plain.state_digest(), plain.console_output[printed:])}


def test_reset_after_power_off() -> None:
    vm = MicroVM(VmConfig(guest="hello", track_dirty_pages=True))
    point = vm.snapshot_point()
    first = vm.run()
    assert first.reason is StopReason.POWER_OFF and vm.stopped is StopReason.POWER_OFF
    printed, digest = vm.console_output, vm.state_digest()
    vm.reset_to(point)
    assert vm.stopped is None
    again = vm.run()
    assert again.reason is StopReason.POWER_OFF
    assert (vm.console_output, vm.state_digest()) == (printed, digest)


def test_reset_after_a_fault(tmp_path) -> None:
    source = "\n".join([RESULTS_PTR, "mov x1, #0", "loop:", "add x1, x1, #1", "str x1, [x28]", "cmp x1, #3000", "b.ne loop", ".word 0"])
    config = {"quantum": Q, "track_dirty_pages": True, "mem_size": MEM}
    vm = boot(tmp_path, source, **config)
    vm.run(Q)
    point = vm.snapshot_point()
    first = vm.run()
    assert first.reason is StopReason.FAULT and vm.fault is not None
    digest = vm.state_digest()
    vm.reset_to(point)
    assert vm.stopped is None and vm.fault is None and result(vm, 0) < 3000
    again = vm.run()
    assert again.reason is StopReason.FAULT and again.fault is not None
    assert again.fault.summary() == first.fault.summary()
    assert vm.state_digest() == digest


# A loop that calls `target` (alone in its own 4 KiB page) only once the host sets a flag.
_SMC_SOURCE = "\n".join(
    [
        RESULTS_PTR,
        "loop:",
        "ldr x1, [x28, #8]",
        "cbz x1, loop",
        "bl target",
        "str x0, [x28, #16]",
        "str xzr, [x28, #8]",
        "b loop",
        ".p2align 12",
        "target:",
        "mov x0, #1",
        "ret",
    ]
)


@pytest.mark.parametrize("drop", [True, False])
def test_code_changed_since_the_point_is_retranslated(tmp_path, monkeypatch, drop: bool) -> None:
    if not drop:  # the control: without dropping translations the test must fail
        monkeypatch.setattr(Vcpu, "drop_translations", lambda self, pages: None)
    vm = boot(tmp_path, _SMC_SOURCE, quantum=Q, track_dirty_pages=True, mem_size=MEM)
    vm.run(Q)
    point = vm.snapshot_point()
    target = RAM_BASE + len(assemble(_SMC_SOURCE)) - 8
    assert vm.memory.read_u32(target) == int.from_bytes(assemble("mov x0, #1"), "little")
    vm.memory.write(target, assemble("mov x0, #2"))  # new code, never executed before
    vm.memory.write_u64(RESULTS + 8, 1)
    vm.run(Q)
    assert result(vm, 2) == 2
    vm.reset_to(point)
    assert vm.memory.read_u32(target) == int.from_bytes(assemble("mov x0, #1"), "little")
    vm.memory.write_u64(RESULTS + 8, 1)
    vm.run(Q)
    assert result(vm, 2) == (1 if drop else 2)


def test_code_pages_are_known_only_after_a_fetch(tmp_path) -> None:
    vm = boot(tmp_path, _SMC_SOURCE, quantum=Q, track_dirty_pages=True, mem_size=MEM)
    vm.run(Q)
    v = vm.vcpus[0]
    loop_page, target_page, result_page = 0, 1, (RESULTS - RAM_BASE) // 4096
    known = v._code_bits[[loop_page, target_page, result_page]].tolist()
    assert known == [True, False, False]


def test_a_point_belongs_to_its_vm() -> None:
    a, b = _fresh("memwalk"), _fresh("memwalk")
    point = a.snapshot_point()
    with pytest.raises(IncompatibleError, match="another VM"):
        b.reset_to(point)
    a.reset_to(point)  # still fine for its own VM


def test_a_point_needs_dirty_tracking() -> None:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=MEM, params={"rounds": 0}))
    with pytest.raises(IncompatibleError, match="dirty-page tracking"):
        vm.snapshot_point()


def test_only_pages_dirtied_since_the_point_are_copied_back(monkeypatch) -> None:
    vm = _fresh("memwalk")
    vm.run(2 * Q)
    point = vm.snapshot_point()
    pages = [5000, 5001, 7000]
    for p in pages:
        vm.memory.write(RAM_BASE + p * 4096, b"\x5a")
    copied: list[list[int]] = []
    original = type(vm.memory).restore_pages
    monkeypatch.setattr(
        type(vm.memory), "restore_pages", lambda self, which, image, size: (copied.append(which.tolist()), original(self, which, image, size))
    )
    vm.reset_to(point)
    assert copied == [pages]
    assert vm.memory.read(RAM_BASE + 5000 * 4096, 1) == b"\x00"
    assert vm.dirty.count() == 0


def test_other_epochs_and_other_points_are_accounted_for(tmp_path) -> None:
    vm = _fresh("memwalk")
    vm.run(2 * Q)
    first = vm.snapshot_point()
    d1 = vm.state_digest()
    vm.run(3 * Q)
    vm.save_snapshot(tmp_path / "mid")  # an epoch a point did not start
    vm.run(2 * Q)
    second = vm.snapshot_point()
    d2 = vm.state_digest()
    vm.memory.write(RAM_BASE + 6000 * 4096, b"\x01")
    vm.start_dirty_epoch()
    vm.run(Q)
    vm.reset_to(first)
    assert vm.state_digest() == d1
    vm.run(4 * Q)
    vm.reset_to(second)
    assert vm.state_digest() == d2
    vm.reset_to(first)
    assert vm.state_digest() == d1


def test_a_diff_saved_after_a_reset_restores_the_point(tmp_path) -> None:
    vm = _fresh("memwalk")
    vm.run(2 * Q)
    vm.save_snapshot(tmp_path / "base")
    vm.run(2 * Q)  # pages dirty since the base when the point is taken
    point = vm.snapshot_point()
    at_point = vm.state_digest()
    vm.save_snapshot(tmp_path / "other")  # moves the lineage on
    vm.run(3 * Q)
    vm.reset_to(point)
    vm.save_snapshot(tmp_path / "diff", "diff")  # over "base", the point's lineage
    assert MicroVM.load_snapshot(tmp_path / "diff").state_digest() == at_point


def test_a_point_loaded_from_disk(tmp_path) -> None:
    vm = _fresh("smp")
    vm.run(4 * Q)
    vm.save_snapshot(tmp_path / "p")
    reference = _Reference(tmp_path / "p")
    loaded, point = ResetPoint.load(tmp_path / "p")
    assert point.clock == 4 * Q
    for extra in (3, 0, 6):
        loaded.run(extra * Q)
        loaded.reset_to(point)
        loaded.run(5 * Q)
        digest, console, _ = reference.after(5 * Q)
        assert (loaded.state_digest(), loaded.console_output) == (digest, console)


def test_checkpoints_carry_every_field_of_the_plain_states() -> None:
    """A field added to VcpuState or MmdsState must reach the in-process checkpoints too."""
    from dataclasses import fields

    from vmm.devices.mmds.device import _REGISTER_FIELDS, MmdsCheckpoint
    from vmm.devices.mmds.state import MmdsState
    from vmm.vcpu import VcpuCheckpoint, VcpuState

    in_unicorn_context = {"index", "x", "sp_el0", "sp_el1", "pc", "pstate", "v", "fpcr", "fpsr", "sysregs"}
    vcpu_fields = {f.name for f in fields(VcpuCheckpoint)}
    assert {f.name for f in fields(VcpuState)} - in_unicorn_context <= vcpu_fields
    in_service = {"version", "data_json", "data_limit", "token_secret"}  # MmdsCheckpoint.service, .contents
    registers = {name.lstrip("_") for name in _REGISTER_FIELDS}
    assert {f.name for f in fields(MmdsState)} - in_service - registers == {"token_counter"}
    assert "token_counter" in {f.name for f in fields(MmdsCheckpoint)}


@pytest.mark.parametrize("check", [True, False])
def test_a_wfi_written_after_the_point_is_gone_after_the_reset(tmp_path, check: bool) -> None:
    """The fill's scan hooked the WFI the host wrote after the point. After the reset the
    address holds the point's `ret` again and must run as a `ret`, as in a fresh load."""
    vm = boot(tmp_path, _SMC_SOURCE, quantum=Q, track_dirty_pages=True, mem_size=MEM)
    if not check:  # the control: hooks that trust the scan that placed them
        for v in vm.vcpus:
            v.hooks.fetch_word = None
    vm.run(Q)
    point = vm.snapshot_point()
    ret = RAM_BASE + len(assemble(_SMC_SOURCE)) - 4
    vm.memory.write(ret, assemble("wfi"))
    vm.memory.write_u64(RESULTS + 8, 1)
    vm.run(Q)
    assert vm.vcpus[0].waiting and result(vm, 2) == 0  # in the WFI: nothing will wake it
    vm.reset_to(point)
    vm.memory.write_u64(RESULTS + 8, 1)
    vm.run(Q)
    if check:
        assert not vm.vcpus[0].waiting and result(vm, 2) == 1
    else:
        assert vm.vcpus[0].waiting and result(vm, 2) == 0


def test_restore_pages_refuses_pages_outside_ram_and_a_wrong_image() -> None:
    vm = _fresh("memwalk")
    image = np.zeros(vm.memory.size, dtype=np.uint8)
    with pytest.raises(GuestMemoryError, match="outside RAM"):
        vm.memory.restore_pages(np.array([vm.memory.size // 4096]), image, 4096)
    with pytest.raises(GuestMemoryError, match="restore image"):
        vm.memory.restore_pages(np.array([0]), image[:4096], 4096)
