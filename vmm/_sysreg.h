/* Shared between vmm/_sysreg.c and vmm/_fill.c (the module's layout table). */
#ifndef MICROVM_SYSREG_H
#define MICROVM_SYSREG_H
#include <stddef.h>
#include <stdint.h>

/* unicorn/arm64.h: uc_arm64_cp_reg, what the MRS/MSR/SYS hooks receive. */
typedef struct {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} uc_arm64_cp_reg;

typedef uint32_t (*microvm_sys_cb)(void *uc, int reg, const uc_arm64_cp_reg *cp, void *user_data);
typedef int (*microvm_reg_fn)(void *uc, int regid, void *value);
typedef int (*microvm_ctl_fn)(void *uc, uint32_t control, ...);
typedef int (*microvm_stop_fn)(void *uc);
typedef int (*microvm_hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data, uint64_t begin,
                                   uint64_t end, ...);
typedef int (*microvm_hook_del_fn)(void *uc, size_t hh);

/* Flag bits of microvm_sysreg_state.table entries. */
enum {
    SR_READ_PY = 1,     /* MRS handled by the Python handler */
    SR_WRITE_PY = 2,    /* MSR handled (or observed) by the Python handler */
    SR_PHYS_COUNT = 4,  /* MRS reads the physical count (virtual time) */
    SR_VIRT_COUNT = 8,  /* MRS reads the virtual count (virtual time - CNTVOFF) */
    SR_STEPS = 16,      /* Unicorn steps past this MRS itself when the hook skips it */
    SR_CONST = 32,      /* MRS reads a constant of the CPU model (consts below) */
};

#define MICROVM_MAX_CONSTS 8
#define MICROVM_MAX_BLOCKS 16

/* What the TLB may hold since its last full flush, so that a TLBI by VA can drop just the
 * page's four 1 KiB entries (vmm/_sysreg.c microvm_sys): the blocks (level 1-2 descriptors)
 * entries were filled from, or `unknown` when some entry cannot be told page by page (the
 * MMU off, a fill by the Python walk, more blocks than fit). */
typedef struct {
    uint32_t unknown;
    uint32_t n_blocks;
    uint64_t block_va[MICROVM_MAX_BLOCKS];   /* a block's first VA */
    uint64_t block_mask[MICROVM_MAX_BLOCKS]; /* ~(its size - 1) */
} microvm_tlb_record;

typedef void (*microvm_flush_page_fn)(void *cpu, uint64_t addr);

