"""The block counter (vmm/block_counter.py) against Unicorn's count= (the reference path).

Every slice must end on the instruction count= ends it on, so two VMs, one of each, are run
side by side in steps of a prime number of instructions and compared at every step (virtual
time, each vCPU's PC and x0..x30) and at the end (state digest, console), at the quanta the
issue names: 1, 997, 100,000 and 10**8. The guests cover the ways a translation block is left
early: exceptions (SVC, BRK, alignment faults, UNDEF), trapped system registers, WFI, IRQs
taken at an unmask, MMIO, stores into the running block's own code, and the MMU.
"""
from __future__ import annotations

import ctypes
import platform

import pytest
import unicorn
from asm import POWER_OFF, RESULTS_PTR, assemble, mov64, vector_table

from vmm import MicroVM, StopReason, VmConfig, native_sysreg
from vmm.layout import UART0_BASE
from vmm.icount import InstructionCounterError

pytestmark = pytest.mark.skipif(not native_sysreg.available(), reason="the native hooks are not built here")

QUANTA = (1, 997, 100_000, 100_000_000)


@pytest.fixture(autouse=True, params=["cflags", "code-hook"])
def tail_mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test with both ways a tail ends (vmm/_sysreg.c start_tail): the next block cut
    to r instructions through cflags_next_tb where it is found, else a code hook."""
    monkeypatch.setenv(native_sysreg.CFLAGS_SWITCH, "1" if request.param == "cflags" else "0")
    return str(request.param)


def make(monkeypatch: pytest.MonkeyPatch, counted: bool, **config: object) -> MicroVM:
    monkeypatch.setenv("MICROVM_BLOCK_COUNTER", "1" if counted else "0")
    vm = MicroVM(VmConfig(**config))  # type: ignore[arg-type]
    assert all((v.counter is not None) == counted for v in vm.vcpus)
    return vm


def snapshot_of(vm: MicroVM) -> tuple[object, ...]:
    return (vm.clock, tuple((v.pc, tuple(v.reg(i) for i in range(31)), v.power) for v in vm.vcpus))


def compare(monkeypatch: pytest.MonkeyPatch, step: int, budget: int, **config: object) -> MicroVM:
    """Run both paths in steps of `step` instructions up to `budget`; assert equal throughout."""
    fast = make(monkeypatch, True, **config)
    ref = make(monkeypatch, False, **config)
    spent = 0
    while spent < budget:
        a, b = fast.run(step), ref.run(step)
        assert (a.reason, a.instructions) == (b.reason, b.instructions), spent
        assert snapshot_of(fast) == snapshot_of(ref), spent
        spent += step
        if a.reason is not StopReason.BUDGET:
            break
    assert fast.console_output == ref.console_output
    assert fast.state_digest() == ref.state_digest()
    return fast


def image(tmp_path, source: str) -> str:
    path = tmp_path / "guest.bin"
    path.write_bytes(assemble(source))
    return str(path)


def counted(monkeypatch: pytest.MonkeyPatch, tmp_path, source: str, quantum: int) -> MicroVM:
    """A VM of `source` on the block counter."""
    monkeypatch.setenv("MICROVM_BLOCK_COUNTER", "1")
    return MicroVM(VmConfig(image=image(tmp_path, source), quantum=quantum))


@pytest.mark.parametrize("quantum", QUANTA[1:])
@pytest.mark.parametrize("guest,params", [("compute", {"iterations": 20_000}), ("cbench", {"iterations": 3}), ("mmu", {}), ("ticker", {"ticks": 3, "period_ns": 200_000})])
def test_built_in_guests_land_on_the_same_instructions(monkeypatch, guest: str, params: dict[str, int], quantum: int) -> None:
    vm = compare(monkeypatch, 12_347, 3_000_000, guest=guest, params=params, quantum=quantum)
    assert vm.vcpus[0].counter is not None and vm.clock > 0


@pytest.mark.parametrize("quantum", (997, 100_000))
@pytest.mark.parametrize("guest,params", [("smp", {"iterations": 300}), ("ipi", {"rounds": 2})])
def test_smp_guests_land_on_the_same_instructions(monkeypatch, guest: str, params: dict[str, int], quantum: int) -> None:
    compare(monkeypatch, 7_919, 3_000_000, guest=guest, params=params, quantum=quantum, vcpus=2)


def test_quantum_one_on_a_short_run(monkeypatch) -> None:
    compare(monkeypatch, 101, 20_000, guest="compute", params={"iterations": 300}, quantum=1)


# Exceptions raised in the middle of long blocks, and returned from: SVC (the PC is past it
# when the hook runs), BRK and UDF (on it), an unaligned exclusive (a data abort).
EXCEPTIONS = f"""
    {RESULTS_PTR}
    adr x0, vectors
    msr vbar_el1, x0
    mov x20, #0
    {mov64("x21", 400)}
