/*
 * The TLB fill's native fast path: a Unicorn UC_HOOK_TLB_FILL callback in C.
 *
 * vmm/native_fill.py registers `microvm_fill` as each vCPU's first TLB-fill hook. It serves the
 * fills that need no Python -- read, write and fetch fills that reach guest RAM, with the MMU
 * off or through a stage-1 walk that succeeds -- and returns false for every other fill
 * (translation faults, MMIO, holes, the stub page, unsupported translation settings, a page an
 * LDTR/STTR retry owns), so that Unicorn goes on to the Python fill (vmm.tlb.TlbFiller), which
 * stays the reference for everything and the only path when this module is not built. What
 * it does for the fills it serves is exactly what the Python fill does for them
 * (tests/test_native_fill.py compares the two):
 *   - translation: identity (VA == PA), or vmm.mmu.translate's walk (4 KiB granule) at the
 *     current EL and PSTATE.PAN, from the registers TlbFiller last read;
 *   - a fetch fill records the code page (Vcpu's code-page record);
 *   - a read fill grants write only if the page is dirty already (AdaptiveController
 *     .write_allowed); a write fill does AdaptiveController.on_write_fill's bookkeeping
 *     (fault count, per-block window in virtual ns, step-down, marking) unless the page is
 *     dirty at page granule already (already_tracked: a TLB refill, not a first write);
 *   - execute permission only for pages a fetch fill has seen (Vcpu's code-page record).
 * The arrays are the Python objects' own buffers, so both paths read and write one state.
 *
 * A plain C shared object loaded by ctypes; PyInit__fill exists only so that it builds and
 * installs as an ordinary extension module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_sysreg.h"

/* unicorn.h: uc_mem_type and uc_prot values, and struct uc_tlb_entry. */
#define UC_MEM_READ 16
#define UC_MEM_WRITE 17
#define UC_PROT_READ 1
#define UC_PROT_WRITE 2
#define UC_PROT_EXEC 4

typedef struct {
    uint64_t paddr;
    int32_t perms; /* uc_prot, an enum */
} uc_tlb_entry;

/* snapshot.dirty.AdaptiveController's live state (TrackerBuffers) and parameters. */
typedef struct {
    uint8_t *dirty;           /* one byte per page: 1 = dirty */
    uint8_t *fine;            /* one byte per block: 1 = tracked at page granule */
    int64_t *window_start;    /* per block: virtual ns its fault window began */
    int64_t *window_faults;   /* per block: write faults in that window */
    int64_t *counts;          /* [0] faults, [1] step-downs, this epoch */
    uint64_t num_pages;
    uint64_t num_blocks;
    uint32_t page_shift;      /* log2 of bytes per page */
    uint32_t block_shift;     /* log2 of pages per block */
    int64_t threshold;        /* write faults per window that make a block fine */
    int64_t window_ns;        /* virtual ns */
    uint32_t global_step_down; /* 1: a step-down makes every block fine (squib) */
    uint32_t reserved;
} microvm_tracker;

/* One vCPU's fill state. */
typedef struct {
    uint64_t ram_base;        /* guest physical address of RAM */
    uint64_t ram_size;        /* bytes */
    uint8_t *code_pages;      /* one byte per code page: 1 = fetched from (may hold code) */
    uint32_t code_shift;      /* log2 of bytes per code page */
    uint32_t identity;        /* 1: the MMU is off and VA == PA; 0: decline every fill */
    int64_t now_ns;           /* virtual time of the running slice's first instruction */
    microvm_tracker *tracker; /* NULL: dirty tracking is off */
    uint64_t fills;           /* fills served here */
    uint64_t write_fills;     /* of which write fills */
    /* The stage-1 walk (MMU on): the translation registers TlbFiller last read. */
    uint32_t walk;            /* 1: the MMU is on and these registers are current */
    uint32_t reg_pstate;      /* UC_ARM64_REG_PSTATE, for the EL and PSTATE.PAN of a fill */
    uint64_t sctlr, tcr, ttbr0, ttbr1;
    uint8_t *ram;             /* host address of guest RAM (descriptor reads) */
    microvm_reg_fn reg_read;  /* uc_reg_read */
    uint64_t unpriv_page;     /* a 4 KiB VA page | 1 the Python fill serves (LDTR/STTR), or 0 */
    uint64_t stub_base;       /* the VMM stub page's VA (reserved in every address space) */
    uint64_t walk_fills;      /* fills served by the walk */
    uint64_t fetch_fills;     /* fetch fills served here */
    microvm_tlb_record *record; /* the vCPU's TLB record (vmm/_sysreg.h), or NULL */
} microvm_fill_state;

