"""The native TLB fill (vmm/_fill.c) against the Python fill it stands in for.

The native fill serves RAM data fills with the MMU off and must compute exactly what the
Python fill (vmm.tlb.TlbFiller + Vcpu's code-page rule) computes for them: the entry, and
every byte of the dirty tracker's state. Here the two are compared call by call (hypothesis,
over the adaptive controller's modes), and whole guests are run both ways.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import UC_MEM_FETCH, UC_MEM_READ, UC_MEM_WRITE, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

from snapshot.dirty import AdaptiveController, StepDownMode, TrackingConfig
from vmm import MicroVM, VmConfig, native_fill
from vmm.memory import GuestMemory
from vmm.mmio import MmioBus
from vmm.testing import assert_vms_equal
from vmm.tlb import TlbFiller

needs_native = pytest.mark.skipif(not native_fill.available(), reason="the native fill is not built here")

RAM_BASE = 0x4000_0000
RAM_SIZE = 4 << 20
PAGE = 4096
BLOCK = 64 << 10  # 16 pages a block: many blocks in a small RAM
CODE_PAGE = 4096


def test_native_fill_is_built_where_ci_requires_it() -> None:
    """CI sets MICROVM_REQUIRE_NATIVE=1: there a missing build (a broken setup.py or compiler
    step) must fail, not silently fall back to the slow path."""
    if os.environ.get("MICROVM_REQUIRE_NATIVE") != "1":
        pytest.skip("MICROVM_REQUIRE_NATIVE is not set")
    assert native_fill.layout_matches(), "vmm/_fill.c and vmm/native_fill.py disagree on a struct"
    assert native_fill.available()


def test_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native_fill.ENV_SWITCH, "0")
    assert not native_fill.available()
    vm = MicroVM(VmConfig(guest="hello"))
    assert vm.vcpus[0].native_fill is None
    vm.run()
    assert vm.tlb.python_fills == vm.tlb.fills > 0


# --- call by call -------------------------------------------------------------------------------
class _FakeVcpu:
    """What TlbFiller reads of a vCPU with its MMU off."""

    index = 0
    pstate = 0

    def __init__(self) -> None:
        self.slice_start = 0

    def sysreg(self, name: str) -> int:
        return 0  # SCTLR_EL1.M clear


_FILL = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
    ctypes.POINTER(native_fill._UcTlbEntry), ctypes.POINTER(native_fill.FillState),
)


class _Native:
    """The C function called directly, over its own controller."""

    def __init__(self, controller: AdaptiveController | None, code_pages: bytearray) -> None:
        tracker = native_fill.tracker_for(controller) if controller is not None else None
        self.stage = native_fill.NativeFill(RAM_BASE, RAM_SIZE, code_pages, CODE_PAGE, tracker)
        self.stage.set_identity(True)
        self.fn = _FILL(native_fill._fill.fill_address())

    def __call__(self, vaddr: int, access: int, now: int) -> tuple[int, int] | None:
        self.stage.start_slice(now)
        entry = native_fill._UcTlbEntry()
        if not self.fn(None, vaddr, access, ctypes.byref(entry), ctypes.byref(self.stage.state)):
            return None
        return entry.paddr, entry.perms


def _python_fill(filler: TlbFiller, vcpu: _FakeVcpu, code_pages: bytearray, vaddr: int, access: int, now: int):
    """TlbFiller's answer with Vcpu._on_tlb_fill's code-page rule."""
    vcpu.slice_start = now
    paddr, perms = filler(vcpu, vaddr, access)  # type: ignore[arg-type, misc]
    if access == UC_MEM_FETCH:
        code_pages[(paddr - RAM_BASE) // CODE_PAGE] = 1
    elif not code_pages[(paddr - RAM_BASE) // CODE_PAGE]:
        perms &= ~UC_PROT_EXEC
    return paddr, perms


def _state(controller: AdaptiveController) -> tuple[bytes, ...]:
    b = controller.buffers()
    return bytes(b.dirty), bytes(b.fine), b.window_start.tobytes(), b.window_faults.tobytes(), b.counts.tobytes()


_fill_op = st.tuples(
    st.just("fill"),
    st.integers(0, RAM_SIZE // 1024 - 1),  # a 1 KiB TLB page
    st.sampled_from((UC_MEM_READ, UC_MEM_WRITE, UC_MEM_WRITE, UC_MEM_FETCH)),
    st.integers(0, 400),  # virtual ns since the previous op
)
_ops = st.lists(
    st.one_of(
        _fill_op,
        _fill_op.map(lambda op: (op[0], op[1] % 64, *op[2:])),  # hot: the first four blocks
        st.tuples(st.just("epoch")),
        st.tuples(st.just("host"), st.integers(0, RAM_SIZE - 1), st.integers(0, 3 * PAGE)),
    ),
    max_size=150,
)


@needs_native
@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(list(StepDownMode)),
    threshold=st.integers(0, 4),
    window_ns=st.sampled_from((1, 300, 5_000)),
    keep_windows=st.booleans(),
    tracking=st.booleans(),
    code=st.binary(min_size=RAM_SIZE // CODE_PAGE, max_size=RAM_SIZE // CODE_PAGE),
    ops=_ops,
)
def test_each_fill_matches_the_python_fill(mode, threshold, window_ns, keep_windows, tracking, code, ops) -> None:
    config = TrackingConfig(mode=mode, threshold=threshold, window_ns=window_ns, block_size=BLOCK, keep_windows=keep_windows)
    ours = AdaptiveController(RAM_SIZE, PAGE, config) if tracking else None
    theirs = AdaptiveController(RAM_SIZE, PAGE, config) if tracking else None
    code_pages = bytearray(min(c, 1) for c in code)
    native_code = bytearray(code_pages)
    native = _Native(ours, native_code)
    filler = TlbFiller(GuestMemory(RAM_BASE, RAM_SIZE), MmioBus(), theirs, native=False)
    vcpu = _FakeVcpu()
    now = 0
    for op in ops:
        if op[0] == "fill":
            _, page_1k, access, dt = op
            now += dt
            vaddr = RAM_BASE + page_1k * 1024
            assert native(vaddr, access, now) == _python_fill(filler, vcpu, code_pages, vaddr, access, now), op
        elif ours is not None and theirs is not None:
            if op[0] == "epoch":
                ours.new_epoch()
                theirs.new_epoch()
            else:
                length = min(op[2], RAM_SIZE - op[1])
                ours.mark_range(op[1], length)
                theirs.mark_range(op[1], length)
        if ours is not None and theirs is not None:
            assert _state(ours) == _state(theirs), op
            assert ours.stats() == theirs.stats()
    assert (native.stage.fills, native.stage.write_fills) == (filler.python_fills, filler.python_write_fills)
    assert native_code == code_pages  # the same code-page record


@needs_native
def test_it_declines_what_only_python_can_do() -> None:
    native = _Native(AdaptiveController(RAM_SIZE, PAGE), bytearray(b"\x01" * (RAM_SIZE // CODE_PAGE)))
    assert native(RAM_BASE, UC_MEM_FETCH, 0) == (RAM_BASE, UC_PROT_READ | UC_PROT_EXEC)  # clean: no write
    assert native(RAM_BASE - 1024, UC_MEM_READ, 0) is None  # below RAM: MMIO, stub, holes
    assert native(RAM_BASE + RAM_SIZE, UC_MEM_WRITE, 0) is None  # above RAM
    assert native(RAM_BASE + RAM_SIZE - 1024, UC_MEM_WRITE, 0) == (RAM_BASE + RAM_SIZE - 1024, UC_PROT_ALL)
    native.stage.set_identity(False)  # the MMU is on, or not known yet: the walk is Python's
    assert native(RAM_BASE, UC_MEM_READ, 0) is None
    assert native.stage.fills == 2


# --- whole guests, both ways ---------------------------------------------------------------------
GUESTS = {
    "memwalk": VmConfig(guest="memwalk", quantum=2_000, params={"rounds": 1, "pattern": 2, "writes": 3_000, "region_mib": 8}),
    "smp": VmConfig(guest="smp", vcpus=3, quantum=1_000, params={"iterations": 5_000}),
    "ticker": VmConfig(guest="ticker", quantum=2_000, params={"period_ns": 6_000, "ticks": 8}),
    "mmds": VmConfig(guest="mmds", quantum=2_000),
    "mmu": VmConfig(guest="mmu", quantum=2_000),
}


def _run_in_epochs(config: VmConfig, native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[MicroVM, list]:
    """Run to the end in three epochs; what each epoch's tracker saw."""
    with monkeypatch.context() as m:
        m.setenv(native_fill.ENV_SWITCH, "1" if native else "0")
        # Both ways count with Unicorn's count=: the block counter's tails translate blocks
        # again, which adds fetch fills (tests/test_block_counter.py compares the counters).
        m.setenv("MICROVM_BLOCK_COUNTER", "0")
        vm = MicroVM(config)
    assert (vm.vcpus[0].native_fill is not None) == native
    if config.guest == "mmds":
        vm.mmds.put({"latest": {"meta-data": {"instance-id": "i-1"}}})
    epochs = []
    for budget in (20_000, 60_000, None):
        if config.track_dirty_pages:
            vm.start_dirty_epoch()
        vm.run(budget)
        if config.track_dirty_pages:
            epochs.append((vm.dirty.pages().tolist(), vm.dirty_stats()))
    epochs.append((vm.tlb.fills, vm.tlb.write_fills))
    return vm, epochs


