"""Where a vCPU's architectural registers live in its Unicorn instance, and their transfer to
and from `VcpuState` (as Firecracker's arch/aarch64/regs.rs does for KVM).

Unicorn names the general-purpose, SIMD/FP and stack-pointer registers with UC_ARM64_REG_*
ids. System registers without one are reached through UC_ARM64_REG_CP_REG with the
(crn, crm, op0, op1, op2) tuple of `vmm.sysreg.to_cp_tuple`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from unicorn import arm64_const as a64

from vmm import arch
from vmm.sysreg import SysReg, to_cp_tuple
from vmm.vcpu_state import SAVED_SYSREGS

if TYPE_CHECKING:
    from unicorn import Uc

    from vmm.vcpu_state import VcpuState

X_REGS: list[int] = [getattr(a64, f"UC_ARM64_REG_X{i}") for i in range(29)] + [
    a64.UC_ARM64_REG_X29,
    a64.UC_ARM64_REG_X30,
]  # X0..X30
Q_REGS: list[int] = [getattr(a64, f"UC_ARM64_REG_Q{i}") for i in range(32)]  # V0..V31, 128 bits
_SP = a64.UC_ARM64_REG_SP  # the stack pointer PSTATE selects (SP_EL0 or SP_EL1)
_PSTATE = a64.UC_ARM64_REG_PSTATE
_SP_EL0 = a64.UC_ARM64_REG_SP_EL0
_SP_EL1 = a64.UC_ARM64_REG_SP_EL1
_CP_REG = a64.UC_ARM64_REG_CP_REG


class RegisterFields(TypedDict):
    """The `VcpuState` fields that are registers of the Unicorn instance (the PC is the vCPU's)."""

    x: list[int]
    sp_el0: int
    sp_el1: int
    pstate: int
    v: list[bytes]
    fpcr: int
    fpsr: int
    sysregs: dict[str, int]


def read_sysreg(uc: Uc, enc: SysReg) -> int:
    """The system register with encoding `enc` (op0, op1, crn, crm, op2)."""
    return uc.reg_read(_CP_REG, to_cp_tuple(enc))


def write_sysreg(uc: Uc, enc: SysReg, value: int) -> None:
    """Write a system register. Every CP_REG write makes Unicorn rebuild its cached hflags."""
    uc.reg_write(_CP_REG, to_cp_tuple(enc) + (value,))


def read_registers(uc: Uc) -> RegisterFields:
    """The registers of `uc` as `VcpuState` fields; SP goes to the bank PSTATE selects."""
    pstate = uc.reg_read(_PSTATE)
    sp = uc.reg_read(_SP)
    if arch.pstate_uses_sp_elx(pstate):
        sp_el0, sp_el1 = uc.reg_read(_SP_EL0), sp
    else:
        sp_el0, sp_el1 = sp, uc.reg_read(_SP_EL1)
    return RegisterFields(
        x=[uc.reg_read(r) for r in X_REGS],
        sp_el0=sp_el0,
        sp_el1=sp_el1,
        pstate=pstate,
        v=[uc.reg_read(r).to_bytes(16, "little") for r in Q_REGS],
        fpcr=uc.reg_read(a64.UC_ARM64_REG_FPCR),
        fpsr=uc.reg_read(a64.UC_ARM64_REG_FPSR),
        sysregs={r.key: read_sysreg(uc, r.enc) for r in SAVED_SYSREGS},
    )


def write_registers(uc: Uc, state: VcpuState) -> None:
    """Load the registers of `state` into `uc` (all but the PC); a saved system register the
    state lacks is written as 0."""
    for r, value in zip(X_REGS, state.x):
        uc.reg_write(r, value)
    for r, value in zip(Q_REGS, state.v):
        uc.reg_write(r, int.from_bytes(value, "little"))
    uc.reg_write(a64.UC_ARM64_REG_FPCR, state.fpcr)
    uc.reg_write(a64.UC_ARM64_REG_FPSR, state.fpsr)
    uc.reg_write(_PSTATE, state.pstate)
    # CP_REG writes come after PSTATE: each makes Unicorn rebuild its cached hflags.
    for r in SAVED_SYSREGS:
        write_sysreg(uc, r.enc, state.sysregs.get(r.key, 0))
    uc.reg_write(_SP_EL0, state.sp_el0)
    uc.reg_write(_SP_EL1, state.sp_el1)
    uc.reg_write(_SP, state.sp_el1 if arch.pstate_uses_sp_elx(state.pstate) else state.sp_el0)
