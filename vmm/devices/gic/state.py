"""The GIC's state as plain data: the persistence boundary (`Gicv3.save_state` returns a
`Gicv3State`, `restore_state` / `rollback` take one), and the copies and checks on it.

Limits declared on the types are checked when a snapshot is decoded (snapshot.plain); the
class and field names are the snapshot format (docs/snapshot-format.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from snapshot.plain import U8, U32, U64, MaxLen, Range
from vmm.devices.gic.registers import (
    BPR1_MIN,
    IROUTER_WRITABLE,
    MAX_SPIS,
    NUM_PRIVATE,
    PRIORITY_BITS,
    PRIORITY_MASK,
    SGI_CONFIG_EDGE,
)
from vmm.layout import MAX_VCPUS

_MAX_BANK = max(MAX_SPIS, NUM_PRIVATE)  # INTIDs in the largest bank
_Bitmap = Annotated[list[U32], MaxLen(_MAX_BANK // 32)]  # GICD/GICR-layout 32-bit words


@dataclass
class IrqBankState:
    """Per-INTID state of a contiguous INTID range, as plain data.

    Bitmaps are lists of 32-bit words laid out like the GICD/GICR registers: bit b of word w is
    INTID first + 32 * w + b, where `first` is 0 for a redistributor's SGIs/PPIs and 32 for the
    distributor's SPIs. `priority[i]` is INTID first + i.
    """

    enabled: _Bitmap
    pending_latch: _Bitmap  # edge seen / ISPENDR / SGI; cleared on acknowledge or ICPENDR
    active: _Bitmap
    line_level: _Bitmap  # input line levels from `set_line`
    edge: _Bitmap  # 1 = edge-triggered, 0 = level-sensitive (ICFGR Int_config[1])
    priority: Annotated[list[U8], MaxLen(_MAX_BANK)]

    def __post_init__(self) -> None:
        """ValueError for a priority with unimplemented bits set (IHI 0069 4.8: they read as 0)."""
        if any(p & ~PRIORITY_MASK for p in self.priority):
            bad = next(p for p in self.priority if p & ~PRIORITY_MASK)
            raise ValueError(f"priority {bad:#x} sets bits below the {PRIORITY_BITS} implemented ones ({PRIORITY_MASK:#x})")

    @classmethod
    def reset(cls, count: int, edge_mask: int = 0) -> IrqBankState:
        """Reset state for `count` INTIDs (a multiple of 32); `edge_mask` is word 0's edge bits."""
        words = count // 32
        edge = [0] * words
        if words:
            edge[0] = edge_mask
        return cls([0] * words, [0] * words, [0] * words, [0] * words, edge, [0] * count)

    def copy(self) -> IrqBankState:
        """An independent copy."""
        return IrqBankState(
            self.enabled[:], self.pending_latch[:], self.active[:], self.line_level[:], self.edge[:], self.priority[:]
        )

    def assign(self, src: IrqBankState) -> None:
        """Take `src`'s values into this state's lists, allocating nothing (same sizes)."""
        self.enabled[:] = src.enabled
        self.pending_latch[:] = src.pending_latch
        self.active[:] = src.active
        self.line_level[:] = src.line_level
        self.edge[:] = src.edge
        self.priority[:] = src.priority


@dataclass
class DistributorState:
    """GICD: the group enable, the SPIs and their routing (`irouter[i]` is INTID 32 + i)."""

    enable_grp1: bool
    spis: IrqBankState
    irouter: Annotated[list[U64], MaxLen(MAX_SPIS)]

    def __post_init__(self) -> None:
        """ValueError for a GICD_IROUTER value with bits that are RES0 here (only Aff3..Aff0 and
        IRM are implemented, IHI 0069 12.9)."""
        bad = next((r for r in self.irouter if r & ~IROUTER_WRITABLE), None)
        if bad is not None:
            raise ValueError(f"irouter value {bad:#x} sets bits outside {IROUTER_WRITABLE:#x}")


@dataclass
class RedistributorState:
    """One vCPU's GICR: wake state and its SGIs/PPIs (INTIDs 0-31)."""

    processor_sleep: bool
    private: IrqBankState


@dataclass
class CpuInterfaceState:
    """One vCPU's ICC_* state. `ap1r0` (ICC_AP1R0_EL1) is the running-priority stack.

    Nested activations always have a strictly higher group priority, so the bitmap of active
    group priorities records the whole stack: the running priority is its lowest set bit.
    """

    pmr: U8 = 0
    bpr1: Annotated[int, Range(BPR1_MIN, 7)] = BPR1_MIN  # ICC_BPR1_EL1.BinaryPoint, 3 bits
    eoimode: bool = False
    igrpen1: bool = False
    ap1r0: Annotated[int, Range(0, (1 << (1 << PRIORITY_BITS)) - 1)] = 0  # one bit per group priority

    def __post_init__(self) -> None:
        """ValueError for a PMR with unimplemented bits set (IHI 0069 4.8)."""
        if self.pmr & ~PRIORITY_MASK:
            raise ValueError(f"pmr {self.pmr:#x} sets bits below the {PRIORITY_BITS} implemented ones")


