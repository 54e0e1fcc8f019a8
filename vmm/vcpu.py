"""`Vcpu`: one AArch64 vCPU backed by its own Unicorn instance.

Contracts:
- Guest RAM is one host buffer shared by all vCPUs (`mem_map_ptr`); MMIO windows are mapped
  per instance with callbacks into the device models.
- Unicorn is put in virtual-TLB mode: the VMM's fill hook defines VA->PA (identity with the
  MMU off) and is where the dirty tracker sees the first store to each page.
- Every guest-visible event (SVC/BRK/UDF exception entry, PSCI calls, trapped system
  registers, MMIO) is handled *inside* the hook that reports it, so a slice of N instructions
  runs exactly N instructions unless the guest idles, powers off or faults, or the VMM stops
  it to re-plan (`ExitKind.REPLAN`: a timer write, an unmask with an IRQ pending). Those end
  the slice early (`SliceExit`) and `executed` says how many instructions ran (vmm.icount);
  `now()` is the virtual time of the instruction a hook runs for.
- Between slices the exclusive monitor is cleared (a CLREX stub in a VMM-owned page), so a
  slice boundary is a clean architectural point: a snapshot taken there and restored into a
  fresh Unicorn instance continues exactly as the original would.
- `save_state()` returns a plain `VcpuState`; `restore_state()` takes it back. No Unicorn
  context blob is used in snapshots. In-process reset (vmm.reset) uses `checkpoint()` /
  `rollback()` instead: the Unicorn CPU context of this very instance, restored with one copy.
- Translated code: Unicorn does not see RAM written behind its back, so the vCPU keeps a record
  of the RAM pages it may hold translations of (vmm/translated_code.py) and
  `drop_translations(pages)` drops the translations of exactly those of `pages`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_MEM_FETCH, UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED, Uc, UcError
from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_PROT, UC_HOOK_MEM_UNMAPPED, UC_HOOK_TLB_FILL
from unicorn import UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_TLB_VIRTUAL
from unicorn import arm64_const as a64

from vmm import arch, exception_entry, sync_exceptions
from vmm.engine import new_engine
from vmm.icount import InstructionCounter, InstructionCounterError, mrs_steps_past_skip
from vmm import block_counter, native_sysreg
from vmm.block_counter import BlockCounter
from vmm.layout import VMM_STUB_BASE, VMM_STUB_SIZE
from vmm.tlb import UC_PAGE_SIZE
from vmm.native_sysreg import NativeSysreg
from vmm.slice_exit import ExitKind, FaultInfo, SliceExit
from vmm.sync_exceptions import EXCP_HVC, EXCP_SMC, EXCP_SWI, EXCP_UDEF, SyncException
from vmm.sysreg import SysReg
from vmm.sysreg_hooks import SysregHooks
from vmm.translated_code import CODE_PAGE_SIZE, TranslatedCode
from vmm.vcpu_hooks import SysregRead, SysregWrite, VcpuHooks
from vmm.vcpu_registers import X_REGS, read_registers, read_sysreg, write_registers, write_sysreg
from vmm.vcpu_state import SAVED_SYSREGS, PowerState, SavedSysreg, VcpuCheckpoint, VcpuState
from vmm.vcpu_state import reset_state, saved_sysreg, saved_sysreg_key

if TYPE_CHECKING:
    from vmm.memory import GuestMemory
    from vmm.mmio import MmioBus

# The vCPU's data types live in modules of their own; these names stay importable from here.
__all__ = [
    "CODE_PAGE_SIZE", "SAVED_SYSREGS", "ExitKind", "FaultInfo", "PowerState", "SavedSysreg", "SliceExit",
    "SysReg", "SysregRead", "SysregWrite", "Vcpu", "VcpuCheckpoint", "VcpuHooks", "VcpuState", "saved_sysreg_key",
]


UNMASK_STOP = "IRQ unmasked with an interrupt signalled"  # the detail of a block-hook stop
# The `until` of every run: on the stub page past its code (CLREX; B .+4; then UDF), so no run
# reaches it, and a guest that jumps into the stub meets an UDF there, on either counter.
FREE_UNTIL = VMM_STUB_BASE + VMM_STUB_SIZE // 2

# Higher-EL configuration written once per vCPU so that ERET and HVC behave (unicorn-notes.md).
SCR_EL3: SysReg = (3, 6, 1, 1, 0)
SCR_EL3_VALUE = 0x401 | (1 << 8)  # RW | NS | HCE (HVC enabled: intno 11, PC after the HVC)
HCR_EL2: SysReg = (3, 4, 1, 1, 0)
HCR_EL2_VALUE = 1 << 31  # RW: EL1 is AArch64

_PC = a64.UC_ARM64_REG_PC
_PSTATE = a64.UC_ARM64_REG_PSTATE


class Vcpu:
    """One vCPU. Not thread-safe; the scheduler runs one vCPU at a time."""

    def __init__(self, index: int, memory: GuestMemory, bus: MmioBus, hooks: VcpuHooks) -> None:
        self.index = index
        self.mpidr = (1 << 31) | index  # MPIDR_EL1: RES1 bit 31, Aff0 = index
        self.memory = memory
        self.hooks = hooks
        self.power = PowerState.OFF
        self.waiting = False
        self.pending_entry = 0
        self.pending_context = 0
        self.pc = 0
        self._exit: SliceExit | None = None
        self._unmapped: tuple[int, int] | None = None  # (access, address) of the last unmapped access
        self._refused: tuple[int, bool] | None = None  # (1 KiB page, is a fetch): see refuse_access
        self.pending_abort: object | None = None  # vmm.mmu.TranslationFault from the TLB fill
        self._irq_signalled = False
        self._hook_error: BaseException | None = None
        self._code = TranslatedCode(memory, self.flush_tlb)
        self._code_pages = self._code.pages  # 1 = may hold translations
        self._code_bits = self._code.bits
        self.stale_code = self._code.stale  # fetched pages the host wrote since this vCPU last ran

        uc = new_engine()
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
        for region in bus.regions:
            dev = region.device
            uc.mmio_map(region.base, region.size, self._mmio_read, dev, self._mmio_write, dev)
        stub = np.zeros(VMM_STUB_SIZE // 4, dtype=np.uint32)  # zeros: UDF, for a guest that jumps in
        stub[0] = arch.INSN_CLREX
        stub[1] = arch.INSN_B_NEXT  # ends the block: the block counter's redirect block follows
        uc.mem_map(VMM_STUB_BASE, VMM_STUB_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(VMM_STUB_BASE, stub.tobytes())
        write_sysreg(uc, SCR_EL3, SCR_EL3_VALUE)
        write_sysreg(uc, HCR_EL2, HCR_EL2_VALUE)
        self.native_fill = hooks.tlb_fill_native(self) if hooks.tlb_fill_native else None
        if self.native_fill is not None:
            self.native_fill.register(uc)  # first: Unicorn asks fill hooks in order
        uc.hook_add(UC_HOOK_TLB_FILL, self._on_tlb_fill)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_PROT, self._on_unmapped)
        self.tlb_stale = False  # another vCPU broadcast a TLBI: flush before the next slice
        self.uc = uc
        self._icount = InstructionCounter(uc)
        self._mrs_steps = mrs_steps_past_skip(set(hooks.sysreg_read) | set(hooks.sysreg_const))  # see SysregHooks
        self._sysregs = SysregHooks(self, self._mrs_steps, self._guard, self._refresh_irq)
        self.native_sysreg: NativeSysreg | None = None
        if native_sysreg.available():  # untrapped system registers never reach Python
            self.native_sysreg = NativeSysreg(
                reads=hooks.sysreg_read,
                writes=set(hooks.sysreg_write) | set(hooks.sysreg_observe),
                steps=self._mrs_steps,
                consts=hooks.sysreg_const,
                emu_counter=self._icount.address,
                on_mrs=self._sysregs.on_mrs,
                on_msr=self._sysregs.on_msr,
                uc=uc,
            )
            self.native_sysreg.register(uc)
            if self.native_fill is not None:  # the fill tells the TLBI filter what it installs
                self.native_fill.state.record = self.native_sysreg.record_address
        else:  # the reference: every access through Python
            uc.hook_add(UC_HOOK_INSN, self._sysregs.on_mrs, None, 1, 0, a64.UC_ARM64_INS_MRS)
            uc.hook_add(UC_HOOK_INSN, self._sysregs.on_msr, None, 1, 0, a64.UC_ARM64_INS_MSR)
            uc.hook_add(UC_HOOK_INSN, self._sysregs.on_sys, None, 1, 0, a64.UC_ARM64_INS_SYS)
            uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        # Slices counted per translation block (vmm/block_counter.py), or by Unicorn's count=.
        self.counter: BlockCounter | None = None
        if self.native_sysreg is not None and block_counter.enabled():
            self.counter = BlockCounter(uc, self.native_sysreg.state, stub=VMM_STUB_BASE, free_until=FREE_UNTIL)
        self._insn_pc: int | None = None  # the instruction an interrupt hook runs for
        self.slice_start = 0  # virtual time of the first instruction of the last run_slice
        self.slice_end = 0  # slice_start + its count
        self.executed = 0  # instructions the last run_slice ran
        # Instructions executed since this object was made, summed by the scheduler: a host-side
        # statistic (MIPS), not guest state, so not in VcpuState (a restored vCPU counts from 0).
        self.retired = 0
        self._reset_state = self.save_state()

    # --- registers ------------------------------------------------------------------------------
    def reg(self, n: int) -> int:
        """Xn (0..30)."""
        return self.uc.reg_read(X_REGS[n])

    def set_reg(self, n: int, value: int) -> None:
        self.uc.reg_write(X_REGS[n], value & 0xFFFF_FFFF_FFFF_FFFF)

    def sysreg(self, name: str) -> int:
        """A saved system register by name, e.g. 'VBAR_EL1'."""
        return read_sysreg(self.uc, saved_sysreg(name).enc)

    def set_sysreg(self, name: str, value: int) -> None:
        write_sysreg(self.uc, saved_sysreg(name).enc, value)

    @property
    def pstate(self) -> int:
        return self.uc.reg_read(_PSTATE)

    @property
    def code_pages(self) -> bytearray:
        """The live record of RAM pages (`code_page_size` bytes each) this vCPU fetched from
        since its translations were last dropped: 1 = may hold translated code. Data fills of
        other pages are granted no execute permission, so a first fetch always fills."""
        return self._code_pages

    code_page_size = CODE_PAGE_SIZE

    def read_pc(self) -> int:
        return self.uc.reg_read(_PC)

    # --- power ------------------------------------------------------------------------------------
    def reset(self, entry: int, x0: int = 0, x1: int = 0) -> None:
        """Architectural reset into EL1h, MMU off, DAIF masked, at `entry` (Linux boot protocol)."""
        self.restore_state(reset_state(self._reset_state, self.mpidr, entry, x0, x1))

    # --- running --------------------------------------------------------------------------------
    def request_exit(self, kind: ExitKind, detail: str = "", fault: object | None = None) -> None:
        """Called from inside a hook: end the current slice after this instruction."""
        if self._exit is None:
            self._exit = SliceExit(kind, detail, fault)
        self._halt()

    def _halt(self) -> None:
        if self.counter is not None:
            self.counter.halt()
        self.uc.emu_stop()

    def run_slice(self, count: int, start: int) -> SliceExit | None:
        """Run up to `count` instructions from `self.pc`, the first at virtual time `start`.

        None if all `count` ran. Afterwards `executed` is how many instructions the slice ran,
        the one that ended it included (WFI, HVC, a timer MSR); a fault charges all `count`.
        """
        uc = self.uc
        if self.stale_code:
            self.drop_translations(np.fromiter(sorted(self.stale_code), dtype=np.int64))
            self.stale_code.clear()
        self.slice_start, self.slice_end = start, start + count
        if self.native_fill is not None:
            self.native_fill.start_slice(start)
        if self.native_sysreg is not None:
            cntvoff = self.hooks.cntvoff(self) if self.hooks.cntvoff is not None else 0
            self.native_sysreg.start_slice(start, cntvoff)
        self.executed = count
        if self.tlb_stale:
            self.tlb_stale = False
            self.flush_tlb()
        self._exit = None
        self._unmapped = None
        self._refused = None
        self._hook_error = None
        self.pending_abort = None
        if self.counter is None:  # the block counter clears the monitor in its run
            self._irq_signalled = False  # no unmask stop in the CLREX stub
            if self.native_sysreg is not None:
                self.native_sysreg.set_irq_signalled(False)
            self._clrex()
        self._refresh_irq()
        counter = self.counter
        complete = False
        try:
            if counter is not None:
                self.pc, complete = counter.run(self.pc, count, start)
            else:
                uc.emu_start(self.pc, FREE_UNTIL, count=count)
        except UcError as e:
            self.pc = uc.reg_read(_PC)
            self._native_tlbis()
            if self._hook_error is not None:
                return self._fault(f"VMM error in a device or hook: {self._hook_error!r}")
            if self.pending_abort is not None:
                ex = self._translation_abort(self.pending_abort)
                if ex is not None and ex.kind is ExitKind.REPLAN:  # retried: it did not run
                    self.executed = (counter.counted_at(self.pc) if counter is not None else self._icount.counted()) - 1
                return ex
            return self._memory_fault(e)
        if counter is None:
            self.pc = uc.reg_read(_PC)
        self._native_tlbis()
        if self._hook_error is not None:
            return self._fault(f"VMM error in a device or hook: {self._hook_error!r}")
        if VMM_STUB_BASE <= self.pc < VMM_STUB_BASE + VMM_STUB_SIZE and self._exit is None:
            return self._fault("guest jumped into the VMM stub page")
        if counter is not None:  # what Unicorn's count would read (vmm.icount)
            counted = count + 1 if complete else counter.ran()
        else:
            counted = self._icount.counted()
        if self.native_sysreg is not None and self.native_sysreg.take_stopped() and self._exit is None:
            self._exit = SliceExit(ExitKind.REPLAN, UNMASK_STOP)
        if self._exit is None and counted != count + 1:  # vmm.icount: the stop happens at the hook of count + 1
            if not (counted <= count and self.insn_at(self.pc - 4) == arch.INSN_WFI):
                raise InstructionCounterError(f"a slice of {count} instructions counted {counted - 1}")
            self._wfi()
        if self._exit is not None:
            # A block hook stops before the block's first instruction is counted; every other
            # stop comes after the instruction that made it.
            self.executed = counted
        return self._exit

    def _clrex(self) -> None:
        """Clear the exclusive monitor (DDI 0487 B2.9.5) by running CLREX on the VMM stub page
        (Unicorn's count= path; the block counter runs the stub at the start of its run).

        count=1 keeps Unicorn's instruction-count hook installed between slices: switching it
        off and on costs a retranslation of everything (measured 10-20% of execution speed)."""
        self.uc.emu_start(VMM_STUB_BASE, FREE_UNTIL, count=1)

    def _wfi(self) -> None:
        """Unicorn ended the slice right after a WFI (it halts emu_start there). The vCPU waits
        for an interrupt and resumes after the WFI (DDI 0487 D1.6.2); with one pending, masked
        or not, WFI completes at once and the turn goes on."""
        pending = self.hooks.irq_pending
        if pending is not None and pending(self):
            self._exit = SliceExit(ExitKind.REPLAN, "WFI with an interrupt pending")
        else:
            self.waiting = True
            self._exit = SliceExit(ExitKind.WAIT, "WFI")

    def _native_tlbis(self) -> None:
        """Tell the machine about TLBIs the native SYS hook saw in the slice (see SysregHooks.on_sys)."""
        if self.native_sysreg is not None and self.native_sysreg.take_tlbis() and self.hooks.on_tlbi is not None:
            self.hooks.on_tlbi(self)

    def now(self) -> int:
        """Virtual time (ns) of the instruction being executed: for hooks inside `run_slice`.

        Instruction k (from 0) of a slice runs at `slice_start` + k.
        """
        if self.counter is not None:
            pc = self._insn_pc if self._insn_pc is not None else self.uc.reg_read(_PC)  # synced for system-register hooks
            return self.slice_start + self.counter.counted_at(pc) - 1
        return self.slice_start + self._icount.counted() - 1

    def _fault(self, reason: str, **facts: int | None) -> SliceExit:
        info = FaultInfo(reason=reason, pc=self.pc, **facts)  # type: ignore[arg-type]
        report = self.hooks.on_fault(self, info) if self.hooks.on_fault else info
        self._exit = SliceExit(ExitKind.FAULT, reason, report)
        return self._exit

    def _take(self, exc: SyncException) -> SliceExit | None:
        """Deliver `exc` to the guest; None if it took it, else stop at its preferred return
        address with a fault (inside a hook, the caller then halts Unicorn)."""
        if self.deliver_sync(exc.ec, exc.iss, preferred_return=exc.preferred_return, far=exc.far):
            return None
        self.pc = exc.preferred_return
        return self._fault(exc.reason, ec=exc.ec, esr=exc.esr, far=exc.far)

    def _memory_fault(self, err: UcError | None) -> SliceExit | None:
        """An access Unicorn could not complete: a physical hole or a fetch from non-RAM."""
        if self._refused is not None:  # the fill refused it (refuse_access)
            page, fetch = self._refused
            if fetch:
                self._unmapped = (UC_MEM_FETCH_PROT, self.pc)
            elif self._unmapped is not None:  # reached FAULT_PAGE at the access's offset
                access, reached = self._unmapped
                self._unmapped = (access, page | (reached & (UC_PAGE_SIZE - 1)))
        if self._unmapped is None:
            return self._fault(f"emulation stopped: {err}")
        access, addr = self._unmapped
        el0 = arch.pstate_el(self.pstate) == 0
        return self._take(sync_exceptions.external_abort(access, addr, self.pc, el0))

    def _translation_abort(self, fault: object) -> SliceExit | None:
        """A stage-1 translation fault from the TLB fill: an instruction or data abort."""
        from vmm.mmu import TranslationFault
        from vmm.tlb import fault_address

        assert isinstance(fault, TranslationFault)
        el0 = arch.pstate_el(self.pstate) == 0
        far = fault_address(fault, self.pc, self._unmapped[1] if self._unmapped is not None else None)
        self.flush_tlb()  # drop the entry the fill made for the faulting access (vmm.tlb.FAULT_PAGE)
        retry = self.hooks.unprivileged_retry
        if not fault.is_instruction_abort and not el0 and retry is not None:
            insn = self.insn_at(self.pc)
            if insn is not None and arch.is_unprivileged_ldst(insn) and retry(self, fault.va, fault.access):
                # LDTR/STTR at EL1 check EL0's permissions and ignore PSTATE.PAN (DDI 0487
                # D5.4.2); the fill cannot tell them from ordinary accesses, so it faulted. The
                # instruction runs again with EL0's permissions for its page.
                self._exit = SliceExit(ExitKind.REPLAN, "LDTR/STTR checked with EL0 permissions")
                return self._exit
        return self._take(sync_exceptions.translation_abort(fault, far, self.pc, el0))

    # --- exception entry (vmm/exception_entry.py) -----------------------------------------------
    def can_take_exception(self, pc: int) -> bool:
        """Has the guest a vector table it can enter, and is `pc` not in it?"""
        return exception_entry.can_take_exception(self, pc)

    def enter_exception(self, vector_kind: int, preferred_return: int) -> None:
        """Exception entry to EL1 at the `vector_kind` vector (arch.VECTOR_*); ESR/FAR not set."""
        exception_entry.enter_exception(self, vector_kind, preferred_return)

    def deliver_sync(self, ec: int, iss: int, preferred_return: int, far: int | None = None) -> bool:
        """Take a synchronous exception if the guest can; False if it cannot (caller faults)."""
        return exception_entry.deliver_sync(self, ec, iss, preferred_return, far)

    def take_irq(self) -> bool:
        """Take an IRQ exception now (between slices) if PSTATE.I is clear. True if taken."""
        return exception_entry.take_irq(self)

    # --- hooks (run inside emu_start) ---------------------------------------------------------
    def _guard(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as e:  # a VMM bug or a device error must not unwind through Unicorn
            self._hook_error = e
            self._halt()
            return 0

    def _on_tlb_fill(self, uc: Uc, vaddr: int, access: int, entry: object, _ud: object) -> bool:
        fill = self.hooks.tlb_fill
        try:
            result = (vaddr, UC_PROT_ALL) if fill is None else fill(self, vaddr, access)
        except Exception as e:  # e.g. UnsupportedTranslation: stop, do not unwind through Unicorn
            self._hook_error = e
            return False
        if result is None:
            return False
        paddr, perms = result
        if self.native_sysreg is not None:
            self.native_sysreg.untracked_fill()
        offset = paddr - self.memory.base
        if 0 <= offset < self.memory.size:
            page = offset // CODE_PAGE_SIZE
            if access == UC_MEM_FETCH:
                self._code_pages[page] = 1
            elif not self._code_pages[page]:
                perms &= ~UC_PROT_EXEC  # so that code is translated only after a fetch fill
        entry.paddr, entry.perms = paddr, perms  # type: ignore[attr-defined]
        return True

    def _refresh_irq(self) -> None:
        """Re-read whether the GIC signals an IRQ to this vCPU (at slice start, and after every
        VMM handler that may have changed it: MMIO, trapped system registers)."""
        signalled = self.hooks.irq_signalled
        self._irq_signalled = bool(signalled is not None and signalled(self))
        if self.native_sysreg is not None:
            self.native_sysreg.set_irq_signalled(self._irq_signalled)

    def _on_block(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        """The reference for vmm/_sysreg.c microvm_block: stop in front of the first block
        that starts with an IRQ signalled and PSTATE.I clear. Every instruction that can clear
        PSTATE.I (MSR DAIFClr/DAIF, ERET) ends its translation block, so this is exact."""
        if self._irq_signalled and self._exit is None and not uc.reg_read(_PSTATE) & arch.PSTATE_I:
            self.request_exit(ExitKind.REPLAN, UNMASK_STOP)

    def refuse_access(self, page: int, fetch: bool) -> None:
        """Called by the TLB-fill policy for an access the guest's physical map does not allow
        (an instruction fetch from MMIO; a load or store on the VMM stub page), in the 1 KiB
        `page`: it is reported like an access to a hole. The fill fails a fetch (its address is
        the PC); a data access is let through to vmm.tlb.FAULT_PAGE, where Unicorn reports its
        offset in the page."""
        self._refused = (page, fetch)

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _ud: object) -> bool:
        self._unmapped = (access, address)
        return False

    def _on_interrupt(self, uc: Uc, intno: int, _ud: object) -> None:
        if self.counter is not None:  # the exception leaves its block at the raising instruction
            pc = uc.reg_read(_PC)
            self._insn_pc = pc - 4 if intno in (EXCP_SWI, EXCP_HVC, EXCP_SMC) else pc
            self.counter.leave_at(self._insn_pc)
        try:
            self._guard(lambda: self._handle_interrupt(intno))
        finally:
            self._insn_pc = None

    def _handle_interrupt(self, intno: int) -> None:
        uc = self.uc
        pc = uc.reg_read(_PC)
        if intno in (EXCP_HVC, EXCP_SMC):
            fid = uc.reg_read(X_REGS[0])
            if self.hooks.psci is not None:
                self.hooks.psci(self, fid)
            else:
                self.set_reg(0, 0xFFFF_FFFF_FFFF_FFFF)  # NOT_SUPPORTED
            return
        if intno == EXCP_UDEF and VMM_STUB_BASE <= pc < VMM_STUB_BASE + VMM_STUB_SIZE:
            # The guest ran into the stub page (not in its map): an instruction fetch from a hole.
            self.pc = pc
            self._unmapped = (UC_MEM_FETCH_UNMAPPED, pc)
            if self._memory_fault(None) is not None:
                self._halt()
            return
        exc = sync_exceptions.from_interrupt(self, intno, pc)
        if exc is None:
            self.pc = pc
            self._fault(f"unhandled CPU exception {intno}")
            self._halt()
        elif self._take(exc) is not None:
            self._halt()

    def insn_at(self, vaddr: int, el: int | None = None) -> int | None:
        """The instruction word at virtual address `vaddr` as a fetch at EL `el` (default: the
        current EL) would read it through the current translation; None if it would fault."""
        fetch_word = self.hooks.fetch_word
        if fetch_word is None:
            return self.memory.read_u32(vaddr) if self.memory.contains(vaddr, 4) else None
        return fetch_word(self, vaddr, el)

    def _mmio_read(self, uc: Uc, offset: int, size: int, dev: object) -> int:
        value = int(self._guard(lambda: dev.mmio_read(offset, size, self.index)))  # type: ignore[attr-defined]
        self._refresh_irq()
        return value

    def _mmio_write(self, uc: Uc, offset: int, size: int, value: int, dev: object) -> None:
        self._guard(lambda: dev.mmio_write(offset, size, value, self.index))  # type: ignore[attr-defined]
        self._refresh_irq()

    # --- state ----------------------------------------------------------------------------------
    def save_state(self) -> VcpuState:
        """Plain-data state at a slice boundary."""
        return VcpuState(
            index=self.index,
            mpidr=self.mpidr,
            pc=self.pc,
            power=self.power.value,
            waiting=self.waiting,
            pending_entry=self.pending_entry,
            pending_context=self.pending_context,
            **read_registers(self.uc),
        )

    def restore_state(self, state: VcpuState) -> None:
        """Load `state` (validated by the caller) and flush this instance's translation caches."""
        write_registers(self.uc, state)
        self.uc.reg_write(_PC, state.pc)
        self.pc = state.pc
        self.mpidr = state.mpidr
        self.power = PowerState(state.power)
        self.waiting = state.waiting
        self.pending_entry = state.pending_entry
        self.pending_context = state.pending_context
        self.flush_caches()
        if self.hooks.on_restore is not None:
            self.hooks.on_restore(self)

    def checkpoint(self) -> VcpuCheckpoint:
        """This vCPU's state at a slice boundary, for `rollback` in this process."""
        return VcpuCheckpoint(
            owner=self.uc,
            context=self.uc.context_save(),
            pc=self.pc,
            mpidr=self.mpidr,
            power=self.power,
            waiting=self.waiting,
            pending_entry=self.pending_entry,
            pending_context=self.pending_context,
        )

    def rollback(self, cp: VcpuCheckpoint) -> None:
        """Return to `cp` (taken by this vCPU) and flush the TLB. Translated code is kept: RAM
        the guest wrote since is the caller's business (`drop_translations`)."""
        if cp.owner is not self.uc:
            raise ValueError(f"vCPU {self.index}: the checkpoint was taken by another vCPU")
        self.uc.context_restore(cp.context)
        self.pc = cp.pc
        self.mpidr = cp.mpidr
        self.power = cp.power
        self.waiting = cp.waiting
        self.pending_entry = cp.pending_entry
        self.pending_context = cp.pending_context
        self.flush_tlb()
        if self.hooks.on_restore is not None:
            self.hooks.on_restore(self)

    def note_host_write(self, first_page: int, last_page: int) -> None:
        """The host (not this vCPU) wrote RAM pages first_page..last_page (CODE_PAGE_SIZE
        units): translated code of those it fetched from is dropped before its next slice."""
        self._code.note_host_write(first_page, last_page)

    def drop_translations(self, pages: np.ndarray) -> None:
        """Drop translated code of these RAM pages (indices of CODE_PAGE_SIZE bytes), after
        their contents changed behind Unicorn's back. Costs nothing for pages never fetched."""
        self._code.drop(self.uc, pages)

    def flush_caches(self) -> None:
        """Drop translated code and TLB entries (after RAM changed behind Unicorn's back)."""
        self.uc.ctl_flush_tb()
        self.flush_tlb()
        self._code.forget_all()

    def flush_tlb(self) -> None:
        """Drop TLB entries, so every page is filled (and write-checked) again."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if self.native_sysreg is not None:
            self.native_sysreg.tlb_flushed()