@needs_native
@pytest.mark.parametrize("granule", ["off", "page", "per-block", "global"])
@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_guests_run_the_same_both_ways(guest: str, granule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = GUESTS[guest]
    if granule != "off":
        config = VmConfig(**{**config.__dict__, "track_dirty_pages": True, "dirty_granule": granule})
    fast, fast_epochs = _run_in_epochs(config, True, monkeypatch)
    slow, slow_epochs = _run_in_epochs(config, False, monkeypatch)
    assert_vms_equal(fast, slow)
    assert fast_epochs == slow_epochs
    if guest != "mmu":  # with the MMU off, data fills of RAM never reach Python
        assert fast.tlb.python_fills < fast.tlb.fills
    if guest == "memwalk":
        assert fast.tlb.python_fills * 20 < fast.tlb.fills


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_diff_snapshot_round_trip_both_ways(native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run(N + M) == run(N) -> full save -> run -> diff save -> load chain -> run(M)."""
    if native and not native_fill.available():
        pytest.skip("the native fill is not built here")
    monkeypatch.setenv(native_fill.ENV_SWITCH, "1" if native else "0")
    config = VmConfig(**{**GUESTS["memwalk"].__dict__, "track_dirty_pages": True})
    reference = MicroVM(config)
    reference.run(90_000)
    vm = MicroVM(config)
    vm.run(30_000)
    vm.save_snapshot(tmp_path / "base")
    vm.run(30_000)
    vm.save_snapshot(tmp_path / "diff", "diff")
    restored = MicroVM.load_snapshot(tmp_path / "diff")
    restored.run(30_000)
    assert_vms_equal(restored, reference)
