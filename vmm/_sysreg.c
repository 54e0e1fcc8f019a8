/*
 * The system-register filter's native fast path: Unicorn UC_HOOK_INSN callbacks for MRS, MSR
 * and SYS in C (vmm/native_sysreg.py registers them; vmm.vcpu keeps the Python hooks as the
 * reference and the only path when this is not built).
 *
 * Unicorn calls an MRS/MSR hook for every system-register access. Most (SP_EL0, TPIDR_EL1,
 * DAIF, ...) are not trapped by the VMM: Unicorn performs them itself once the hook returns 0.
 * From Python a call costs ~9 us and Linux makes tens of millions, so this filter decides in C:
 *   - a table of 2**16 flag bytes, indexed by (op0, op1, CRn, CRm, op2), says which accesses
 *     the VMM handles in Python (trapped reads and writes, observed writes); only those call
 *     the Python handler, through a function pointer (a ctypes callback);
 *   - the counters are served here: CNTPCT_EL0/CNTPCTSS_EL0/PMCCNTR_EL0 read the exact virtual
 *     time of the reading instruction, slice_start + emu_counter - 1 (vmm.icount), and
 *     CNTVCT_EL0/CNTVCTSS_EL0 that minus CNTVOFF, exactly what the Python timer model returns;
 *   - SYS: a TLBI (op0 = 1, CRn = 8) flushes this vCPU's TLB with uc_ctl and is counted (the
 *     VMM then flushes the other vCPUs before their next slice); other SYS run natively.
 * A block hook stops the slice in front of the first block that starts with an IRQ signalled
 * and PSTATE.I clear (the VMM then takes the IRQ there), so an unmask is precise without a
 * per-address code hook (those make Unicorn walk its hook list on every instruction).
 * The same block hook is the block counter (vmm/block_counter.py has the contract): it charges
 * each translation block its instruction count before the block runs, and stops in front of
 * the first block that would overrun the slice's budget.
 * Unicorn entry points (uc_reg_read/write, uc_ctl) come as function pointers from the binding's
 * own library, so this object links against nothing.
 */
#include <stddef.h>
#include <stdint.h>

#include "_sysreg.h"

static inline uint32_t sysreg_index(const uc_arm64_cp_reg *cp)
{
    return (cp->op0 & 3) << 14 | (cp->op1 & 7) << 11 | (cp->crn & 15) << 7 | (cp->crm & 15) << 3 | (cp->op2 & 7);
}

static void step_past(void *uc, uint8_t flags, microvm_sysreg_state *s)
{
    if (!(flags & SR_STEPS)) { /* Unicorn leaves the PC on a skipped MRS it does not implement */
        uint64_t pc;
        s->reg_read(uc, s->reg_pc, &pc);
        pc += 4;
        s->reg_write(uc, s->reg_pc, &pc);
    }
}

#define OP1_EL0_ACCESSIBLE 3 /* system-register op1 of the registers EL0 may access (DDI 0487 C5.3) */

/* An EL0 access to a register EL0 may not name is left to Unicorn, which makes it UNDEFINED (it
 * calls this hook before its own access checks, so serving it would leave the PC on it). */
static int el0_declines(void *uc, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s)
{
    if (cp->op1 == OP1_EL0_ACCESSIBLE) {
        return 0;
    }
    uint64_t pstate = 0;
    s->reg_read(uc, (int)s->reg_pstate, &pstate);
    return ((pstate >> 2) & 3) == 0;
}

uint32_t microvm_mrs(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s)
{
    uint32_t index = sysreg_index(cp);
    uint8_t flags = s->table[index];
    if ((flags & (SR_CONST | SR_READ_PY)) && el0_declines(uc, cp, s)) {
        return 0;
    }
    if (flags & SR_CONST) {
        for (uint32_t i = 0; i < s->n_consts && i < MICROVM_MAX_CONSTS; i++) {
            if (s->const_index[i] == index) {
                s->reg_write(uc, reg, &s->const_value[i]);
                step_past(uc, flags, s);
                s->native_reads += 1;
                return 1;
            }
        }
        return 0;
    }
    if (flags & (SR_PHYS_COUNT | SR_VIRT_COUNT)) {
        uint64_t now;
        if (s->counting) {
            uint64_t pc;
            s->reg_read(uc, s->reg_pc, &pc); /* Unicorn syncs the PC before a system-register hook */
            now = (uint64_t)s->slice_start + microvm_counted_at(s, pc) - 1;
        } else {
            now = (uint64_t)s->slice_start + *s->emu_counter - 1;
        }
        if (flags & SR_VIRT_COUNT) {
            now -= s->cntvoff;
        }
        s->reg_write(uc, reg, &now);
        step_past(uc, flags, s);
        s->native_reads += 1;
        return 1;
    }
    if (flags & SR_READ_PY) {
        s->python_calls += 1;
        return s->py_mrs(uc, reg, cp, NULL);
    }
    return 0;
}

