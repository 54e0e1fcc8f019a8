"""`TlbFiller`: the virtual-TLB fill policy, where translation and dirty tracking meet.

Unicorn runs in virtual-TLB mode and asks this hook for each (1 KiB) TLB page it misses,
with the access type (read, write, fetch). The hook:
1. translates VA -> PA: identity with the MMU off, else the stage-1 walk in `vmm.mmu`
   (translation registers are cached per vCPU and dropped when the guest writes SCTLR, TCR
   or a TTBR, or the vCPU is restored);
2. for RAM, grants write permission only for a write access (which marks the page dirty:
   this is the only place guest stores are seen, at no cost per store) or for a page the
   dirty tracker already holds dirty; read and fetch fills of clean pages get read/exec only,
   so the first store to them comes back here as a write fill;
3. for MMIO windows and the VMM stub page, grants what they need; anything else maps to
   itself, where Unicorn finds no memory and reports an unmapped access.
A translation fault is recorded on the vCPU (`pending_abort`) and the fill fails; the vCPU
turns it into a data or instruction abort for the guest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from unicorn import UC_MEM_FETCH, UC_MEM_WRITE, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from vmm import arch
from vmm.layout import VMM_STUB_BASE, VMM_STUB_SIZE
from vmm.mmu import AccessKind, Translation, TranslationRegs, translate

if TYPE_CHECKING:
    from snapshot.dirty import AdaptiveController
    from vmm.memory import GuestMemory
    from vmm.mmio import MmioBus
    from vmm.vcpu import SysReg, Vcpu

DIRTY_PAGE_SIZE = 4096  # bytes: the dirty bitmap's page (the AArch64 4 KiB granule)
UC_PAGE_SIZE = 1024  # bytes: Unicorn's AArch64 TLB page (see vmm/vcpu.py)

# Registers whose writes change translation (Arm ARM D17.2); MSRs to them drop the cache.
SCTLR_EL1: SysReg = (3, 0, 1, 0, 0)
TTBR0_EL1: SysReg = (3, 0, 2, 0, 0)
TTBR1_EL1: SysReg = (3, 0, 2, 0, 1)
TCR_EL1: SysReg = (3, 0, 2, 0, 2)
TRANSLATION_REGS = (SCTLR_EL1, TTBR0_EL1, TTBR1_EL1, TCR_EL1)

_ACCESS = {UC_MEM_WRITE: AccessKind.WRITE, UC_MEM_FETCH: AccessKind.FETCH}


class TlbFiller:
    """Fill policy for every vCPU of one machine."""

    def __init__(
        self,
        memory: GuestMemory,
        bus: MmioBus,
        now_ns: Callable[[], int],
        dirty: AdaptiveController | None = None,
    ) -> None:
        self.memory = memory
        self.bus = bus
        self.now_ns = now_ns
        self.dirty = dirty
        self._regs: dict[int, TranslationRegs | None] = {}
        self.fills = 0  # fills served, for stats
        self.write_fills = 0

    def invalidate(self, vcpu: Vcpu) -> None:
        """Forget `vcpu`'s cached translation registers."""
        self._regs[vcpu.index] = None

    def _translation_regs(self, vcpu: Vcpu) -> TranslationRegs:
        regs = self._regs.get(vcpu.index)
        if regs is None:
            regs = TranslationRegs(
                sctlr=vcpu.sysreg("SCTLR_EL1"),
                tcr=vcpu.sysreg("TCR_EL1"),
                ttbr0=vcpu.sysreg("TTBR0_EL1"),
                ttbr1=vcpu.sysreg("TTBR1_EL1"),
            )
            self._regs[vcpu.index] = regs
        return regs

    def _watch_wfis(self, vcpu: Vcpu, vaddr: int, pa: int) -> None:
        """Hook every WFI, and every instruction after an IRQ-unmasking MSR DAIFClr, in the
        page about to be executed (Unicorn runs WFI as a NOP and does not report DAIFClr)."""
        pa_page = pa & ~(UC_PAGE_SIZE - 1)
        if not self.memory.contains(pa_page, UC_PAGE_SIZE):
            return
        words = self.memory.view(pa_page, UC_PAGE_SIZE).view(np.uint32)
        va_page = vaddr & ~(UC_PAGE_SIZE - 1)
        for i in np.flatnonzero(words == arch.INSN_WFI):
            vcpu.watch_wfi(va_page + 4 * int(i))
        unmask = ((words & arch.MSR_DAIFCLR_MASK) == arch.MSR_DAIFCLR) & ((words & arch.DAIF_IMM_I) != 0)
        for i in np.flatnonzero(unmask):
            vcpu.watch_irq_unmask(va_page + 4 * int(i) + 4)

    def _read_u64(self, pa: int) -> int | None:
        return self.memory.read_u64(pa) if self.memory.contains(pa, 8) else None

    def __call__(self, vcpu: Vcpu, vaddr: int, access: int) -> tuple[int, int] | None:
        self.fills += 1
        kind = _ACCESS.get(access, AccessKind.READ)
        regs = self._translation_regs(vcpu)
        perms = UC_PROT_ALL
        if regs.sctlr & 1:  # SCTLR_EL1.M: stage-1 translation on
            el = arch.pstate_el(vcpu.pstate)
            result = translate(regs, vaddr, kind, el, self._read_u64)
            if not isinstance(result, Translation):
                vcpu.pending_abort = result
                return None
            pa = result.pa
            perms = (
                (UC_PROT_READ if result.readable else 0)
                | (UC_PROT_WRITE if result.writable else 0)
                | (UC_PROT_EXEC if result.executable else 0)
            )
        else:
            pa = vaddr
        mem = self.memory
        if mem.base <= pa < mem.end:
            if kind is AccessKind.FETCH:
                self._watch_wfis(vcpu, vaddr, pa)
            dirty = self.dirty
            if dirty is not None:
                page = (pa - mem.base) // DIRTY_PAGE_SIZE
                if kind is AccessKind.WRITE:
                    self.write_fills += 1
                    dirty.on_write_fill(page, self.now_ns())
                elif not dirty.write_allowed(page):
                    perms &= ~UC_PROT_WRITE
            return pa, perms
        if VMM_STUB_BASE <= pa < VMM_STUB_BASE + VMM_STUB_SIZE:
            return pa, UC_PROT_READ | UC_PROT_EXEC
        if self.bus.find(pa) is not None:
            return pa, perms & (UC_PROT_READ | UC_PROT_WRITE)
        return pa, perms  # a hole: Unicorn reports the unmapped access
