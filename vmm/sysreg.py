"""AArch64 system-register encodings shared by the VMM's trap hook and the device models.

A `SysReg` is the tuple (op0, op1, crn, crm, op2) from the MRS/MSR encoding, the order the
Arm ARM (DDI 0487) and the generic assembler name S<op0>_<op1>_C<crn>_C<crm>_<op2> use.
Unicorn's MRS/MSR hook hands over a `CpReg` named tuple in a different order
(crn, crm, op0, op1, op2, val); `from_cp_reg` converts it, `to_cp_tuple` goes back for
`reg_read/reg_write(UC_ARM64_REG_CP_REG, ...)`.

Only the registers trapped to a device model are named here: the GICv3 CPU interface
(ICC_*, group 1) and the generic timer (CNT*).
"""
from __future__ import annotations

from typing import Protocol

SysReg = tuple[int, int, int, int, int]  # (op0, op1, crn, crm, op2)


class CpRegLike(Protocol):
    """What `from_cp_reg` needs: Unicorn's `CpReg` (crn, crm, op0, op1, op2, val) has it."""

    crn: int
    crm: int
    op0: int
    op1: int
    op2: int


def from_cp_reg(cp: CpRegLike) -> SysReg:
    """The encoding of the register in a Unicorn MRS/MSR hook's `cp_reg` argument."""
    return (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)


def to_cp_tuple(reg: SysReg) -> tuple[int, int, int, int, int]:
    """Unicorn's UC_ARM64_REG_CP_REG tuple order (crn, crm, op0, op1, op2) for `reg`."""
    op0, op1, crn, crm, op2 = reg
    return (crn, crm, op0, op1, op2)


def generic_name(reg: SysReg) -> str:
    """Generic assembler name, e.g. 'S3_0_C12_C12_0' for ICC_IAR1_EL1."""
    op0, op1, crn, crm, op2 = reg
    return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"


# --- GICv3 CPU interface, group 1 (IHI 0069 12.2 and DDI 0487 D24.2 "GIC system registers") ---
ICC_PMR_EL1: SysReg = (3, 0, 4, 6, 0)  # S3_0_C4_C6_0 priority mask
ICC_AP1R0_EL1: SysReg = (3, 0, 12, 9, 0)  # S3_0_C12_C9_0 group 1 active priorities 0
ICC_DIR_EL1: SysReg = (3, 0, 12, 11, 1)  # S3_0_C12_C11_1 deactivate interrupt (WO)
ICC_RPR_EL1: SysReg = (3, 0, 12, 11, 3)  # S3_0_C12_C11_3 running priority (RO)
ICC_SGI1R_EL1: SysReg = (3, 0, 12, 11, 5)  # S3_0_C12_C11_5 generate group 1 SGI (WO)
ICC_IAR1_EL1: SysReg = (3, 0, 12, 12, 0)  # S3_0_C12_C12_0 acknowledge (RO)
ICC_EOIR1_EL1: SysReg = (3, 0, 12, 12, 1)  # S3_0_C12_C12_1 end of interrupt (WO)
ICC_HPPIR1_EL1: SysReg = (3, 0, 12, 12, 2)  # S3_0_C12_C12_2 highest priority pending (RO)
ICC_BPR1_EL1: SysReg = (3, 0, 12, 12, 3)  # S3_0_C12_C12_3 binary point, group 1
ICC_CTLR_EL1: SysReg = (3, 0, 12, 12, 4)  # S3_0_C12_C12_4 control
ICC_SRE_EL1: SysReg = (3, 0, 12, 12, 5)  # S3_0_C12_C12_5 system register enable
ICC_IGRPEN1_EL1: SysReg = (3, 0, 12, 12, 7)  # S3_0_C12_C12_7 group 1 enable
# Group 0 and alias registers: there are no group-0 interrupts here (no EL3), so they read as
# zero (IAR0/HPPIR0: spurious) and ignore writes; AP0R0 exists as PRIbits = 4 implies.
ICC_IAR0_EL1: SysReg = (3, 0, 12, 8, 0)  # S3_0_C12_C8_0 acknowledge, group 0
ICC_EOIR0_EL1: SysReg = (3, 0, 12, 8, 1)  # S3_0_C12_C8_1 end of interrupt, group 0
ICC_HPPIR0_EL1: SysReg = (3, 0, 12, 8, 2)  # S3_0_C12_C8_2 highest priority pending, group 0
ICC_BPR0_EL1: SysReg = (3, 0, 12, 8, 3)  # S3_0_C12_C8_3 binary point, group 0
ICC_AP0R0_EL1: SysReg = (3, 0, 12, 8, 4)  # S3_0_C12_C8_4 group 0 active priorities 0
ICC_ASGI1R_EL1: SysReg = (3, 0, 12, 11, 6)  # S3_0_C12_C11_6 generate group 1 SGI, other security state
ICC_SGI0R_EL1: SysReg = (3, 0, 12, 11, 7)  # S3_0_C12_C11_7 generate group 0 SGI
ICC_IGRPEN0_EL1: SysReg = (3, 0, 12, 12, 6)  # S3_0_C12_C12_6 group 0 enable

# --- Generic timer (DDI 0487 D12.8 / D24.9 "Generic Timer registers") ----------------------------
CNTKCTL_EL1: SysReg = (3, 0, 14, 1, 0)  # S3_0_C14_C1_0 EL0 access control
CNTFRQ_EL0: SysReg = (3, 3, 14, 0, 0)  # S3_3_C14_C0_0 counter frequency
CNTPCT_EL0: SysReg = (3, 3, 14, 0, 1)  # S3_3_C14_C0_1 physical count (RO)
CNTVCT_EL0: SysReg = (3, 3, 14, 0, 2)  # S3_3_C14_C0_2 virtual count (RO)
CNTPCTSS_EL0: SysReg = (3, 3, 14, 0, 5)  # S3_3_C14_C0_5 self-synchronized CNTPCT (FEAT_ECV)
CNTVCTSS_EL0: SysReg = (3, 3, 14, 0, 6)  # S3_3_C14_C0_6 self-synchronized CNTVCT (FEAT_ECV)
CNTP_TVAL_EL0: SysReg = (3, 3, 14, 2, 0)  # S3_3_C14_C2_0 EL1 physical timer value
CNTP_CTL_EL0: SysReg = (3, 3, 14, 2, 1)  # S3_3_C14_C2_1 EL1 physical timer control
CNTP_CVAL_EL0: SysReg = (3, 3, 14, 2, 2)  # S3_3_C14_C2_2 EL1 physical timer compare value
CNTV_TVAL_EL0: SysReg = (3, 3, 14, 3, 0)  # S3_3_C14_C3_0 virtual timer value
CNTV_CTL_EL0: SysReg = (3, 3, 14, 3, 1)  # S3_3_C14_C3_1 virtual timer control
CNTV_CVAL_EL0: SysReg = (3, 3, 14, 3, 2)  # S3_3_C14_C3_2 virtual timer compare value

SYSREG_NAMES: dict[SysReg, str] = {
    enc: name
    for name, enc in sorted(globals().items())
    if (name.startswith("ICC_") or name.startswith("CNT")) and isinstance(enc, tuple)
}


def sysreg_name(reg: SysReg) -> str:
    """Architectural name if this module knows `reg`, else the generic S.._.._C.._C.._. name."""
    return SYSREG_NAMES.get(reg) or generic_name(reg)
