"""Interrupt delivery in a running VM: timer IRQ at exactly its deadline, WFI idle, UART RX."""
from __future__ import annotations

from asm import POWER_OFF, RESULTS_PTR, boot, mov64, result, vector_table

from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import GICD_BASE, GICR_BASE, UART0_BASE

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
    assert result(vm, 2) == deadline  # the slice that takes the IRQ starts at the deadline
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
