"""Interrupt delivery in a running VM: timer IRQ at exactly its deadline, WFI idle, UART RX.

Virtual time is exact per instruction: instruction k of a vCPU's turn starting at t runs at
t + k, counter reads return that time, and a timer IRQ is taken in front of the instruction
that would run at the deadline (or, if IRQs are masked then, in front of the instruction after
the unmask). None of that may depend on the quantum, so the timing tests run each program with
several quanta, including 1 (a round boundary before every instruction) and quanta that put a
round boundary exactly at, or one instruction off, the interesting points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from asm import POWER_OFF, RESULTS_PTR, boot, mov64, result, vector_table

from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import GICD_BASE, GICR_BASE, UART0_BASE
from vmm.psci import CPU_ON_64

GIC_SETUP = f"""
    {mov64("x20", GICD_BASE)}
    mov w0, #0x12                 // GICD_CTLR: ARE | EnableGrp1
    str w0, [x20]
    {mov64("x21", GICR_BASE)}
    str wzr, [x21, #0x14]         // GICR_WAKER: clear ProcessorSleep
    {mov64("x22", GICR_BASE + 0x10000)}
    mov w0, #0xff
    msr ICC_PMR_EL1, x0
    mov x0, #1
    msr ICC_IGRPEN1_EL1, x0
"""

VECTORS_IRQ = vector_table(cur_spx_irq="irq_handler")


def test_timer_interrupt_fires_at_exactly_the_programmed_virtual_time(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {GIC_SETUP}
        mov w0, #(1 << 27)
        str w0, [x22, #0x100]     // GICR_ISENABLER0: PPI 27 (virtual timer)
        mrs x1, cntvct_el0
        {mov64("x2", 123_457)}
        add x1, x1, x2
        str x1, [x28]             // the deadline
        msr cntv_cval_el0, x1
        mov x0, #1
        msr cntv_ctl_el0, x0      // enable, unmasked
        msr daifclr, #2
    idle:
        wfi
        ldr x3, [x28, #16]
        cbz x3, idle
        {POWER_OFF}
    irq_handler:
        mrs x4, ICC_IAR1_EL1
        str x4, [x28, #8]
        mrs x5, cntvct_el0
        str x5, [x28, #16]
        msr cntv_ctl_el0, xzr     // disable the timer: the level line drops
        msr ICC_EOIR1_EL1, x4
        eret
    {VECTORS_IRQ}
    """
    vm = boot(tmp_path, src, quantum=10_000)
    r = vm.run(10_000_000)
    assert r.reason is StopReason.POWER_OFF, r
    deadline = result(vm, 0)
    assert result(vm, 1) == 27  # INTID of the virtual timer
    # The IRQ is taken at the deadline (the vector's branch runs then); the handler's counter
    # read is its third instruction after that.
    assert result(vm, 2) == deadline + 3
    # Idle time was skipped: the VM did not run a quantum per vCPU for ~12 rounds of spinning.
    assert vm.clock < deadline + 20_000


def test_all_waiting_with_nothing_pending_is_a_deadlock(tmp_path) -> None:
    vm = boot(tmp_path, "msr daifclr, #2\nwfi\nb .")
    r = vm.run(1_000_000)
    assert r.reason is StopReason.DEADLOCK
    assert r.detail == "deadlock: all vCPUs waiting, no event pending"


def test_uart_rx_interrupt_wakes_the_guest_and_delivers_bytes(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {GIC_SETUP}
        mov w0, #(1 << 1)
        str w0, [x20, #0x104]     // GICD_ISENABLER1: SPI 33 (UART)
        {mov64("x23", UART0_BASE)}
        mov w0, #(1 << 4)
        str w0, [x23, #0x38]      // UARTIMSC: RX interrupt
        msr daifclr, #2
    idle:
        wfi
        ldr x3, [x28, #8]
        cmp x3, #3
        b.lo idle
        {POWER_OFF}
    irq_handler:
        mrs x4, ICC_IAR1_EL1
        str x4, [x28]
    drain:
        ldr w5, [x23, #0x18]      // UARTFR
        tbnz w5, #4, drained      // RXFE
        ldr w6, [x23]
        strb w6, [x23]            // echo
        ldr x7, [x28, #8]
        add x7, x7, #1
        str x7, [x28, #8]
        b drain
    drained:
        msr ICC_EOIR1_EL1, x4
        eret
    {VECTORS_IRQ}
    """
    vm = boot(tmp_path, src, quantum=5_000)
    r = vm.run(200_000)
    assert r.reason is StopReason.DEADLOCK  # waiting for input: nothing pending yet
    vm.uart.queue_input(b"abc")
    r = vm.run(1_000_000)
    assert r.reason is StopReason.POWER_OFF, r
    assert result(vm, 0) == 33
    assert vm.console_output == b"abc"


def test_interrupt_state_is_part_of_the_digest() -> None:
    a = MicroVM(VmConfig(guest="hello"))
    b = MicroVM(VmConfig(guest="hello"))
    assert a.state_digest() == b.state_digest()
    b.interrupts.gic.set_line(40, True)
    assert a.state_digest() != b.state_digest()


def test_linux_style_masked_idle_loop_takes_its_interrupt(tmp_path) -> None:
    """daifset; wfi; daifclr; isb; daifset: the IRQ must be taken right after the unmask."""
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {GIC_SETUP}
        mov w0, #(1 << 27)
        str w0, [x22, #0x100]
        mrs x1, cntvct_el0
        {mov64("x2", 50_000)}
        add x1, x1, x2
        msr cntv_cval_el0, x1
        mov x0, #1
        msr cntv_ctl_el0, x0
    idle:
        msr daifset, #2
        ldr x3, [x28, #16]
        cbnz x3, done
        wfi
        msr daifclr, #2
        isb
        b idle
    done:
        {POWER_OFF}
    irq_handler:
        mrs x4, ICC_IAR1_EL1
        mov x5, #1
        str x5, [x28, #16]
        msr cntv_ctl_el0, xzr
        msr ICC_EOIR1_EL1, x4
        eret
    {VECTORS_IRQ}
    """
    vm = boot(tmp_path, src, quantum=10_000)
    r = vm.run(5_000_000)
    assert r.reason is StopReason.POWER_OFF, r
    assert result(vm, 2) == 1


# --- exact timer delivery, independent of the quantum --------------------------------------------
QUANTA = (1, 997, 100_000, 100_000_000)  # the last: the whole run is one round
BIG_QUANTUM = QUANTA[-1]


def run_with_quanta(tmp_path: Path, src: str, quanta: tuple[int, ...], budget: int, **config: object) -> list[int]:
    """Run `src` once per quantum; the results (u64 slots 0..7) must be identical. Returns them."""
    seen = {}
    for q in quanta:
        vm = boot(tmp_path, src, quantum=q, **config)
        r = vm.run(budget)
        assert r.reason is StopReason.POWER_OFF, (q, r)
        seen[q] = [result(vm, i) for i in range(8)]
    first = seen[quanta[0]]
    assert all(v == first for v in seen.values()), seen
    return first


PRE_SPIN = f"""
    {RESULTS_PTR}
    adr x0, vectors
    msr vbar_el1, x0
    {GIC_SETUP}
    mov w0, #(1 << 27)
    str w0, [x22, #0x100]         // GICR_ISENABLER0: PPI 27 (virtual timer)
    {mov64("x3", 1_234)}
pre:                              // arm the timer somewhere inside a round
    subs x3, x3, #1
    b.ne pre
"""

# The IRQ handler records at x28: [0] CNTVCT read at its first instruction (IRQ time + 1: the
# vector's `b` runs at the IRQ time), [1] ELR_EL1 - x7, [2] x9, [3] the INTID, [4] x1, [5] x8.
RECORD_IRQ = """
irq_handler:
    mrs x5, cntvct_el0
    mrs x4, ICC_IAR1_EL1
    mrs x6, elr_el1
    sub x6, x6, x7
    stp x5, x6, [x28]
    stp x9, x4, [x28, #16]
    stp x1, x8, [x28, #32]
"""
RECORDING_HANDLER = f"""
{RECORD_IRQ}
    {POWER_OFF}
{VECTORS_IRQ}
"""


def arm_tval_then_count(tval: int, label: str = "loop") -> str:
    """x1 = r (counter read), TVAL written at r + 1 (deadline r + 1 + tval), timer enabled at
    r + 3, IRQs unmasked at r + 5, then a loop counting in x9: `add` at r + 6 + 2k, `b` after."""
    return f"""
    adr x7, {label}
    {mov64("x2", tval & 0xFFFF_FFFF)}
    mrs x1, cntvct_el0            // r
    msr cntv_tval_el0, x2         // r + 1
    mov x0, #1
    msr cntv_ctl_el0, x0          // r + 3: enable, unmasked
    mov x9, #0
    msr daifclr, #2               // r + 5
{label}:
    add x9, x9, #1                // r + 6 + 2k
    b {label}                     // r + 7 + 2k
"""


@dataclass
class Delivery:
    """Where the IRQ of `arm_tval_then_count` is taken, worked out from the program text."""

    time: int  # virtual time of the instruction the IRQ is taken in front of
    elr_offset: int  # that instruction, from the loop label
    x9: int  # the loop counter then


def expected_delivery(r: int, tval: int) -> Delivery:
    deadline = r + 1 + tval
    time = max(deadline, r + 6)  # before the unmask at r + 5 the IRQ waits for it
    j = time - (r + 6)
    return Delivery(time, 4 * (j % 2), j // 2 + j % 2)


@pytest.mark.parametrize("tval", [12_345, 12_346, 6, 5, 1, 0, -100])
def test_tval_armed_inside_a_round_fires_in_front_of_the_deadline_instruction(tmp_path, tval: int) -> None:
    src = PRE_SPIN + arm_tval_then_count(tval) + RECORDING_HANDLER
    quanta = QUANTA if abs(tval) < 100 else QUANTA[1:]  # quantum 1 is slow for long runs
    handler_time, elr_offset, x9, intid, r, _ = run_with_quanta(tmp_path, src, quanta, 1_000_000)[:6]
    want = expected_delivery(r, tval)
    assert intid == 27
    assert (handler_time - 1, elr_offset, x9) == (want.time, want.elr_offset, want.x9)
    # Round boundaries exactly at the deadline, one before and one after it, and at the
    # TVAL write: still the same instruction.
    edges = tuple(q for q in (want.time - 1, want.time, want.time + 1, r + 1) if q > 0)
    assert run_with_quanta(tmp_path, src, edges, 1_000_000)[:5] == [handler_time, elr_offset, x9, intid, r]


def test_deadline_while_masked_is_taken_in_front_of_the_instruction_after_the_unmask(tmp_path) -> None:
    src = PRE_SPIN + f"""
    {mov64("x2", 100)}
    mrs x1, cntvct_el0
    msr cntv_tval_el0, x2         // the deadline passes in the spin below, IRQs masked
    mov x0, #1
    msr cntv_ctl_el0, x0
    {mov64("x3", 1_000)}
spin:
    subs x3, x3, #1
    b.ne spin
    adr x7, after
    mrs x8, cntvct_el0            // u - 1
    msr daifclr, #2               // u
after:
    nop                           // u + 1: the IRQ comes in front of this
    b .
""" + RECORDING_HANDLER
    handler_time, elr_offset, _, intid, r, u_minus_1 = run_with_quanta(tmp_path, src, QUANTA, 1_000_000)[:6]
    assert intid == 27 and elr_offset == 0
    assert handler_time == u_minus_1 + 3
    assert u_minus_1 > r + 1 + 100  # the deadline had passed long before
    u = u_minus_1 + 1
    assert run_with_quanta(tmp_path, src, (u - 1, u, u + 1), 1_000_000)[:1] == [handler_time]


def test_wfi_in_the_round_of_the_deadline_sleeps_until_the_deadline_exactly(tmp_path) -> None:
    src = PRE_SPIN + f"""
    adr x7, idle
    mrs x1, cntvct_el0
    {mov64("x2", 25_000)}
    add x8, x1, x2                // the deadline, absolute
    msr cntv_cval_el0, x8
    mov x0, #1
    msr cntv_ctl_el0, x0
    msr daifclr, #2
idle:
    wfi
    b idle
""" + RECORDING_HANDLER
    handler_time, elr_offset, _, _, _, deadline = run_with_quanta(tmp_path, src, QUANTA[1:], 1_000_000)[:6]
    assert handler_time == deadline + 1
    assert elr_offset == 4  # the WFI completed: the IRQ returns to the branch after it
    # Asleep from the WFI to the deadline, inside one round: those instructions never ran.
    vm = boot(tmp_path, src, quantum=BIG_QUANTUM)
    vcpu = vm.vcpus[0]
    slices: list[tuple[int, int]] = []  # (start, instructions run)
    original = vcpu.run_slice

    def recording(count: int, start: int) -> object:
        ex = original(count, start)
        slices.append((start, vcpu.executed))
        return ex

    vcpu.run_slice = recording  # type: ignore[method-assign]
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    # Up to the WFI (cut once, after the MSR that armed the timer), then from the deadline.
    *before, (last_start, _) = slices
    assert last_start == deadline
    assert before[-1][0] + before[-1][1] < 5_000 and len(before) <= 2


def test_rearming_later_inside_the_sub_slice_moves_the_interrupt(tmp_path) -> None:
    """A deadline armed, then moved later before it fires: only the later one is taken."""
    src = PRE_SPIN + f"""
    {mov64("x2", 300)}
    msr cntv_tval_el0, x2         // fires 300 on ...
    mov x0, #1
    msr cntv_ctl_el0, x0
    msr daifclr, #2
    {mov64("x3", 50)}
wait:
    subs x3, x3, #1
    b.ne wait
""" + arm_tval_then_count(7_001) + RECORDING_HANDLER  # ... unless re-armed first: this one
    handler_time, elr_offset, x9, intid, r, _ = run_with_quanta(tmp_path, src, QUANTA, 1_000_000)[:6]
    want = expected_delivery(r, 7_001)
    assert intid == 27 and (handler_time - 1, elr_offset, x9) == (want.time, want.elr_offset, want.x9)


def test_two_vcpus_each_take_their_own_timer_at_its_deadline(tmp_path) -> None:
    """vCPU 0 arms in its turn, vCPU 1 (started by CPU_ON) in its own; both inside one round."""
    def per_cpu(tval: int, tag: str) -> str:
        return f"""
    adr x0, vectors
    msr vbar_el1, x0
    mrs x10, mpidr_el1
    and x10, x10, #0xff
    lsl x11, x10, #17             // 128 KiB redistributor frames
    {mov64("x21", GICR_BASE)}
    add x21, x21, x11
    str wzr, [x21, #0x14]         // GICR_WAKER
    add x21, x21, #0x10, lsl #12  // SGI_base
    mov w0, #(1 << 27)
    str w0, [x21, #0x100]
    mov w0, #0xff
    msr ICC_PMR_EL1, x0
    mov x0, #1
    msr ICC_IGRPEN1_EL1, x0
    {RESULTS_PTR}
    add x28, x28, x10, lsl #6     // 64 bytes of results per vCPU
    {arm_tval_then_count(tval, tag)}
"""
    src = f"""
    {mov64("x20", GICD_BASE)}
    mov w0, #0x12
    str w0, [x20]
    {mov64("x0", CPU_ON_64)}
    mov x1, #1
    adr x2, secondary
    mov x3, #0
    hvc #0
    {per_cpu(40_000, "loop0")}
secondary:
    {per_cpu(20_001, "loop1")}
{RECORD_IRQ}
    mov x12, #1
    str x12, [x28, #48]           // done
    cbnz x10, .                   // vCPU 1 stays here; vCPU 0 waits for it
both:
    ldr x12, [x28, #112]          // vCPU 1's done flag
    cbz x12, both
    {POWER_OFF}
{VECTORS_IRQ}
"""
    for quantum in (997, 100_000, 1_000_000):  # CPU_ON takes effect at the next round boundary
        vm = boot(tmp_path, src, quantum=quantum, vcpus=2)
        assert vm.run(10_000_000).reason is StopReason.POWER_OFF
        for cpu, tval in ((0, 40_000), (1, 20_001)):
            handler_time, elr_offset, x9, intid, r = (result(vm, 8 * cpu + i) for i in range(5))
            want = expected_delivery(r, tval)
            assert intid == 27
            assert (handler_time - 1, elr_offset, x9) == (want.time, want.elr_offset, want.x9), (quantum, cpu)


def test_counter_and_cycle_reads_are_exact_and_a_round_end_does_not_show(tmp_path) -> None:
    src = f"""
    {RESULTS_PTR}
    mrs x0, cntvct_el0            // 2
    mrs x1, cntpct_el0            // 3
    mrs x2, cntv_tval_el0         // 4: CVAL (0) - count
    {mov64("x3", 500)}
spin:
    subs x3, x3, #1
    b.ne spin                     // 6 .. 1005
    mrs x4, cntvct_el0            // 1006
    mrs x5, pmccntr_el0           // 1007: cycles = instructions
    stp x0, x1, [x28]
    stp x2, x4, [x28, #16]
    str x5, [x28, #32]
    {POWER_OFF}
"""
    for quantum in (1, 2, 3, 7, 1_000, 1_006, 1_007, 1_008):
        vm = boot(tmp_path, src, quantum=quantum)
        assert vm.run(100_000).reason is StopReason.POWER_OFF
        assert [result(vm, i) for i in range(5)] == [2, 3, (0 - 4) & 0xFFFF_FFFF, 1006, 1007], quantum