uint32_t microvm_msr(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s)
{
    if ((s->table[sysreg_index(cp)] & SR_WRITE_PY) && !el0_declines(uc, cp, s)) {
        s->python_calls += 1;
        return s->py_msr(uc, reg, cp, NULL);
    }
    return 0;
}

/* TLBI VAE1, VAAE1, VALE1, VAALE1 and their IS/OS forms (DDI 0487 C5.5: op1 = 0, CRm = 7
 * local, 3 inner shareable, 1 outer shareable; op2 = 1, 3, 5, 7): one VA's translations. */
static int tlbi_by_va(const uc_arm64_cp_reg *cp)
{
    return cp->op1 == 0 && (cp->crm == 7 || cp->crm == 3 || cp->crm == 1) && (cp->op2 & 1);
}

#define TLBI_VA_BITS 44      /* Xt[43:0] = VA[55:12] */
#define TLBI_VA_SHIFT 12
#define VA_SIGN_BIT 55       /* VA[63:56] copy VA[55] */
#define PAGE_4K 4096
#define UC_PAGE 1024         /* Unicorn's TLB entry: TARGET_PAGE_SIZE on ARM */

/* Drop the translations a TLBI by VA covers: the four 1 KiB entries of its 4 KiB page, when
 * the record says no entry came from a block or an unknown translation (else all). */
static void tlbi(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s)
{
    microvm_tlb_record *r = &s->record;
    if (tlbi_by_va(cp) && s->cpu != NULL && !r->unknown) {
        uint64_t xt = 0;
        s->reg_read(uc, reg, &xt);
        uint64_t va = (xt & ((1ull << TLBI_VA_BITS) - 1)) << TLBI_VA_SHIFT;
        if (va >> VA_SIGN_BIT & 1) {
            va |= ~((1ull << (VA_SIGN_BIT + 1)) - 1);
        }
        uint32_t i = 0;
        while (i < r->n_blocks && (va & r->block_mask[i]) != r->block_va[i]) {
            i++;
        }
        if (i == r->n_blocks) {
            for (uint64_t off = 0; off < PAGE_4K; off += UC_PAGE) {
                s->flush_page(s->cpu, va + off);
            }
            s->page_tlbis += 1;
            return;
        }
    }
    s->ctl(uc, s->tlb_flush_ctl);
    r->unknown = 0;
    r->n_blocks = 0;
}

uint32_t microvm_sys(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s)
{
    if (cp->op0 == 1 && cp->crn == 8) { /* TLBI: DDI 0487 C5.5 */
        tlbi(uc, reg, cp, s);
        s->tlbis += 1;
    }
    return 0;
}

#define PSTATE_I (1u << 7)
#define INSN_BYTES 4 /* every A64 instruction (DDI 0487 C1.1) */

/* Instructions this emu_start has run up to and including the one at `pc`, which must lie in
 * the running block (a translation block is one straight run of instructions). */
uint64_t microvm_counted_at(const microvm_sysreg_state *s, uint64_t pc)
{
    uint64_t index = (pc - s->cur_start) / INSN_BYTES;
    if (pc < s->cur_start || index >= s->cur_len) {
        ((microvm_sysreg_state *)s)->count_error = 1;
    }
    return s->base + index + 1;
}

static int irq_stop(void *uc, microvm_sysreg_state *s)
{
    if (!s->irq_signalled || s->stopped) {
        return 0;
    }
    uint64_t pstate = 0;
    s->reg_read(uc, (int)s->reg_pstate, &pstate);
    if (pstate & PSTATE_I) {
        return 0;
    }
    s->stopped = 1;
    s->emu_stop(uc); /* before the block's first instruction is counted or run */
    return 1;
}

/* Send the run to `pc`: Unicorn leaves the block whose hook is running before any of its
 * instructions runs (a PC written from a hook: uc_reg_write breaks the translation loop and
 * does not sync the PC back) and goes on at `pc` in the same emu_start. */
static void redirect(void *uc, microvm_sysreg_state *s, uint64_t pc)
{
    s->reg_write(uc, s->reg_pc, &pc);
}

static void fail(void *uc, microvm_sysreg_state *s)
{
    s->count_error = 1;
    s->emu_stop(uc);
}

static void drop_tail_hook(void *uc, microvm_sysreg_state *s)
{
    if (s->tail_hook) {
        s->hook_del(uc, s->tail_hook); /* also drops the translations made with it */
        s->tail_hook = 0;
    }
}

/* The tail's code hook, on the instruction the slice ends in front of. */
void microvm_tail_stop(void *uc, uint64_t address, uint32_t size, microvm_sysreg_state *s)
{
    (void)size;
    if (s->tail_phase != MICROVM_TAIL_RUNNING || address != s->tail_until) {
        return;
    }
    s->tail_phase = MICROVM_TAIL_DONE;
    s->emu_stop(uc); /* before the instruction runs: Unicorn checks for a stop after a code hook */
    drop_tail_hook(uc, s);
}