/* Record where the entry for `vaddr` came from: a page (shift 12: a TLBI by VA of it drops
 * it), a block of 2**shift bytes, or no walk at all (shift 64: only a full flush drops it). */
static void note_fill(microvm_tlb_record *r, uint64_t vaddr, int shift)
{
    if (r->unknown || shift == 12) {
        return;
    }
    if (shift >= 64) {
        r->unknown = 1;
        return;
    }
    uint64_t mask = ~((1ull << shift) - 1);
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        if (r->block_mask[i] == mask && r->block_va[i] == (vaddr & mask)) {
            return;
        }
    }
    if (r->n_blocks == MICROVM_MAX_BLOCKS) {
        r->unknown = 1;
        return;
    }
    r->block_va[r->n_blocks] = vaddr & mask;
    r->block_mask[r->n_blocks] = mask;
    r->n_blocks += 1;
}

/* AdaptiveController.on_write_fill for `page` of a block, at virtual time `now`. */
static void on_write_fill(microvm_tracker *t, uint64_t page, int64_t now)
{
    uint64_t block = page >> t->block_shift;
    int64_t start = t->window_start[block];
    int64_t faults = t->window_faults[block];

    t->counts[0] += 1;
    if (faults == 0 || now < start || now - start >= t->window_ns) {
        t->window_start[block] = now;
        faults = 0;
    }
    faults += 1;
    t->window_faults[block] = faults;
    if (faults > t->threshold && !t->fine[block]) {
        t->counts[1] += 1;
        if (t->global_step_down) {
            memset(t->fine, 1, t->num_blocks);
        } else {
            t->fine[block] = 1;
        }
    }
    if (t->fine[block]) {
        t->dirty[page] = 1;
    } else if (!t->dirty[page]) {
        uint64_t first = block << t->block_shift;
        uint64_t end = first + ((uint64_t)1 << t->block_shift);
        if (end > t->num_pages) {
            end = t->num_pages;
        }
        memset(t->dirty + first, 1, end - first);
    }
}

/* --- the stage-1 walk: vmm.mmu.translate for the cases it serves (4 KiB granule, little-endian,
 * no DS), returning false for every fault or unsupported case so that the Python fill reports it. */
#define SCTLR_M (1ull << 0)
#define SCTLR_WXN (1ull << 19)
#define SCTLR_EE (1ull << 25)
#define TCR_EPD0 (1ull << 7)
#define TCR_EPD1 (1ull << 23)
#define TCR_TBI0 (1ull << 37)
#define TCR_TBI1 (1ull << 38)
#define TCR_HPD0 (1ull << 41)
#define TCR_HPD1 (1ull << 42)
#define TCR_TBID0 (1ull << 51)
#define TCR_TBID1 (1ull << 52)
#define TCR_DS (1ull << 59)
#define TTBR_BADDR_MASK 0x0000FFFFFFFFFFFEull
#define DESC_VALID (1ull << 0)
#define DESC_TABLE (1ull << 1)
#define DESC_AP1 (1ull << 6)
#define DESC_AP2 (1ull << 7)
#define DESC_AF (1ull << 10)
#define DESC_PXN (1ull << 53)
#define DESC_UXN (1ull << 54)
#define DESC_PXN_TABLE (1ull << 59)
#define DESC_UXN_TABLE (1ull << 60)
#define DESC_AP_TABLE_NO_EL0 (1ull << 61)
#define DESC_AP_TABLE_RO (1ull << 62)
#define DESC_OA_MASK 0x0000FFFFFFFFF000ull
#define TABLE_ATTRS (DESC_PXN_TABLE | DESC_UXN_TABLE | DESC_AP_TABLE_NO_EL0 | DESC_AP_TABLE_RO)
#define PSTATE_PAN (1ull << 22)
#define PA_BITS 48
#define UC_MEM_FETCH 18

static const int ips_bits[8] = {32, 36, 40, 42, 44, 48, 52, PA_BITS};

