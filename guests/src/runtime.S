// runtime.S - the shared guest runtime, assembled in front of every built-in guest.
// Boot contract (docs/machine.md): EL1h, MMU off, DAIF masked, x0 = DTB, x1 = parameter block
// [magic, vcpus, ram_base, ram_size, n, p0, p1, ...] (u64 each). The guest provides `main`
// (primary vCPU) and `secondary_main` (x0 = vCPU index); both may return to power off.
// Calling convention: AAPCS64. Runtime functions clobber only x0-x15 and the flags, and
// keep the stack 16-byte aligned.

_start:
    b       rt_start

// ---- data the runtime keeps (8-byte aligned) ---------------------------------------------
.p2align 3
rt_params_ptr:  .quad 0
rt_irq_ptr:     .quad 0            // guest IRQ handler (0 = none); called with interrupts masked

rt_start:
    adr     x9, rt_params_ptr
    str     x1, [x9]
    mov     x0, #0
    bl      rt_cpu_init
    bl      main
    b       rt_poweroff

// Entry point for secondaries started with PSCI CPU_ON; x0 = context id = vCPU index.
rt_secondary_entry:
    mov     x19, x0
    bl      rt_cpu_init
    mov     x0, x19
    bl      secondary_main
    b       rt_cpu_off

// rt_cpu_init(x0 = vCPU index): stack, vector table, FP/SIMD access.
rt_cpu_init:
    // 32 KiB stacks below RAM_BASE + 16 MiB: top = 0x81000000 - index * 0x8000
    movz    x9, #0x8100, lsl #16
    lsl     x10, x0, #15
    sub     x9, x9, x10
    mov     sp, x9
    adr     x9, rt_vectors
    msr     vbar_el1, x9
    mov     x9, #(3 << 20)         // CPACR_EL1.FPEN = 0b11: no FP/SIMD traps
    msr     cpacr_el1, x9
    isb
    ret

// ---- parameters ------------------------------------------------------------------------------
// rt_param(x0 = n) -> x0 = guest parameter n
rt_param:
    adr     x9, rt_params_ptr
    ldr     x9, [x9]
    add     x9, x9, #40
    ldr     x0, [x9, x0, lsl #3]
    ret

// rt_vcpu_count() -> x0
rt_vcpu_count:
    adr     x9, rt_params_ptr
    ldr     x9, [x9]
    ldr     x0, [x9, #8]
    ret

// ---- PSCI ------------------------------------------------------------------------------------------
// rt_psci(x0 = function id, x1..x3 = arguments) -> x0
rt_psci:
    hvc     #0
    ret

rt_poweroff:
    movz    x0, #0x0008
    movk    x0, #0x8400, lsl #16   // SYSTEM_OFF
    hvc     #0
    b       rt_poweroff

rt_cpu_off:
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16   // CPU_OFF
    hvc     #0
    b       rt_cpu_off

// rt_cpu_on(x0 = vCPU index) -> x0 = PSCI result. Starts the vCPU at rt_secondary_entry.
rt_cpu_on:
    mov     x1, x0                 // target MPIDR: Aff0 = index
    mov     x3, x0                 // context id = index
    adr     x2, rt_secondary_entry
    movz    x0, #0x0003
    movk    x0, #0xC400, lsl #16   // CPU_ON (SMC64)
    hvc     #0
    ret

// ---- UART (PL011 at 0x09000000) --------------------------------------------------------------
// rt_putc(w0 = byte)
rt_putc:
    movz    x9, #0x0900, lsl #16
rt_putc_wait:
    ldr     w10, [x9, #0x18]       // UARTFR
    tbnz    w10, #5, rt_putc_wait  // TXFF
    strb    w0, [x9]               // UARTDR
    ret

// rt_puts(x0 = NUL-terminated string)
rt_puts:
    stp     x29, x30, [sp, #-16]!
    mov     x11, x0
rt_puts_loop:
    ldrb    w0, [x11], #1
    cbz     w0, rt_puts_done
    bl      rt_putc
    b       rt_puts_loop
rt_puts_done:
    ldp     x29, x30, [sp], #16
    ret

// rt_put_hex(x0): 16 hex digits, no prefix
rt_put_hex:
    stp     x29, x30, [sp, #-16]!
    mov     x11, x0
    mov     x13, #60
rt_put_hex_loop:
    lsr     x0, x11, x13
    and     x0, x0, #0xf
    cmp     x0, #10
    add     x14, x0, #'0'
    add     x15, x0, #('a' - 10)
    csel    x0, x14, x15, lo
    bl      rt_putc
    subs    x13, x13, #4
    b.ge    rt_put_hex_loop
    ldp     x29, x30, [sp], #16
    ret

// rt_put_dec(x0): unsigned decimal
rt_put_dec:
    stp     x29, x30, [sp, #-48]!
    add     x11, sp, #47           // digits are built backwards in a 32-byte buffer
    strb    wzr, [x11]
    mov     x13, #10
rt_put_dec_loop:
    udiv    x14, x0, x13
    msub    x15, x14, x13, x0
    add     x15, x15, #'0'
    sub     x11, x11, #1
    strb    w15, [x11]
    mov     x0, x14
    cbnz    x0, rt_put_dec_loop
    mov     x0, x11
    bl      rt_puts
    ldp     x29, x30, [sp], #48
    ret

rt_newline:
    mov     w0, #'\n'
    b       rt_putc

// ---- exceptions ------------------------------------------------------------------------------------
// Unexpected synchronous exceptions and SErrors print ESR/ELR/FAR and power the VM off. IRQs
// call the guest's handler at rt_irq_ptr (if set) with caller-saved registers preserved.
.p2align 11
rt_vectors:
    b       rt_unexpected          // current EL, SP0: sync
.p2align 7
    b       rt_irq_entry           //                  IRQ
.p2align 7
    b       rt_unexpected          //                  FIQ
.p2align 7
    b       rt_unexpected          //                  SError
.p2align 7
    b       rt_unexpected          // current EL, SPx: sync
.p2align 7
    b       rt_irq_entry
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected          // lower EL, AArch64: sync
.p2align 7
    b       rt_irq_entry
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected          // lower EL, AArch32
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7

rt_irq_entry:
    stp     x0, x1, [sp, #-160]!
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    adr     x9, rt_irq_ptr
    ldr     x9, [x9]
    cbz     x9, rt_irq_done
    blr     x9
rt_irq_done:
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    ldp     x0, x1, [sp], #160
    eret

rt_unexpected:
    adr     x0, rt_msg_exc
    bl      rt_puts
    mrs     x0, esr_el1
    bl      rt_put_hex
    adr     x0, rt_msg_elr
    bl      rt_puts
    mrs     x0, elr_el1
    bl      rt_put_hex
    adr     x0, rt_msg_far
    bl      rt_puts
    mrs     x0, far_el1
    bl      rt_put_hex
    bl      rt_newline
    b       rt_poweroff

rt_msg_exc: .asciz "unexpected exception: esr="
rt_msg_elr: .asciz " elr="
rt_msg_far: .asciz " far="
.p2align 2
// ---- end of runtime; the guest follows --------------------------------------------------------
