"""Gicv3: registers, interrupt life cycle, prioritisation, routing, SGIs and snapshot state."""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm import sysreg
from vmm.devices.gicv3 import (
    GICD_CTLR,
    GICD_CTLR_ARE,
    GICD_CTLR_DS,
    GICD_CTLR_ENABLE_GRP1,
    GICD_IROUTER,
    GICD_PIDR2,
    GICD_TYPER,
    GICR_PIDR2,
    GICR_SGI_BASE,
    GICR_TYPER,
    GICR_WAKER,
    ICACTIVER,
    ICENABLER,
    ICFGR,
    ICPENDR,
    IGROUPR,
    INTID_SPURIOUS,
    IPRIORITYR,
    ISACTIVER,
    ISENABLER,
    ISPENDR,
    GicAccess,
    Gicv3,
    Gicv3State,
)
from vmm.layout import GICR_STRIDE, PPI_PHYS_TIMER_NS, PPI_VIRTUAL_TIMER, SPI_UART0
from vmm.mmio import MmioDevice

PPI = PPI_VIRTUAL_TIMER  # 27
SPI = SPI_UART0  # 33


# --- helpers ----------------------------------------------------------------------------------------
def rd(vcpu: int, off: int) -> int:
    """Offset of an RD_base register of `vcpu`'s redistributor in the GICR window."""
    return vcpu * GICR_STRIDE + off


def sgi_base(vcpu: int, off: int) -> int:
    return vcpu * GICR_STRIDE + GICR_SGI_BASE + off


def bank_reg(gic: Gicv3, intid: int, vcpu: int) -> tuple[MmioDevice, Callable[[int], int]]:
    """(window, offset function) for the register bank that holds `intid`."""
    if intid < 32:
        return gic.redistributors, lambda off: sgi_base(vcpu, off)
    return gic.distributor, lambda off: off