static bool walk(const microvm_fill_state *s, uint64_t va, int type, int el, bool pan, uint64_t *pa_out, int32_t *perms_out, int *shift_out)
{
    uint64_t tcr = s->tcr;
    if (s->sctlr & SCTLR_EE || tcr & TCR_DS) {
        return false;
    }
    bool upper = (va >> 55) & 1;
    uint64_t txsz, ttbr;
    bool epd, granule_ok, tbi, tbid, hpd;
    if (upper) {
        txsz = (tcr >> 16) & 63, epd = tcr & TCR_EPD1, granule_ok = ((tcr >> 30) & 3) == 2;
        tbi = tcr & TCR_TBI1, tbid = tcr & TCR_TBID1, hpd = tcr & TCR_HPD1, ttbr = s->ttbr1;
    } else {
        txsz = tcr & 63, epd = tcr & TCR_EPD0, granule_ok = ((tcr >> 14) & 3) == 0;
        tbi = tcr & TCR_TBI0, tbid = tcr & TCR_TBID0, hpd = tcr & TCR_HPD0, ttbr = s->ttbr0;
    }
    if (epd || txsz < 16 || txsz > 39 || !granule_ok) {
        return false;
    }
    bool fetch = type == UC_MEM_FETCH;
    int top = (tbi && !(tbid && fetch)) ? 55 : 63;
    int input_bits = 64 - (int)txsz;
    uint64_t high_mask = (1ull << (top + 1 - input_bits)) - 1;
    if (((va >> input_bits) & high_mask) != (upper ? high_mask : 0)) {
        return false;
    }
    int out_bits = ips_bits[(tcr >> 32) & 7];
    if (out_bits > PA_BITS) {
        out_bits = PA_BITS;
    }
    int level = 4 - (input_bits - 12 + 8) / 9;
    int index_bits = input_bits - (12 + 9 * (3 - level));
    uint64_t index_mask = (1ull << index_bits) - 1;
    uint64_t table = ttbr & TTBR_BADDR_MASK & ~((8ull << index_bits) - 1);
    if (table >> out_bits) {
        return false;
    }
    uint64_t attrs = 0, desc = 0;
    int shift = 0;
    for (;;) {
        shift = 12 + 9 * (3 - level);
        uint64_t at = table + ((va >> shift) & index_mask) * 8 - s->ram_base;
        if (at > s->ram_size - 8) {
            return false; /* not RAM: an external abort on the walk */
        }
        memcpy(&desc, s->ram + at, 8);
        if (!(desc & DESC_VALID) || (level == 3 && !(desc & DESC_TABLE))) {
            return false;
        }
        if (level == 3 || !(desc & DESC_TABLE)) {
            break;
        }
        table = desc & DESC_OA_MASK;
        if (table >> out_bits) {
            return false;
        }
        if (!hpd) {
            attrs |= desc & TABLE_ATTRS;
        }
        level += 1;
        index_mask = 511;
    }
    if (level < 1) {
        return false;
    }
    uint64_t span = 1ull << shift;
    uint64_t pa = (desc & DESC_OA_MASK & ~(span - 1)) | (va & (span - 1));
    if (pa >> out_bits || !(desc & DESC_AF)) {
        return false;
    }
    bool el0_access = (desc & DESC_AP1) && !(attrs & DESC_AP_TABLE_NO_EL0);
    bool read_only = (desc & DESC_AP2) || (attrs & DESC_AP_TABLE_RO);
    bool uxn = (desc & DESC_UXN) || (attrs & DESC_UXN_TABLE);
    bool pxn = (desc & DESC_PXN) || (attrs & DESC_PXN_TABLE);
    bool wxn = s->sctlr & SCTLR_WXN;
    bool user_w = el0_access && !read_only;
    bool r, w, x;
    if (el == 0) {
        r = el0_access, w = user_w, x = !uxn && !(user_w && wxn);
    } else {
        bool priv_w = !read_only;
        x = !pxn && !user_w && !(priv_w && wxn);
        if (pan && el0_access) {
            r = false, w = false;
        } else {
            r = true, w = priv_w;
        }
    }
    bool allowed = fetch ? x : (type == UC_MEM_WRITE ? w : r);
    if (!allowed) {
        return false;
    }
    *pa_out = pa;
    *perms_out = (r ? UC_PROT_READ : 0) | (w ? UC_PROT_WRITE : 0) | (x ? UC_PROT_EXEC : 0);
    *shift_out = shift;
    return true;
}