@dataclass
class Gicv3State:
    """The whole GIC as plain data (every int fits in a u64)."""

    num_vcpus: Annotated[int, Range(1, MAX_VCPUS)]
    num_spis: Annotated[int, Range(0, MAX_SPIS)]  # a multiple of 32
    distributor: DistributorState
    redistributors: Annotated[list[RedistributorState], MaxLen(MAX_VCPUS)]
    cpu_interfaces: Annotated[list[CpuInterfaceState], MaxLen(MAX_VCPUS)]

    @classmethod
    def reset(cls, num_vcpus: int, num_spis: int) -> Gicv3State:
        """The GIC out of reset (sizes already checked): everything disabled, redistributors
        asleep, SGIs edge-triggered and everything else level-sensitive, priorities 0."""
        return cls(
            num_vcpus=num_vcpus,
            num_spis=num_spis,
            distributor=DistributorState(False, IrqBankState.reset(num_spis), [0] * num_spis),
            redistributors=[
                RedistributorState(True, IrqBankState.reset(NUM_PRIVATE, SGI_CONFIG_EDGE)) for _ in range(num_vcpus)
            ],
            cpu_interfaces=[CpuInterfaceState() for _ in range(num_vcpus)],
        )

    def copy(self) -> Gicv3State:
        """An independent copy (every leaf is an int or bool): a deep copy, written out
        because `copy.deepcopy` costs ~20x more and in-process reset restores the GIC every time."""
        d = self.distributor
        return Gicv3State(
            num_vcpus=self.num_vcpus,
            num_spis=self.num_spis,
            distributor=DistributorState(d.enable_grp1, d.spis.copy(), d.irouter[:]),
            redistributors=[RedistributorState(r.processor_sleep, r.private.copy()) for r in self.redistributors],
            cpu_interfaces=[CpuInterfaceState(c.pmr, c.bpr1, c.eoimode, c.igrpen1, c.ap1r0) for c in self.cpu_interfaces],
        )

    def assign(self, src: Gicv3State) -> None:
        """Take `src`'s values, allocating nothing. ValueError, and no change, if `src` is of
        another shape (vCPU or SPI count)."""
        if src.num_vcpus != self.num_vcpus or src.num_spis != self.num_spis:
            raise ValueError("GIC rollback to a state saved from a GIC of another shape")
        self.distributor.enable_grp1 = src.distributor.enable_grp1
        self.distributor.irouter[:] = src.distributor.irouter
        self.distributor.spis.assign(src.distributor.spis)
        for dst, saved in zip(self.redistributors, src.redistributors):
            dst.processor_sleep = saved.processor_sleep
            dst.private.assign(saved.private)
        for ci, saved_ci in zip(self.cpu_interfaces, src.cpu_interfaces):
            ci.pmr = saved_ci.pmr
            ci.bpr1 = saved_ci.bpr1
            ci.eoimode = saved_ci.eoimode
            ci.igrpen1 = saved_ci.igrpen1
            ci.ap1r0 = saved_ci.ap1r0

    def check_shape(self, num_vcpus: int, num_spis: int) -> None:
        """ValueError unless this state fits a GIC of `num_vcpus` vCPUs and `num_spis` SPIs:
        the counts, and the length of every list."""
        if self.num_vcpus != num_vcpus:
            raise ValueError(f"GIC state is for {self.num_vcpus} vCPU(s) but this GIC has {num_vcpus}")
        if self.num_spis != num_spis:
            raise ValueError(f"GIC state has {self.num_spis} SPIs but this GIC has {num_spis}")
        if len(self.redistributors) != num_vcpus or len(self.cpu_interfaces) != num_vcpus:
            raise ValueError("GIC state: redistributor/CPU interface lists do not match num_vcpus")
        banks = [(self.distributor.spis, num_spis)] + [(r.private, NUM_PRIVATE) for r in self.redistributors]
        for bank, count in banks:
            lists = (bank.enabled, bank.pending_latch, bank.active, bank.line_level, bank.edge)
            if len(bank.priority) != count or any(len(x) != count // 32 for x in lists):
                raise ValueError(f"GIC state: an interrupt bank has the wrong size (expected {count} INTIDs)")
        if len(self.distributor.irouter) != num_spis:
            raise ValueError(f"GIC state: expected {num_spis} GICD_IROUTER values")
