"""AArch64 stage-1 address translation for the EL1&0 regime (VMSAv8-64, 4 KiB granule).

In virtual-TLB mode Unicorn does not walk the guest's page tables; the TLB-fill hook calls
`translate()` for one access and fills one TLB page from the result (Unicorn's AArch64 TLB
page is 1 KiB: fill with `pa`, which Unicorn masks to its page; the permissions hold for the
whole 4 KiB page). The function is
pure: it reads registers from a `TranslationRegs` and descriptors through `read_u64(pa)`
(None = not RAM, reported as a synchronous external abort on the walk).

Supported, following the Arm ARM (DDI 0487) D5 / the AArch64.TranslationTableWalk pseudocode:
- SCTLR_EL1.M = 0: flat map; a VA at or above 2**pa_bits is an address size fault, level 0.
- TTBR0 for VA[55] = 0, TTBR1 for VA[55] = 1; the bits above the input size must all equal
  VA[55] (up to bit 55 with TBIx = 1, bit 63 otherwise; TBIDx limits TBI to data accesses),
  else a translation fault at level 0, as for EPDx = 1 and for TxSZ outside 16..39.
- 4 KiB granule, start level from TxSZ (level 0 for 48..40-bit, 1 for 39..31, 2 for 30..25).
- Table, block (level 1: 1 GiB, level 2: 2 MiB) and page (level 3) descriptors, output
  address bits [47:12]; TCR_EL1.IPS (capped at pa_bits) for address size faults: a TTBR base
  out of range faults at level 0, a table or output address at the descriptor's level.
- AP[2:1], UXN, PXN, the implicit PXN of EL0-writable memory, SCTLR_EL1.WXN, PSTATE.PAN (as
  an argument), and the hierarchical APTable/UXNTable/PXNTable bits unless TCR_EL1.HPDx = 1.
- AF = 0 is an access flag fault. The hardware AF/dirty update (TCR_EL1.HA/HD, DBM) is not
  modelled: this is an implementation without FEAT_HAFDBS.

Fault priority per descriptor: external abort, translation, address size, access flag, then
permission. Unsupported configurations raise `UnsupportedTranslation` (a VMM limit, not a
guest fault): a 16 KiB or 64 KiB granule (or a reserved TGx encoding) in the half the VA
selects, big-endian descriptors (SCTLR_EL1.EE = 1), and 52-bit descriptors (TCR_EL1.DS = 1).
Not modelled: stage 2, contiguous-bit TLB effects, memory attributes (MAIR), ASIDs.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

from vmm.errors import VmmError

PAGE_SHIFT = 12  # 4 KiB granule
PAGE_SIZE = 1 << PAGE_SHIFT
_BITS_PER_LEVEL = 9  # 512 eight-byte descriptors per 4 KiB table
_MASK64 = (1 << 64) - 1

# --- SCTLR_EL1 (Arm ARM D17.2 SCTLR_EL1) ---------------------------------------------------------
SCTLR_M = 1 << 0  # stage 1 MMU enable
SCTLR_WXN = 1 << 19  # write permission implies execute-never
SCTLR_EE = 1 << 25  # big-endian translation table walks at EL1

# --- TCR_EL1 (Arm ARM D17.2 TCR_EL1) -------------------------------------------------------------
TCR_T0SZ_SHIFT = 0  # T0SZ [5:0]
TCR_EPD0 = 1 << 7  # no walks with TTBR0
TCR_TG0_SHIFT = 14  # TG0 [15:14]
TCR_T1SZ_SHIFT = 16  # T1SZ [21:16]
TCR_EPD1 = 1 << 23  # no walks with TTBR1
TCR_TG1_SHIFT = 30  # TG1 [31:30]
TCR_IPS_SHIFT = 32  # IPS [34:32]
TCR_TBI0 = 1 << 37  # top byte ignored, TTBR0 half
TCR_TBI1 = 1 << 38  # top byte ignored, TTBR1 half
TCR_HPD0 = 1 << 41  # hierarchical permissions disabled, TTBR0 half (FEAT_HPDS)
TCR_HPD1 = 1 << 42  # hierarchical permissions disabled, TTBR1 half
TCR_TBID0 = 1 << 51  # TBI0 applies to data accesses only (FEAT_PAuth)
TCR_TBID1 = 1 << 52  # TBI1 applies to data accesses only
TCR_DS = 1 << 59  # 52-bit output addresses with 4 KiB/16 KiB granules (FEAT_LPA2)
TG0_4K = 0b00  # TG0 encoding of the 4 KiB granule
TG1_4K = 0b10  # TG1 encoding of the 4 KiB granule (TG1 and TG0 encodings differ)
TXSZ_MIN, TXSZ_MAX = 16, 39  # 48-bit to 25-bit input addresses (no FEAT_LVA, no FEAT_TTST)
IPS_BITS = {0b000: 32, 0b001: 36, 0b010: 40, 0b011: 42, 0b100: 44, 0b101: 48, 0b110: 52}  # TCR_EL1.IPS

# --- TTBRn_EL1 ----------------------------------------------------------------------------------
TTBR_BADDR_MASK = 0x0000_FFFF_FFFF_FFFE  # BADDR [47:1]; [63:48] is the ASID, [0] CnP

# --- Descriptors (Arm ARM D5.3 VMSAv8-64 translation table format descriptors) -------------------
DESC_VALID = 1 << 0
DESC_TABLE = 1 << 1  # bits[1:0] = 0b11: table at levels 0-2, page at level 3; 0b01: block
DESC_AP1 = 1 << 6  # AP[1]: EL0 has access
DESC_AP2 = 1 << 7  # AP[2]: read-only
DESC_AF = 1 << 10  # access flag
DESC_PXN = 1 << 53  # privileged execute-never
DESC_UXN = 1 << 54  # unprivileged execute-never (XN)
DESC_PXN_TABLE = 1 << 59  # table: PXN for all subsequent levels
DESC_UXN_TABLE = 1 << 60  # table: UXN (XNTable) for all subsequent levels
DESC_AP_TABLE_NO_EL0 = 1 << 61  # APTable[0]: no EL0 access at subsequent levels
DESC_AP_TABLE_RO = 1 << 62  # APTable[1]: no write access at subsequent levels
DESC_OA_MASK = 0x0000_FFFF_FFFF_F000  # output / next-table address [47:12]
_TABLE_ATTRS = DESC_PXN_TABLE | DESC_UXN_TABLE | DESC_AP_TABLE_NO_EL0 | DESC_AP_TABLE_RO
FIRST_BLOCK_LEVEL = 1  # 4 KiB granule: blocks at levels 1 and 2 only
_LEVEL_SHIFT = tuple(PAGE_SHIFT + _BITS_PER_LEVEL * (3 - level) for level in range(4))  # VA bits below a level's index
_TABLE_INDEX_MASK = (1 << _BITS_PER_LEVEL) - 1


class UnsupportedTranslation(VmmError):
    """The guest programmed a translation configuration this VMM does not implement."""


class AccessKind(enum.Enum):
    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


class FaultKind(enum.Enum):
    """Stage-1 abort kinds; the value is the DFSC/IFSC of the level-0 variant (ESR_ELx.ISS[5:0],
    Arm ARM D17.2 ESR_EL1); the level is added to it."""

    ADDRESS_SIZE = 0b000000
    TRANSLATION = 0b000100
    ACCESS_FLAG = 0b001000
    PERMISSION = 0b001100
    EXTERNAL_ABORT_ON_WALK = 0b010100


@dataclass(frozen=True)
class TranslationRegs:
    """The EL1&0 stage-1 controls, as 64-bit register values."""

    sctlr: int
    tcr: int
    ttbr0: int
    ttbr1: int


class Translation(NamedTuple):
    """One successful translation: `pa` is the address of `va` itself; the result holds for
    the 4 KiB page around it, even in a block mapping. Permissions are the requesting EL's.
    (A named tuple: one is made per TLB fill, and a frozen dataclass costs several times more.)"""

    va: int
    pa: int
    level: int | None  # level of the final descriptor; None with the MMU off
    readable: bool
    writable: bool
    executable: bool

    @property
    def page_pa(self) -> int:
        return self.pa & ~(PAGE_SIZE - 1)

    @property
    def page_va(self) -> int:
        return self.va & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class TranslationFault:
    """A stage-1 abort: the VM core turns it into ESR_EL1/FAR_EL1 for a data or instruction
    abort (FAR_EL1 = `va`, ISS.WnR = `access is WRITE`)."""

    kind: FaultKind
    level: int
    va: int
    access: AccessKind

    @property
    def fsc(self) -> int:
        """DFSC (data) or IFSC (instruction fetch) code, ESR_ELx.ISS[5:0]."""
        return self.kind.value | self.level

    @property
    def is_instruction_abort(self) -> bool:
        return self.access is AccessKind.FETCH


ReadU64 = Callable[[int], int | None]  # descriptor read at a PA; None = not RAM


class _Half(NamedTuple):
    """The decoded TCR_EL1 fields for one VA half, and what follows from them."""

    usable: bool  # walks enabled (EPDx = 0) and TxSZ in range
    granule_ok: bool  # TGx selects the 4 KiB granule
    tg: int
    tbi: bool
    tbid: bool
    hpd: bool
    input_bits: int  # 64 - TxSZ
    level: int  # start level
    index_bits: int  # bits of the VA indexing the start-level table
    table: int  # start-level table address (TTBRx.BADDR, aligned to the table size)


@functools.lru_cache(maxsize=64)
def _half(regs: TranslationRegs, upper: bool) -> _Half:
    """Decode one half (cached: the registers change rarely, and a fill needs this every time)."""
    tcr = regs.tcr
    if upper:
        txsz, epd, tg, tg_4k = (tcr >> TCR_T1SZ_SHIFT) & 0x3F, tcr & TCR_EPD1, (tcr >> TCR_TG1_SHIFT) & 3, TG1_4K
        tbi, tbid, hpd, ttbr = tcr & TCR_TBI1, tcr & TCR_TBID1, tcr & TCR_HPD1, regs.ttbr1
    else:
        txsz, epd, tg, tg_4k = (tcr >> TCR_T0SZ_SHIFT) & 0x3F, tcr & TCR_EPD0, (tcr >> TCR_TG0_SHIFT) & 3, TG0_4K
        tbi, tbid, hpd, ttbr = tcr & TCR_TBI0, tcr & TCR_TBID0, tcr & TCR_HPD0, regs.ttbr0
    input_bits = 64 - txsz
    level = start_level(input_bits)
    index_bits = input_bits - (PAGE_SHIFT + _BITS_PER_LEVEL * (3 - level))
    table = ttbr & TTBR_BADDR_MASK & ~((8 << index_bits) - 1)
    usable = not epd and TXSZ_MIN <= txsz <= TXSZ_MAX
    return _Half(usable, tg == tg_4k, tg, bool(tbi), bool(tbid), bool(hpd), input_bits, level, index_bits, table)


def start_level(input_bits: int) -> int:
    """First lookup level for a 4 KiB granule and an input address of `input_bits` bits."""
    return 4 - -(-(input_bits - PAGE_SHIFT) // _BITS_PER_LEVEL)


def translate(
    regs: TranslationRegs,
    va: int,
    access: AccessKind,
    el: int,
    read_u64: ReadU64,
    *,
    pa_bits: int = 48,
    pan: bool = False,
) -> Translation | TranslationFault:
    """Translate `va` for an `access` from EL`el` (0 or 1). `pa_bits` is the implemented
    physical address size (ID_AA64MMFR0_EL1.PARange); `pan` is PSTATE.PAN."""
    if el != 0 and el != 1:
        raise ValueError(f"EL{el} is not in the EL1&0 regime")
    va &= _MASK64
    sctlr = regs.sctlr
    if not sctlr & SCTLR_M:
        if va >> pa_bits:
            return TranslationFault(FaultKind.ADDRESS_SIZE, 0, va, access)
        return Translation(va, va, None, True, True, True)
    if sctlr & SCTLR_EE:
        raise UnsupportedTranslation("big-endian translation tables (SCTLR_EL1.EE = 1)")
    if regs.tcr & TCR_DS:
        raise UnsupportedTranslation("52-bit translation descriptors (TCR_EL1.DS = 1)")

    # Select the VA half and check the VA lies in it.
    upper = (va >> 55) & 1
    half = _half(regs, bool(upper))
    if not half.usable:
        return TranslationFault(FaultKind.TRANSLATION, 0, va, access)
    top = 55 if half.tbi and not (half.tbid and access is AccessKind.FETCH) else 63
    input_bits = half.input_bits
    high_mask = (1 << (top + 1 - input_bits)) - 1  # VA[top:input_bits]
    if (va >> input_bits) & high_mask != (high_mask if upper else 0):
        return TranslationFault(FaultKind.TRANSLATION, 0, va, access)
    if not half.granule_ok:
        raise UnsupportedTranslation(
            f"TCR_EL1.TG{upper} = {half.tg:#04b}: only the 4 KiB granule is supported"
        )
    out_bits = min(IPS_BITS.get((regs.tcr >> TCR_IPS_SHIFT) & 7, pa_bits), pa_bits)

    level = half.level
    index_mask = (1 << half.index_bits) - 1
    table = half.table
    if table >> out_bits:
        return TranslationFault(FaultKind.ADDRESS_SIZE, 0, va, access)
    attrs = 0  # accumulated hierarchical (table) attribute bits [62:59]
    hpd = half.hpd
    while True:
        shift = _LEVEL_SHIFT[level]
        desc = read_u64(table + ((va >> shift) & index_mask) * 8)
        if desc is None:
            return TranslationFault(FaultKind.EXTERNAL_ABORT_ON_WALK, level, va, access)
        if not desc & DESC_VALID or (level == 3 and not desc & DESC_TABLE):
            return TranslationFault(FaultKind.TRANSLATION, level, va, access)
        if level == 3 or not desc & DESC_TABLE:
            break
        table = desc & DESC_OA_MASK
        if table >> out_bits:
            return TranslationFault(FaultKind.ADDRESS_SIZE, level, va, access)
        if not hpd:
            attrs |= desc & _TABLE_ATTRS
        level += 1
        index_mask = _TABLE_INDEX_MASK

    if level < FIRST_BLOCK_LEVEL:
        return TranslationFault(FaultKind.TRANSLATION, level, va, access)
    span = 1 << shift  # bytes mapped by this block or page
    pa = (desc & DESC_OA_MASK & ~(span - 1)) | (va & (span - 1))
    if pa >> out_bits:
        return TranslationFault(FaultKind.ADDRESS_SIZE, level, va, access)
    if not desc & DESC_AF:
        return TranslationFault(FaultKind.ACCESS_FLAG, level, va, access)

    readable, writable, executable = _permissions(
        bool(desc & DESC_AP1) and not attrs & DESC_AP_TABLE_NO_EL0,
        bool(desc & DESC_AP2 or attrs & DESC_AP_TABLE_RO),
        bool(desc & DESC_UXN or attrs & DESC_UXN_TABLE),
        bool(desc & DESC_PXN or attrs & DESC_PXN_TABLE),
        el,
        bool(sctlr & SCTLR_WXN),
        pan,
    )
    if access is AccessKind.FETCH:
        allowed = executable
    else:
        allowed = writable if access is AccessKind.WRITE else readable
    if not allowed:
        return TranslationFault(FaultKind.PERMISSION, level, va, access)
    return Translation(va, pa, level, readable, writable, executable)


def _permissions(
    el0_access: bool, read_only: bool, uxn: bool, pxn: bool, el: int, wxn: bool, pan: bool
) -> tuple[bool, bool, bool]:
    """(read, write, execute) for EL`el` from the effective AP[1], AP[2], UXN and PXN
    (Arm ARM D5.4 stage 1 data access and instruction execution permissions)."""
    user_w = el0_access and not read_only
    if el == 0:
        return el0_access, user_w, not uxn and not (user_w and wxn)
    priv_w = not read_only
    # EL1 never executes memory that EL0 can write; PAN removes EL1 data access to EL0 memory.
    executable = not pxn and not user_w and not (priv_w and wxn)
    if pan and el0_access:
        return False, False, executable
    return True, priv_w, executable
