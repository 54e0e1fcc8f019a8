"""`SysregHooks`: a vCPU's MRS, MSR and SYS hooks in Python, the reference path of the native
system-register filter (vmm/_sysreg.c via vmm/native_sysreg.py).

Without the C module every system-register access of the guest comes here; with it, only the
accesses of trapped registers (the `VcpuHooks.sysreg_*` tables) do, and SYS never does.
tests/test_cpu_model.py and tests/test_tlbi.py run both paths. Unicorn's hook arguments are described in
/work/shared/unicorn-notes.md: `cp` is its CpReg (crn, crm, op0, op1, op2, val); returning 1
skips the instruction, 0 lets Unicorn perform it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from unicorn.arm64_const import UC_ARM64_REG_PC, UC_ARM64_REG_PSTATE

from vmm import arch
from vmm.sysreg import SysReg

if TYPE_CHECKING:
    from unicorn import Uc

    from vmm.vcpu import Vcpu

Guard = Callable[[Callable[[], object]], object]  # runs a handler; an error in it stops the slice


class SysregHooks:
    """The Python MRS/MSR/SYS hooks of `vcpu`. A handler runs through `guard` (Vcpu._guard: a
    VMM error never unwinds through Unicorn), and `refresh_irq` (Vcpu._refresh_irq) runs after
    every handler that may have changed what the GIC signals. `steps` are the trapped registers
    after whose skipped MRS Unicorn steps the PC itself (vmm.icount.mrs_steps_past_skip)."""

    def __init__(self, vcpu: Vcpu, steps: frozenset[SysReg], guard: Guard, refresh_irq: Callable[[], None]) -> None:
        self.vcpu = vcpu
        self.hooks = vcpu.hooks
        self.steps = steps
        self.guard = guard
        self.refresh_irq = refresh_irq

    def _el0_declines(self, uc: Uc, op1: int) -> bool:
        """An EL0 access to a register EL0 may not name (op1 != 3, DDI 0487 C5.3): the hook
        leaves it to Unicorn, which makes it UNDEFINED (a hook that served it would leave the
        PC on it: Unicorn calls the hook before its own access checks)."""
        return op1 != arch.OP1_EL0_ACCESSIBLE and arch.pstate_el(uc.reg_read(UC_ARM64_REG_PSTATE)) == 0

    def on_mrs(self, uc: Uc, reg: int, cp: object, _ud: object) -> int:
        """MRS: serve a trapped register (its handler, or its CPU-model constant) into Xt."""
        enc = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)  # type: ignore[attr-defined]
        handler = self.hooks.sysreg_read.get(enc)
        const = self.hooks.sysreg_const.get(enc)
        if handler is None and const is None or self._el0_declines(uc, enc[1]):
            return 0
        value = const if handler is None else self.guard(lambda: handler(self.vcpu))
        self.refresh_irq()  # e.g. ICC_IAR1_EL1 acknowledged the IRQ
        uc.reg_write(reg, int(value) & 0xFFFF_FFFF_FFFF_FFFF)  # type: ignore[arg-type]
        # Returning 1 skips the access. Unicorn steps past it by itself for registers QEMU
        # implements; writing the PC there would make it count the next instruction twice.
        if enc not in self.steps:
            uc.reg_write(UC_ARM64_REG_PC, uc.reg_read(UC_ARM64_REG_PC) + 4)
        return 1

    def on_msr(self, uc: Uc, reg: int, cp: object, _ud: object) -> int:
        """MSR: tell an observer (the write then runs natively) or hand the value to a trapped
        register's handler (the write is skipped)."""
        enc = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)  # type: ignore[attr-defined]
        if (enc in self.hooks.sysreg_observe or enc in self.hooks.sysreg_write) and self._el0_declines(uc, enc[1]):
            return 0
        observer = self.hooks.sysreg_observe.get(enc)
        if observer is not None:
            self.guard(lambda: observer(self.vcpu))
            return 0
        handler = self.hooks.sysreg_write.get(enc)
        if handler is None:
            return 0
        value = cp.val  # type: ignore[attr-defined]
        self.guard(lambda: handler(self.vcpu, value))
        self.refresh_irq()
        # A skipped MSR ends its translation block, so this PC write counts nothing twice.
        uc.reg_write(UC_ARM64_REG_PC, uc.reg_read(UC_ARM64_REG_PC) + 4)
        return 1

    def on_sys(self, uc: Uc, reg: int, cp: object, _ud: object) -> int:
        """SYS instructions: TLB maintenance (op0 = 1, CRn = 8, DDI 0487 C5.5) drops every TLB
        entry of this vCPU, and of the others before their next slice. Unicorn's own TLBI by
        VA drops only the one 1 KiB entry at the address, not the rest of the 4 KiB page, and
        the fill does not tag entries with ASIDs, so "all" is the one safe granule here."""
        if cp.op0 == 1 and cp.crn == 8:  # type: ignore[attr-defined]
            self.vcpu.flush_tlb()
            on_tlbi = self.hooks.on_tlbi
            if on_tlbi is not None:
                self.guard(lambda: on_tlbi(self.vcpu))
        return 0  # Unicorn performs the instruction (its own flush is then a no-op)
