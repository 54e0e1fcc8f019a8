"""The MMIO bus: dispatches guest loads and stores to device models by address range.

A device model implements `MmioDevice`: reads and writes get the byte offset into the
device's window, the access size in bytes (1, 2, 4 or 8) and the issuing vCPU index.
Devices never see guest RAM directly; DMA goes through `GuestMemory`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class MmioDevice(Protocol):
    """A device that owns one MMIO window."""

    def mmio_read(self, offset: int, size: int, vcpu: int) -> int:
        """Value of the `size`-byte register at `offset` (bytes into the window)."""
        ...

    def mmio_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        """Store `value` (`size` bytes) at `offset`."""
        ...


@dataclass(frozen=True)
class MmioRegion:
    """One device window on the bus: [base, base + size)."""

    name: str
    base: int
    size: int
    device: MmioDevice

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.base + self.size


class MmioBus:
    """Ordered, non-overlapping set of device windows."""

    def __init__(self) -> None:
        self._regions: list[MmioRegion] = []

    def add(self, name: str, base: int, size: int, device: MmioDevice) -> MmioRegion:
        """Register a window; overlapping windows are a programming error."""
        for r in self._regions:
            if base < r.base + r.size and r.base < base + size:
                raise ValueError(f"MMIO window {name} overlaps {r.name}")
        region = MmioRegion(name, base, size, device)
        self._regions.append(region)
        self._regions.sort(key=lambda r: r.base)
        return region

    @property
    def regions(self) -> tuple[MmioRegion, ...]:
        return tuple(self._regions)

    def find(self, addr: int) -> MmioRegion | None:
        """The window containing `addr`, or None for a hole."""
        for r in self._regions:
            if r.contains(addr):
                return r
        return None

    def device(self, name: str) -> MmioDevice:
        for r in self._regions:
            if r.name == name:
                return r.device
        raise KeyError(name)
