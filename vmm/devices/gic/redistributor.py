"""`Redistributors`: the GICR window, one redistributor per vCPU (IHI 0069 12.10 RD_base,
12.11 SGI_base): wake state, identification, and each vCPU's SGI/PPI register bank.

vCPU i's frames are at i * GICR_STRIDE in the window (RD_base, then SGI_base at +0x10000);
its affinity is 0.0.0.i, and GICR_TYPER.Last marks the last one.
"""
from __future__ import annotations

from typing import Callable

from vmm.devices.gic.bank import IrqBank
from vmm.devices.gic.mmio import RESERVED, BadAccess, GicAccess, GicFrame, read64, require, write64
from vmm.devices.gic.registers import (
    GICR_CTLR,
    GICR_IIDR,
    GICR_PIDR2,
    GICR_SGI_BASE,
    GICR_TYPER,
    GICR_TYPER_AFF_SHIFT,
    GICR_TYPER_LAST,
    GICR_TYPER_PROCNUM_SHIFT,
    GICR_WAKER,
    GICR_WAKER_CHILDREN_ASLEEP,
    GICR_WAKER_PROCESSOR_SLEEP,
    IIDR_VALUE,
    PIDR2_VALUE,
    SGI_CONFIG_EDGE,
)
from vmm.devices.gic.state import RedistributorState
from vmm.layout import GICR_STRIDE


class Redistributors(GicFrame):
    """The GICR window, an `MmioDevice` over one `RedistributorState` per vCPU (`bind`
    switches it to others, as a restore does). `banks[v]` is vCPU v's SGIs and PPIs."""

    FRAME = "GICR"

    def __init__(self, states: list[RedistributorState], report: Callable[[GicAccess], None]) -> None:
        super().__init__(report)
        self.bind(states)

    def bind(self, states: list[RedistributorState]) -> None:
        """Serve `states` (index = vCPU) from now on."""
        self.s = states
        self.banks = [IrqBank(r.private, 0, SGI_CONFIG_EDGE) for r in states]

    def asleep(self, vcpu: int) -> bool:
        """GICR_WAKER.ProcessorSleep of `vcpu`'s redistributor: it forwards nothing."""
        return self.s[vcpu].processor_sleep

    def _typer(self, index: int) -> int:
        last = GICR_TYPER_LAST if index == len(self.s) - 1 else 0
        return (index << GICR_TYPER_AFF_SHIFT) | (index << GICR_TYPER_PROCNUM_SHIFT) | last

    def _locate(self, offset: int) -> tuple[int, int]:
        """(redistributor index, offset within its 128 KiB frame pair)."""
        index, off = divmod(offset, GICR_STRIDE)
        if index >= len(self.s):
            raise BadAccess(RESERVED)
        return index, off

    def read_reg(self, offset: int, size: int) -> int:
        index, off = self._locate(offset)
        if off >= GICR_SGI_BASE:
            value = self.banks[index].read(off - GICR_SGI_BASE, size)
            if value is None:
                raise BadAccess(RESERVED)
            return value
        return self._rd_read(index, off, size)

    def write_reg(self, offset: int, size: int, value: int) -> None:
        index, off = self._locate(offset)
        if off >= GICR_SGI_BASE:
            if not self.banks[index].write(off - GICR_SGI_BASE, size, value):
                raise BadAccess(RESERVED)
            return
        self._rd_write(index, off, size, value)

    def _rd_read(self, index: int, off: int, size: int) -> int:
        """An RD_base register of redistributor `index`."""
        if GICR_TYPER <= off < GICR_TYPER + 8:
            return read64(self._typer(index), off - GICR_TYPER, size)
        if off == GICR_WAKER:
            require(size == 4)
            return (GICR_WAKER_PROCESSOR_SLEEP | GICR_WAKER_CHILDREN_ASLEEP) if self.asleep(index) else 0
        fixed = {GICR_CTLR: 0, GICR_IIDR: IIDR_VALUE, GICR_PIDR2: PIDR2_VALUE}
        if off in fixed:
            require(size == 4)
            return fixed[off]
        raise BadAccess(RESERVED)

    def _rd_write(self, index: int, off: int, size: int, value: int) -> None:
        if GICR_TYPER <= off < GICR_TYPER + 8:
            write64(0, off - GICR_TYPER, size, value)  # read-only; size check only
            return
        if off == GICR_WAKER:
            require(size == 4)
            self.s[index].processor_sleep = bool(value & GICR_WAKER_PROCESSOR_SLEEP)
            return
        if off in (GICR_CTLR, GICR_IIDR, GICR_PIDR2):
            require(size == 4)
            return
        raise BadAccess(RESERVED)
