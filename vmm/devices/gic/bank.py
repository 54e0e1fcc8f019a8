"""`IrqBank`: one bank of interrupts, the per-INTID state operations and the register arrays
that the distributor (SPIs) and each redistributor's SGI_base frame (SGIs, PPIs) share
(IHI 0069 12.9 / 12.11: the same offsets in both frames).
"""
from __future__ import annotations

from typing import Iterator

from vmm.devices.gic.mmio import require
from vmm.devices.gic.registers import (
    BIT_ARRAY_BYTES,
    CFG_ARRAY_BYTES,
    ICENABLER,
    ICFGR,
    ICPENDR,
    IGROUPR,
    IGRPMODR,
    IPRIORITYR,
    ISACTIVER,
    ISENABLER,
    ISPENDR,
    MASK32,
    NSACR,
    PRIORITY_ARRAY_BYTES,
    PRIORITY_MASK,
)
from vmm.devices.gic.state import IrqBankState


def bit_positions(word: int) -> Iterator[int]:
    """Bit positions set in `word`, lowest first."""
    while word:
        low = word & -word
        yield low.bit_length() - 1
        word ^= low


class IrqBank:
    """State operations and register accesses for one `IrqBankState` (INTIDs first..first+count-1).

    Register offsets are the common GICD/GICR SGI_base layout; bits for INTIDs outside the bank
    are RAZ/WI (GICD's INTID 0-31 bits with affinity routing, GICR's beyond 31).
    """

    def __init__(self, state: IrqBankState, first: int, fixed_edge: int = 0) -> None:
        self.s = state
        self.first = first
        self.count = len(state.priority)
        self._fixed_edge = fixed_edge  # word-0 bits whose ICFGR is read-only edge (SGIs)

    # --- per-INTID state ---------------------------------------------------------------------
    def contains(self, intid: int) -> bool:
        return self.first <= intid < self.first + self.count

    def _loc(self, intid: int) -> tuple[int, int]:
        rel = intid - self.first
        return rel >> 5, 1 << (rel & 31)

    def pending_word(self, w: int) -> int:
        """Pending bits of word w: the latch, plus line level for level-sensitive INTIDs."""
        s = self.s
        return s.pending_latch[w] | (s.line_level[w] & ~s.edge[w])

    def forwardable(self) -> Iterator[int]:
        """INTIDs that are enabled, pending and not active, in ascending order."""
        s = self.s
        for w in range(len(s.enabled)):
            for b in bit_positions(s.enabled[w] & self.pending_word(w) & ~s.active[w]):
                yield self.first + 32 * w + b

    def priority(self, intid: int) -> int:
        return self.s.priority[intid - self.first]

    def is_pending(self, intid: int) -> bool:
        w, bit = self._loc(intid)
        return bool(self.pending_word(w) & bit)

    def is_active(self, intid: int) -> bool:
        w, bit = self._loc(intid)
        return bool(self.s.active[w] & bit)

    def set_line(self, intid: int, level: bool) -> None:
        """Drive the input line; an edge-triggered INTID latches pending on a rising edge."""
        w, bit = self._loc(intid)
        s = self.s
        rising = level and not s.line_level[w] & bit
        s.line_level[w] = (s.line_level[w] | bit) if level else (s.line_level[w] & ~bit)
        if rising and s.edge[w] & bit:
            s.pending_latch[w] |= bit

    def set_pending(self, intid: int) -> None:
        w, bit = self._loc(intid)
        self.s.pending_latch[w] |= bit

    def acknowledge(self, intid: int) -> None:
        """Pending -> active (active and pending if a level line is still asserted)."""
        w, bit = self._loc(intid)
        self.s.pending_latch[w] &= ~bit
        self.s.active[w] |= bit

    def deactivate(self, intid: int) -> None:
        w, bit = self._loc(intid)
        self.s.active[w] &= ~bit

    # --- registers ---------------------------------------------------------------------------
    def _word_index(self, offset: int, array: int) -> int | None:
        """Bank word for a 1-bit-per-INTID register at `offset`, None if outside the bank."""
        w = (offset - array) // 4 - self.first // 32
        return w if 0 <= w < len(self.s.enabled) else None

    def read(self, offset: int, size: int) -> int | None:
        """Value of the bank register at `offset`; None if `offset` is not a bank register."""
        s = self.s
        if IGROUPR <= offset < IPRIORITYR:
            require(size == 4 and offset % 4 == 0)
            array = offset - offset % BIT_ARRAY_BYTES
            w = self._word_index(offset, array)
            if w is None:
                return 0
            if array == IGROUPR:
                return MASK32
            if array in (ISENABLER, ICENABLER):
                return s.enabled[w]
            if array in (ISPENDR, ICPENDR):
                return self.pending_word(w)
            return s.active[w]  # ISACTIVER, ICACTIVER
        if IPRIORITYR <= offset < IPRIORITYR + PRIORITY_ARRAY_BYTES:
            require(size in (1, 4) and offset % size == 0)
            value = 0
            for i in range(size):
                intid = offset - IPRIORITYR + i
                if self.contains(intid):
                    value |= self.priority(intid) << (8 * i)
            return value
        if ICFGR <= offset < ICFGR + CFG_ARRAY_BYTES:
            require(size == 4 and offset % 4 == 0)
            value = 0
            first = (offset - ICFGR) * 4  # 16 INTIDs per register
            for i in range(16):
                if self.contains(first + i):
                    w, bit = self._loc(first + i)
                    value |= (2 if s.edge[w] & bit else 0) << (2 * i)
            return value
        if IGRPMODR <= offset < IGRPMODR + BIT_ARRAY_BYTES or NSACR <= offset < NSACR + CFG_ARRAY_BYTES:
            require(size == 4 and offset % 4 == 0)
            return 0
        return None

    def write(self, offset: int, size: int, value: int) -> bool:
        """Store to the bank register at `offset`; False if `offset` is not a bank register."""
        s = self.s
        if IGROUPR <= offset < IPRIORITYR:
            require(size == 4 and offset % 4 == 0)
            array = offset - offset % BIT_ARRAY_BYTES
            w = self._word_index(offset, array)
            value &= MASK32
            if w is None or array == IGROUPR:
                return True
            if array == ISENABLER:
                s.enabled[w] |= value
            elif array == ICENABLER:
                s.enabled[w] &= ~value
            elif array == ISPENDR:
                s.pending_latch[w] |= value
            elif array == ICPENDR:
                s.pending_latch[w] &= ~value
            elif array == ISACTIVER:
                s.active[w] |= value
            else:  # ICACTIVER
                s.active[w] &= ~value
            return True
        if IPRIORITYR <= offset < IPRIORITYR + PRIORITY_ARRAY_BYTES:
            require(size in (1, 4) and offset % size == 0)
            for i in range(size):
                intid = offset - IPRIORITYR + i
                if self.contains(intid):
                    s.priority[intid - self.first] = (value >> (8 * i)) & PRIORITY_MASK
            return True
        if ICFGR <= offset < ICFGR + CFG_ARRAY_BYTES:
            require(size == 4 and offset % 4 == 0)
            first = (offset - ICFGR) * 4
            for i in range(16):
                intid = first + i
                if not self.contains(intid):
                    continue
                w, bit = self._loc(intid)
                if w == 0 and self._fixed_edge & bit:
                    continue
                edge = (value >> (2 * i + 1)) & 1
                s.edge[w] = (s.edge[w] | bit) if edge else (s.edge[w] & ~bit)
            return True
        if IGRPMODR <= offset < IGRPMODR + BIT_ARRAY_BYTES or NSACR <= offset < NSACR + CFG_ARRAY_BYTES:
            require(size == 4 and offset % 4 == 0)
            return True
        return False