def bit_write(gic: Gicv3, array: int, intid: int, vcpu: int = 0) -> None:
    win, at = bank_reg(gic, intid, vcpu)
    win.mmio_write(at(array + 4 * (intid // 32)), 4, 1 << (intid % 32), vcpu)


def bit_read(gic: Gicv3, array: int, intid: int, vcpu: int = 0) -> bool:
    win, at = bank_reg(gic, intid, vcpu)
    return bool(win.mmio_read(at(array + 4 * (intid // 32)), 4, vcpu) >> (intid % 32) & 1)


def set_priority(gic: Gicv3, intid: int, prio: int, vcpu: int = 0) -> None:
    win, at = bank_reg(gic, intid, vcpu)
    win.mmio_write(at(IPRIORITYR + intid), 1, prio, vcpu)


def set_edge(gic: Gicv3, intid: int, edge: bool, vcpu: int = 0) -> None:
    win, at = bank_reg(gic, intid, vcpu)
    off = at(ICFGR + 4 * (intid // 16))
    old = win.mmio_read(off, 4, vcpu)
    bit = 2 << (2 * (intid % 16))
    win.mmio_write(off, 4, (old | bit) if edge else (old & ~bit), vcpu)


def route(gic: Gicv3, intid: int, value: int) -> None:
    gic.distributor.mmio_write(GICD_IROUTER + 8 * intid, 8, value, 0)


def wake(gic: Gicv3, vcpu: int) -> None:
    gic.redistributors.mmio_write(rd(vcpu, GICR_WAKER), 4, 0, vcpu)


def ready_gic(num_vcpus: int = 2, num_spis: int = 64, **kw) -> Gicv3:
    """A GIC as a guest leaves it after init: enabled, awake, unmasked (PMR 0xF8), group 1 on."""
    gic = Gicv3(num_vcpus, num_spis, **kw)
    gic.distributor.mmio_write(GICD_CTLR, 4, GICD_CTLR_ENABLE_GRP1, 0)
    for v in range(num_vcpus):
        wake(gic, v)
        gic.sysreg_write(v, sysreg.ICC_PMR_EL1, 0xFF)
        gic.sysreg_write(v, sysreg.ICC_IGRPEN1_EL1, 1)
    return gic


def enable(gic: Gicv3, intid: int, vcpu: int = 0, prio: int = 0x80, edge: bool | None = None) -> None:
    set_priority(gic, intid, prio, vcpu)
    if edge is not None:
        set_edge(gic, intid, edge, vcpu)
    bit_write(gic, ISENABLER, intid, vcpu)


def iar(gic: Gicv3, vcpu: int = 0) -> int:
    return gic.sysreg_read(vcpu, sysreg.ICC_IAR1_EL1)


def eoi(gic: Gicv3, intid: int, vcpu: int = 0) -> None:
    gic.sysreg_write(vcpu, sysreg.ICC_EOIR1_EL1, intid)


def rpr(gic: Gicv3, vcpu: int = 0) -> int:
    return gic.sysreg_read(vcpu, sysreg.ICC_RPR_EL1)


# --- construction and identification ------------------------------------------------------------------
def test_windows_are_mmio_devices():
    gic = Gicv3(1)
    assert isinstance(gic.distributor, MmioDevice)
    assert isinstance(gic.redistributors, MmioDevice)


@pytest.mark.parametrize("num_vcpus, num_spis", [(0, 64), (33, 64), (1, 48), (1, 992), (1, -32)])
def test_constructor_rejects_bad_sizes(num_vcpus, num_spis):
    with pytest.raises(ValueError):
        Gicv3(num_vcpus, num_spis)


@pytest.mark.parametrize("num_spis, lines", [(0, 0), (64, 2), (96, 3), (960, 30)])
def test_gicd_typer_describes_the_spis(num_spis, lines):
    gic = Gicv3(1, num_spis)
    typer = gic.distributor.mmio_read(GICD_TYPER, 4, 0)
    assert typer & 0x1F == lines  # ITLinesNumber: SPIs up to 32 * (N + 1) - 1
    assert 32 * (lines + 1) - 1 == 31 + num_spis
    assert (typer >> 19) & 0x1F == 15  # IDbits: 16-bit INTIDs
    assert not typer & (1 << 17)  # no LPIs
    assert typer & (1 << 26)  # RSS


def test_gicd_ctlr_and_id_registers():
    gic = Gicv3(1)
    d = gic.distributor
    assert d.mmio_read(GICD_CTLR, 4, 0) == GICD_CTLR_ARE | GICD_CTLR_DS  # RWP 0, group 1 off
    d.mmio_write(GICD_CTLR, 4, 0xFFFF_FFFF, 0)
    assert d.mmio_read(GICD_CTLR, 4, 0) == GICD_CTLR_ARE | GICD_CTLR_DS | GICD_CTLR_ENABLE_GRP1
    d.mmio_write(GICD_CTLR, 4, 0, 0)  # ARE stays set (RAO/WI)
    assert d.mmio_read(GICD_CTLR, 4, 0) == GICD_CTLR_ARE | GICD_CTLR_DS
    assert (d.mmio_read(GICD_PIDR2, 4, 0) >> 4) & 0xF == 3
    assert (gic.redistributors.mmio_read(rd(0, GICR_PIDR2), 4, 0) >> 4) & 0xF == 3


def test_gicr_typer_affinity_processor_number_and_last():
    gic = Gicv3(3)
    r = gic.redistributors
    for v in range(3):
        typer = r.mmio_read(rd(v, GICR_TYPER), 8, 0)
        assert typer >> 32 == v  # Aff3.Aff2.Aff1.Aff0 = 0.0.0.v
        assert (typer >> 8) & 0xFFFF == v
        assert bool(typer & (1 << 4)) == (v == 2)
        lo = r.mmio_read(rd(v, GICR_TYPER), 4, 0)
        hi = r.mmio_read(rd(v, GICR_TYPER + 4), 4, 0)
        assert (hi << 32) | lo == typer


def test_gicr_waker_handshake():
    gic = Gicv3(2)
    r = gic.redistributors
    assert r.mmio_read(rd(1, GICR_WAKER), 4, 1) == 0b110  # ProcessorSleep, ChildrenAsleep
    r.mmio_write(rd(1, GICR_WAKER), 4, 0, 1)
    assert r.mmio_read(rd(1, GICR_WAKER), 4, 1) == 0
    assert r.mmio_read(rd(0, GICR_WAKER), 4, 0) == 0b110  # per redistributor
    r.mmio_write(rd(1, GICR_WAKER), 4, 0b010, 1)
    assert r.mmio_read(rd(1, GICR_WAKER), 4, 1) == 0b110


# --- the shared register bank ---------------------------------------------------------------------------
def test_enable_registers_for_spis_and_banked_ppis():
    gic = Gicv3(2)
    d, r = gic.distributor, gic.redistributors
    d.mmio_write(ISENABLER + 4, 4, 1 << 8, 0)  # INTID 40
    assert d.mmio_read(ICENABLER + 4, 4, 0) == 1 << 8
    d.mmio_write(ICENABLER + 4, 4, 1 << 8, 0)
    assert d.mmio_read(ISENABLER + 4, 4, 0) == 0
    # GICD's INTID 0-31 bits are RAZ/WI with affinity routing; they live in each GICR.
    d.mmio_write(ISENABLER, 4, 0xFFFF_FFFF, 0)
    assert d.mmio_read(ISENABLER, 4, 0) == 0
    r.mmio_write(sgi_base(1, ISENABLER), 4, 1 << PPI, 1)
    assert r.mmio_read(sgi_base(1, ISENABLER), 4, 0) == 1 << PPI
    assert r.mmio_read(sgi_base(0, ISENABLER), 4, 0) == 0
    # SPIs beyond num_spis are RAZ/WI.
    d.mmio_write(ISENABLER + 12, 4, 1, 0)  # INTID 96, num_spis = 64
    assert d.mmio_read(ISENABLER + 12, 4, 0) == 0


def test_priority_registers_are_byte_accessible_with_5_bits():
    gic = Gicv3(1)
    d, r = gic.distributor, gic.redistributors
    d.mmio_write(IPRIORITYR + 33, 1, 0xFF, 0)
    assert d.mmio_read(IPRIORITYR + 32, 4, 0) == 0xF8 << 8  # bits [2:0] RAZ/WI
    d.mmio_write(IPRIORITYR + 36, 4, 0x1020_3047, 0)
    assert [d.mmio_read(IPRIORITYR + 36 + i, 1, 0) for i in range(4)] == [0x40, 0x30, 0x20, 0x10]
    r.mmio_write(sgi_base(0, IPRIORITYR + PPI), 1, 0xA0, 0)
    assert r.mmio_read(sgi_base(0, IPRIORITYR + (PPI & ~3)), 4, 0) == 0xA0 << (8 * (PPI % 4))
    assert d.mmio_read(IPRIORITYR + PPI, 1, 0) == 0  # GICD copy of a PPI: RAZ


def test_icfgr_sgis_fixed_edge_ppis_and_spis_configurable():
    gic = Gicv3(1)
    d, r = gic.distributor, gic.redistributors
    assert r.mmio_read(sgi_base(0, ICFGR), 4, 0) == 0xAAAA_AAAA
    r.mmio_write(sgi_base(0, ICFGR), 4, 0, 0)
    assert r.mmio_read(sgi_base(0, ICFGR), 4, 0) == 0xAAAA_AAAA
    assert r.mmio_read(sgi_base(0, ICFGR + 4), 4, 0) == 0  # PPIs reset level-sensitive
    r.mmio_write(sgi_base(0, ICFGR + 4), 4, 0xFFFF_FFFF, 0)
    assert r.mmio_read(sgi_base(0, ICFGR + 4), 4, 0) == 0xAAAA_AAAA  # Int_config[0] RES0
    d.mmio_write(ICFGR + 8, 4, 2 << 2, 0)  # INTID 33 edge
    assert d.mmio_read(ICFGR + 8, 4, 0) == 2 << 2


def test_igroupr_is_all_group_1():
    gic = Gicv3(1)
    gic.distributor.mmio_write(IGROUPR + 4, 4, 0, 0)
    assert gic.distributor.mmio_read(IGROUPR + 4, 4, 0) == 0xFFFF_FFFF
    assert gic.redistributors.mmio_read(sgi_base(0, IGROUPR), 4, 0) == 0xFFFF_FFFF


def test_irouter_64_bit_and_halves():
    gic = Gicv3(2)
    d = gic.distributor
    d.mmio_write(GICD_IROUTER + 8 * 40, 8, 0xFFFF_FFFF_FFFF_FFFF, 0)
    assert d.mmio_read(GICD_IROUTER + 8 * 40, 8, 0) == 0xFF_80FF_FFFF  # Aff3..Aff0 + IRM
    d.mmio_write(GICD_IROUTER + 8 * 40, 4, 1, 0)
    d.mmio_write(GICD_IROUTER + 8 * 40 + 4, 4, 0, 0)
    assert d.mmio_read(GICD_IROUTER + 8 * 40, 8, 0) == 1
    assert d.mmio_read(GICD_IROUTER + 8 * 40, 4, 0) == 1
    assert d.mmio_read(GICD_IROUTER + 8 * 20, 8, 0) == 0  # no IROUTER for PPIs


def test_reserved_and_badly_sized_accesses_are_ignored_and_traced():
    quiet = Gicv3(1)
    assert quiet.distributor.mmio_read(0x0050, 4, 0) == 0  # no trace: nothing happens

    events: list[GicAccess] = []
    gic = Gicv3(2, trace=events.append)
    d, r = gic.distributor, gic.redistributors
    assert d.mmio_read(0x0050, 4, 0) == 0
    d.mmio_write(GICD_CTLR, 1, GICD_CTLR_ENABLE_GRP1, 1)  # byte write to a 32-bit register
    assert d.mmio_read(GICD_CTLR, 4, 0) & GICD_CTLR_ENABLE_GRP1 == 0
    d.mmio_write(ISENABLER + 4, 2, 0xFFFF, 0)
    assert d.mmio_read(ISENABLER + 4, 4, 0) == 0
    assert r.mmio_read(2 * GICR_STRIDE, 4, 0) == 0  # past the last redistributor
    r.mmio_write(sgi_base(0, 0x0000), 4, 5, 0)  # reserved in SGI_base
    assert [(e.frame, e.offset, e.size, e.write, e.reason) for e in events] == [
        ("GICD", 0x0050, 4, False, "reserved"),
        ("GICD", GICD_CTLR, 1, True, "unsupported access size"),
        ("GICD", ISENABLER + 4, 2, True, "unsupported access size"),
        ("GICR", 2 * GICR_STRIDE, 4, False, "reserved"),
        ("GICR", GICR_STRIDE * 0 + GICR_SGI_BASE, 4, True, "reserved"),
    ]
    assert events[1].vcpu == 1 and events[1].value == GICD_CTLR_ENABLE_GRP1


# --- CPU interface registers ------------------------------------------------------------------------
def test_cpu_interface_register_values():
    gic = Gicv3(1)
    read = lambda reg: gic.sysreg_read(0, reg)  # noqa: E731
    assert read(sysreg.ICC_SRE_EL1) & 1 == 1
    gic.sysreg_write(0, sysreg.ICC_SRE_EL1, 0)
    assert read(sysreg.ICC_SRE_EL1) & 1 == 1
    ctlr = read(sysreg.ICC_CTLR_EL1)
    assert (ctlr >> 8) & 7 == 4  # PRIbits: 5 priority bits
    assert ctlr & 2 == 0
    gic.sysreg_write(0, sysreg.ICC_CTLR_EL1, 0xFFFF_FFFF)
    assert read(sysreg.ICC_CTLR_EL1) == ctlr | 2  # only EOImode is writable
    gic.sysreg_write(0, sysreg.ICC_PMR_EL1, 0xFF)
    assert read(sysreg.ICC_PMR_EL1) == 0xF8
    assert read(sysreg.ICC_BPR1_EL1) == 3  # reset = minimum
    gic.sysreg_write(0, sysreg.ICC_BPR1_EL1, 0)
    assert read(sysreg.ICC_BPR1_EL1) == 3
    gic.sysreg_write(0, sysreg.ICC_BPR1_EL1, 6)
    assert read(sysreg.ICC_BPR1_EL1) == 6
    gic.sysreg_write(0, sysreg.ICC_IGRPEN1_EL1, 3)
    assert read(sysreg.ICC_IGRPEN1_EL1) == 1
    assert read(sysreg.ICC_RPR_EL1) == 0xFF
    assert read(sysreg.ICC_IAR1_EL1) == INTID_SPURIOUS
    assert read(sysreg.ICC_HPPIR1_EL1) == INTID_SPURIOUS
    assert read(sysreg.ICC_SGI1R_EL1) == 0  # write-only
    assert gic.handles(sysreg.ICC_EOIR1_EL1) and not gic.handles(sysreg.CNTV_CTL_EL0)
    with pytest.raises(ValueError, match="CNTV_CTL_EL0"):
        gic.sysreg_read(0, sysreg.CNTV_CTL_EL0)
    with pytest.raises(ValueError):
        gic.sysreg_read(1, sysreg.ICC_PMR_EL1)


# --- interrupt life cycle -----------------------------------------------------------------------------
def test_nothing_pending_acknowledges_spurious():
    gic = ready_gic()
    assert iar(gic) == INTID_SPURIOUS
    assert not gic.irq_signalled(0)


def test_edge_spi_pends_on_rising_edges_only():
    gic = ready_gic()
    enable(gic, SPI, edge=True)
    gic.set_line(SPI, True)
    assert bit_read(gic, ISPENDR, SPI)
    assert gic.irq_signalled(0)
    assert iar(gic) == SPI
    assert not bit_read(gic, ISPENDR, SPI) and bit_read(gic, ISACTIVER, SPI)
    gic.set_line(SPI, True)  # still high: no new edge
    eoi(gic, SPI)
    assert not bit_read(gic, ISACTIVER, SPI) and not bit_read(gic, ISPENDR, SPI)
    assert iar(gic) == INTID_SPURIOUS
    gic.set_line(SPI, False)
    assert not bit_read(gic, ISPENDR, SPI)
    gic.set_line(SPI, True)
    assert iar(gic) == SPI


def test_edge_while_active_gives_active_and_pending_then_redelivers():
    gic = ready_gic()
    enable(gic, SPI, edge=True)
    gic.set_line(SPI, True)
    assert iar(gic) == SPI
    gic.set_line(SPI, False)
    gic.set_line(SPI, True)
    assert bit_read(gic, ISPENDR, SPI) and bit_read(gic, ISACTIVER, SPI)
    # An active-and-pending interrupt is not forwarded again until it is deactivated.
    gic.sysreg_write(0, sysreg.ICC_CTLR_EL1, 2)  # EOImode 1: EOIR only drops priority
    eoi(gic, SPI)
    assert rpr(gic) == 0xFF
    assert not gic.irq_signalled(0)
    gic.sysreg_write(0, sysreg.ICC_DIR_EL1, SPI)
    assert gic.irq_signalled(0)
    assert iar(gic) == SPI


def test_level_ppi_stays_pending_while_asserted():
    gic = ready_gic()
    enable(gic, PPI, vcpu=1)  # level-sensitive by default
    gic.set_line(PPI, True, vcpu=1)
    assert not gic.irq_signalled(0)  # banked: only vCPU 1 sees it
    assert gic.irq_signalled(1)
    bit_write(gic, ICPENDR, PPI, vcpu=1)  # cannot clear a pending state held by the line
    assert bit_read(gic, ISPENDR, PPI, vcpu=1)
    assert iar(gic, 1) == PPI
    assert bit_read(gic, ISPENDR, PPI, vcpu=1) and bit_read(gic, ISACTIVER, PPI, vcpu=1)
    assert not gic.irq_signalled(1)  # active and pending is not re-signalled
    eoi(gic, PPI, vcpu=1)
    assert gic.irq_signalled(1)  # re-pends after deactivation: the line is still high
    assert iar(gic, 1) == PPI
    gic.set_line(PPI, False, vcpu=1)  # the handler quiets the device
    eoi(gic, PPI, vcpu=1)
    assert not bit_read(gic, ISPENDR, PPI, vcpu=1)
    assert iar(gic, 1) == INTID_SPURIOUS


def test_software_pending_and_active_registers():
    gic = ready_gic()
    enable(gic, 40)
    bit_write(gic, ISPENDR, 40)
    assert gic.irq_signalled(0)
    bit_write(gic, ICPENDR, 40)
    assert not gic.irq_signalled(0)
    bit_write(gic, ISPENDR, 40)
    bit_write(gic, ISACTIVER, 40)
    assert not gic.irq_signalled(0)  # active and pending
    bit_write(gic, ICACTIVER, 40)
    assert iar(gic) == 40
    # A level interrupt latched by ISPENDR is cleared by acknowledge when the line is low.
    eoi(gic, 40)
    assert not bit_read(gic, ISPENDR, 40)


@pytest.mark.parametrize(
    "gate",
    ["intid disabled", "distributor disabled", "igrpen1 off", "redistributor asleep", "pmr"],
)
def test_delivery_gates(gate):
    gic = ready_gic()
    enable(gic, PPI, prio=0x80)
    gic.set_line(PPI, True, vcpu=0)
    assert gic.irq_signalled(0)
    if gate == "intid disabled":
        bit_write(gic, ICENABLER, PPI)
    elif gate == "distributor disabled":
        gic.distributor.mmio_write(GICD_CTLR, 4, 0, 0)
    elif gate == "igrpen1 off":
        gic.sysreg_write(0, sysreg.ICC_IGRPEN1_EL1, 0)
    elif gate == "redistributor asleep":
        gic.redistributors.mmio_write(rd(0, GICR_WAKER), 4, 2, 0)
    else:
        gic.sysreg_write(0, sysreg.ICC_PMR_EL1, 0x80)  # priority must be strictly higher
    assert not gic.irq_signalled(0)
    assert not gic.wakeup_pending(0)
    assert iar(gic) == INTID_SPURIOUS
    assert bit_read(gic, ISPENDR, PPI)  # still pending, just not delivered


def test_pmr_admits_strictly_higher_priorities():
    gic = ready_gic()
    enable(gic, PPI, prio=0x78)
    gic.set_line(PPI, True, vcpu=0)
    gic.sysreg_write(0, sysreg.ICC_PMR_EL1, 0x80)
    assert gic.irq_signalled(0)
    # HPPIR1 reports the pending interrupt whatever the mask says.
    gic.sysreg_write(0, sysreg.ICC_PMR_EL1, 0x70)
    assert not gic.irq_signalled(0)
    assert gic.sysreg_read(0, sysreg.ICC_HPPIR1_EL1) == PPI


def test_highest_priority_wins_and_ties_go_to_lowest_intid():
    gic = ready_gic()
    for intid, prio in [(SPI, 0x40), (40, 0x40), (PPI, 0x60), (5, 0x40)]:
        enable(gic, intid, prio=prio)
        bit_write(gic, ISPENDR, intid)
    assert gic.sysreg_read(0, sysreg.ICC_HPPIR1_EL1) == 5
    order = []
    for _ in range(4):
        intid = iar(gic)
        order.append(intid)
        eoi(gic, intid)
    assert order == [5, SPI, 40, PPI]
    assert iar(gic) == INTID_SPURIOUS


def test_running_priority_and_nested_preemption():
    gic = ready_gic()
    enable(gic, 40, prio=0x80)
    enable(gic, 41, prio=0x40)
    enable(gic, 42, prio=0x80)
    bit_write(gic, ISPENDR, 40)
    assert iar(gic) == 40
    assert rpr(gic) == 0x80
    assert gic.sysreg_read(0, sysreg.ICC_AP1R0_EL1) == 1 << (0x80 >> 3)
    bit_write(gic, ISPENDR, 42)  # same priority: no preemption
    assert not gic.irq_signalled(0)
    bit_write(gic, ISPENDR, 41)  # higher priority preempts
    assert iar(gic) == 41
    assert rpr(gic) == 0x40
    assert gic.sysreg_read(0, sysreg.ICC_AP1R0_EL1) == (1 << 16) | (1 << 8)
    eoi(gic, 41)
    assert rpr(gic) == 0x80
    eoi(gic, 40)
    assert rpr(gic) == 0xFF
    assert iar(gic) == 42


@pytest.mark.parametrize("bpr1, preempts", [(3, True), (7, False)])
def test_binary_point_sets_the_preemption_group(bpr1, preempts):
    gic = ready_gic()
    gic.sysreg_write(0, sysreg.ICC_BPR1_EL1, bpr1)
    enable(gic, 40, prio=0x90)
    enable(gic, 41, prio=0x88)
    bit_write(gic, ISPENDR, 40)
    assert iar(gic) == 40
    # BPR1 = 7: group priority is bit 7 only, so 0x90 and 0x88 share group 0x80.
    assert rpr(gic) == (0x90 if bpr1 == 3 else 0x80)
    bit_write(gic, ISPENDR, 41)
    assert gic.irq_signalled(0) is preempts


def test_eoimode_0_eoir_deactivates_and_dir_is_ignored():
    gic = ready_gic()
    enable(gic, 40)
    bit_write(gic, ISPENDR, 40)
    assert iar(gic) == 40
    gic.sysreg_write(0, sysreg.ICC_DIR_EL1, 40)  # ignored with EOImode 0
    assert bit_read(gic, ISACTIVER, 40)
    eoi(gic, 40)
    assert not bit_read(gic, ISACTIVER, 40)
    assert rpr(gic) == 0xFF


def test_eoimode_1_splits_priority_drop_and_deactivation():
    gic = ready_gic()
    gic.sysreg_write(0, sysreg.ICC_CTLR_EL1, 2)
    enable(gic, 40, prio=0x80)
    enable(gic, 41, prio=0xA0)
    bit_write(gic, ISPENDR, 40)
    assert iar(gic) == 40
    bit_write(gic, ISPENDR, 41)
    assert not gic.irq_signalled(0)  # 0xA0 cannot preempt 0x80
    eoi(gic, 40)
    assert rpr(gic) == 0xFF and bit_read(gic, ISACTIVER, 40)
    assert iar(gic) == 41  # priority dropped, so 41 can be taken while 40 is still active
    gic.sysreg_write(0, sysreg.ICC_DIR_EL1, 40)
    assert not bit_read(gic, ISACTIVER, 40) and bit_read(gic, ISACTIVER, 41)
    eoi(gic, 41)
    gic.sysreg_write(0, sysreg.ICC_DIR_EL1, 41)
    assert not bit_read(gic, ISACTIVER, 41)


def test_eoi_of_a_special_intid_is_ignored():
    gic = ready_gic()
    enable(gic, 40)
    bit_write(gic, ISPENDR, 40)
    assert iar(gic) == 40
    eoi(gic, INTID_SPURIOUS)
    assert rpr(gic) == 0x80


# --- routing -----------------------------------------------------------------------------------------------
def test_spi_routed_by_irouter_affinity():
    gic = ready_gic(num_vcpus=3)
    enable(gic, SPI)
    gic.set_line(SPI, True)
    assert [gic.irq_signalled(v) for v in range(3)] == [True, False, False]  # reset: Aff0 = 0
    route(gic, SPI, 2)
    assert [gic.irq_signalled(v) for v in range(3)] == [False, False, True]
    assert iar(gic, 0) == INTID_SPURIOUS
    route(gic, SPI, 1 << 8)  # Aff1 = 1: no such vCPU
    assert not any(gic.irq_signalled(v) for v in range(3))
    route(gic, SPI, 7)  # Aff0 beyond the last vCPU
    assert not any(gic.irq_signalled(v) for v in range(3))


def test_spi_one_of_n_picks_lowest_participating_vcpu():
    gic = ready_gic(num_vcpus=3)
    enable(gic, SPI)
    route(gic, SPI, 1 << 31 | 2)  # IRM: affinity ignored
    gic.set_line(SPI, True)
    assert [gic.irq_signalled(v) for v in range(3)] == [True, False, False]
    gic.sysreg_write(0, sysreg.ICC_IGRPEN1_EL1, 0)
    assert [gic.irq_signalled(v) for v in range(3)] == [False, True, False]
    gic.redistributors.mmio_write(rd(1, GICR_WAKER), 4, 2, 1)  # vCPU 1 goes to sleep
    assert [gic.irq_signalled(v) for v in range(3)] == [False, False, True]
    assert iar(gic, 2) == SPI
    # Active state is global: any vCPU's redistributor view agrees, the SPI is not re-offered.
    gic.sysreg_write(0, sysreg.ICC_IGRPEN1_EL1, 1)
    assert not gic.irq_signalled(0)
    eoi(gic, SPI, vcpu=2)
    assert gic.irq_signalled(0)  # level line still high, vCPU 0 participates again


# --- SGIs --------------------------------------------------------------------------------------------------
def sgi1r(intid: int, targets: int = 0, aff1: int = 0, rs: int = 0, irm: bool = False) -> int:
    return targets | aff1 << 16 | intid << 24 | (1 << 40 if irm else 0) | rs << 44


def test_sgi_target_list_and_broadcast():
    gic = ready_gic(num_vcpus=4)
    for v in range(4):
        enable(gic, 3, vcpu=v)
    gic.sysreg_write(0, sysreg.ICC_SGI1R_EL1, sgi1r(3, targets=0b1010))
    assert [gic.irq_signalled(v) for v in range(4)] == [False, True, False, True]
    assert iar(gic, 1) == 3 and iar(gic, 3) == 3
    eoi(gic, 3, 1)
    eoi(gic, 3, 3)
    gic.sysreg_write(2, sysreg.ICC_SGI1R_EL1, sgi1r(3, irm=True))  # all but self
    assert [gic.irq_signalled(v) for v in range(4)] == [True, True, False, True]


def test_sgi_affinity_and_range_selector():
    gic = ready_gic(num_vcpus=18)
    enable(gic, 7, vcpu=17)
    enable(gic, 7, vcpu=1)
    gic.sysreg_write(0, sysreg.ICC_SGI1R_EL1, sgi1r(7, targets=0b10, aff1=1))  # 0.0.1.1: nobody
    assert not gic.irq_signalled(1)
    gic.sysreg_write(0, sysreg.ICC_SGI1R_EL1, sgi1r(7, targets=0b10, rs=1))  # Aff0 = 17
    assert gic.irq_signalled(17) and not gic.irq_signalled(1)
    assert iar(gic, 17) == 7


def test_sgis_have_no_input_line_and_inputs_are_checked():
    gic = Gicv3(2)
    with pytest.raises(ValueError):
        gic.set_line(3, True, vcpu=0)  # SGI
    with pytest.raises(ValueError):
        gic.set_line(PPI, True)  # PPI without a vCPU
    with pytest.raises(ValueError):
        gic.set_line(PPI, True, vcpu=2)
    with pytest.raises(ValueError):
        gic.set_line(SPI, True, vcpu=0)  # SPIs are routed, not aimed
    with pytest.raises(ValueError):
        gic.set_line(96, True)  # beyond num_spis
    gic.set_line(PPI_PHYS_TIMER_NS, True, vcpu=1)
    gic.set_line(95, True)


# --- snapshot state ----------------------------------------------------------------------------------------
def busy_gic() -> Gicv3:
    """A GIC with something in every kind of state."""
    gic = ready_gic(num_vcpus=3)
    gic.sysreg_write(1, sysreg.ICC_CTLR_EL1, 2)
    gic.sysreg_write(2, sysreg.ICC_BPR1_EL1, 5)
    enable(gic, PPI, vcpu=1, prio=0x20)
    gic.set_line(PPI, True, vcpu=1)
    assert iar(gic, 1) == PPI
    eoi(gic, PPI, 1)  # EOImode 1: dropped, still active (and pending: line high)
    enable(gic, SPI, prio=0x50, edge=True)
    route(gic, SPI, 1 << 31)
    gic.set_line(SPI, True)
    enable(gic, 60, prio=0x10)
    route(gic, 60, 2)
    bit_write(gic, ISPENDR, 60)
    assert iar(gic, 2) == 60
    enable(gic, 2, vcpu=0, prio=0x30)
    gic.sysreg_write(2, sysreg.ICC_SGI1R_EL1, sgi1r(2, targets=1))
    return gic


def observe(gic: Gicv3) -> list:
    """A trace of outputs and acknowledgements that consumes the pending work."""
    out = []
    for _ in range(4):
        for v in range(gic.num_vcpus):
            out.append((gic.irq_signalled(v), gic.sysreg_read(v, sysreg.ICC_RPR_EL1)))
            intid = iar(gic, v)
            out.append(intid)
            if intid != INTID_SPURIOUS:
                eoi(gic, intid, v)
                gic.sysreg_write(v, sysreg.ICC_DIR_EL1, intid)
    return out


def test_save_restore_round_trip_continues_identically():
    gic = busy_gic()
    state = gic.save_state()
    fresh = Gicv3(3)
    fresh.restore_state(state)
    assert fresh.save_state() == state
    assert observe(fresh) == observe(gic)
    assert fresh.save_state() == gic.save_state()


def test_saved_state_is_an_independent_copy_of_plain_u64_data():
    gic = busy_gic()
    state = gic.save_state()
    before = dataclasses.asdict(state)
    observe(gic)
    assert dataclasses.asdict(state) == before  # later activity does not leak into it

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert isinstance(x, (bool, int)) and 0 <= x < 1 << 64, x

    walk(before)
    fresh = Gicv3(3)
    fresh.restore_state(state)
    state.cpu_interfaces[0].pmr = 0
    assert fresh.sysreg_read(0, sysreg.ICC_PMR_EL1) == 0xF8


def test_windows_held_before_a_restore_serve_the_restored_state():
    """The MMIO bus keeps the window objects it was given: a restore must not replace them."""
    state = busy_gic().save_state()
    fresh = Gicv3(3)
    gicd, gicr = fresh.distributor, fresh.redistributors
    fresh.restore_state(state)
    assert gicd.mmio_read(GICD_CTLR, 4, 0) & GICD_CTLR_ENABLE_GRP1
    assert gicr.mmio_read(rd(2, GICR_WAKER), 4, 2) == 0  # vCPU 2 was woken before the save
    assert any(fresh.irq_signalled(v) for v in range(3))
    gicd.mmio_write(GICD_CTLR, 4, 0, 0)  # group 1 off: nothing is forwarded any more
    assert not any(fresh.irq_signalled(v) for v in range(3))


def test_restore_rejects_a_different_shape():
    state = busy_gic().save_state()
    with pytest.raises(ValueError, match="3 vCPU.*4"):
        Gicv3(4).restore_state(state)
    with pytest.raises(ValueError, match="SPIs"):
        Gicv3(3, num_spis=32).restore_state(state)
    broken = busy_gic().save_state()
    broken.redistributors[0].private.priority.pop()
    target = Gicv3(3)
    before = target.save_state()
    with pytest.raises(ValueError):
        target.restore_state(broken)
    assert target.save_state() == before
    assert isinstance(state, Gicv3State)


# --- randomized: outputs match acknowledgements, and snapshots are transparent ------------------------------
_OPS = st.one_of(
    st.tuples(st.just("line"), st.sampled_from([16, 27, 30, 32, 33, 40, 63, 95]), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("mmio"), st.sampled_from([ISENABLER, ICENABLER, ISPENDR, ICPENDR, ISACTIVER, ICACTIVER]),
              st.sampled_from([1, 4, 27, 33, 40, 63, 95]), st.integers(0, 2)),
    st.tuples(st.just("prio"), st.sampled_from([1, 27, 33, 40, 63]), st.integers(0, 255), st.integers(0, 2)),
    st.tuples(st.just("cfg"), st.sampled_from([27, 30, 33, 40]), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("route"), st.sampled_from([33, 40, 63, 95]), st.sampled_from([0, 1, 2, 5, 1 << 31]), st.just(0)),
    st.tuples(st.just("ack"), st.just(0), st.just(0), st.integers(0, 2)),
    st.tuples(st.just("eoi"), st.sampled_from([1, 27, 33, 40, 63, 95, 1023]), st.just(0), st.integers(0, 2)),
    st.tuples(st.just("dir"), st.sampled_from([1, 27, 33, 40, 63, 95]), st.just(0), st.integers(0, 2)),
    st.tuples(st.just("sgi"), st.integers(0, 15), st.integers(0, 7), st.integers(0, 2)),
    st.tuples(st.just("reg"), st.sampled_from(["pmr", "bpr", "igrpen", "eoimode"]), st.integers(0, 255), st.integers(0, 2)),
    st.tuples(st.just("waker"), st.just(0), st.booleans(), st.integers(0, 2)),
)


def apply(gic: Gicv3, op) -> object:
    kind, a, b, v = op
    if kind == "line":
        if a < 32:
            gic.set_line(a, b, vcpu=v)
        else:
            gic.set_line(a, b)
    elif kind == "mmio":
        bit_write(gic, a, b, v)
    elif kind == "prio":
        set_priority(gic, a, b, v)
    elif kind == "cfg":
        set_edge(gic, a, b, v)
    elif kind == "route":
        route(gic, a, b)
    elif kind == "ack":
        return iar(gic, v)
    elif kind == "eoi":
        eoi(gic, a, v)
    elif kind == "dir":
        gic.sysreg_write(v, sysreg.ICC_DIR_EL1, a)
    elif kind == "sgi":
        gic.sysreg_write(v, sysreg.ICC_SGI1R_EL1, sgi1r(a, targets=b, irm=b == 7))
    elif kind == "reg":
        reg = {"pmr": sysreg.ICC_PMR_EL1, "bpr": sysreg.ICC_BPR1_EL1,
               "igrpen": sysreg.ICC_IGRPEN1_EL1, "eoimode": sysreg.ICC_CTLR_EL1}[a]
        gic.sysreg_write(v, reg, b)
    elif kind == "waker":
        gic.redistributors.mmio_write(rd(v, GICR_WAKER), 4, 2 if b else 0, v)
    return None


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_OPS, max_size=60), split=st.integers(0, 60))
def test_random_operations(ops, split):
    gic = ready_gic(num_vcpus=3, num_spis=64)
    for i, op in enumerate(ops):
        if i == split:
            # A snapshot taken here and restored into a fresh GIC behaves identically from now on.
            twin = Gicv3(3, 64)
            twin.restore_state(gic.save_state())
            rest = ops[i:]
            assert [apply(twin, o) for o in rest] == [apply(gic, o) for o in rest]
            assert twin.save_state() == gic.save_state()
            break
        apply(gic, op)
        for v in range(3):
            # The IRQ output is exactly "IAR would return an INTID now".
            probe = Gicv3(3, 64)
            probe.restore_state(gic.save_state())
            signalled = gic.irq_signalled(v)
            assert signalled == gic.wakeup_pending(v)
            acked = iar(probe, v)
            assert signalled == (acked != INTID_SPURIOUS)
            if signalled:
                assert acked == gic.sysreg_read(v, sysreg.ICC_HPPIR1_EL1)
                # Acknowledging raises the running priority (a lower value).
                assert probe.sysreg_read(v, sysreg.ICC_RPR_EL1) < gic.sysreg_read(v, sysreg.ICC_RPR_EL1)
