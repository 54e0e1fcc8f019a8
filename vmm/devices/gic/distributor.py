"""`Distributor`: the GICD window (IHI 0069 12.9): the group enable, the SPIs' register bank
and their routing registers (GICD_IROUTER<n>).
"""
from __future__ import annotations

from typing import Callable

from vmm.devices.gic.bank import IrqBank
from vmm.devices.gic.mmio import RESERVED, BadAccess, GicAccess, GicFrame, read64, require, write64
from vmm.devices.gic.registers import (
    GICD_CTLR,
    GICD_CTLR_ARE,
    GICD_CTLR_DS,
    GICD_CTLR_ENABLE_GRP1,
    GICD_IIDR,
    GICD_IROUTER,
    GICD_IROUTER_END,
    GICD_ITARGETSR,
    GICD_ITARGETSR_END,
    GICD_PIDR2,
    GICD_SGIR,
    GICD_STATUSR,
    GICD_TYPER,
    GICD_TYPER2,
    GICD_TYPER_IDBITS_SHIFT,
    GICD_TYPER_RSS,
    IIDR_VALUE,
    INTID_BITS,
    IROUTER_WRITABLE,
    PIDR2_VALUE,
    SPI_FIRST,
)
from vmm.devices.gic.state import DistributorState

# Registers that read a fixed value (or RAZ) and ignore writes, 32-bit only.
_READ_ONLY = (GICD_TYPER, GICD_IIDR, GICD_TYPER2, GICD_STATUSR, GICD_SGIR, GICD_PIDR2)


class Distributor(GicFrame):
    """The GICD window, an `MmioDevice` over a `DistributorState` (`bind` switches it to
    another one, as a restore does). `spis` is the SPIs' `IrqBank` (INTIDs 32..32+num_spis-1)."""

    FRAME = "GICD"

    def __init__(self, state: DistributorState, report: Callable[[GicAccess], None]) -> None:
        super().__init__(report)
        self.bind(state)

    def bind(self, state: DistributorState) -> None:
        """Serve `state` from now on."""
        self.s = state
        self.spis = IrqBank(state.spis, SPI_FIRST)
        self.num_spis = self.spis.count

    def route(self, intid: int) -> int:
        """GICD_IROUTER<intid> of an implemented SPI."""
        return self.s.irouter[intid - SPI_FIRST]

    def _typer(self) -> int:
        return (
            GICD_TYPER_RSS
            | ((INTID_BITS - 1) << GICD_TYPER_IDBITS_SHIFT)
            | (self.num_spis // 32)  # ITLinesNumber: SPIs up to 32 * (N + 1) - 1
        )

    def read_reg(self, offset: int, size: int) -> int:
        d = self.s
        value = self.spis.read(offset, size)
        if value is not None:
            return value
        if GICD_IROUTER <= offset < GICD_IROUTER_END:
            intid, off = divmod(offset - GICD_IROUTER, 8)
            return read64(self.route(intid) if self.spis.contains(intid) else 0, off, size)
        fixed = {
            GICD_CTLR: GICD_CTLR_DS | GICD_CTLR_ARE | (GICD_CTLR_ENABLE_GRP1 if d.enable_grp1 else 0),
            GICD_TYPER: self._typer(),
            GICD_IIDR: IIDR_VALUE,
            GICD_TYPER2: 0,
            GICD_STATUSR: 0,
            GICD_SGIR: 0,
            GICD_PIDR2: PIDR2_VALUE,
        }
        if offset in fixed:
            require(size == 4)
            return fixed[offset]
        if GICD_ITARGETSR <= offset < GICD_ITARGETSR_END:
            require(size in (1, 4) and offset % size == 0)
            return 0
        raise BadAccess(RESERVED)

    def write_reg(self, offset: int, size: int, value: int) -> None:
        d = self.s
        if self.spis.write(offset, size, value):
            return
        if GICD_IROUTER <= offset < GICD_IROUTER_END:
            intid, off = divmod(offset - GICD_IROUTER, 8)
            if self.spis.contains(intid):
                i = intid - SPI_FIRST
                d.irouter[i] = write64(d.irouter[i], off, size, value) & IROUTER_WRITABLE
            else:
                write64(0, off, size, value)  # size check only
            return
        if offset == GICD_CTLR:
            require(size == 4)
            d.enable_grp1 = bool(value & GICD_CTLR_ENABLE_GRP1)
            return
        if offset in _READ_ONLY:
            require(size == 4)
            return  # read-only, or RES0 with affinity routing
        if GICD_ITARGETSR <= offset < GICD_ITARGETSR_END:
            require(size in (1, 4) and offset % size == 0)
            return
        raise BadAccess(RESERVED)
