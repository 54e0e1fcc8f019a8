// echo: PL011 receive interrupts, echoing input upper-cased.
// vCPU 0 only. Sets up the GIC (GICD_CTLR = ARE | EnableGrp1, its redistributor awake, PMR
// 0xff, Group 1 enabled), enables SPI 33 (the UART, GICD_ISENABLER1 bit 1, routed to vCPU 0
// by the reset GICD_IROUTER), sets UARTIMSC = RXIM | RTIM (bits 4 and 6), unmasks IRQs and
// sleeps in a `wfi` loop. It prints nothing of its own.
// The IRQ handler acknowledges the interrupt, then reads UARTDR until UARTFR.RXFE is set and
// writes each byte back: 'a'..'z' become 'A'..'Z', every other byte is echoed unchanged. If a
// received byte equals `quit` (compared before upper-casing) the handler powers off right
// after echoing it, leaving any later input unread. Then it EOIs and returns.
// Parameters: p0 = quit (default 113 = 'q'; a value above 255 never matches: echo forever).
// Output: the upper-cased echo of the input up to and including the quit byte, e.g.
// input "hello q" -> "HELLO Q", then PSCI SYSTEM_OFF.
// With no input pending every vCPU waits and the VM stops with DEADLOCK; queueing input and
// running again continues the session.

main:
    adr     x9, rt_irq_ptr
    adr     x10, echo_irq
    str     x10, [x9]
    movz    x9, #0x0800, lsl #16   // GICD_BASE
    mov     w10, #0x12             // GICD_CTLR: ARE | EnableGrp1
    str     w10, [x9]
    mov     w10, #(1 << 1)
    str     w10, [x9, #0x104]      // GICD_ISENABLER1: SPI 33
    movz    x9, #0x080A, lsl #16   // GICR_BASE (vCPU 0 frame)
    str     wzr, [x9, #0x14]       // GICR_WAKER: clear ProcessorSleep
    mov     x10, #0xff
    msr     ICC_PMR_EL1, x10
    mov     x10, #1
    msr     ICC_IGRPEN1_EL1, x10
    isb
    movz    x9, #0x0900, lsl #16   // UART0_BASE
    mov     w10, #0x50             // UARTIMSC: RXIM | RTIM
    str     w10, [x9, #0x38]
    msr     daifclr, #2
echo_idle:
    wfi
    b       echo_idle

// Never started (no CPU_ON), but the runtime needs the symbol.
secondary_main:
    ret                            // -> rt_cpu_off

// IRQ handler (IRQs masked). Preserves x19-x29.
echo_irq:
    stp     x29, x30, [sp, #-48]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    mrs     x19, ICC_IAR1_EL1
    cmp     x19, #1020
    b.hs    echo_irq_ret           // spurious
    cmp     x19, #33
    b.ne    echo_irq_eoi
    mov     x0, #0
    bl      rt_param
    mov     x21, x0                // x21 = quit byte
    movz    x20, #0x0900, lsl #16  // UART0_BASE
echo_drain:
    ldr     w10, [x20, #0x18]      // UARTFR
    tbnz    w10, #4, echo_irq_eoi  // RXFE: nothing left
    ldr     w22, [x20]             // UARTDR
    and     w22, w22, #0xff
    sub     w10, w22, #'a'
    cmp     w10, #25
    sub     w11, w22, #32
    csel    w0, w11, w22, ls       // 'a'..'z' -> upper case
    bl      rt_putc
    cmp     x22, x21
    b.ne    echo_drain
    b       rt_poweroff            // the quit byte
echo_irq_eoi:
    msr     ICC_EOIR1_EL1, x19
echo_irq_ret:
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #48
    ret
