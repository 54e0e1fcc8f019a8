"""Tests for vmm.mmu: AArch64 stage-1 translation, 4 KiB granule.

Descriptor and register bits are spelled out here from the Arm ARM rather than imported from
vmm.mmu, so a wrong constant in the module fails a test.
"""
from __future__ import annotations

import pytest
from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, Uc
from unicorn import arm64_const as a64

from vmm.mmu import (
    AccessKind,
    FaultKind,
    Translation,
    TranslationFault,
    TranslationRegs,
    UnsupportedTranslation,
    start_level,
    translate,
)

R, W, X = AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH
RAM_BASE = 0x8000_0000
RAM_SIZE = 16 << 20
GIB, MIB = 1 << 30, 1 << 20

# Descriptor bits (Arm ARM D5.3).
VALID, TABLE = 1 << 0, 1 << 1
BLOCK = VALID  # bits[1:0] = 0b01
PAGE = VALID | TABLE  # level 3: bits[1:0] = 0b11
AP_EL0, AP_RO = 1 << 6, 1 << 7  # AP[1], AP[2]
AF = 1 << 10
PXN, UXN = 1 << 53, 1 << 54
PXN_TABLE, UXN_TABLE, APTABLE_NO_EL0, APTABLE_RO = 1 << 59, 1 << 60, 1 << 61, 1 << 62

# TCR_EL1: T0SZ=16, T1SZ=16, TG0=4K (0b00), TG1=4K (0b10), IPS=48 bits (0b101).
TCR_48 = 16 | (16 << 16) | (0b10 << 30) | (0b101 << 32)
EPD0, EPD1 = 1 << 7, 1 << 23
TBI0, HPD0 = 1 << 37, 1 << 41
SCTLR_MMU_ON = 0xC50838 | 1  # Unicorn's reset value with M = 1
WXN = 1 << 19


class Ram:
    """Guest RAM plus a bump allocator of 4 KiB translation tables."""

    def __init__(self) -> None:
        self.buf = bytearray(RAM_SIZE)
        self.next_table = RAM_BASE + 8 * MIB

    def read_u64(self, pa: int) -> int | None:
        off = pa - RAM_BASE
        if not 0 <= off <= RAM_SIZE - 8:
            return None
        return int.from_bytes(self.buf[off : off + 8], "little")

    def write_u64(self, pa: int, value: int) -> None:
        off = pa - RAM_BASE
        self.buf[off : off + 8] = value.to_bytes(8, "little")

    def new_table(self) -> int:
        pa, self.next_table = self.next_table, self.next_table + 4096
        return pa


class Tables:
    """One translation table tree; `map` creates intermediate tables as needed."""

    def __init__(self, ram: Ram, input_bits: int = 48) -> None:
        self.ram, self.root, self.first_level = ram, ram.new_table(), start_level(input_bits)

    def entry_addr(self, va: int, level: int, table: int) -> int:
        return table + ((va >> (12 + 9 * (3 - level))) & 511) * 8

    def map(self, va: int, desc: int, level: int = 3, table_attrs: int = 0) -> None:
        """Write leaf `desc` (output address | attributes | type) for `va` at `level`."""
        table = self.root
        for lvl in range(self.first_level, level):
            addr = self.entry_addr(va, lvl, table)
            entry = self.ram.read_u64(addr)
            if not entry & VALID:
                entry = self.ram.new_table() | VALID | TABLE
            entry |= table_attrs
            self.ram.write_u64(addr, entry)
            table = entry & 0x0000_FFFF_FFFF_F000
        self.ram.write_u64(self.entry_addr(va, level, table), desc)


def regs(ttbr0: int = 0, ttbr1: int = 0, tcr: int = TCR_48 | EPD1, sctlr: int = SCTLR_MMU_ON) -> TranslationRegs:
    return TranslationRegs(sctlr=sctlr, tcr=tcr, ttbr0=ttbr0, ttbr1=ttbr1)


def xlate(ram: Ram, r: TranslationRegs, va: int, access: AccessKind = R, el: int = 1, **kw):
    return translate(r, va, access, el, ram.read_u64, **kw)


