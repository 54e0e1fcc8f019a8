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
   itself, where Unicorn finds no memory and reports an unmapped access. The stub page's
   VA is reserved: with the MMU on it maps to the stub, not through the guest's tables, so
   the CLREX stub runs between slices whatever the guest mapped.
A translation fault is recorded on the vCPU (`pending_abort`); the vCPU turns it into a data
or instruction abort for the guest, with FAR from `fault_address` (a faulting data access is
let through to FAULT_PAGE, where Unicorn reports its exact address; a fetch fill fails).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from unicorn import UC_MEM_FETCH, UC_MEM_WRITE, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from vmm import arch
from vmm.layout import VMM_STUB_BASE, VMM_STUB_SIZE
from vmm import native_fill
from vmm.mmu import SCTLR_M, AccessKind, Translation, TranslationFault, TranslationRegs, translate
from vmm.native_fill import NativeFill

if TYPE_CHECKING:
    from snapshot.dirty import AdaptiveController
    from vmm.memory import GuestMemory
    from vmm.mmio import MmioBus
    from vmm.vcpu import SysReg, Vcpu

DIRTY_PAGE_SIZE = 4096  # bytes: the dirty bitmap's page (the AArch64 4 KiB granule)
# Unicorn's AArch64 target page (and so TLB-fill granule) is 1 KiB (QEMU TARGET_PAGE_BITS_MIN
# = 10 for Arm) and cannot be changed; a fill describes one such page. Fill results give the
# physical address of `vaddr` itself; Unicorn masks it to its page.
UC_PAGE_SIZE = 1024  # bytes

# Registers whose writes change translation (Arm ARM D17.2); MSRs to them drop the cache.
SCTLR_EL1: SysReg = (3, 0, 1, 0, 0)
TTBR0_EL1: SysReg = (3, 0, 2, 0, 0)
TTBR1_EL1: SysReg = (3, 0, 2, 0, 1)
TCR_EL1: SysReg = (3, 0, 2, 0, 2)
TRANSLATION_REGS = (SCTLR_EL1, TTBR0_EL1, TTBR1_EL1, TCR_EL1)

PSTATE_PAN = 1 << 22  # privileged access never (Arm ARM C5.2.18, SPSR_EL1.PAN)

# A guest physical page with nothing behind it (below the first MMIO window, vmm.layout): data
# accesses that fault in the fill are sent there to learn their exact address.
FAULT_PAGE = 0x0

_ACCESS = {UC_MEM_WRITE: AccessKind.WRITE, UC_MEM_FETCH: AccessKind.FETCH}


def fault_address(fault: TranslationFault, pc: int, reached: int | None) -> int:
    """FAR_EL1 of a fault the fill recorded: the fill sees only the VA of a 1 KiB TLB page. A
    data access then reached FAULT_PAGE at its exact offset (`reached`: the physical address
    Unicorn reported unmapped); an instruction fetch faults at `pc`."""
    page = fault.va & ~(UC_PAGE_SIZE - 1)
    if fault.is_instruction_abort:
        return pc if pc & ~(UC_PAGE_SIZE - 1) == page else fault.va
    if reached is not None and FAULT_PAGE <= reached < FAULT_PAGE + UC_PAGE_SIZE:
        return page | (reached - FAULT_PAGE)
    return fault.va


