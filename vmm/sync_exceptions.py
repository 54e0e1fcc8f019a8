"""The synchronous exceptions a slice raises, from what Unicorn reports: their syndrome.

Unicorn reports SVC, BRK, HVC/SMC and UNDEFINED instructions through its interrupt hook (QEMU's
EXCP_* numbers), an unaligned exclusive or atomic access as a data abort, and an access it
could not complete as a failed `emu_start`. Each function here turns one such report into the
`SyncException` the guest takes: ESR's EC and ISS (DDI 0487 D17.2.37), FAR where the class
sets it, the preferred return address, and the reason a fault report gives if the guest has
no usable vector table. Taking it (or reporting the fault) is the vCPU's (vmm/vcpu.py,
vmm/exception_entry.py); PSCI calls go to the machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED
from unicorn.arm64_const import UC_ARM64_REG_SP

from vmm import arch, syndrome
from vmm.mmu import AccessKind, TranslationFault

if TYPE_CHECKING:
    from vmm.vcpu import Vcpu

# Unicorn interrupt numbers seen in UC_HOOK_INTR (QEMU target/arm/cpu.h EXCP_*).
EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_DATA_ABORT = 4  # Unicorn raises it only for an unaligned exclusive or atomic access
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_SMC = 13


@dataclass(frozen=True)
class SyncException:
    """A synchronous exception for the guest, and the fault it is if the guest cannot take it."""

    ec: int  # ESR_EL1.EC
    iss: int  # ESR_EL1.ISS
    preferred_return: int  # ELR_EL1: the virtual address the handler returns to
    far: int | None  # FAR_EL1, for the classes that set it
    reason: str  # the fault report's one line if the guest has no usable vector table

    @property
    def esr(self) -> int:
        """ESR_EL1 as the guest reads it (IL set: 32-bit instructions only here)."""
        return arch.esr(self.ec, self.iss)


def _abort_class(instruction: bool, el0: bool) -> int:
    """EC of an instruction or data abort taken to EL1 from EL0 (lower) or EL1 (current)."""
    if instruction:
        return arch.EC_IABT_LOWER if el0 else arch.EC_IABT_CURRENT
    return arch.EC_DABT_LOWER if el0 else arch.EC_DABT_CURRENT


def from_interrupt(vcpu: Vcpu, intno: int, pc: int) -> SyncException | None:
    """The exception for an SVC, BRK, UNDEFINED instruction, misaligned PC or unaligned
    exclusive/atomic access Unicorn reported as `intno` with the PC at `pc`; None for a number
    with no exception here (HVC/SMC are PSCI calls, the caller's)."""
    if intno == EXCP_SWI:  # the PC is past the SVC, its preferred return
        insn = vcpu.insn_at(pc - 4) or 0
        ec, iss = arch.EC_SVC64, arch.imm16(insn)
    elif intno == EXCP_BKPT:  # the PC is on the BRK, its preferred return
        insn = vcpu.insn_at(pc) or 0
        ec, iss = arch.EC_BRK64, arch.imm16(insn)
    elif intno == EXCP_UDEF and pc & 3:  # QEMU reports a misaligned PC as UDEF
        ec, iss = arch.EC_PC_ALIGN, 0
    elif intno == EXCP_UDEF:  # QEMU's syndrome is not exposed: decode it (vmm.syndrome)
        ec, iss = syndrome.undef_syndrome(vcpu.insn_at(pc), syndrome.read_trap_controls(vcpu))
    elif intno == EXCP_DATA_ABORT:
        return alignment_abort(vcpu, pc)
    else:
        return None
    far = pc if ec == arch.EC_PC_ALIGN else None  # FAR_EL1 holds the misaligned PC
    return SyncException(ec, iss, pc, far, f"{arch.EC_NAMES[ec]} with no usable vector table")


def alignment_abort(vcpu: Vcpu, pc: int) -> SyncException:
    """The unaligned exclusive or atomic access at `pc`: a data abort with DFSC alignment
    fault, FAR = the base register Xn (these instructions take no offset), WnR as QEMU
    reports it (0 for a load-exclusive, 1 for stores and read-modify-writes)."""
    insn = vcpu.insn_at(pc) or 0
    rn = (insn >> 5) & 31
    far = vcpu.uc.reg_read(UC_ARM64_REG_SP) if rn == 31 else vcpu.reg(rn)
    exclusive = insn & 0x3F00_0000 == 0x0800_0000  # load/store exclusive class (and CAS)
    write = not (exclusive and (insn >> 22) & 1 and not (insn >> 23) & 1)
    ec = _abort_class(instruction=False, el0=arch.pstate_el(vcpu.pstate) == 0)
    iss = arch.FSC_ALIGNMENT | (arch.ISS_DABT_WNR if write else 0)
    what = "write to" if write else "read from"
    return SyncException(ec, iss, pc, far, f"alignment fault: unaligned exclusive or atomic {what} {far:#x}")


def external_abort(access: int, addr: int, pc: int, el0: bool) -> SyncException:
    """A synchronous external abort: the `access` (Unicorn's UC_MEM_* kind) at guest physical
    address `addr` reached a hole in the physical map, or was a fetch from MMIO
    (UC_MEM_FETCH_PROT); the instruction at `pc` made it."""
    fetch = access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT)
    write = access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT)
    what = "instruction fetch from" if fetch else ("write to" if write else "read from")
    ec = _abort_class(instruction=fetch, el0=el0)
    iss = arch.FSC_SYNC_EXTERNAL | (arch.ISS_DABT_WNR if write else 0)
    where = "MMIO" if access == UC_MEM_FETCH_PROT else "unmapped"
    return SyncException(ec, iss, pc, addr, f"{what} {where} guest physical address {addr:#x}")


def translation_abort(fault: TranslationFault, far: int, pc: int, el0: bool) -> SyncException:
    """An instruction or data abort for a stage-1 `fault` of the TLB fill (vmm.mmu), at virtual
    address `far`, made by the instruction at `pc`."""
    ec = _abort_class(instruction=fault.is_instruction_abort, el0=el0)
    iss = fault.fsc
    if not fault.is_instruction_abort and fault.access is AccessKind.WRITE:
        iss |= arch.ISS_DABT_WNR
    reason = f"{fault.kind.name.lower().replace('_', ' ')} fault, level {fault.level}, at virtual address {far:#x}"
    return SyncException(ec, iss, pc, far, reason)