def assert_fault(result, kind: FaultKind, level: int, fsc: int) -> None:
    assert isinstance(result, TranslationFault), result
    assert (result.kind, result.level, result.fsc) == (kind, level, fsc)


@pytest.fixture
def ram() -> Ram:
    return Ram()


# --- MMU off, start levels --------------------------------------------------------------------
def test_mmu_off_is_flat(ram: Ram) -> None:
    r = regs(sctlr=0xC50838)
    for access in (R, W, X):
        for el in (0, 1):
            t = xlate(ram, r, 0x8012_3456, access, el)
            assert t == Translation(0x8012_3456, 0x8012_3456, None, True, True, True)
    assert_fault(xlate(ram, r, 1 << 48), FaultKind.ADDRESS_SIZE, 0, 0b000000)


@pytest.mark.parametrize("bits, level", [(48, 0), (40, 0), (39, 1), (31, 1), (30, 2), (25, 2)])
def test_start_level(bits: int, level: int) -> None:
    assert start_level(bits) == level


# --- successful walks ---------------------------------------------------------------------------
def test_level3_page(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x40_0000_1000, (RAM_BASE + 0x5000) | PAGE | AF)
    res = xlate(ram, regs(t.root), 0x40_0000_1ABC)
    assert isinstance(res, Translation)
    assert (res.pa, res.page_pa, res.page_va, res.level) == (RAM_BASE + 0x5ABC, RAM_BASE + 0x5000, 0x40_0000_1000, 3)
    assert (res.readable, res.writable, res.executable) == (True, True, True)


def test_level2_block_describes_one_4k_page(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x4020_0000, (RAM_BASE + 2 * MIB) | BLOCK | AF, level=2)
    res = xlate(ram, regs(t.root), 0x4020_0000 + 0x1_2345)
    assert (res.pa, res.page_pa, res.level) == (RAM_BASE + 2 * MIB + 0x1_2345, RAM_BASE + 2 * MIB + 0x1_2000, 2)


def test_level1_block(ram: Ram) -> None:
    t = Tables(ram)
    t.map(5 * GIB, (2 * GIB) | BLOCK | AF, level=1)
    res = xlate(ram, regs(t.root), 5 * GIB + 0x3FFF_FFF8)
    assert (res.pa, res.level) == (3 * GIB - 8, 1)


def test_two_vas_alias_one_pa(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x1000, (RAM_BASE + 0x7000) | PAGE | AF)
    t.map(0x7F_FFFF_F000, (RAM_BASE + 0x7000) | PAGE | AF | AP_RO)
    a, b = xlate(ram, regs(t.root), 0x1010), xlate(ram, regs(t.root), 0x7F_FFFF_F010)
    assert a.pa == b.pa == RAM_BASE + 0x7010
    assert a.writable and not b.writable


def test_ttbr1_high_addresses(ram: Ram) -> None:
    low, high = Tables(ram), Tables(ram)
    high.map(0xFFFF_0000_0020_0000, (RAM_BASE + 0x9000) | PAGE | AF)
    r = regs(low.root, high.root, tcr=TCR_48)
    assert xlate(ram, r, 0xFFFF_0000_0020_0008).pa == RAM_BASE + 0x9008
    # The same low bits through TTBR0 are unmapped there.
    assert_fault(xlate(ram, r, 0x0000_0000_0020_0008), FaultKind.TRANSLATION, 0, 0b000100)
    # EPD1 disables walks through TTBR1.
    assert_fault(xlate(ram, regs(low.root, high.root, tcr=TCR_48 | EPD1), 0xFFFF_0000_0020_0008),
                 FaultKind.TRANSLATION, 0, 0b000100)
    assert_fault(xlate(ram, regs(low.root, high.root, tcr=TCR_48 | EPD0), 0x1000),
                 FaultKind.TRANSLATION, 0, 0b000100)


