"""The syndrome of an UNDEF that Unicorn raised: exception class and ISS, recovered from the
instruction word and the EL1 controls that trap it (Arm ARM DDI 0487).

Unicorn reports every exception QEMU raises as EXCP_UDEF through its interrupt hook with the
interrupt number only; QEMU's syndrome is not exposed. `undef_syndrome` answers "which
exception would the machine the guest sees take here?" for an instruction Unicorn refused:

| EC | when | source |
|---|---|---|
| 0x0E illegal execution state | PSTATE.IL is set | DDI 0487 "Illegal Execution state"; it outranks UNDEFINED |
| 0x01 WFI trapped | WFI at EL0 with SCTLR_EL1.nTWI = 0 | SCTLR_EL1.nTWI |
| 0x19 SVE access trapped | SVE instruction or ZCR_EL1 access, CPACR_EL1.ZEN traps at this EL, and the guest is shown SVE | CPACR_EL1.ZEN |
| 0x18 MSR/MRS/SYS trapped | EL0 access allowed by the encoding but trapped by an EL1 control: CTR_EL0 (SCTLR_EL1.UCT), DAIF and MSR DAIFSet/DAIFClr (UMA), DC ZVA (DZE), DC CVAU/CVAC/CIVAC and IC IVAU (UCI), the PMU registers (PMUSERENR_EL0) | those registers' pages |
| 0x00 unknown | everything else: unallocated encodings, EL1 registers at EL0, writes to read-only registers, features the CPU model hides (SVE while ID_AA64PFR0_EL1.SVE = 0 reads 0, pointer-authentication keys) | |

Only traps to EL1 are decoded: Unicorn also raises UDEF for traps to EL3 (CPTR_EL3.EZ = 0,
SCR_EL3.API/APK = 0) that belong to features the CPU model does not show, so for the guest they
are UNDEFINED, as KVM injects them. Traps Unicorn never raises are not decoded: FP/SIMD with
CPACR_EL1.FPEN clear (Unicorn's fp_exception_el always answers 0, so EC 0x07 cannot happen) and
WFE (QEMU never traps it). docs/machine.md lists these deviations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmm import arch
from vmm.sysreg import SysReg, to_cp_tuple

if TYPE_CHECKING:
    from vmm.vcpu import Vcpu

# --- ISS fields (DDI 0487 D17.2.37 ESR_EL1; the exception classes are vmm.arch's) --------------------
ISS_COND_AARCH64 = 0x1E << 20  # CV = 1, COND = 0b1110: what EC 0x01..0x07 report from AArch64
ISS_WFX_WFI = 0  # TI [1:0] = 0b00: WFI
# EC 0x18 ISS fields: Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10], Rt [9:5], CRm [4:1],
# Direction [0] (1 = read: MRS or SYSL).
ISS_SYSREG_READ = 1

# --- encodings (DDI 0487 C4.1 A64 instruction set encoding) -----------------------------------------
INSN_SYSTEM_MASK = 0xFFC0_0000  # bits [31:22] = 0b1101010100: MSR, MRS, SYS, SYSL, hints, barriers
INSN_SYSTEM = 0xD500_0000
INSN_WFI = arch.INSN_WFI
OP0_GROUP_SHIFT, OP0_GROUP_MASK = 25, 0xF  # top-level op0 field, bits [28:25]
OP0_GROUP_SVE = 0b0010  # SVE encodings (C4.1 Table C4-1)
MSR_IMM_CRN = 4  # MSR (immediate) to a PSTATE field: op0 = 0, CRn = 4, Rt = 31 (C5.2)
RT_ZR = 31

# --- controls (DDI 0487 D17.2) ----------------------------------------------------------------------
SCTLR_UMA = 1 << 9  # EL0 may access PSTATE.{D,A,I,F}
SCTLR_DZE = 1 << 14  # EL0 may execute DC ZVA
SCTLR_UCT = 1 << 15  # EL0 may read CTR_EL0
SCTLR_NTWI = 1 << 16  # EL0 WFI is not trapped
SCTLR_UCI = 1 << 26  # EL0 may execute DC CVAU, DC CIVAC, DC CVAC, IC IVAU
CPACR_ZEN_SHIFT = 16  # CPACR_EL1.ZEN [17:16]: 0bx0 traps EL0 and EL1, 0b01 traps EL0, 0b11 none
PMUSERENR_EN = 1 << 0  # EL0 may access the PMU registers
PMUSERENR_SW = 1 << 1  # EL0 may write PMSWINC_EL0
PMUSERENR_CR = 1 << 2  # EL0 may read PMCCNTR_EL0
PMUSERENR_ER = 1 << 3  # EL0 may read the event counters and access PMSELR_EL0
ID_AA64PFR0_EL1: SysReg = (3, 0, 0, 4, 0)
ID_AA64PFR0_SVE_SHIFT = 32  # ID_AA64PFR0_EL1.SVE [35:32]: 0 = not implemented

# --- registers and System instructions EL0 may use when an EL1 control allows it ---------------------
ZCR_EL1: SysReg = (3, 0, 1, 2, 0)  # SVE vector length control (trapped by CPACR_EL1.ZEN)
CTR_EL0: SysReg = (3, 3, 0, 0, 1)  # read-only
DAIF: SysReg = (3, 3, 4, 2, 1)
DAIFSET_OP1_OP2 = (3, 6)  # MSR DAIFSet, #imm (C5.2.3)
DAIFCLR_OP1_OP2 = (3, 7)  # MSR DAIFClr, #imm
DC_ZVA: SysReg = (1, 3, 7, 4, 1)
CACHE_OPS_EL0: frozenset[SysReg] = frozenset(
    {
        (1, 3, 7, 5, 1),  # IC IVAU
        (1, 3, 7, 10, 1),  # DC CVAC
        (1, 3, 7, 11, 1),  # DC CVAU
        (1, 3, 7, 14, 1),  # DC CIVAC
    }
)
# PMU registers EL0 may reach (D17.5): PMCR_EL0 .. PMCEID1_EL0, PMCCNTR/PMXEVTYPER/PMXEVCNTR,
# PMOVSSET_EL0, PMEVCNTR<n>_EL0 (CRm 8-11), PMEVTYPER<n>_EL0 and PMCCFILTR_EL0 (CRm 12-15).
PMSWINC_EL0: SysReg = (3, 3, 9, 12, 4)  # write-only
PMSELR_EL0: SysReg = (3, 3, 9, 12, 5)
PMCEID_EL0: frozenset[SysReg] = frozenset({(3, 3, 9, 12, 6), (3, 3, 9, 12, 7)})  # read-only
PMCCNTR_EL0: SysReg = (3, 3, 9, 13, 0)
PMXEVCNTR_EL0: SysReg = (3, 3, 9, 13, 2)
PMOVSSET_EL0: SysReg = (3, 3, 9, 14, 3)
PMEVCNTR_CRM = range(8, 12)  # CRn = 14


@dataclass(frozen=True)
class TrapControls:
    """What decides the syndrome besides the instruction: the vCPU's PSTATE and the EL1-owned
    trap controls, as the guest last wrote them; `sve_shown` is whether the guest's
    ID_AA64PFR0_EL1 reports SVE."""

    pstate: int
    sctlr_el1: int
    cpacr_el1: int
    pmuserenr_el0: int
    sve_shown: bool


def sve_shown(id_aa64pfr0_el1: int) -> bool:
    """Does this ID_AA64PFR0_EL1 value report SVE (FEAT_SVE)?"""
    return (id_aa64pfr0_el1 >> ID_AA64PFR0_SVE_SHIFT) & 0xF != 0


def undef_syndrome(insn: int | None, ctl: TrapControls) -> tuple[int, int]:
    """(EC, ISS) for the exception taken to EL1 when Unicorn raised UDEF at an instruction
    whose word is `insn` (None: unreadable). EC 0x00 with ISS 0 unless a rule in the module
    docstring applies."""
    if ctl.pstate & arch.PSTATE_IL:
        return arch.EC_ILLEGAL_STATE, 0
    if insn is None:
        return arch.EC_UNKNOWN, 0
    el = arch.pstate_el(ctl.pstate)
    if (insn >> OP0_GROUP_SHIFT) & OP0_GROUP_MASK == OP0_GROUP_SVE:
        return _sve_syndrome(el, ctl)
    if insn & INSN_SYSTEM_MASK != INSN_SYSTEM:
        return arch.EC_UNKNOWN, 0
    read = bool(insn >> 21 & 1)
    # MSR/MRS/SYS/SYSL fields (C5.1.2): L [21], op0 [20:19], op1 [18:16], CRn [15:12], CRm [11:8], op2 [7:5], Rt [4:0]
    op0, op1, crn, crm, op2 = (insn >> 19) & 3, (insn >> 16) & 7, (insn >> 12) & 0xF, (insn >> 8) & 0xF, (insn >> 5) & 7
    rt = insn & 31
    reg: SysReg = (op0, op1, crn, crm, op2)
    if reg == ZCR_EL1:
        return _sve_syndrome(el, ctl)
    if el != 0:
        return arch.EC_UNKNOWN, 0
    if insn == INSN_WFI:
        if not ctl.sctlr_el1 & SCTLR_NTWI:
            return arch.EC_WFX, ISS_COND_AARCH64 | ISS_WFX_WFI
        return arch.EC_UNKNOWN, 0
    if _el0_trapped(reg, read, rt, ctl):
        iss = op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | (ISS_SYSREG_READ if read else 0)
        return arch.EC_SYSREG, iss
    return arch.EC_UNKNOWN, 0


def _sve_syndrome(el: int, ctl: TrapControls) -> tuple[int, int]:
    """The CPACR_EL1.ZEN step of CheckSVEEnabled (DDI 0487 pseudocode) for a CPU model that
    shows SVE; UNDEFINED for one that hides it."""
    zen = (ctl.cpacr_el1 >> CPACR_ZEN_SHIFT) & 3
    trapped = not zen & 1 or (zen == 0b01 and el == 0)
    if ctl.sve_shown and trapped:
        return arch.EC_SVE, 0
    return arch.EC_UNKNOWN, 0


def _el0_trapped(reg: SysReg, read: bool, rt: int, ctl: TrapControls) -> bool:
    """Is this EL0 MRS/MSR/SYS one the encoding allows at EL0 and an EL1 control traps?"""
    op0, op1, crn, crm, op2 = reg
    sctlr = ctl.sctlr_el1
    if op0 == 0:  # MSR (immediate) DAIFSet/DAIFClr
        return (not read and crn == MSR_IMM_CRN and rt == RT_ZR and (op1, op2) in (DAIFSET_OP1_OP2, DAIFCLR_OP1_OP2)
                and not sctlr & SCTLR_UMA)
    if op0 == 1:  # SYS: no SYSL is EL0-accessible
        if read:
            return False
        if reg == DC_ZVA:
            return not sctlr & SCTLR_DZE
        return reg in CACHE_OPS_EL0 and not sctlr & SCTLR_UCI
    if reg == CTR_EL0:
        return read and not sctlr & SCTLR_UCT
    if reg == DAIF:
        return not sctlr & SCTLR_UMA
    return _pmu_trapped(reg, read, ctl.pmuserenr_el0)


def _pmu_trapped(reg: SysReg, read: bool, enable: int) -> bool:
    """PMUSERENR_EL0 traps of EL0 PMU accesses (DDI 0487 D17.5 PMUSERENR_EL0); False for
    encodings that are not EL0 PMU registers or that the direction makes UNDEFINED."""
    op0, op1, crn, crm, op2 = reg
    if op0 != 3 or op1 != 3:
        return False
    if crn == 9:
        known = crm in (12, 13) and (crm == 12 or op2 <= 2) or reg == PMOVSSET_EL0
    else:
        known = crn == 14 and crm >= 8
    if not known or (reg in PMCEID_EL0 and not read) or (reg == PMSWINC_EL0 and read):
        return False
    if enable & PMUSERENR_EN:
        return False
    if reg == PMSWINC_EL0:
        return not enable & PMUSERENR_SW
    if reg == PMCCNTR_EL0 and read:
        return not enable & PMUSERENR_CR
    if (reg == PMXEVCNTR_EL0 and read) or (crn == 14 and crm in PMEVCNTR_CRM and read) or reg == PMSELR_EL0:
        return not enable & PMUSERENR_ER
    return True


def read_trap_controls(vcpu: "Vcpu") -> TrapControls:
    """The vCPU's current `TrapControls`; ID_AA64PFR0_EL1 as the guest reads it (through the
    CPU model's trap when one is installed)."""
    from unicorn import arm64_const as a64

    read_pfr0 = vcpu.hooks.sysreg_read.get(ID_AA64PFR0_EL1)
    pfr0 = read_pfr0(vcpu) if read_pfr0 is not None else vcpu.uc.reg_read(a64.UC_ARM64_REG_CP_REG, to_cp_tuple(ID_AA64PFR0_EL1))
    return TrapControls(
        pstate=vcpu.pstate,
        sctlr_el1=vcpu.sysreg("SCTLR_EL1"),
        cpacr_el1=vcpu.sysreg("CPACR_EL1"),
        pmuserenr_el0=vcpu.sysreg("PMUSERENR_EL0"),
        sve_shown=sve_shown(pfr0),
    )
