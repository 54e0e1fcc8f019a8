"""Taking an exception to EL1 (DDI 0487 D1.10): vector, SPSR_EL1, ELR_EL1, ESR_EL1/FAR_EL1,
PSTATE, the stack-pointer bank and the PC.

With a UC_HOOK_INTR hook installed Unicorn never enters the guest's vector table itself
(/work/shared/unicorn-notes.md), so the VMM does it: for the synchronous exceptions a slice
raises (vmm/sync_exceptions.py) and for the IRQs the scheduler takes between slices. These are
functions of a `Vcpu`; its methods of the same names call them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn.arm64_const import (
    UC_ARM64_REG_ELR_EL1,
    UC_ARM64_REG_ESR_EL1,
    UC_ARM64_REG_FAR_EL1,
    UC_ARM64_REG_PC,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_SP,
    UC_ARM64_REG_SP_EL0,
    UC_ARM64_REG_SP_EL1,
)

from vmm import arch
from vmm.sysreg import SysReg
from vmm.vcpu_registers import read_sysreg, write_sysreg

if TYPE_CHECKING:
    from vmm.vcpu import Vcpu

VBAR_EL1: SysReg = (3, 0, 12, 0, 0)  # S3_0_C12_C0_0, vector base address (DDI 0487 D1.10.2)
SPSR_EL1: SysReg = (3, 0, 4, 0, 0)  # S3_0_C4_C0_0, saved program status (DDI 0487 C5.2.18)


def vector_base(vcpu: Vcpu) -> int:
    """VBAR_EL1: the guest's vector table (virtual address), 0 if it has none yet."""
    return read_sysreg(vcpu.uc, VBAR_EL1)


def vector_offset(pstate: int) -> int:
    """The offset of the group of four vectors (sync, IRQ, FIQ, SError) an exception taken to
    EL1 from `pstate` uses (DDI 0487 D1.10.2): from EL0, or from EL1 with SP_EL0
    or SP_EL1."""
    if arch.pstate_el(pstate) == 0:
        return arch.VECTOR_LOWER_EL_AARCH64
    if pstate & 1:
        return arch.VECTOR_CURRENT_EL_SPX
    return arch.VECTOR_CURRENT_EL_SP0


def can_take_exception(vcpu: Vcpu, pc: int) -> bool:
    """A guest can handle an exception if it has a vector table, readable at EL1 through
    its current translation, and is not already in it."""
    vbar = vector_base(vcpu)
    if vbar == 0 or vbar <= pc < vbar + arch.VECTOR_TABLE_SIZE:
        return False
    return vcpu.insn_at(vbar, el=1) is not None


def enter_exception(vcpu: Vcpu, vector_kind: int, preferred_return: int) -> None:
    """Architectural exception entry to EL1 (DDI 0487 D1.10): SPSR, ELR, PSTATE, SP, PC.

    `vector_kind` is arch.VECTOR_SYNC / VECTOR_IRQ / VECTOR_FIQ / VECTOR_SERROR. ESR/FAR
    are the caller's business. Unicorn's PSTATE write does not switch the banked stack
    pointer, so the bank swap is done here.
    """
    uc = vcpu.uc
    old = uc.reg_read(UC_ARM64_REG_PSTATE)
    base = vector_offset(old)
    sp = uc.reg_read(UC_ARM64_REG_SP)
    if arch.pstate_uses_sp_elx(old):
        uc.reg_write(UC_ARM64_REG_SP_EL1, sp)
        new_sp = sp
    else:
        uc.reg_write(UC_ARM64_REG_SP_EL0, sp)
        new_sp = uc.reg_read(UC_ARM64_REG_SP_EL1)
    uc.reg_write(UC_ARM64_REG_ELR_EL1, preferred_return)
    uc.reg_write(UC_ARM64_REG_PSTATE, (old & ~(arch.PSTATE_M_MASK | arch.PSTATE_IL)) | arch.PSTATE_EL1H_MASKED)
    # A CP_REG write makes Unicorn rebuild its cached hflags (current EL etc.); a PSTATE
    # write alone does not, and code at the vector would be translated as if at the old EL.
    write_sysreg(uc, SPSR_EL1, old & 0xFFFF_FFFF)
    uc.reg_write(UC_ARM64_REG_SP, new_sp)
    vcpu.pc = vector_base(vcpu) + base + vector_kind
    uc.reg_write(UC_ARM64_REG_PC, vcpu.pc)


def deliver_sync(vcpu: Vcpu, ec: int, iss: int, preferred_return: int, far: int | None = None) -> bool:
    """Take a synchronous exception if the guest can; False if it cannot (caller faults)."""
    if not can_take_exception(vcpu, preferred_return):
        return False
    vcpu.uc.reg_write(UC_ARM64_REG_ESR_EL1, arch.esr(ec, iss))
    if far is not None:
        vcpu.uc.reg_write(UC_ARM64_REG_FAR_EL1, far)
    enter_exception(vcpu, arch.VECTOR_SYNC, preferred_return)
    return True


def take_irq(vcpu: Vcpu) -> bool:
    """Take an IRQ exception now (between slices) if PSTATE.I is clear. True if taken."""
    if vcpu.uc.reg_read(UC_ARM64_REG_PSTATE) & arch.PSTATE_I:
        return False
    enter_exception(vcpu, arch.VECTOR_IRQ, vcpu.pc)
    return True