loop:
    add x1, x1, #1
    add x2, x2, #2
    svc #7
    add x3, x3, #3
    add x4, x4, #4
    brk #3
    add x5, x5, #5
    .word 0x00000000              // UDF #0
    add x6, x6, #6
    add x7, x28, #1
    ldxr x8, [x7]
    add x9, x9, #9
    subs x21, x21, #1
    b.ne loop
    {POWER_OFF}
handler:
    add x20, x20, #1
    mrs x10, esr_el1
    lsr x10, x10, #26
    cmp x10, #0x15                // SVC: ELR already points past it
    b.eq back
    mrs x11, elr_el1
    add x11, x11, #4
    msr elr_el1, x11
back:
    eret
{vector_table(cur_spx_sync="handler")}
"""


@pytest.mark.parametrize("quantum", QUANTA)
def test_exceptions_in_the_middle_of_blocks(monkeypatch, tmp_path, quantum: int) -> None:
    step = 53 if quantum == 1 else 1_009
    vm = compare(monkeypatch, step, 40_000 if quantum == 1 else 200_000, image=image(tmp_path, EXCEPTIONS), quantum=quantum)
    assert vm.vcpus[0].reg(20) == 4 * 400  # every exception was taken and returned from


# A store into the block that is running: Unicorn runs the block to its end as translated
# (the old `add x5, x5, #1` the first time round), and the new code from then on.
SELF_MODIFYING = f"""
    {RESULTS_PTR}
    {mov64("x21", 300)}
    adr x2, patched
    ldr w3, [x2]                  // `add x5, x5, #1`
    add w3, w3, #0x400            // imm12 + 1: `add x5, x5, #2`
loop:
    add x1, x1, #1
    str w3, [x2]                  // rewrites `patched`, in this very block
    add x4, x4, #1
patched:
    add x5, x5, #1
    add x6, x6, #1
    subs x21, x21, #1
    b.ne loop
    {POWER_OFF}
"""


@pytest.mark.parametrize("quantum", QUANTA)
def test_stores_into_the_running_block(monkeypatch, tmp_path, quantum: int) -> None:
    step = 31 if quantum == 1 else 211
    vm = compare(monkeypatch, step, 10_000, image=image(tmp_path, SELF_MODIFYING), quantum=quantum)
    # The old instruction once, then the new one; at quantum 1 every instruction is its own
    # slice and translation, so the store is seen at once (without IC IVAU + ISB the
    # architecture allows either).
    assert vm.vcpus[0].reg(5) == (2 * 300 if quantum == 1 else 1 + 2 * 299)


SIX_INSTRUCTION_LOOP = """
loop:
    add x11, x11, #1
    add x12, x12, #1
    add x13, x13, #1
    add x14, x14, #1
    add x15, x15, #1
    b loop