typedef struct {
    uint8_t *table;              /* 65536 flag bytes */
    uint64_t *emu_counter;       /* Unicorn's instruction count of the running emu_start */
    int64_t slice_start;         /* virtual time of the slice's first instruction */
    uint64_t cntvoff;            /* the generic timer's virtual offset */
    microvm_sys_cb py_mrs;
    microvm_sys_cb py_msr;
    microvm_reg_fn reg_read;     /* uc_reg_read */
    microvm_reg_fn reg_write;    /* uc_reg_write */
    microvm_ctl_fn ctl;          /* uc_ctl */
    int32_t reg_pc;              /* UC_ARM64_REG_PC */
    uint32_t tlb_flush_ctl;      /* uc_ctl code: UC_CTL_TLB_FLUSH, write */
    uint64_t python_calls;       /* accesses handed to Python */
    uint64_t native_reads;       /* counter reads served here */
    uint64_t tlbis;              /* TLBIs seen */
    /* The unmask stop (block hook): an IRQ the GIC signals to this vCPU is taken at the first
     * translation block that starts with PSTATE.I clear (every instruction that can clear I
     * ends its block in QEMU: MSR DAIFClr/DAIF, ERET), before the block runs. */
    microvm_stop_fn emu_stop;    /* uc_emu_stop */
    uint32_t reg_pstate;         /* UC_ARM64_REG_PSTATE */
    uint32_t irq_signalled;      /* set by the VMM whenever it may have changed */
    uint32_t stopped;            /* 1: the block hook stopped the slice */
    /* The block counter (vmm/block_counter.py): with `counting` set, emu_start runs without
     * Unicorn's per-instruction count hook (count=0) and the block hook charges each translation
     * block its instruction count before it runs. A block that does not fit the budget is not
     * run: the hook stops in front of it and records its address in tail_pc. */
    uint32_t counting;           /* 1: count per block here; 0: Unicorn's count= does it */
    uint64_t budget;             /* instructions this emu_start may run */
    uint64_t base;               /* instructions of the blocks before the running one */
    uint64_t cur_start;          /* virtual address of the running block */
    uint64_t cur_len;            /* its instructions (cut short where it was left early) */
    uint64_t tail_pc;            /* nonzero: the block at this address did not fit the budget */
    uint32_t count_error;        /* a count was asked for a PC outside the running block */
    uint32_t halting;            /* a hook asked this emu_start to stop (uc_emu_stop) */
    uint32_t n_consts;           /* constant reads of the CPU model (SR_CONST), at most 8 */
    uint32_t const_index[MICROVM_MAX_CONSTS]; /* their table indices */
    uint64_t const_value[MICROVM_MAX_CONSTS];
    /* TLBI by VA (see microvm_tlb_record): Unicorn's tlb_flush_page and its CPUState. */
    void *cpu;                   /* NULL: every TLBI flushes the whole TLB */
    microvm_flush_page_fn flush_page;
    uint64_t page_tlbis;         /* TLBIs served by dropping one page's entries */
    microvm_tlb_record record;
    /* A counted run starts on the VMM stub page (vmm/block_counter.py): its first block clears
     * the exclusive monitor (CLREX; B .+4), and the block hook sends the run from the stub's
     * second block to resume_pc. Neither block is charged. */
    uint64_t stub_base;          /* CLREX at +0, the redirect block at +8 (MICROVM_STUB_REDIRECT) */
    uint64_t resume_pc;          /* where the redirect sends the run */
    uint32_t resume_armed;       /* 1: the stub's blocks run before the guest's */
    /* The tail: the first block that does not fit the budget (r of its n instructions do) is
     * left before it runs, and the run goes back to it with the next translation block cut to
     * r instructions (cflags_next_tb below); the next block's hook finds the budget spent.
     * Where cflags_next_tb is unknown, the block's translation is dropped instead and a code
     * hook set on its instruction r: the block is translated again with the hook, which stops
     * the run in front of that instruction. Deleting the hook drops that translation. */
    uint32_t tail_phase;         /* MICROVM_TAIL_NONE, _ARMED, _RUNNING, _DONE */
    uint64_t tail_until;         /* the instruction the tail stops in front of */
    size_t tail_hook;            /* the tail's code hook (0: none) */
    microvm_hook_add_fn hook_add;/* uc_hook_add */
    microvm_hook_del_fn hook_del;/* uc_hook_del */
    uint32_t hook_code;          /* UC_HOOK_CODE */
    uint32_t remove_cache_ctl;   /* uc_ctl code: UC_CTL_TB_REMOVE_CACHE, write, 2 arguments */
    uint64_t tails;              /* tails run (a statistic) */
    /* Unicorn's cpu->cflags_next_tb, or NULL (then tails use the code hook). A cut block
     * (QEMU's CF_COUNT_MASK, the way its icount ends a budget) is cached apart from the full
     * one (cflags are part of a translation's key), so neither is translated again when later
     * slices end at the same place. */
    uint32_t *cflags_next_tb;
    uint32_t tail_retries;       /* requests made again for this tail (a TB flush lost one) */
} microvm_sysreg_state;

#define MICROVM_TAIL_RETRIES 3 /* a lost request is made again this many times, then it fails */

#define MICROVM_STUB_REDIRECT 8 /* offset of the stub's redirect block */
enum { MICROVM_TAIL_NONE, MICROVM_TAIL_ARMED, MICROVM_TAIL_RUNNING, MICROVM_TAIL_DONE };

uint32_t microvm_mrs(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s);
uint32_t microvm_msr(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s);
void microvm_block(void *uc, uint64_t address, uint32_t size, microvm_sysreg_state *s);
void microvm_tail_stop(void *uc, uint64_t address, uint32_t size, microvm_sysreg_state *s);
uint64_t microvm_counted_at(const microvm_sysreg_state *s, uint64_t pc);
uint32_t microvm_sys(void *uc, int reg, const uc_arm64_cp_reg *cp, microvm_sysreg_state *s);
#endif