@pytest.mark.parametrize("txsz", [25, 33, 39])
def test_smaller_input_sizes_start_lower(ram: Ram, txsz: int) -> None:
    bits = 64 - txsz
    t = Tables(ram, input_bits=bits)
    va = (1 << bits) - 4096  # the last page of the range
    t.map(va, (RAM_BASE + 0x3000) | PAGE | AF)
    tcr = (TCR_48 & ~0x3F) | txsz
    assert xlate(ram, regs(t.root, tcr=tcr | EPD1), va + 8).pa == RAM_BASE + 0x3008
    assert_fault(xlate(ram, regs(t.root, tcr=tcr | EPD1), 1 << bits), FaultKind.TRANSLATION, 0, 0b000100)


@pytest.mark.parametrize("txsz", [12, 15, 40, 63])
def test_txsz_out_of_range_is_a_level0_translation_fault(ram: Ram, txsz: int) -> None:
    t = Tables(ram)
    t.map(0x1000, RAM_BASE | PAGE | AF)
    assert_fault(xlate(ram, regs(t.root, tcr=(TCR_48 & ~0x3F) | txsz | EPD1), 0x1000),
                 FaultKind.TRANSLATION, 0, 0b000100)


def test_top_byte_ignore(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x1000, (RAM_BASE + 0x4000) | PAGE | AF)
    tagged = (0x5A << 56) | 0x1008
    assert_fault(xlate(ram, regs(t.root), tagged), FaultKind.TRANSLATION, 0, 0b000100)
    assert xlate(ram, regs(t.root, tcr=TCR_48 | EPD1 | TBI0), tagged).pa == RAM_BASE + 0x4008
    assert_fault(xlate(ram, regs(t.root), 1 << 48), FaultKind.TRANSLATION, 0, 0b000100)


# --- faults: every kind and level --------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_translation_fault_levels(ram: Ram, level: int) -> None:
    t = Tables(ram)
    va = 0x12_3456_7000
    if level > 0:  # build the path down to `level`, then leave that entry invalid
        t.map(va, 0, level=level)
    assert_fault(xlate(ram, regs(t.root), va), FaultKind.TRANSLATION, level, 0b000100 | level)


def test_reserved_descriptor_types(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x1000, RAM_BASE | BLOCK | AF, level=3)  # 0b01 at level 3 is reserved
    assert_fault(xlate(ram, regs(t.root), 0x1000), FaultKind.TRANSLATION, 3, 0b000111)
    t.map(1 << 39, RAM_BASE | BLOCK | AF, level=0)  # no level-0 blocks with 4 KiB pages
    assert_fault(xlate(ram, regs(t.root), 1 << 39), FaultKind.TRANSLATION, 0, 0b000100)


@pytest.mark.parametrize("level, va, out", [(1, 3 * GIB, 2 * GIB), (2, 0x60_0000, RAM_BASE), (3, 0x5000, RAM_BASE)])
def test_access_flag_fault_levels(ram: Ram, level: int, va: int, out: int) -> None:
    t = Tables(ram)
    t.map(va, out | (PAGE if level == 3 else BLOCK), level=level)  # AF = 0
    assert_fault(xlate(ram, regs(t.root), va), FaultKind.ACCESS_FLAG, level, 0b001000 | level)


@pytest.mark.parametrize("level, va, out", [(1, 3 * GIB, 2 * GIB), (2, 0x60_0000, RAM_BASE), (3, 0x5000, RAM_BASE)])
def test_permission_fault_levels(ram: Ram, level: int, va: int, out: int) -> None:
    t = Tables(ram)
    t.map(va, out | (PAGE if level == 3 else BLOCK) | AF | AP_RO, level=level)
    assert xlate(ram, regs(t.root), va, R).readable
    assert_fault(xlate(ram, regs(t.root), va, W), FaultKind.PERMISSION, level, 0b001100 | level)


def test_access_flag_fault_comes_before_permission_fault(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AP_RO)
    assert_fault(xlate(ram, regs(t.root), 0x5000, W), FaultKind.ACCESS_FLAG, 3, 0b001011)


IPS_32 = (TCR_48 & ~(7 << 32)) | EPD1  # IPS = 0b000: 32-bit physical addresses