"""
NO_REQUEST = native_sysreg.NO_CUT_REQUEST


def check_six_instruction_loop(vm: MicroVM) -> None:
    """Run SIX_INSTRUCTION_LOOP in slices of 7 and check each slice's end against the program
    text: instruction k is `add x(11 + k % 6)`, or the branch when k % 6 == 5."""
    v = vm.vcpus[0]
    for rounds in range(1, 40):
        assert vm.run(7).reason is StopReason.BUDGET
        n = 7 * rounds
        assert [v.reg(11 + i) for i in range(5)] == [(n - i + 5) // 6 for i in range(5)], n


def test_tails_run_where_the_budget_ends_inside_a_block(monkeypatch, tmp_path) -> None:
    """Slices of 7 instructions in a loop of 6: most end inside the block, and each stops on
    the exact instruction (checked against the program text, not the other path)."""
    vm = counted(monkeypatch, tmp_path, SIX_INSTRUCTION_LOOP, 7)
    check_six_instruction_loop(vm)
    assert vm.vcpus[0].counter.tails > 30


def test_a_counter_that_loses_its_place_fails_loudly(monkeypatch, tmp_path) -> None:
    vm = counted(monkeypatch, tmp_path, "b .", 1_000)
    assert vm.run(1_000).reason is StopReason.BUDGET
    counter = vm.vcpus[0].counter
    real_begin = counter._begin

    def broken(budget: int) -> None:
        real_begin(budget)
        counter._s.count_error = 1  # as if a hook had asked for a PC outside the running block

    monkeypatch.setattr(counter, "_begin", broken)
    with pytest.raises(InstructionCounterError, match="lost its place"):
        vm.run(1_000)


# EL0 code under SCTLR_EL1.nTWI = 0, as Linux runs its user space: Unicorn ends a run at an
# `until` (or exit) address by running a WFI there, which at EL0 with nTWI = 0 traps to EL1
# instead of halting. Slices must still end exactly, with no exception the guest can see.
EL0_UNTRAPPED_WFI = f"""
    {RESULTS_PTR}
    adr x0, vectors
    msr vbar_el1, x0
    mrs x1, sctlr_el1
    bic x1, x1, #(1 << 16)        // nTWI = 0: EL0 WFI traps to EL1
    msr sctlr_el1, x1
    isb
    {mov64("x21", 3000)}
    adr x2, user
    msr elr_el1, x2
    msr spsr_el1, xzr             // EL0t
    eret
user:
    add x1, x1, #1
    add x2, x2, #2
    add x3, x3, #3
    add x4, x4, #4
    add x5, x5, #5
    subs x21, x21, #1
    b.ne user
    svc #1
handler:
    mrs x10, esr_el1
    lsr x10, x10, #26
    cmp x10, #0x15                // the SVC that ends the user loop
    b.ne wrong
    {POWER_OFF}
wrong:
    mov x20, x10                  // any other exception: record its class and stop
    {POWER_OFF}
{vector_table(lower_sync="handler")}
"""


@pytest.mark.parametrize("quantum", (997, 100_000))
def test_slices_ending_at_el0_with_wfi_trapped(monkeypatch, tmp_path, quantum: int) -> None:
    vm = compare(monkeypatch, 1_013, 60_000, image=image(tmp_path, EL0_UNTRAPPED_WFI), quantum=quantum)
    assert vm.vcpus[0].reg(20) == 0 and vm.vcpus[0].reg(21) == 0  # only the SVC was taken, after the whole loop


# The exclusive monitor is cleared between slices (the CLREX at the start of every slice), so
# an LDXR/STXR pair that a slice boundary splits fails, deterministically, on both paths.
EXCLUSIVE_PAIRS = f"""
    {RESULTS_PTR}
    add x2, x28, #64
    {mov64("x21", 30_000)}
    mov x20, #0
loop:
    ldxr x1, [x2]
    add x1, x1, #1
    add x4, x4, #1
    add x5, x5, #1
    stxr w3, x1, [x2]
    add x20, x20, x3              // failed store-exclusives
    subs x21, x21, #1
    b.ne loop
    {POWER_OFF}
