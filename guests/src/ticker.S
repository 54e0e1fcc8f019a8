// ticker: periodic virtual-timer interrupts, idle in WFI between them.
// vCPU 0 only (other vCPUs stay off). Sets up the GIC (GICD_CTLR = ARE | EnableGrp1, its
// redistributor awake, PMR 0xff, Group 1 enabled), enables PPI 27 (EL1 virtual timer), reads
// start = CNTVCT_EL0 and programs CNTV_CVAL_EL0 = start + period with CNTV_CTL_EL0 = ENABLE.
// The IRQ handler acknowledges (ICC_IAR1_EL1), reads CNTVCT_EL0, re-arms the timer at
// previous deadline + period (absolute CVAL, so no drift, and after the last tick the timer is
// disabled instead), EOIs and prints the tick. Between ticks the primary sits in `wfi`.
// After tick <ticks> the handler prints the last line and powers off itself (no race between
// a "done" flag and WFI in the idle loop).
// Parameters: p0 = period_ns (default 1_000_000), p1 = ticks (default 5).
// Output (decimal numbers):
//   "ticker: period <period_ns> ns, <ticks> ticks, start <start>\n"
//   "tick <n> at <cntvct>\n"        for n = 1 .. ticks, cntvct as read in the handler
//   "ticker done\n"                 then PSCI SYSTEM_OFF
// The VM takes each tick's IRQ at exactly its deadline, start + n * period_ns, whatever its
// quantum; <cntvct> is read 20 instructions later (the vector's branch, rt_irq_entry up to its
// blr, tk_irq up to the MRS), so it is start + n * period_ns + 20. (A tick taken late, if the
// handler ever ran past the next deadline, would not shift the later deadlines.) With
// ticks = 0 the timer is never armed.
// Interrupts other than INTID 27 are acknowledged and EOId without effect; spurious ones
// (INTID >= 1020) are ignored.

main:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    adr     x9, rt_irq_ptr
    adr     x10, tk_irq
    str     x10, [x9]
    // GIC: distributor, this vCPU's redistributor (index 0), CPU interface
    movz    x9, #0x0800, lsl #16   // GICD_BASE
    mov     w10, #0x12             // GICD_CTLR: ARE | EnableGrp1
    str     w10, [x9]
    movz    x9, #0x080A, lsl #16   // GICR_BASE (vCPU 0 frame)
    str     wzr, [x9, #0x14]       // GICR_WAKER: clear ProcessorSleep
    add     x9, x9, #0x10, lsl #12 // SGI_base
    mov     w10, #(1 << 27)
    str     w10, [x9, #0x100]      // GICR_ISENABLER0: PPI 27
    mov     x10, #0xff
    msr     ICC_PMR_EL1, x10
    mov     x10, #1
    msr     ICC_IGRPEN1_EL1, x10
    isb
    // parameters
    mov     x0, #0
    bl      rt_param
    adr     x9, tk_period
    str     x0, [x9]
    mov     x0, #1
    bl      rt_param
    adr     x9, tk_ticks
    str     x0, [x9]
    mov     x20, x0                // x20 = ticks
    // arm the timer
    mrs     x19, cntvct_el0        // x19 = start
    cbz     x20, tk_report
    adr     x9, tk_period
    ldr     x10, [x9]
    add     x10, x19, x10
    adr     x9, tk_deadline
    str     x10, [x9]
    msr     cntv_cval_el0, x10
    mov     x10, #1
    msr     cntv_ctl_el0, x10      // ENABLE, IMASK clear
    isb
tk_report:
    adr     x0, tk_msg_head
    bl      rt_puts
    adr     x9, tk_period
    ldr     x0, [x9]
    bl      rt_put_dec
    adr     x0, tk_msg_ns
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_dec
    adr     x0, tk_msg_start
    bl      rt_puts
    mov     x0, x19
    bl      rt_put_dec
    bl      rt_newline
    cbz     x20, tk_finish
    msr     daifclr, #2            // unmask IRQs
tk_idle:
    wfi
    b       tk_idle

// Never started (no CPU_ON), but the runtime needs the symbol.
secondary_main:
    ret                            // -> rt_cpu_off

tk_finish:
    adr     x0, tk_msg_done
    bl      rt_puts
    b       rt_poweroff

// IRQ handler (called by rt_irq_entry with IRQs masked; preserves x19-x29 per AAPCS64).
tk_irq:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    mrs     x19, ICC_IAR1_EL1
    cmp     x19, #27
    b.eq    tk_irq_tick
    cmp     x19, #1020
    b.hs    tk_irq_ret             // spurious: nothing to EOI
    msr     ICC_EOIR1_EL1, x19
    b       tk_irq_ret
tk_irq_tick:
    mrs     x20, cntvct_el0        // the tick's timestamp
    adr     x9, tk_count
    ldr     x10, [x9]
    add     x10, x10, #1
    str     x10, [x9]
    adr     x11, tk_ticks
    ldr     x11, [x11]
    cmp     x10, x11
    b.hs    tk_irq_last
    adr     x11, tk_deadline       // re-arm: previous deadline + period
    ldr     x12, [x11]
    adr     x13, tk_period
    ldr     x13, [x13]
    add     x12, x12, x13
    str     x12, [x11]
    msr     cntv_cval_el0, x12     // the output line drops (unless already late)
    b       tk_irq_eoi
tk_irq_last:
    msr     cntv_ctl_el0, xzr      // disable: the output line drops
tk_irq_eoi:
    isb
    msr     ICC_EOIR1_EL1, x19
    adr     x0, tk_msg_tick
    bl      rt_puts
    adr     x9, tk_count
    ldr     x0, [x9]
    bl      rt_put_dec
    adr     x0, tk_msg_at
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_dec
    bl      rt_newline
    adr     x9, tk_count
    ldr     x10, [x9]
    adr     x11, tk_ticks
    ldr     x11, [x11]
    cmp     x10, x11
    b.hs    tk_finish              // last tick: print "ticker done" and power off
tk_irq_ret:
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret

tk_msg_head:  .asciz "ticker: period "
tk_msg_ns:    .asciz " ns, "
tk_msg_start: .asciz " ticks, start "
tk_msg_tick:  .asciz "tick "
tk_msg_at:    .asciz " at "
tk_msg_done:  .asciz "ticker done\n"

// Data written at run time lives on its own page (no stores to pages holding code).
.p2align 12
tk_data:
tk_period:   .quad 0
tk_ticks:    .quad 0
tk_deadline: .quad 0               // absolute CNTVCT of the armed tick
tk_count:    .quad 0               // ticks taken
.p2align 12
