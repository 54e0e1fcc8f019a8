"""MMIO access rules shared by the GIC's register frames: size and alignment checks, 64-bit
registers accessed whole or by halves, and the reporting of accesses the model does not
implement (this model reads them as zero and ignores the writes: `vmm.devices.gicv3`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vmm.devices.gic.registers import MASK32, MASK64


@dataclass(frozen=True)
class GicAccess:
    """An MMIO access the model does not implement: it read as zero or the write was ignored."""

    frame: str  # "GICD" or "GICR"
    offset: int  # bytes into the window
    size: int
    write: bool
    value: int  # the value written; 0 for reads
    vcpu: int  # issuing vCPU
    reason: str  # "reserved" or "unsupported access size"


class BadAccess(Exception):
    """The access hits no register, or a register with the wrong size/alignment; the frame
    turns it into RAZ/WI and a `GicAccess` report. Never leaves the GIC."""


RESERVED = "reserved"
BAD_SIZE = "unsupported access size"


def require(ok: bool) -> None:
    """BadAccess(BAD_SIZE) unless `ok` (the size/alignment condition of a register)."""
    if not ok:
        raise BadAccess(BAD_SIZE)


def read64(value: int, offset_in_reg: int, size: int) -> int:
    """A 64-bit register read whole (8 bytes) or as either 32-bit half."""
    if size == 8 and offset_in_reg == 0:
        return value
    require(size == 4 and offset_in_reg in (0, 4))
    return (value >> (8 * offset_in_reg)) & MASK32


def write64(old: int, offset_in_reg: int, size: int, value: int) -> int:
    """`old` with a whole (8-byte) or half (4-byte) write merged in."""
    if size == 8 and offset_in_reg == 0:
        return value & MASK64
    require(size == 4 and offset_in_reg in (0, 4))
    shift = 8 * offset_in_reg
    return (old & ~(MASK32 << shift)) | ((value & MASK32) << shift)


class GicFrame:
    """One of the GIC's MMIO windows, an `MmioDevice`.

    Subclasses serve the registers in `read_reg` / `write_reg` (offsets in bytes into the
    window, sizes in bytes) and raise `BadAccess` for anything else; such an access reads as
    zero or is ignored, and `report` receives a `GicAccess` for it.
    """

    FRAME = ""  # the window's name in a GicAccess: "GICD" or "GICR"

    def __init__(self, report: Callable[[GicAccess], None]) -> None:
        self._report = report

    def read_reg(self, offset: int, size: int) -> int:
        raise NotImplementedError

    def write_reg(self, offset: int, size: int, value: int) -> None:
        raise NotImplementedError

    def mmio_read(self, offset: int, size: int, vcpu: int) -> int:
        try:
            return self.read_reg(offset, size)
        except BadAccess as e:
            self._report(GicAccess(self.FRAME, offset, size, False, 0, vcpu, str(e)))
            return 0

    def mmio_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        try:
            self.write_reg(offset, size, value)
        except BadAccess as e:
            self._report(GicAccess(self.FRAME, offset, size, True, value, vcpu, str(e)))