def test_address_size_faults(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x5000, (1 << 32) | PAGE | AF)  # output address above 4 GiB
    t.map(0x4000_0000, (4 * GIB) | BLOCK | AF, level=1)
    assert xlate(ram, regs(t.root), 0x5000).pa == 1 << 32  # fine with 48-bit IPS
    assert_fault(xlate(ram, regs(t.root, tcr=IPS_32), 0x5000), FaultKind.ADDRESS_SIZE, 3, 0b000011)
    assert_fault(xlate(ram, regs(t.root, tcr=IPS_32), 0x4000_0000), FaultKind.ADDRESS_SIZE, 1, 0b000001)
    # A table descriptor pointing above the PA size faults at its own level.
    t.map(0x80_0000_0000, RAM_BASE | PAGE | AF)
    l1 = ram.read_u64(t.entry_addr(0x80_0000_0000, 0, t.root)) & 0x0000_FFFF_FFFF_F000
    l2_entry = t.entry_addr(0x80_0000_0000, 1, l1)
    ram.write_u64(l2_entry, (1 << 33) | VALID | TABLE)
    assert_fault(xlate(ram, regs(t.root, tcr=IPS_32), 0x80_0000_0000), FaultKind.ADDRESS_SIZE, 1, 0b000001)
    # A TTBR base above the PA size: level 0 whatever the start level.
    assert_fault(xlate(ram, regs(1 << 33, tcr=IPS_32), 0x5000), FaultKind.ADDRESS_SIZE, 0, 0b000000)
    assert_fault(xlate(ram, regs(t.root, tcr=IPS_32), 0x5000, pa_bits=48), FaultKind.ADDRESS_SIZE, 3, 0b000011)
    assert xlate(ram, regs(t.root, tcr=TCR_48 | EPD1), 0x5000, pa_bits=40).pa == 1 << 32


def test_external_abort_on_walk(ram: Ram) -> None:
    assert_fault(xlate(ram, regs(0x1000_0000), 0x5000), FaultKind.EXTERNAL_ABORT_ON_WALK, 0, 0b010100)
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF)
    l1 = ram.read_u64(t.entry_addr(0x5000, 0, t.root)) & 0x0000_FFFF_FFFF_F000
    l2 = ram.read_u64(t.entry_addr(0x5000, 1, l1)) & 0x0000_FFFF_FFFF_F000
    ram.write_u64(t.entry_addr(0x5000, 2, l2), 0x1000_0000 | VALID | TABLE)  # L3 table not in RAM
    res = xlate(ram, regs(t.root), 0x5000, X)
    assert_fault(res, FaultKind.EXTERNAL_ABORT_ON_WALK, 3, 0b010111)
    assert res.is_instruction_abort


# --- permissions per EL ---------------------------------------------------------------------------
@pytest.mark.parametrize("ap, el1, el0", [
    # AP[2:1] -> (read, write, execute) at EL1 and at EL0, with UXN = PXN = 0.
    (0b00, (True, True, True), (False, False, True)),
    (0b01, (True, True, False), (True, True, True)),  # EL0-writable: implicit PXN
    (0b10, (True, False, True), (False, False, True)),
    (0b11, (True, False, True), (True, False, True)),
])
def test_ap_permissions_per_el(ram: Ram, ap: int, el1: tuple, el0: tuple) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF | (ap << 6))
    for el, expected in ((1, el1), (0, el0)):
        for access, allowed in zip((R, W, X), expected):
            res = xlate(ram, regs(t.root), 0x5000, access, el)
            if allowed:
                assert (res.readable, res.writable, res.executable) == expected
            else:
                assert_fault(res, FaultKind.PERMISSION, 3, 0b001111)


def test_execute_never(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF | AP_EL0 | AP_RO | UXN)
    t.map(0x6000, RAM_BASE | PAGE | AF | AP_EL0 | AP_RO | PXN)
    r = regs(t.root)
    res = xlate(ram, r, 0x5000, X, el=0)
    assert_fault(res, FaultKind.PERMISSION, 3, 0b001111)
    assert res.is_instruction_abort
    assert xlate(ram, r, 0x5000, X, el=1).executable
    assert_fault(xlate(ram, r, 0x6000, X, el=1), FaultKind.PERMISSION, 3, 0b001111)
    assert xlate(ram, r, 0x6000, X, el=0).executable