"""


@pytest.mark.parametrize("quantum", (997, 100_000))
def test_store_exclusive_fails_across_a_slice_boundary(monkeypatch, tmp_path, quantum: int) -> None:
    vm = compare(monkeypatch, 12_007, 400_000, image=image(tmp_path, EXCLUSIVE_PAIRS), quantum=quantum)
    v = vm.vcpus[0]
    failed = v.reg(20)
    assert v.reg(21) == 0 and 0 < failed < 30_000  # some pairs were split, most were not
    state = v.native_sysreg.state
    assert state.tail_hook == 0 and state.resume_armed == 0  # nothing of a run is left installed


def test_a_device_error_inside_a_tail_leaves_no_hook_behind(monkeypatch, tmp_path) -> None:
    """A hook that stops the run in the middle of a tail (here a device that raises on a write
    made by a tail): the tail's code hook is deleted all the same."""
    source = f"""
        {mov64("x2", UART0_BASE)}
    loop:
        add x1, x1, #1
        add x3, x3, #1
        str w1, [x2]                  // UARTDR
        add x4, x4, #1
        add x5, x5, #1
        b loop
    """
    vm = counted(monkeypatch, tmp_path, source, 1_000)
    v = vm.vcpus[0]
    state = v.native_sysreg.state
    write = vm.uart.mmio_write

    def broken(*args: object) -> None:
        if state.tail_phase == native_sysreg.TAIL_RUNNING:
            raise RuntimeError("device failure in a tail")
        write(*args)

    monkeypatch.setattr(vm.uart, "mmio_write", broken)
    result = vm.run(50_000)
    assert result.reason is StopReason.FAULT and "device failure in a tail" in result.detail
    assert state.tail_hook == 0 and v.counter.tails >= 1


def test_tails_use_cflags_where_the_field_is_found(monkeypatch, tmp_path, tail_mechanism: str) -> None:
    """The probe finds cflags_next_tb and checks it on a scratch engine (always on the x86-64
    build of Unicorn 2.1.4 this was measured on); MICROVM_TAIL_CFLAGS=0 turns it off."""
    vm = counted(monkeypatch, tmp_path, "b .", 1_000)
    state = vm.vcpus[0].native_sysreg.state
    offset = native_sysreg.cflags_offset()
    if unicorn.__version__ == "2.1.4" and platform.machine() == "x86_64":
        assert offset is not None
    if tail_mechanism == "code-hook" or offset is None:
        assert not state.cflags_next_tb
    else:
        assert state.cflags_next_tb == state.cpu + offset
        assert ctypes.c_uint32.from_address(state.cflags_next_tb).value == NO_REQUEST


def test_a_lost_cut_request_is_made_again(monkeypatch, tmp_path, tail_mechanism: str) -> None:
    """A full translation buffer is flushed in the middle of translating, and the lookup after
    the flush ignores cflags_next_tb: the full block comes back instead of the cut one. The
    block hook makes the request again (here a second block hook drops each tail's first
    request, as that flush does); the slices still end on the exact instruction."""
    vm = counted(monkeypatch, tmp_path, SIX_INSTRUCTION_LOOP, 7)
    v = vm.vcpus[0]
    state = v.native_sysreg.state
    if tail_mechanism == "code-hook" or not state.cflags_next_tb:
        pytest.skip("tails make no cflags request here")
    request = ctypes.c_uint32.from_address(state.cflags_next_tb)
    dropped: set[int] = set()

    def drop(_uc: object, _address: int, _size: int, _ud: object) -> None:
        if state.tail_phase == native_sysreg.TAIL_ARMED and request.value != NO_REQUEST and state.tails not in dropped:
            request.value = NO_REQUEST
            dropped.add(state.tails)

    v.uc.hook_add(unicorn.UC_HOOK_BLOCK, drop)
    check_six_instruction_loop(vm)
    assert len(dropped) > 10
