/*
 * The TLB fill's native fast path: a Unicorn UC_HOOK_TLB_FILL callback in C.
 *
 * vmm/native_fill.py registers `microvm_fill` as each vCPU's first TLB-fill hook. It serves the
 * fills that need no Python -- read and write fills of guest RAM while the MMU is off -- and
 * returns false for every other fill, so that Unicorn goes on to the Python fill
 * (vmm.tlb.TlbFiller), which stays the reference for everything and the only path when this
 * module is not built. What it does for the fills it serves is exactly what the Python fill
 * does for them (tests/test_native_fill.py compares the two):
 *   - translation: identity (VA == PA);
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
} microvm_fill_state;

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

bool microvm_fill(void *uc, uint64_t vaddr, int type, uc_tlb_entry *entry, microvm_fill_state *s)
{
    (void)uc;
    if (!s->identity || (type != UC_MEM_READ && type != UC_MEM_WRITE)) {
        return false;
    }
    uint64_t offset = vaddr - s->ram_base; /* wraps above ram_size when below RAM */
    if (offset >= s->ram_size) {
        return false;
    }
    int32_t perms = UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC;
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
        } else if (!t->dirty[page]) {
            perms &= ~UC_PROT_WRITE;
        }
    }
    if (!s->code_pages[offset >> s->code_shift]) {
        perms &= ~UC_PROT_EXEC; /* code is translated only after a fetch fill */
    }
    s->fills += 1;
    entry->paddr = vaddr;
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
        "{s:(n,[NNNNNNNNNNNNN]),s:(n,[NNNNNNNNN]),s:n}",
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
        FIELD(microvm_fill_state, write_fills),
        "uc_tlb_entry", (Py_ssize_t)sizeof(uc_tlb_entry));
}

static PyObject *sysreg_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("{s:N,s:N,s:N}", "mrs", PyLong_FromVoidPtr((void *)&microvm_mrs),
                         "msr", PyLong_FromVoidPtr((void *)&microvm_msr), "sys", PyLong_FromVoidPtr((void *)&microvm_sys));
}

static PyObject *sysreg_layout(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue(
        "(n,[NNNNNNNNNNNNNN])", (Py_ssize_t)sizeof(microvm_sysreg_state),
        FIELD(microvm_sysreg_state, table), FIELD(microvm_sysreg_state, emu_counter),
        FIELD(microvm_sysreg_state, slice_start), FIELD(microvm_sysreg_state, cntvoff),
        FIELD(microvm_sysreg_state, py_mrs), FIELD(microvm_sysreg_state, py_msr),
        FIELD(microvm_sysreg_state, reg_read), FIELD(microvm_sysreg_state, reg_write),
        FIELD(microvm_sysreg_state, ctl), FIELD(microvm_sysreg_state, reg_pc),
        FIELD(microvm_sysreg_state, tlb_flush_ctl), FIELD(microvm_sysreg_state, python_calls),
        FIELD(microvm_sysreg_state, native_reads), FIELD(microvm_sysreg_state, tlbis));
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