/* Send the run back to the tail's block at `address`; where cflags_next_tb is known, with the
 * next translation block cut to r (0 < r < 512) instructions (QEMU's CF_COUNT_MASK). */
static void back_to_tail(void *uc, microvm_sysreg_state *s, uint64_t address, uint64_t r)
{
    if (s->cflags_next_tb != NULL) {
        *s->cflags_next_tb = (uint32_t)r;
    }
    redirect(uc, s, address);
}

/* Run r (> 0) instructions of the block at `address`, which has more: see the tail in
 * _sysreg.h. No `until` address: Unicorn stops at one by running a WFI there, which traps to
 * EL1 at EL0 when SCTLR_EL1.nTWI is 0 (as under Linux) instead of stopping. */
static void start_tail(void *uc, uint64_t address, uint64_t r, microvm_sysreg_state *s)
{
    uint64_t until = address + INSN_BYTES * r;
    if (s->cflags_next_tb == NULL) {
        size_t handle = 0;
        if (s->ctl(uc, s->remove_cache_ctl, address, address + INSN_BYTES) != 0 ||
            s->hook_add(uc, &handle, (int)s->hook_code, (void *)microvm_tail_stop, s, until, until) != 0) {
            fail(uc, s);
            return;
        }
        s->tail_hook = handle;
    }
    s->tail_until = until;
    s->tail_phase = MICROVM_TAIL_ARMED;
    s->tail_retries = 0;
    s->tails += 1;
    back_to_tail(uc, s, address, r);
}

/* Everything but the common case of microvm_block, out of line so that the common case is a
 * leaf that saves no registers (the hook runs before every translation block). */
static __attribute__((noinline)) void block_slow(void *uc, uint64_t address, uint32_t size, microvm_sysreg_state *s)
{
    if (!s->counting) {
        irq_stop(uc, s);
        return;
    }
    if (s->resume_armed) { /* the stub's blocks: CLREX, then the redirect to the guest */
        if (address == s->stub_base + MICROVM_STUB_REDIRECT) {
            s->resume_armed = 0;
            redirect(uc, s, s->resume_pc);
        } else if (address != s->stub_base) {
            fail(uc, s);
        }
        return;
    }
    if (size == 0) { /* Unicorn's stop at the `until` address: nothing runs */
        return;
    }
    uint64_t n = size / INSN_BYTES;
    s->base += s->cur_len;
    s->cur_len = 0;
    if (s->tail_phase == MICROVM_TAIL_ARMED) { /* the tail's block, translated to stop */
        uint64_t r = (s->tail_until - address) / INSN_BYTES;
        if (address == s->tail_pc && s->cflags_next_tb != NULL && n > r && s->tail_retries < MICROVM_TAIL_RETRIES) {
            /* The request was lost: a full translation buffer is flushed in the middle of
             * translating, and the lookup after the flush uses no cflags. Make it again. */
            s->tail_retries += 1;
            back_to_tail(uc, s, address, r);
            return;
        }
        if (address != s->tail_pc || (s->cflags_next_tb != NULL && n > r)) {
            fail(uc, s);
            return;
        }
        s->tail_phase = MICROVM_TAIL_RUNNING;
        s->cur_start = address;
        s->cur_len = n < r ? n : r; /* the code hook stops a full block at r */
        return;
    }
    if (s->tail_phase == MICROVM_TAIL_RUNNING) { /* the tail ran (a block cut to r) or was left early */
        drop_tail_hook(uc, s);
        s->tail_phase = MICROVM_TAIL_NONE;
        s->tail_pc = 0;
    }
    if (s->stopped || s->tail_pc || s->halting || s->tail_phase == MICROVM_TAIL_DONE) {
        return; /* already stopping: this block does not run */
    }
    if (s->base > s->budget) {
        fail(uc, s);
        return;
    }
    if (irq_stop(uc, s)) {
        return;
    }
    if (s->base + n > s->budget) {
        s->tail_pc = address;
        if (s->base == s->budget) {
            s->emu_stop(uc); /* the slice ends in front of this block */
        } else {
            start_tail(uc, address, s->budget - s->base, s);
        }
        return;
    }
    s->cur_start = address;
    s->cur_len = n;
}

void microvm_block(void *uc, uint64_t address, uint32_t size, microvm_sysreg_state *s)
{
    /* The common case: counting, nothing pending or stopping, and the block fits. */
    if (s->counting && !(s->resume_armed | s->tail_phase | s->stopped | s->halting | s->irq_signalled) &&
        !s->tail_pc && size != 0) {
        uint64_t base = s->base + s->cur_len;
        uint64_t n = size / INSN_BYTES;
        if (base + n <= s->budget) {
            s->base = base;
            s->cur_start = address;
            s->cur_len = n;
            return;
        }
    }
    block_slow(uc, address, size, s);
}