bool microvm_fill(void *uc, uint64_t vaddr, int type, uc_tlb_entry *entry, microvm_fill_state *s)
{
    if (type != UC_MEM_READ && type != UC_MEM_WRITE && type != UC_MEM_FETCH) {
        return false;
    }
    uint64_t paddr = vaddr;
    int32_t perms = UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC;
    bool walked = false;
    int shift = 0;
    if (!s->identity) {
        if (!s->walk || (vaddr & ~0xFFFull) == s->stub_base || (vaddr & ~0xFFFull) == (s->unpriv_page & ~1ull)) {
            return false;
        }
        uint64_t pstate = 0;
        s->reg_read(uc, (int)s->reg_pstate, &pstate);
        if (!walk(s, vaddr, type, (int)((pstate >> 2) & 3), pstate & PSTATE_PAN, &paddr, &perms, &shift)) {
            return false;
        }
        walked = true;
    }
    uint64_t offset = paddr - s->ram_base; /* wraps above ram_size when below RAM */
    if (offset >= s->ram_size) {
        return false;
    }
    if (type == UC_MEM_FETCH) {
        s->code_pages[offset >> s->code_shift] = 1;
        s->fetch_fills += 1;
    }
    microvm_tracker *t = s->tracker;
    if (t != NULL) {
        uint64_t page = offset >> t->page_shift;
        if (page >= t->num_pages) {
            return false;
        }
        if (type == UC_MEM_WRITE) {
            s->write_fills += 1;
            if (!(t->fine[page >> t->block_shift] && t->dirty[page])) {
                on_write_fill(t, page, s->now_ns);
            }
        } else if (perms & UC_PROT_WRITE && !t->dirty[page]) {
            perms &= ~UC_PROT_WRITE;
        }
    }
    if (!s->code_pages[offset >> s->code_shift]) {
        perms &= ~UC_PROT_EXEC; /* code is translated only after a fetch fill */
    }
    s->fills += 1;
    s->walk_fills += walked;
    if (s->record != NULL) {
        note_fill(s->record, vaddr, walked ? shift : 64);
    }
    entry->paddr = paddr;
    entry->perms = perms;
    return true;
}

/* --- the module: the callback's address and the structs' layout, for vmm/native_fill.py --- */

static PyObject *fill_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)&microvm_fill);
}


#define FIELD(type, name) Py_BuildValue("(sn)", #name, (Py_ssize_t)offsetof(type, name))

static PyObject *layout(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue(
        "{s:(n,[NNNNNNNNNNNNN]),s:(n,[NNNNNNNNNNNNNNNNNNNNNN]),s:n}",
        "microvm_tracker", (Py_ssize_t)sizeof(microvm_tracker),
        FIELD(microvm_tracker, dirty), FIELD(microvm_tracker, fine),
        FIELD(microvm_tracker, window_start), FIELD(microvm_tracker, window_faults),
        FIELD(microvm_tracker, counts), FIELD(microvm_tracker, num_pages),
        FIELD(microvm_tracker, num_blocks), FIELD(microvm_tracker, page_shift),
        FIELD(microvm_tracker, block_shift), FIELD(microvm_tracker, threshold),
        FIELD(microvm_tracker, window_ns), FIELD(microvm_tracker, global_step_down),
        FIELD(microvm_tracker, reserved),
        "microvm_fill_state", (Py_ssize_t)sizeof(microvm_fill_state),
        FIELD(microvm_fill_state, ram_base), FIELD(microvm_fill_state, ram_size),
        FIELD(microvm_fill_state, code_pages), FIELD(microvm_fill_state, code_shift),
        FIELD(microvm_fill_state, identity), FIELD(microvm_fill_state, now_ns),
        FIELD(microvm_fill_state, tracker), FIELD(microvm_fill_state, fills),
        FIELD(microvm_fill_state, write_fills), FIELD(microvm_fill_state, walk),
        FIELD(microvm_fill_state, reg_pstate), FIELD(microvm_fill_state, sctlr),
        FIELD(microvm_fill_state, tcr), FIELD(microvm_fill_state, ttbr0),
        FIELD(microvm_fill_state, ttbr1), FIELD(microvm_fill_state, ram),
        FIELD(microvm_fill_state, reg_read), FIELD(microvm_fill_state, unpriv_page),
        FIELD(microvm_fill_state, stub_base), FIELD(microvm_fill_state, walk_fills),
        FIELD(microvm_fill_state, fetch_fills), FIELD(microvm_fill_state, record),
        "uc_tlb_entry", (Py_ssize_t)sizeof(uc_tlb_entry));
}