def test_wxn_and_pan(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF)  # EL1 RW
    t.map(0x6000, RAM_BASE | PAGE | AF | AP_EL0 | AP_RO)  # EL0 and EL1 read-only
    assert_fault(xlate(ram, regs(t.root, sctlr=SCTLR_MMU_ON | WXN), 0x5000, X), FaultKind.PERMISSION, 3, 0b001111)
    assert xlate(ram, regs(t.root, sctlr=SCTLR_MMU_ON | WXN), 0x6000, X).executable
    assert_fault(xlate(ram, regs(t.root), 0x6000, R, pan=True), FaultKind.PERMISSION, 3, 0b001111)
    assert xlate(ram, regs(t.root), 0x6000, X, pan=True).executable  # PAN covers data only
    assert xlate(ram, regs(t.root), 0x5000, R, pan=True).readable


@pytest.mark.parametrize("table_attr, access, el", [
    (APTABLE_RO, W, 1), (APTABLE_NO_EL0, R, 0), (UXN_TABLE, X, 0), (PXN_TABLE, X, 1),
])
def test_hierarchical_table_attributes(ram: Ram, table_attr: int, access: AccessKind, el: int) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF | AP_EL0, table_attrs=table_attr)  # leaf: RW at both ELs
    # AP_EL0 makes EL1 execute-never; give EL1 its own page for the PXNTable case.
    t.map(0x7000, RAM_BASE | PAGE | AF, table_attrs=table_attr)
    va = 0x7000 if table_attr == PXN_TABLE else 0x5000
    assert_fault(xlate(ram, regs(t.root), va, access, el), FaultKind.PERMISSION, 3, 0b001111)
    # TCR_EL1.HPD0 turns the hierarchical attributes off.
    assert isinstance(xlate(ram, regs(t.root, tcr=TCR_48 | EPD1 | HPD0), va, access, el), Translation)


# --- unsupported configurations ------------------------------------------------------------------
def test_unsupported_configurations(ram: Ram) -> None:
    t = Tables(ram)
    t.map(0x5000, RAM_BASE | PAGE | AF)
    with pytest.raises(UnsupportedTranslation, match="TG0"):
        xlate(ram, regs(t.root, tcr=TCR_48 | EPD1 | (0b01 << 14)), 0x5000)  # 64 KiB
    with pytest.raises(UnsupportedTranslation, match="EE"):
        xlate(ram, regs(t.root, sctlr=SCTLR_MMU_ON | (1 << 25)), 0x5000)
    # An unsupported granule in the half that is not used is fine (reset TG1 = 0b00).
    ok = regs(t.root, tcr=(TCR_48 & ~(3 << 30)) | EPD1)
    assert xlate(ram, ok, 0x5000).pa == RAM_BASE
    assert_fault(xlate(ram, ok, 0xFFFF_0000_0000_0000), FaultKind.TRANSLATION, 0, 0b000100)
    with pytest.raises(ValueError):
        xlate(ram, ok, 0x5000, el=2)


def test_decoded_registers_follow_every_register_change(ram: Ram) -> None:
    # translate() caches the decoded TCR/TTBR per register set; switching back and forth between
    # two sets (as a guest switching TTBR0 or toggling EPD0) must never reuse the other's decode.
    a, b = Tables(ram), Tables(ram)
    a.map(0x5000, (RAM_BASE + 0x1000) | PAGE | AF)
    b.map(0x5000, (RAM_BASE + 0x2000) | PAGE | AF)
    ra, rb = regs(a.root), regs(b.root)
    off = regs(a.root, tcr=TCR_48 | EPD1 | EPD0)
    for _ in range(2):
        assert xlate(ram, ra, 0x5000).pa == RAM_BASE + 0x1000
        assert xlate(ram, rb, 0x5000).pa == RAM_BASE + 0x2000
        assert_fault(xlate(ram, off, 0x5000), FaultKind.TRANSLATION, 0, 0b000100)


