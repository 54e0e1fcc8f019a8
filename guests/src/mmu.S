// mmu: builds stage-1 translation tables, turns the MMU on, writes through aliased mappings
// (two TTBR0 views of the same pages and a TTBR1 one), reads back through a third, prints a
// checksum. Runs on the primary vCPU only. The workload of the translation tests.
// Parameters: p0 pages (1..256), p1 words (1..512), p2 seed, p3 faults.
//
// Physical layout (fixed; RAM_BASE = 0x80000000, RAM of at least 16 MiB):
//   tables  T = RAM_BASE + 2 MiB, ten 4 KiB tables, zeroed by the guest first:
//     T+0x0000 L0 (TTBR0)     T+0x1000 L1 low      T+0x2000 L2 for VA 0-1 GiB (devices)
//     T+0x3000 L2 for VA 2-3 GiB (RAM identity)    T+0x4000 L2 for VA 4-5 GiB (aliases)
//     T+0x5000 L3 of alias A  T+0x6000 L0 (TTBR1)  T+0x7000 L1 high     T+0x8000 L2 high
//     T+0x9000 L3 of alias C
//   data    D = RAM_BASE + 4 MiB, `pages` 4 KiB pages.
// Translation: 4 KiB granule, 48-bit VAs in both halves (T0SZ = T1SZ = 16), IPS 40 bits,
// MAIR attr0 = normal write-back (0xff), attr1 = Device-nGnRnE (0x00). SCTLR_EL1 gets M, C, I.
//   identity  2 MiB blocks: VA 0x09000000 (UART, MMDS; device) and the first min(RAM, 1 GiB)
//             of RAM (normal; code, stack, data and tables).
//   alias A   VA 0x1_0000_0000 + 4096 i -> page (pages - 1 - i) of D: level-3 page descriptors.
//   alias B   VA 0x1_0020_0000: one 2 MiB block descriptor over [RAM_BASE + 4 MiB, + 6 MiB).
//   alias C   VA 0xffff_8000_0000_0000 + 4096 i -> page i of D (TTBR1): level-3 pages. With
//             faults bit 1 the page after the last (i = pages) maps page 0 of D read-only.
// Work, after the MMU is on (w = 8-byte word index 0..words-1 of a page, i = page index):
//   1. through A, even i only: word w of A page i = (seed + (i << 32) + w) * 0x9E3779B97F4A7C15
//      (mod 2^64);
//   2. through C, every i: each even word w of C page i: load, xor with (i << 16 | w) + 1, store
//      back (so a data page that step 1 left alone is read before it is written);
//   3. through B: fold words 0..words-1 of pages 0..pages-1 of D, in that order, into
//      c = 0xCBF29CE484222325; c = (c ^ word) * 0x100000001B3; c ^= c >> 29 (as memwalk).
// Output: "mmu on\n" after the MMU is on, then "mmu checksum: <c as 16 hex digits>\n".
// faults (bit mask), after the checksum; each fault is taken by this guest's own handler,
// which prints "mmu fault: esr=<ESR_EL1> far=<FAR_EL1>\n" (16 hex digits each) and skips the
// faulting instruction:
//   bit 0: a load from VA 0x2_0000_03f8, which no table maps (translation fault, level 1);
//   bit 1: a store to byte 8 of the read-only alias C page (permission fault, level 3).
// Then "mmu done\n" and power off. Bad parameters: "mmu: bad parameters\n", power off.
// Registers held: x19 pages, x20 words, x21 seed, x22 faults, x23 T, x24 D.

.equ MMU_T,         0x80200000
.equ MMU_D,         0x80400000
.equ VA_A,          0x100000000
.equ VA_B,          0x100200000
.equ VA_UNMAPPED,   0x200000000
// Descriptor bits (Arm ARM D5.3): valid, table/page, AttrIndx [4:2], SH [9:8], AF, AP[2].
.equ D_TABLE,       0x3
.equ D_PAGE,        0x703          // page, AttrIndx 0, inner shareable, AF
.equ D_BLOCK,       0x701          // block, AttrIndx 0, inner shareable, AF
.equ D_DEV_BLOCK,   0x405          // block, AttrIndx 1 (device), AF
.equ D_RO,          0x80           // AP[2]: read-only

