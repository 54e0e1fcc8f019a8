// smp: SMP bring-up and shared-memory atomics.
// The primary starts vCPUs 1..n-1 with PSCI CPU_ON (n = vCPU count from the parameter block).
// Every vCPU, the primary included, then adds 1 to a shared 64-bit counter `iterations` times
// with an LDXR/STXR loop and `iterations` times with LSE STADD (LDADD into XZR), then adds 1 to a
// shared `done` counter with LDADDAL (release). The primary spins (LDAR) until done == n, reads the
// counter and prints it; secondaries return from secondary_main (PSCI CPU_OFF).
// Parameters: p0 = iterations (per vCPU per method).
// Output: "smp: <n> vCPUs, counter = <total>\n" with total = 2 * iterations * n, then power off.
// If CPU_ON fails: "smp: CPU_ON <index> failed: <PSCI result as 16 hex digits>\n", power off.
// The shared counters live on their own page (smp_data): stores to a page holding translated code
// would take the emulator's self-modifying-code slow path.

main:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    bl      rt_vcpu_count
    mov     x19, x0                // x19 = n
    mov     x20, #1                // x20 = next vCPU to start
smp_start_loop:
    cmp     x20, x19
    b.hs    smp_started
    mov     x0, x20
    bl      rt_cpu_on
    cbnz    x0, smp_cpu_on_failed
    add     x20, x20, #1
    b       smp_start_loop
smp_started:
    bl      smp_work
    adr     x9, smp_done
smp_wait:
    ldar    x10, [x9]              // acquire: pairs with the workers' LDADDAL on done
    cmp     x10, x19
    b.lo    smp_wait
    adr     x0, smp_msg_head
    bl      rt_puts
    mov     x0, x19
    bl      rt_put_dec
    adr     x0, smp_msg_mid
    bl      rt_puts
    adr     x9, smp_counter
    ldr     x0, [x9]
    bl      rt_put_dec
    bl      rt_newline
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret                            // -> rt_poweroff

smp_cpu_on_failed:
    mov     x19, x0                // PSCI result
    adr     x0, smp_msg_fail
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_dec
    adr     x0, smp_msg_fail2
    bl      rt_puts
    mov     x0, x19
    bl      rt_put_hex
    bl      rt_newline
    b       rt_poweroff

secondary_main:
    stp     x29, x30, [sp, #-16]!
    bl      smp_work
    ldp     x29, x30, [sp], #16
    ret                            // -> rt_cpu_off

// smp_work: the per-vCPU increments, then done += 1. Clobbers x0-x15.
smp_work:
    stp     x29, x30, [sp, #-16]!
    mov     x0, #0
    bl      rt_param               // x0 = iterations
    adr     x9, smp_counter
    mov     x12, x0
    cbz     x12, smp_llsc_end
smp_llsc_loop:
    ldxr    x10, [x9]
    add     x10, x10, #1
    stxr    w11, x10, [x9]
    cbnz    w11, smp_llsc_loop     // lost the reservation: retry
    subs    x12, x12, #1
    b.ne    smp_llsc_loop
smp_llsc_end:
    mov     x12, x0
    mov     x10, #1
    cbz     x12, smp_lse_end
smp_lse_loop:
    .word   0xF82A013F             // stadd x10, [x9] (= ldadd x10, xzr, [x9]): counter += 1
    subs    x12, x12, #1
    b.ne    smp_lse_loop
smp_lse_end:
    adr     x9, smp_done
    .word   0xF8EA012B             // ldaddal x10, x11, [x9]: done += 1, acquire-release
    ldp     x29, x30, [sp], #16
    ret

smp_msg_head:  .asciz "smp: "
smp_msg_mid:   .asciz " vCPUs, counter = "
smp_msg_fail:  .asciz "smp: CPU_ON "
smp_msg_fail2: .asciz " failed: "

.p2align 12
smp_data:
smp_counter:   .quad 0             // the shared counter
.p2align 6
smp_done:      .quad 0             // vCPUs finished
.p2align 12
