// memwalk: dirties memory in a pattern each round and prints a checksum (the dirty-page
// tracking and snapshot workload). Runs on the primary vCPU only.
// Parameters: p0 pattern, p1 rounds (0 = forever), p2 region_mib, p3 stride, p4 writes,
// p5 seed, p6 hot_pages.
// Region: R = RAM_BASE + 16 MiB, S = region_mib MiB. It must end at least 2 MiB below the end of
// RAM (the DTB and parameter block window stays untouched).
// Each round r (1, 2, ...) makes `writes` 8-byte stores; write i (0-based within the round) goes
// to byte offset `off` of the region and stores ((r * 0x9E3779B97F4A7C15) ^ off) + i (mod 2^64).
// Offsets, by pattern (the position carries on from round to round):
//   0 sequential: consecutive 8-byte words, off = 0, 8, 16, ... wrapping at S, so each round
//     dirties writes*8/4096 contiguous pages and the dirty window moves along the region;
//   1 strided: cursor c = 0, stride, 2*stride, ... (mod S), off = c & ~7;
//   2 random: xorshift64 (x ^= x<<13; x ^= x>>7; x ^= x<<17), state seeded with `seed`
//     (seed 0 is replaced by 0x9E3779B97F4A7C15), stepped before each use;
//     off = 8 * ((x * (S/8)) >> 64);
//   3 hot set: as 2 but off = 8 * ((x * hot_pages*512) >> 64), i.e. within the first hot_pages
//     pages.
// After the stores, the round's offsets are replayed and the words read back from memory are
// folded in order into c = 0xCBF29CE484222325; c = (c ^ word) * 0x100000001B3; c ^= c >> 29.
// Output per round: "memwalk round <r>: <c as 16 hex digits>\n"; at the end "memwalk done\n",
// then power off. Errors (one line, then power off):
//   "memwalk: unknown pattern <p>\n"
//   "memwalk: region of <region_mib> MiB does not fit in <RAM MiB> MiB of RAM\n"
//   "memwalk: hot_pages must be 1 to <region pages>\n"
// Registers held across the run: x19 R, x20 S, x21 pattern, x22 rounds, x23 cursor step,
// x24 writes, x25 PRNG state, x26 words to pick from (random/hot), x27 cursor, x28 round, x29 checksum while printing.

main:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    mov     x0, #0
    bl      rt_param
    mov     x21, x0                // pattern
    mov     x0, #1
    bl      rt_param
    mov     x22, x0                // rounds
    mov     x0, #2
    bl      rt_param
    mov     x20, x0                // region_mib (converted to bytes below)
    mov     x0, #3
    bl      rt_param
    mov     x23, x0                // stride
    mov     x0, #4
    bl      rt_param
    mov     x24, x0                // writes
    mov     x0, #5
    bl      rt_param
    mov     x25, x0                // seed
    mov     x0, #6
    bl      rt_param
    mov     x26, x0                // hot_pages

    cmp     x21, #3
    b.hi    mw_bad_pattern
    // region check: region_mib in 1 .. RAM MiB - 18 (16 MiB below the region, 2 MiB DTB window)
    adr     x9, rt_params_ptr
    ldr     x9, [x9]
    ldr     x10, [x9, #24]         // RAM size in bytes
    lsr     x10, x10, #20
    subs    x11, x10, #18
    b.lo    mw_bad_region
    cbz     x20, mw_bad_region
    cmp     x20, x11
    b.hi    mw_bad_region
    lsl     x20, x20, #20          // S in bytes
    movz    x19, #0x8100, lsl #16  // R = RAM_BASE + 16 MiB (RAM_BASE is fixed, as in the runtime)

    // per-pattern setup
    mov     x27, #0                // cursor
    cmp     x21, #1
    b.eq    mw_setup_strided
    b.hi    mw_setup_random
    mov     x23, #8                // sequential: step one word
    b       mw_setup_done
mw_setup_strided:
    udiv    x9, x23, x20
    msub    x23, x9, x20, x23      // step = stride mod S
    b       mw_setup_done
mw_setup_random:
    cbnz    x25, mw_seed_ok
    movz    x25, #0x7C15
    movk    x25, #0x7F4A, lsl #16
    movk    x25, #0x79B9, lsl #32
    movk    x25, #0x9E37, lsl #48
mw_seed_ok:
    lsr     x9, x20, #3            // words in the region
    cmp     x21, #2
    b.eq    mw_setup_words
    lsr     x10, x20, #12          // pages in the region
    cbz     x26, mw_bad_hot
    cmp     x26, x10
    b.hi    mw_bad_hot
    lsl     x9, x26, #9            // words in the hot set
mw_setup_words:
    mov     x26, x9
mw_setup_done:
    mov     x28, #1

mw_round:
    // ---- stores: x0 cursor, x1 PRNG (advanced in place), x2 i, x4 round key
    movz    x4, #0x7C15
    movk    x4, #0x7F4A, lsl #16
    movk    x4, #0x79B9, lsl #32
    movk    x4, #0x9E37, lsl #48
    mul     x4, x4, x28            // round key = r * 0x9E3779B97F4A7C15
    mov     x0, x27
    mov     x1, x25
    mov     x2, #0
    cbz     x24, mw_stores_done
mw_store_loop:
    bl      mw_next                // x3 = offset
    eor     x5, x4, x3
    add     x5, x5, x2
    str     x5, [x19, x3]
    add     x2, x2, #1
    cmp     x2, x24
    b.lo    mw_store_loop
mw_stores_done:
    // ---- checksum: replay the offsets from the round's starting position
    mov     x6, x0                 // the next round starts where this one ended
    mov     x7, x1
    mov     x0, x27
    mov     x1, x25
    mov     x27, x6
    mov     x25, x7
    movz    x5, #0x2325            // c = 0xCBF29CE484222325
    movk    x5, #0x8422, lsl #16
    movk    x5, #0x9CE4, lsl #32
    movk    x5, #0xCBF2, lsl #48
    movz    x6, #0x01B3            // P = 0x100000001B3
    movk    x6, #0x0100, lsl #32
    mov     x2, #0
    cbz     x24, mw_sum_done
mw_sum_loop:
    bl      mw_next
    ldr     x7, [x19, x3]
    eor     x5, x5, x7
    mul     x5, x5, x6
    eor     x5, x5, x5, lsr #29
    add     x2, x2, #1
    cmp     x2, x24
    b.lo    mw_sum_loop
mw_sum_done:
    mov     x29, x5                // keep the checksum across the calls (x29 saved in main)
    adr     x0, mw_msg_round
    bl      rt_puts
    mov     x0, x28
    bl      rt_put_dec
    adr     x0, mw_msg_colon
    bl      rt_puts
    mov     x0, x29
    bl      rt_put_hex
    bl      rt_newline
    cbz     x22, mw_next_round     // rounds = 0: forever
    cmp     x28, x22
    b.hs    mw_finished
mw_next_round:
    add     x28, x28, #1
    b       mw_round

mw_finished:
    adr     x0, mw_msg_done
    bl      rt_puts
mw_return:
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp], #96
    ret                            // -> rt_poweroff

// mw_next: x3 = next offset; advances x0 (cursor) or x1 (PRNG). Leaf; uses x19-x26 only as inputs.
mw_next:
    cmp     x21, #2
    b.hs    mw_next_random
    and     x3, x0, #0xfffffffffffffff8
    add     x0, x0, x23
    cmp     x0, x20
    b.lo    mw_next_ret
    sub     x0, x0, x20            // cursor, step < S: one subtraction wraps
mw_next_ret:
    ret
mw_next_random:
    eor     x1, x1, x1, lsl #13
    eor     x1, x1, x1, lsr #7
    eor     x1, x1, x1, lsl #17
    umulh   x3, x1, x26            // word index in [0, x26)
    lsl     x3, x3, #3
    ret

mw_bad_pattern:
    adr     x0, mw_msg_pattern
    bl      rt_puts
    mov     x0, x21
    bl      rt_put_dec
    bl      rt_newline
    b       mw_return

mw_bad_region:
    adr     x0, mw_msg_region
    bl      rt_puts
    mov     x0, x20
    bl      rt_put_dec
    adr     x0, mw_msg_region2
    bl      rt_puts
    adr     x9, rt_params_ptr
    ldr     x9, [x9]
    ldr     x0, [x9, #24]
    lsr     x0, x0, #20
    bl      rt_put_dec
    adr     x0, mw_msg_region3
    bl      rt_puts
    b       mw_return

mw_bad_hot:
    adr     x0, mw_msg_hot
    bl      rt_puts
    lsr     x0, x20, #12
    bl      rt_put_dec
    bl      rt_newline
    b       mw_return

secondary_main:
    ret

mw_msg_round:   .asciz "memwalk round "
mw_msg_colon:   .asciz ": "
mw_msg_done:    .asciz "memwalk done\n"
mw_msg_pattern: .asciz "memwalk: unknown pattern "
mw_msg_region:  .asciz "memwalk: region of "
mw_msg_region2: .asciz " MiB does not fit in "
mw_msg_region3: .asciz " MiB of RAM\n"
mw_msg_hot:     .asciz "memwalk: hot_pages must be 1 to "
.p2align 2
