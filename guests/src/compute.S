// compute: a CPU-bound checksum loop (the execution-speed workload). Primary vCPU only.
// Parameters: p0 iterations.
// State (all mod 2^64): x = 0x9E3779B97F4A7C15, l = 1, c = 0. Each iteration:
//   x ^= x << 13; x ^= x >> 7; x ^= x << 17          (xorshift64)
//   l = l * 6364136223846793005 + 1442695040888963407 (Knuth's MMIX LCG)
//   c = c + x * l                                     (multiply-accumulate)
//   c = l ^ ror(c, 23)
// 8 instructions per iteration, no memory access in the loop.
// Output: "compute: <iterations> iterations, checksum <c as 16 hex digits>\n", then power off.

main:
    stp     x29, x30, [sp, #-32]!
    stp     x19, x20, [sp, #16]
    mov     x0, #0
    bl      rt_param
    mov     x19, x0                // iterations (kept for the message)
    mov     x9, x0                 // loop counter
    movz    x10, #0x7C15           // x
    movk    x10, #0x7F4A, lsl #16
    movk    x10, #0x79B9, lsl #32
    movk    x10, #0x9E37, lsl #48
    mov     x11, #1                // l
    mov     x12, #0                // c
    movz    x13, #0x7F2D           // LCG multiplier 0x5851F42D4C957F2D
    movk    x13, #0x4C95, lsl #16
    movk    x13, #0xF42D, lsl #32
    movk    x13, #0x5851, lsl #48
    movz    x14, #0x814F           // LCG increment 0x14057B7EF767814F
    movk    x14, #0xF767, lsl #16
    movk    x14, #0x7B7E, lsl #32
    movk    x14, #0x1405, lsl #48
    cbz     x9, cp_loop_end
cp_loop:
    eor     x10, x10, x10, lsl #13
    eor     x10, x10, x10, lsr #7
    eor     x10, x10, x10, lsl #17
    madd    x11, x11, x13, x14     // l = l * a + b
    madd    x12, x10, x11, x12     // c += x * l
    eor     x12, x11, x12, ror #23 // c = l ^ ror(c, 23)
    subs    x9, x9, #1
    b.ne    cp_loop
cp_loop_end:
    mov     x20, x12
    adr     x0, cp_msg_head
    bl      rt_puts
    mov     x0, x19
    bl      rt_put_dec
    adr     x0, cp_msg_mid
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_hex
    bl      rt_newline
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret                            // -> rt_poweroff

secondary_main:
    ret

cp_msg_head: .asciz "compute: "
cp_msg_mid:  .asciz " iterations, checksum "
.p2align 2
