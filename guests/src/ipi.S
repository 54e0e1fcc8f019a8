// ipi: a token passed around a ring of all vCPUs with SGIs.
// n = vCPU count (parameter block), vCPU i's successor is (i + 1) mod n. The token is SGI 1
// (Group 1, sent with ICC_SGI1R_EL1: TargetList bit Aff0 mod 16, RS = Aff0 / 16, Aff1-3 = 0).
// Every vCPU sets up its redistributor (GICR_WAKER handshake, SGI 1 enabled in
// GICR_ISENABLER0) and CPU interface (PMR 0xff, Group 1 enabled), keeps its index in
// TPIDR_EL1, unmasks IRQs and sleeps in a `wfi` loop. The primary also sets GICD_CTLR, starts
// vCPUs 1..n-1 with PSCI CPU_ON, waits until all have reported ready, then starts the ring by
// sending SGI 1 to itself.
// On SGI 1 a vCPU (in its IRQ handler) appends its index to the shared visit log (one byte per
// visit) and sends SGI 1 to its successor, except that vCPU 0 finishes instead when the log
// already holds rounds * n visits. So the log is 0 1 .. n-1 repeated `rounds` times, and the
// token's last hop is from vCPU n-1 back to vCPU 0, which prints the log and powers off.
// Parameters: p0 = rounds (0 .. 100000).
// Output: "ipi: <rounds> rounds, visits" followed by " <index>" for each logged visit in
// order, then "\n" and PSCI SYSTEM_OFF. With rounds = 0 the line is "ipi: 0 rounds, visits\n".
// Errors: "ipi: rounds must be at most 100000\n", or
// "ipi: CPU_ON <index> failed: <PSCI result as 16 hex digits>\n", then power off.
// Other INTIDs are acknowledged and EOId without effect, spurious ones (>= 1020) ignored.
// Shared data lives on its own page after the code, the log on the pages after it (at most
// 100000 * 32 bytes, well below the stacks at RAM_BASE + 15 MiB).

main:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    mov     x0, #0
    bl      rt_param
    movz    x9, #0x86a0            // 100000 = 0x186a0
    movk    x9, #0x1, lsl #16
    cmp     x0, x9
    b.hi    ipi_bad_rounds
    adr     x9, ipi_rounds
    str     x0, [x9]
    bl      rt_vcpu_count
    mov     x19, x0                // x19 = n
    adr     x9, ipi_nvcpus
    str     x19, [x9]
    adr     x10, ipi_rounds
    ldr     x10, [x10]
    mul     x10, x10, x19
    adr     x9, ipi_total
    str     x10, [x9]              // visits to log: rounds * n
    adr     x9, rt_irq_ptr
    adr     x10, ipi_irq
    str     x10, [x9]
    movz    x9, #0x0800, lsl #16   // GICD_BASE
    mov     w10, #0x12             // GICD_CTLR: ARE | EnableGrp1
    str     w10, [x9]
    mov     x0, #0
    bl      ipi_cpu_setup
    mov     x20, #1                // x20 = next vCPU to start
ipi_start_loop:
    cmp     x20, x19
    b.hs    ipi_started
    mov     x0, x20
    bl      rt_cpu_on
    cbnz    x0, ipi_cpu_on_failed
    add     x20, x20, #1
    b       ipi_start_loop
ipi_started:
    sub     x20, x19, #1
    adr     x9, ipi_ready
ipi_wait_ready:
    ldar    x10, [x9]              // pairs with the secondaries' LDADDAL
    cmp     x10, x20
    b.lo    ipi_wait_ready
    mov     x0, #0                 // start the ring: the token to ourselves
    bl      ipi_send
    msr     daifclr, #2
ipi_idle0:
    wfi
    b       ipi_idle0

secondary_main:
    mov     x19, x0
    bl      ipi_cpu_setup
    adr     x9, ipi_ready
    mov     x10, #1
    .word   0xF8EA012B             // ldaddal x10, x11, [x9]: ready += 1
    msr     daifclr, #2
ipi_idle:
    wfi
    b       ipi_idle