static PyObject *sysreg_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N}", "mrs", PyLong_FromVoidPtr((void *)&microvm_mrs),
                         "msr", PyLong_FromVoidPtr((void *)&microvm_msr), "sys", PyLong_FromVoidPtr((void *)&microvm_sys),
                         "block", PyLong_FromVoidPtr((void *)&microvm_block),
                         "tail_stop", PyLong_FromVoidPtr((void *)&microvm_tail_stop));
}

static PyObject *sysreg_layout(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue(
        "(n,[NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNN])", (Py_ssize_t)sizeof(microvm_sysreg_state),
        FIELD(microvm_sysreg_state, table), FIELD(microvm_sysreg_state, emu_counter),
        FIELD(microvm_sysreg_state, slice_start), FIELD(microvm_sysreg_state, cntvoff),
        FIELD(microvm_sysreg_state, py_mrs), FIELD(microvm_sysreg_state, py_msr),
        FIELD(microvm_sysreg_state, reg_read), FIELD(microvm_sysreg_state, reg_write),
        FIELD(microvm_sysreg_state, ctl), FIELD(microvm_sysreg_state, reg_pc),
        FIELD(microvm_sysreg_state, tlb_flush_ctl), FIELD(microvm_sysreg_state, python_calls),
        FIELD(microvm_sysreg_state, native_reads), FIELD(microvm_sysreg_state, tlbis),
        FIELD(microvm_sysreg_state, emu_stop), FIELD(microvm_sysreg_state, reg_pstate),
        FIELD(microvm_sysreg_state, irq_signalled), FIELD(microvm_sysreg_state, stopped),
        FIELD(microvm_sysreg_state, counting), FIELD(microvm_sysreg_state, budget),
        FIELD(microvm_sysreg_state, base), FIELD(microvm_sysreg_state, cur_start),
        FIELD(microvm_sysreg_state, cur_len), FIELD(microvm_sysreg_state, tail_pc),
        FIELD(microvm_sysreg_state, count_error), FIELD(microvm_sysreg_state, halting),
        FIELD(microvm_sysreg_state, n_consts), FIELD(microvm_sysreg_state, const_index),
        FIELD(microvm_sysreg_state, const_value), FIELD(microvm_sysreg_state, cpu),
        FIELD(microvm_sysreg_state, flush_page), FIELD(microvm_sysreg_state, page_tlbis),
        FIELD(microvm_sysreg_state, record), FIELD(microvm_sysreg_state, stub_base),
        FIELD(microvm_sysreg_state, resume_pc), FIELD(microvm_sysreg_state, resume_armed),
        FIELD(microvm_sysreg_state, tail_phase), FIELD(microvm_sysreg_state, tail_until),
        FIELD(microvm_sysreg_state, tail_hook), FIELD(microvm_sysreg_state, hook_add),
        FIELD(microvm_sysreg_state, hook_del), FIELD(microvm_sysreg_state, hook_code),
        FIELD(microvm_sysreg_state, remove_cache_ctl), FIELD(microvm_sysreg_state, tails),
        FIELD(microvm_sysreg_state, cflags_next_tb), FIELD(microvm_sysreg_state, tail_retries));
}

static PyMethodDef methods[] = {
    {"fill_address", fill_address, METH_NOARGS, "Address of the C function microvm_fill."},
    {"sysreg_addresses", sysreg_addresses, METH_NOARGS, "Addresses of the MRS, MSR and SYS hook functions."},
    {"sysreg_layout", sysreg_layout, METH_NOARGS, "Size and field offsets of microvm_sysreg_state."},
    {"layout", layout, METH_NOARGS, "Sizes and field offsets of the C structs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fill", "The TLB fill's native fast path (see vmm/native_fill.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fill(void)
{
    return PyModule_Create(&module);
}