# --- differential check against Unicorn's own walker (default TLB mode) --------------------------
def _cp(crn: int, op2: int, crm: int = 0, op1: int = 0) -> tuple[int, int, int, int, int]:
    return (crn, crm, 3, op1, op2)  # (crn, crm, op0, op1, op2) of a system register


SCTLR_EL1, TTBR0_EL1, TTBR1_EL1, TCR_EL1 = _cp(1, 0), _cp(2, 0), _cp(2, 1), _cp(2, 2)
SCR_EL3, HCR_EL2 = _cp(1, 0, crm=1, op1=6), _cp(1, 0, crm=1, op1=4)
LDR_X0_X1 = 0xF9400020  # LDR X0, [X1]
EXCP_DATA_ABORT = 4  # QEMU's exception number, seen by UC_HOOK_INTR


def _unicorn_load(ram: Ram, r: TranslationRegs, code: int, va: int) -> int | None:
    """Run LDR X0, [X1] with X1 = va under Unicorn's own stage-1 walk; X0, or None on a data abort."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(RAM_BASE, RAM_SIZE)
    uc.mem_write(RAM_BASE, bytes(ram.buf))
    # EL1 must be AArch64 in the higher ELs, or QEMU walks with the AArch32 formats
    # (see unicorn-notes: SCR_EL3 = RW|NS, HCR_EL2 = RW).
    setup = ((SCR_EL3, 0x401), (HCR_EL2, 1 << 31), (TCR_EL1, r.tcr), (TTBR0_EL1, r.ttbr0),
             (TTBR1_EL1, r.ttbr1), (SCTLR_EL1, r.sctlr))
    for reg, value in setup:
        uc.reg_write(a64.UC_ARM64_REG_CP_REG, reg + (value,))
    aborts: list[int] = []
    uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _ud: (aborts.append(intno), uc.emu_stop()))
    uc.reg_write(a64.UC_ARM64_REG_X1, va)
    uc.emu_start(code, code + 4, count=1)
    if aborts:
        assert aborts == [EXCP_DATA_ABORT]
        return None
    return uc.reg_read(a64.UC_ARM64_REG_X0)


def test_translations_match_unicorn(ram: Ram) -> None:
    low, high = Tables(ram), Tables(ram)
    low.map(2 * GIB, (2 * GIB) | BLOCK | AF, level=1)  # identity for the code (L1 block)
    low.map(0x40_0000_3000, (RAM_BASE + 0x2_1000) | PAGE | AF)  # L3 page
    low.map(0x40_0040_0000, (RAM_BASE + 4 * MIB) | BLOCK | AF, level=2)  # L2 block
    low.map(5 * GIB, (2 * GIB) | BLOCK | AF, level=1)  # L1 block, aliasing the code block
    low.map(0x40_0000_4000, (RAM_BASE + 0x2_2000) | PAGE)  # AF = 0
    high.map(0xFFFF_8000_0000_0000, (RAM_BASE + 0x2_1000) | PAGE | AF)  # TTBR1, alias of the L3 page
    r = regs(low.root, high.root, tcr=TCR_48)
    code = RAM_BASE + 0x10_0000
    ram.write_u64(code, LDR_X0_X1)
    mapped = (0x40_0000_3FF8, 0x40_0040_0000 + 0x1_2340, 5 * GIB + 0x30_0008, 0xFFFF_8000_0000_0010)
    for va in mapped:
        res = xlate(ram, r, va)
        assert isinstance(res, Translation)
        marker = 0x1122_3344_0000_0000 | va & 0xFFFF_FFFF
        ram.write_u64(res.pa, marker)
        assert _unicorn_load(ram, r, code, va) == marker
    for va in (0x40_0000_4000, 0x40_0000_5000, 0x0001_0000_0000_0000, 0xFFFF_0000_0000_0000):
        assert isinstance(xlate(ram, r, va), TranslationFault)
        assert _unicorn_load(ram, r, code, va) is None