// ipi_cpu_setup(x0 = this vCPU's index): TPIDR_EL1, redistributor, CPU interface. Leaf.
ipi_cpu_setup:
    msr     tpidr_el1, x0
    movz    x9, #0x080A, lsl #16   // GICR_BASE
    lsl     x10, x0, #17           // + index * 0x20000
    add     x9, x9, x10
    str     wzr, [x9, #0x14]       // GICR_WAKER: clear ProcessorSleep
    add     x9, x9, #0x10, lsl #12 // SGI_base
    mov     w10, #(1 << 1)
    str     w10, [x9, #0x100]      // GICR_ISENABLER0: SGI 1
    mov     x10, #0xff
    msr     ICC_PMR_EL1, x10
    mov     x10, #1
    msr     ICC_IGRPEN1_EL1, x10
    isb
    ret

// ipi_send(x0 = target vCPU index): SGI 1 to that vCPU. Leaf.
ipi_send:
    dsb     ish                    // the log is visible before the token moves on
    and     x10, x0, #15
    mov     x11, #1
    lsl     x11, x11, x10          // TargetList bit
    lsr     x10, x0, #4
    orr     x11, x11, x10, lsl #44 // RS
    orr     x11, x11, #(1 << 24)   // INTID 1
    msr     ICC_SGI1R_EL1, x11
    isb
    ret

// IRQ handler (IRQs masked, no nesting). Preserves x19-x29.
ipi_irq:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    mrs     x19, ICC_IAR1_EL1
    cmp     x19, #1020
    b.hs    ipi_irq_ret            // spurious
    msr     ICC_EOIR1_EL1, x19     // SGIs are edge-like: EOI at once
    cmp     x19, #1
    b.ne    ipi_irq_ret
    mrs     x20, tpidr_el1         // x20 = my index
    adr     x9, ipi_count
    ldr     x10, [x9]
    adr     x11, ipi_total
    ldr     x11, [x11]
    cbnz    x20, ipi_irq_visit
    cmp     x10, x11
    b.hs    ipi_finish             // vCPU 0 with every visit logged
ipi_irq_visit:
    adr     x12, ipi_log
    strb    w20, [x12, x10]
    add     x10, x10, #1
    str     x10, [x9]
    adr     x11, ipi_nvcpus
    ldr     x11, [x11]
    add     x0, x20, #1            // successor
    cmp     x0, x11
    csel    x0, xzr, x0, hs
    bl      ipi_send
ipi_irq_ret:
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret

ipi_finish:
    adr     x0, ipi_msg_head
    bl      rt_puts
    adr     x9, ipi_rounds
    ldr     x0, [x9]
    bl      rt_put_dec
    adr     x0, ipi_msg_visits
    bl      rt_puts
    mov     x19, #0                // x19 = log position
ipi_print_loop:
    adr     x9, ipi_count
    ldr     x9, [x9]
    cmp     x19, x9
    b.hs    ipi_print_done
    mov     w0, #' '
    bl      rt_putc
    adr     x9, ipi_log
    ldrb    w0, [x9, x19]
    bl      rt_put_dec
    add     x19, x19, #1
    b       ipi_print_loop
ipi_print_done:
    bl      rt_newline
    b       rt_poweroff

ipi_bad_rounds:
    adr     x0, ipi_msg_bad
    bl      rt_puts
    b       rt_poweroff

ipi_cpu_on_failed:
    mov     x19, x0                // PSCI result
    adr     x0, ipi_msg_fail
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_dec
    adr     x0, ipi_msg_fail2
    bl      rt_puts
    mov     x0, x19
    bl      rt_put_hex
    bl      rt_newline
    b       rt_poweroff

ipi_msg_head:   .asciz "ipi: "
ipi_msg_visits: .asciz " rounds, visits"
ipi_msg_bad:    .asciz "ipi: rounds must be at most 100000\n"
ipi_msg_fail:   .asciz "ipi: CPU_ON "
ipi_msg_fail2:  .asciz " failed: "

.p2align 12
ipi_data:
ipi_rounds:  .quad 0
ipi_nvcpus:  .quad 0
ipi_total:   .quad 0               // rounds * n
ipi_count:   .quad 0               // visits logged
.p2align 6
ipi_ready:   .quad 0               // secondaries ready for SGIs
.p2align 12
ipi_log:                           // one byte per visit, beyond the end of the image
