"""`GuestMemory`: guest RAM, and the only way VMM code reads or writes it.

RAM is one host buffer (numpy uint8) mapped into every vCPU's Unicorn instance with
`mem_map_ptr`. Guest stores are seen by the dirty tracker through the vCPUs' TLB-fill hook;
every VMM-side store (image loading, device DMA, tests) goes through `write()`, which marks
the same bitmap. There is no other writable handle on RAM outside this module: `view()` is
read-only.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from vmm.errors import GuestMemoryError


class WriteSink(Protocol):
    """Receives every VMM-side write: `offset` and `length` in bytes from the start of RAM."""

    def mark_range(self, offset: int, length: int) -> None: ...


class GuestMemory:
    """Guest RAM at guest physical [base, base + size)."""

    def __init__(self, base: int, size: int, backing: np.ndarray | None = None) -> None:
        """Zeroed anonymous RAM, or `backing` (a writable uint8 array of `size` bytes, e.g. a
        MAP_PRIVATE mmap of a snapshot memory file for lazy copy-on-write restore)."""
        self.base = base
        self.size = size
        if backing is None:
            backing = np.zeros(size, dtype=np.uint8)
        elif backing.dtype != np.uint8 or backing.size != size or not backing.flags.writeable:
            raise GuestMemoryError(f"RAM backing must be a writable uint8 array of {size} bytes")
        self._ram = backing
        self._readonly = self._ram.view()
        self._readonly.flags.writeable = False
        self._sinks: list[WriteSink] = []

    # --- plumbing for the VMM ----------------------------------------------------------------
    @property
    def end(self) -> int:
        """First guest physical address past RAM."""
        return self.base + self.size

    @property
    def host_address(self) -> int:
        """Host address of the RAM buffer, for `Uc.mem_map_ptr` only."""
        return int(self._ram.ctypes.data)

    def add_write_sink(self, sink: WriteSink) -> None:
        """Register a dirty tracker that must see every VMM-side write."""
        self._sinks.append(sink)

    def remove_write_sink(self, sink: WriteSink) -> None:
        self._sinks.remove(sink)

    # --- access --------------------------------------------------------------------------------
    def contains(self, gpa: int, length: int = 1) -> bool:
        """True if [gpa, gpa + length) lies entirely in RAM."""
        return length >= 0 and self.base <= gpa and gpa + length <= self.end

    def _offset(self, gpa: int, length: int) -> int:
        if not self.contains(gpa, length):
            raise GuestMemoryError(
                f"guest access [{gpa:#x}, {gpa + length:#x}) is outside RAM "
                f"[{self.base:#x}, {self.end:#x})"
            )
        return gpa - self.base

    def read(self, gpa: int, length: int) -> bytes:
        """Copy `length` bytes starting at guest physical `gpa`."""
        off = self._offset(gpa, length)
        return self._ram[off : off + length].tobytes()

    def view(self, gpa: int | None = None, length: int | None = None) -> np.ndarray:
        """Read-only numpy view of RAM (all of it by default); no copy."""
        if gpa is None:
            return self._readonly
        off = self._offset(gpa, length if length is not None else self.end - gpa)
        n = length if length is not None else self.size - off
        return self._readonly[off : off + n]

    def write(self, gpa: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Store `data` at guest physical `gpa` and mark the pages dirty."""
        arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        n = int(arr.size)
        off = self._offset(gpa, n)
        self._ram[off : off + n] = arr
        for sink in self._sinks:
            sink.mark_range(off, n)

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def fill_from(self, source: np.ndarray | memoryview | bytes, offset: int = 0) -> None:
        """Bulk-copy `source` into RAM at byte `offset`, WITHOUT marking dirty pages.

        Only for restoring a snapshot, after which the caller starts a new dirty epoch: the
        restored contents are by definition the clean baseline.
        """
        arr = np.frombuffer(source, dtype=np.uint8) if not isinstance(source, np.ndarray) else source
        n = int(arr.size)
        if offset < 0 or offset + n > self.size:
            raise GuestMemoryError(f"restore of {n} bytes at RAM offset {offset:#x} overflows RAM")
        self._ram[offset : offset + n] = arr

    def restore_pages(self, pages: np.ndarray, image: np.ndarray, page_size: int) -> None:
        """Copy pages `pages` (indices, ascending) of `image` (a RAM-sized uint8 array) into RAM
        in one operation, WITHOUT marking dirty pages (as `fill_from`: only for restores)."""
        if image.size != self.size or self.size % page_size:
            raise GuestMemoryError(f"a restore image must be {self.size} bytes of {page_size}-byte pages")
        if len(pages) and not 0 <= int(pages[0]) <= int(pages[-1]) < self.size // page_size:
            raise GuestMemoryError(f"page {int(pages[-1])} is outside RAM")
        self._ram.reshape(-1, page_size)[pages] = image.reshape(-1, page_size)[pages]

    def clear(self) -> None:
        """Zero all of RAM without marking (fresh boot or reset; caller starts a new epoch)."""
        self._ram.fill(0)