main:
    stp     x29, x30, [sp, #-64]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    mov     x0, #0
    bl      rt_param
    mov     x19, x0                // pages
    mov     x0, #1
    bl      rt_param
    mov     x20, x0                // words
    mov     x0, #2
    bl      rt_param
    mov     x21, x0                // seed
    mov     x0, #3
    bl      rt_param
    mov     x22, x0                // faults
    cbz     x19, mmu_bad
    cmp     x19, #256
    b.hi    mmu_bad
    cbz     x20, mmu_bad
    cmp     x20, #512
    b.hi    mmu_bad
    ldr     x23, =MMU_T
    ldr     x24, =MMU_D

    // ---- zero the ten tables
    mov     x0, x23
    add     x1, x23, #0x9000
    add     x1, x1, #0x1000
mmu_zero:
    stp     xzr, xzr, [x0], #16
    cmp     x0, x1
    b.lo    mmu_zero

    // ---- TTBR0: L0[0] -> L1 low; L1[0] -> L2 dev, L1[2] -> L2 RAM, L1[4] -> L2 aliases
    add     x0, x23, #0x1000
    orr     x0, x0, #D_TABLE
    str     x0, [x23]
    add     x1, x23, #0x1000       // x1 = L1 low
    add     x0, x23, #0x2000
    orr     x0, x0, #D_TABLE
    str     x0, [x1]
    add     x0, x23, #0x3000
    orr     x0, x0, #D_TABLE
    str     x0, [x1, #16]
    add     x0, x23, #0x4000
    orr     x0, x0, #D_TABLE
    str     x0, [x1, #32]
    // L2 dev[72]: 2 MiB device block at 0x09000000
    ldr     x0, =(0x09000000 + D_DEV_BLOCK)
    add     x1, x23, #0x2000
    str     x0, [x1, #(72 * 8)]
    // L2 RAM: identity blocks over min(RAM, 1 GiB)
    adr     x9, rt_params_ptr
    ldr     x9, [x9]
    ldr     x2, [x9, #24]          // RAM size
    lsr     x2, x2, #21            // in 2 MiB blocks
    cmp     x2, #512
    mov     x3, #512
    csel    x2, x2, x3, lo
    add     x1, x23, #0x3000
    ldr     x0, =(0x80000000 + D_BLOCK)
mmu_ram_blocks:
    str     x0, [x1], #8
    add     x0, x0, #0x200000
    subs    x2, x2, #1
    b.ne    mmu_ram_blocks
    // L2 aliases[0] -> L3 of alias A; [1] = alias B block over D
    add     x1, x23, #0x4000
    add     x0, x23, #0x5000
    orr     x0, x0, #D_TABLE
    str     x0, [x1]
    ldr     x0, =(0x80400000 + D_BLOCK)
    str     x0, [x1, #8]
    // L3 of alias A: entry i -> D page (pages - 1 - i)
    add     x1, x23, #0x5000
    mov     x2, #0
mmu_l3a:
    sub     x3, x19, x2
    sub     x3, x3, #1
    add     x0, x24, x3, lsl #12
    add     x0, x0, #D_PAGE
    str     x0, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, x19
    b.lo    mmu_l3a

    // ---- TTBR1: L0[256] -> L1 high; L1[0] -> L2 high; L2[0] -> L3 of alias C
    add     x1, x23, #0x6000
    add     x0, x23, #0x7000
    orr     x0, x0, #D_TABLE
    str     x0, [x1, #(256 * 8)]
    add     x1, x23, #0x7000
    add     x0, x23, #0x8000
    orr     x0, x0, #D_TABLE
    str     x0, [x1]
    add     x1, x23, #0x8000
    add     x0, x23, #0x9000
    orr     x0, x0, #D_TABLE
    str     x0, [x1]
    // L3 of alias C: entry i -> D page i; with faults bit 1, entry `pages` -> D page 0, read-only
    add     x1, x23, #0x9000
    mov     x2, #0
mmu_l3c:
    add     x0, x24, x2, lsl #12
    add     x0, x0, #D_PAGE
    str     x0, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, x19
    b.lo    mmu_l3c
    tbz     x22, #1, mmu_l3c_done
    ldr     x0, =(0x80400000 + D_PAGE + D_RO)
    str     x0, [x1, x2, lsl #3]
mmu_l3c_done:

    // ---- translation registers, then the MMU
    ldr     x0, =0xff              // MAIR_EL1: attr0 normal WB, attr1 Device-nGnRnE
    msr     mair_el1, x0
    // TCR_EL1: T0SZ 16, IRGN0/ORGN0 WB-WA, SH0 inner, TG0 4K; T1SZ 16, IRGN1/ORGN1, SH1, TG1 4K;
    // IPS 0b010 (40 bits)
    ldr     x0, =0x2B5103510
    msr     tcr_el1, x0
    msr     ttbr0_el1, x23
    add     x0, x23, #0x6000
    msr     ttbr1_el1, x0
    isb
    tlbi    vmalle1
    dsb     ish
    mrs     x0, sctlr_el1
    orr     x0, x0, #(1 << 0)      // M
    orr     x0, x0, #(1 << 2)      // C
    orr     x0, x0, #(1 << 12)     // I
    msr     sctlr_el1, x0
    isb
mmu_on:
    adr     x0, mmu_msg_on
    bl      rt_puts

    // ---- 1. stores through the even pages of alias A
    movz    x5, #0x7C15            // K = 0x9E3779B97F4A7C15
    movk    x5, #0x7F4A, lsl #16
    movk    x5, #0x79B9, lsl #32
    movk    x5, #0x9E37, lsl #48
    mov     x2, #0                 // i
mmu_wa_page:
    mov     x0, #VA_A
    add     x0, x0, x2, lsl #12
    mov     x3, #0                 // w
mmu_wa_word:
    add     x4, x21, x2, lsl #32
    add     x4, x4, x3
    mul     x4, x4, x5
    str     x4, [x0, x3, lsl #3]
    add     x3, x3, #1
    cmp     x3, x20
    b.lo    mmu_wa_word
    add     x2, x2, #2
    cmp     x2, x19
    b.lo    mmu_wa_page

    // ---- 2. read-modify-write of the even words through alias C (TTBR1)
    mov     x2, #0
mmu_wc_page:
    movz    x0, #0x8000, lsl #32
    movk    x0, #0xffff, lsl #48
    add     x0, x0, x2, lsl #12
    mov     x3, #0
mmu_wc_word:
    ldr     x4, [x0, x3, lsl #3]
    orr     x6, x3, x2, lsl #16
    add     x6, x6, #1
    eor     x4, x4, x6
    str     x4, [x0, x3, lsl #3]
    add     x3, x3, #2
    cmp     x3, x20
    b.lo    mmu_wc_word
    add     x2, x2, #1
    cmp     x2, x19
    b.lo    mmu_wc_page

    // ---- 3. checksum through alias B (2 MiB block over D)
    movz    x5, #0x2325            // c = 0xCBF29CE484222325
    movk    x5, #0x8422, lsl #16
    movk    x5, #0x9CE4, lsl #32
    movk    x5, #0xCBF2, lsl #48
    movz    x6, #0x01B3            // P = 0x100000001B3
    movk    x6, #0x0100, lsl #32
    mov     x2, #0
mmu_sum_page:
    ldr     x0, =VA_B
    add     x0, x0, x2, lsl #12
    mov     x3, #0
mmu_sum_word:
    ldr     x7, [x0, x3, lsl #3]
    eor     x5, x5, x7
    mul     x5, x5, x6
    eor     x5, x5, x5, lsr #29
    add     x3, x3, #1
    cmp     x3, x20
    b.lo    mmu_sum_word
    add     x2, x2, #1
    cmp     x2, x19
    b.lo    mmu_sum_page
    mov     x24, x5                // D is not needed any more
    adr     x0, mmu_msg_sum
    bl      rt_puts
    mov     x0, x24
    bl      rt_put_hex
    bl      rt_newline

    // ---- faults, taken by mmu_vectors
    tst     x22, #3
    b.eq    mmu_finish
    adr     x0, mmu_vectors
    msr     vbar_el1, x0
    isb
    tbz     x22, #0, mmu_no_translation_fault
    mov     x0, #VA_UNMAPPED
    ldr     x1, [x0, #0x3f8]       // translation fault, level 1
mmu_no_translation_fault:
    tbz     x22, #1, mmu_finish
    movz    x0, #0x8000, lsl #32
    movk    x0, #0xffff, lsl #48
    add     x0, x0, x19, lsl #12
    str     x21, [x0, #8]          // permission fault, level 3

mmu_finish:
    adr     x0, mmu_msg_done
    bl      rt_puts
mmu_return:
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x29, x30, [sp], #64
    ret                            // -> rt_poweroff

mmu_bad:
    adr     x0, mmu_msg_bad
    bl      rt_puts
    b       mmu_return

// mmu_sync: report ESR_EL1 and FAR_EL1, return past the faulting instruction. Saves what
// rt_puts/rt_put_hex clobber (x0-x15, x30) on the stack.
mmu_sync:
    stp     x0, x1, [sp, #-144]!
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    str     x30, [sp, #128]
    adr     x0, mmu_msg_fault
    bl      rt_puts
    mrs     x0, esr_el1
    bl      rt_put_hex
    adr     x0, mmu_msg_far
    bl      rt_puts
    mrs     x0, far_el1
    bl      rt_put_hex
    bl      rt_newline
    mrs     x0, elr_el1
    add     x0, x0, #4
    msr     elr_el1, x0
    ldr     x30, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp], #144
    eret

secondary_main:
    ret

mmu_msg_on:     .asciz "mmu on\n"
mmu_msg_sum:    .asciz "mmu checksum: "
mmu_msg_fault:  .asciz "mmu fault: esr="
mmu_msg_far:    .asciz " far="
mmu_msg_done:   .asciz "mmu done\n"
mmu_msg_bad:    .asciz "mmu: bad parameters\n"

// The guest's own vector table: synchronous exceptions at the current EL go to mmu_sync.
.p2align 11
mmu_vectors:
    b       rt_unexpected          // current EL, SP0: sync
.p2align 7
    b       rt_irq_entry
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7
    b       mmu_sync               // current EL, SPx: sync
.p2align 7
    b       rt_irq_entry
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected
.p2align 7
    b       rt_unexpected          // lower EL, AArch64
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
.ltorg
.p2align 2
