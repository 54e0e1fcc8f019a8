"""AArch64 architectural constants used by the VMM (Arm ARM DDI 0487).

Only what the VMM itself needs: PSTATE fields, exception vector offsets, ESR_EL1 exception
classes and fault status codes, and a few instruction encodings it recognises.
"""
from __future__ import annotations

# --- PSTATE / SPSR (DDI 0487 C5.2.18 SPSR_EL1) ------------------------------------------------
PSTATE_M_MASK = 0xF  # M[3:0]: exception level and SP selection
PSTATE_EL0T = 0x0
PSTATE_EL1T = 0x4
PSTATE_EL1H = 0x5
PSTATE_NRW = 1 << 4  # M[4]: 1 = AArch32 (DDI 0487 C5.2.18 SPSR_EL1.M[4])
PSTATE_F = 1 << 6
PSTATE_I = 1 << 7
PSTATE_A = 1 << 8
PSTATE_D = 1 << 9
PSTATE_DAIF = PSTATE_D | PSTATE_A | PSTATE_I | PSTATE_F
PSTATE_IL = 1 << 20  # illegal execution state
# State on reset / exception entry to EL1: EL1h with D, A, I, F masked.
PSTATE_EL1H_MASKED = PSTATE_EL1H | PSTATE_DAIF
OP1_EL0_ACCESSIBLE = 3  # system-register op1 of the registers EL0 may access (DDI 0487 C5.3)


def pstate_el(pstate: int) -> int:
    """Exception level encoded in PSTATE.M[3:2]."""
    return (pstate >> 2) & 3


def pstate_uses_sp_elx(pstate: int) -> bool:
    """True if the current stack pointer is SP_ELx (SPSel = 1) rather than SP_EL0."""
    return pstate_el(pstate) != 0 and bool(pstate & 1)


# --- Vector table offsets from VBAR_EL1 (DDI 0487 D1.10.2) ------------------------------------
VECTOR_CURRENT_EL_SP0 = 0x000
VECTOR_CURRENT_EL_SPX = 0x200
VECTOR_LOWER_EL_AARCH64 = 0x400
VECTOR_LOWER_EL_AARCH32 = 0x600
VECTOR_SYNC = 0x000
VECTOR_IRQ = 0x080
VECTOR_FIQ = 0x100
VECTOR_SERROR = 0x180
VECTOR_TABLE_SIZE = 0x800

# --- ESR_ELx (DDI 0487 D17.2.37) ------------------------------------------------------------------
ESR_EC_SHIFT = 26
ESR_IL = 1 << 25  # 32-bit instruction
EC_UNKNOWN = 0x00
EC_WFX = 0x01
EC_ILLEGAL_STATE = 0x0E
EC_SVC64 = 0x15
EC_HVC64 = 0x16
EC_SMC64 = 0x17
EC_SYSREG = 0x18
EC_SVE = 0x19  # SVE access trapped by CPACR_EL1.ZEN
EC_IABT_LOWER = 0x20
EC_IABT_CURRENT = 0x21
EC_PC_ALIGN = 0x22
EC_DABT_LOWER = 0x24
EC_DABT_CURRENT = 0x25
EC_SP_ALIGN = 0x26
EC_BRK64 = 0x3C

EC_NAMES: dict[int, str] = {
    EC_UNKNOWN: "undefined instruction (unknown reason)",
    EC_WFX: "trapped WFI/WFE",
    EC_SVC64: "SVC instruction",
    EC_HVC64: "HVC instruction",
    EC_SMC64: "SMC instruction",
    EC_ILLEGAL_STATE: "illegal execution state",
    EC_SYSREG: "trapped system register access",
    EC_SVE: "trapped SVE access",
    EC_IABT_LOWER: "instruction abort from a lower exception level",
    EC_IABT_CURRENT: "instruction abort without a change in exception level",
    EC_PC_ALIGN: "PC alignment fault",
    EC_DABT_LOWER: "data abort from a lower exception level",
    EC_DABT_CURRENT: "data abort without a change in exception level",
    EC_SP_ALIGN: "SP alignment fault",
    EC_BRK64: "BRK instruction",
}

# Data/instruction fault status codes, ISS[5:0] (DDI 0487 D17.2.37, DFSC/IFSC).
FSC_SYNC_EXTERNAL = 0x10  # synchronous external abort, not on a translation table walk
FSC_ALIGNMENT = 0x21
ISS_DABT_WNR = 1 << 6  # data abort caused by a write


def esr(ec: int, iss: int = 0, il: bool = True) -> int:
    """Compose an ESR_EL1 value from exception class, ISS and instruction length."""
    return (ec << ESR_EC_SHIFT) | (ESR_IL if il else 0) | (iss & 0x1FF_FFFF)


def imm16(insn: int) -> int:
    """The imm16 field of SVC/HVC/SMC/BRK (bits [20:5])."""
    return (insn >> 5) & 0xFFFF


# --- Instruction encodings the VMM recognises ------------------------------------------------------
INSN_WFI = 0xD503_207F
INSN_CLREX = 0xD503_305F  # CLREX #15
INSN_NOP = 0xD503_201F  # NOP (DDI 0487 C6.2.238)
INSN_B_NEXT = 0x1400_0001  # B .+4 (DDI 0487 C6.2.26: imm26 = 1)
MSR_DAIFCLR = 0xD503_40FF  # MSR DAIFClr, #imm (imm4 in bits [11:8])
MSR_DAIFCLR_MASK = 0xFFFF_F0FF
DAIF_IMM_I = 0x200  # imm4 bit 1 in place: the I (IRQ) mask
INSN_B_SELF = 0x1400_0000  # B . (branch to itself)


# Load/store register (unprivileged): LDTR*, STTR* (DDI 0487 C4.1.66): size 111 0 00 opc 0 imm9 10 Rn Rt.
LDST_UNPRIV_MASK = 0x3F20_0C00
LDST_UNPRIV = 0x3800_0800


def is_unprivileged_ldst(word: int) -> bool:
    """Is `word` an LDTR/STTR-family load or store (checked with EL0 permissions at EL1)?"""
    return word & LDST_UNPRIV_MASK == LDST_UNPRIV


def unmasks_irq(word):  # type: ignore[no-untyped-def]
    """Is `word` an `MSR DAIFClr, #imm` that clears the I mask? Works on an int or elementwise
    on a numpy array of instruction words."""
    return ((word & MSR_DAIFCLR_MASK) == MSR_DAIFCLR) & ((word & DAIF_IMM_I) != 0)
