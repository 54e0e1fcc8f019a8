// start.S - entry of the built-in C guests (GNU as; built by guests/build.py with
// aarch64-linux-gnu-gcc). Boot contract (docs/machine.md): EL1h, MMU off, DAIF masked,
// x0 = DTB, x1 = parameter block or 0. Sets the stack, enables FP/SIMD (GCC -O2 emits SIMD),
// zeroes .bss, calls cmain(params), then powers off with PSCI SYSTEM_OFF.
    .section .text.start, "ax"
    .global _start
_start:
    ldr     x9, =__stack_top
    mov     sp, x9
    mov     x9, #(3 << 20)              // CPACR_EL1.FPEN = 0b11: no FP/SIMD traps (DDI 0487 D13.2.30)
    msr     cpacr_el1, x9
    isb
    ldr     x9, =__bss_start
    ldr     x10, =__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  mov     x0, x1                      // the parameter block (0 when a loader gives none)
    bl      cmain
    movz    x0, #0x0008                 // PSCI SYSTEM_OFF 0x84000008 (DEN0022 table 5)
    movk    x0, #0x8400, lsl #16
    hvc     #0
3:  wfi
    b       3b