class TlbFiller:
    """Fill policy for every vCPU of one machine.

    Per fill, the common cases cost one dict lookup and a few integer tests: MMU off (identity),
    guest RAM, and with tracking either a write fill or a read/exec fill of a page whose write
    permission is decided by one bitmap lookup. The stage-1 walk runs only with the MMU on.
    Where the native fill is built (vmm/native_fill.py), it serves the data fills of RAM with
    the MMU off before they get here; this class decides when it may (`native_stage`).

    The fault-rate window of the dirty tracker counts virtual time in slice starts: a write
    fill is timed at the start of the slice that makes it (`Vcpu.slice_start`).
    """

    def __init__(
        self,
        memory: GuestMemory,
        bus: MmioBus,
        dirty: AdaptiveController | None = None,
        native: bool | None = None,
    ) -> None:
        """`native`: use the native fill (default: where it is available)."""
        self.memory = memory
        self.bus = bus
        self.dirty = dirty
        self._regs: dict[int, TranslationRegs | None] = {}
        self.native = native_fill.available() if native is None else native
        self._tracker = native_fill.tracker_for(dirty) if self.native and dirty is not None else None
        self._native: dict[int, NativeFill] = {}
        self._unprivileged: dict[int, int] = {}  # vCPU -> 4 KiB VA page: its next data fill is EL0's
        self._ram_base = memory.base
        self._ram_size = memory.size
        self._words = memory.view().view("<u8")  # RAM as little-endian u64, for descriptor reads
        self._insns = memory.view().view("<u4")  # RAM as instruction words
        self.python_fills = 0  # fills served here (the native fill counts its own)
        self.python_write_fills = 0
        if memory.contains(FAULT_PAGE) or bus.find(FAULT_PAGE) is not None:
            raise AssertionError(f"FAULT_PAGE {FAULT_PAGE:#x} must have nothing behind it")

    def native_stage(self, vcpu: Vcpu) -> NativeFill | None:
        """The native fill for `vcpu`, to register ahead of this one (None: not in use). It
        declines every fill until this class has seen the vCPU's MMU off."""
        if not self.native:
            return None
        stage = NativeFill(
            self._ram_base,
            self._ram_size,
            vcpu.code_pages,
            vcpu.code_page_size,
            self._tracker,
            ram_address=self.memory.host_address,
            stub_base=VMM_STUB_BASE,
        )
        self._native[vcpu.index] = stage
        return stage

    @property
    def fills(self) -> int:
        """TLB fills served, by either path (for stats)."""
        return self.python_fills + sum(n.fills for n in self._native.values())

    @property
    def write_fills(self) -> int:
        return self.python_write_fills + sum(n.write_fills for n in self._native.values())

    def invalidate(self, vcpu: Vcpu) -> None:
        """Forget `vcpu`'s cached translation registers (the native fill declines until the
        next fill here has read them again)."""
        self._regs[vcpu.index] = None
        self._unprivileged.pop(vcpu.index, None)
        stage = self._native.get(vcpu.index)
        if stage is not None:
            stage.set_identity(False)
            stage.set_unprivileged_page(None)

    def _translation_regs(self, vcpu: Vcpu) -> TranslationRegs:
        regs = TranslationRegs(
            sctlr=vcpu.sysreg("SCTLR_EL1"),
            tcr=vcpu.sysreg("TCR_EL1"),
            ttbr0=vcpu.sysreg("TTBR0_EL1"),
            ttbr1=vcpu.sysreg("TTBR1_EL1"),
        )
        self._regs[vcpu.index] = regs
        stage = self._native.get(vcpu.index)
        if stage is not None:
            if regs.sctlr & SCTLR_M:
                stage.set_walk(regs.sctlr, regs.tcr, regs.ttbr0, regs.ttbr1)
            else:
                stage.set_identity(True)
        return regs

    def fetch_word(self, vcpu: Vcpu, vaddr: int, el: int | None = None) -> int | None:
        """The instruction word a fetch from `vaddr` at EL `el` (default: the vCPU's current
        EL) would read now (4-byte aligned), or None if it would fault or reach no RAM. No side
        effects: for exception entry (is the vector there?), syndromes (the trapped
        instruction) and fault reports."""
        regs = self._regs.get(vcpu.index)
        if regs is None:
            regs = self._translation_regs(vcpu)
        pa = vaddr
        if regs.sctlr & SCTLR_M:
            result = self._walk(vcpu, regs, vaddr, AccessKind.FETCH, el)
            if not isinstance(result, Translation):
                return None
            pa = result.pa
        off = pa - self._ram_base
        if off & 3 or not 0 <= off <= self._ram_size - 4:
            return None
        return int(self._insns[off >> 2])

    def _read_u64(self, pa: int) -> int | None:
        """The descriptor at `pa` (8-byte aligned by construction), or None outside RAM."""
        off = pa - self._ram_base
        if 0 <= off <= self._ram_size - 8:
            return int(self._words[off >> 3])
        return None

    def _walk(
        self, vcpu: Vcpu, regs: TranslationRegs, vaddr: int, kind: AccessKind, el: int | None = None
    ) -> Translation | TranslationFault:
        """The stage-1 walk for an access of `kind` at EL `el` (default: the vCPU's current EL)
        and PSTATE.PAN."""
        pstate = vcpu.pstate
        el = arch.pstate_el(pstate) if el is None else el
        return translate(regs, vaddr, kind, el, self._read_u64, pan=bool(pstate & PSTATE_PAN))

    def unprivileged_retry(self, vcpu: Vcpu, va: int, access: AccessKind) -> bool:
        """An LDTR/STTR at EL1 faulted at `va` (the fill checked EL1's permissions and PAN).
        If EL0 may make this access, the next data fill of its 4 KiB page uses EL0's
        permissions without PAN (once), and True is returned."""
        regs = self._regs.get(vcpu.index) or self._translation_regs(vcpu)
        if not isinstance(translate(regs, va, access, 0, self._read_u64), Translation):
            return False
        page = va & ~(DIRTY_PAGE_SIZE - 1)
        self._unprivileged[vcpu.index] = page
        stage = self._native.get(vcpu.index)
        if stage is not None:
            stage.set_unprivileged_page(page)
        return True

    def _translate(self, vcpu: Vcpu, regs: TranslationRegs, vaddr: int, access: int) -> tuple[int, int] | None:
        """Stage-1 walk: (pa, perms), or None after recording the fault on the vCPU."""
        if VMM_STUB_BASE <= vaddr < VMM_STUB_BASE + VMM_STUB_SIZE:
            # The VMM's CLREX stub runs between slices whatever the guest's tables say: its VA
            # page is reserved in every address space (docs/machine.md), and maps to itself.
            return vaddr, UC_PROT_ALL
        kind = _ACCESS.get(access, AccessKind.READ)
        unpriv = self._unprivileged.get(vcpu.index)
        if unpriv is not None and kind is not AccessKind.FETCH and vaddr & ~(DIRTY_PAGE_SIZE - 1) == unpriv:
            del self._unprivileged[vcpu.index]  # the retried LDTR/STTR (unprivileged_retry)
            stage = self._native.get(vcpu.index)
            if stage is not None:
                stage.set_unprivileged_page(None)
            result = translate(regs, vaddr, kind, 0, self._read_u64)
        else:
            result = self._walk(vcpu, regs, vaddr, kind)
        if not isinstance(result, Translation):
            vcpu.pending_abort = result
            if access == UC_MEM_FETCH:
                return None  # the abort's FAR is the PC (fault_address)
            # Let the access reach a page with nothing behind it, so that Unicorn reports its
            # exact address (the fill sees only the 1 KiB page); the vCPU then delivers the abort.
            return FAULT_PAGE, UC_PROT_WRITE if access == UC_MEM_WRITE else UC_PROT_READ
        perms = (
            (UC_PROT_READ if result.readable else 0)
            | (UC_PROT_WRITE if result.writable else 0)
            | (UC_PROT_EXEC if result.executable else 0)
        )
        return result.pa, perms

    def __call__(self, vcpu: Vcpu, vaddr: int, access: int) -> tuple[int, int] | None:
        self.python_fills += 1
        regs = self._regs.get(vcpu.index)
        if regs is None:
            regs = self._translation_regs(vcpu)
        if regs.sctlr & SCTLR_M:
            translated = self._translate(vcpu, regs, vaddr, access)
            if translated is None:
                return None
            pa, perms = translated
        else:
            pa, perms = vaddr, UC_PROT_ALL
        offset = pa - self._ram_base
        if 0 <= offset < self._ram_size:
            dirty = self.dirty
            if dirty is not None:
                page = offset // DIRTY_PAGE_SIZE
                if access == UC_MEM_WRITE:
                    self.python_write_fills += 1
                    if not dirty.already_tracked(page):  # else a TLB refill: nothing new
                        dirty.on_write_fill(page, vcpu.slice_start)
                elif perms & UC_PROT_WRITE and not dirty.write_allowed(page):
                    perms &= ~UC_PROT_WRITE
            return pa, perms
        if VMM_STUB_BASE <= pa < VMM_STUB_BASE + VMM_STUB_SIZE:
            if access != UC_MEM_FETCH:  # a guest load or store: the page is not in its map
                vcpu.refuse_access(pa & ~(UC_PAGE_SIZE - 1), fetch=False)
                return FAULT_PAGE, UC_PROT_WRITE if access == UC_MEM_WRITE else UC_PROT_READ
            return pa, UC_PROT_EXEC
        if self.bus.find(pa) is not None:
            if access == UC_MEM_FETCH:  # device registers are not executable
                vcpu.refuse_access(pa & ~(UC_PAGE_SIZE - 1), fetch=True)
                return None
            return pa, perms & (UC_PROT_READ | UC_PROT_WRITE)
        return pa, perms  # a hole: Unicorn reports the unmapped access
