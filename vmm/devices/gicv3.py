"""`Gicv3`: the GICv3 interrupt controller of the microVM, as far as a Non-secure EL1 guest can tell.

Source: Arm Generic Interrupt Controller Architecture Specification, GIC architecture version
3 and 4, IHI 0069 (chapter 4 "Physical Interrupt Handling and Prioritization", chapter 12
"Programmers' Model": 12.9 GICD_*, 12.10/12.11 GICR_* RD_base/SGI_base, 12.2 ICC_*).

What is modelled:
- One Security state (GICD_CTLR.DS reads 1, as KVM presents a GICv3 to guests), affinity
  routing always on (GICD_CTLR.ARE RAO/WI, ICC_SRE_EL1.SRE RAO/WI; no legacy GICv2 mode).
- Group 1 only: every INTID is Group 1 (IGROUPR reads all-ones, writes ignored); Group 0 /
  FIQ, IGRPMODR and NSACR are absent (RAZ/WI). No LPIs, ITS, extended SPI/PPI ranges.
- INTIDs: SGIs 0-15 and PPIs 16-31 are banked per vCPU in that vCPU's redistributor (SGI_base
  frame); SPIs 32..32+num_spis-1 live in the distributor. num_spis is a multiple of 32 so that
  GICD_TYPER.ITLinesNumber = num_spis / 32 describes exactly the implemented SPIs.
- 5 priority bits (32 levels): priority fields implement bits [7:3], bits [2:0] are RAZ/WI.
  ICC_CTLR_EL1.PRIbits reads 4. Hence the minimum ICC_BPR1_EL1 value is 3 (group priority
  [7:3]); smaller writes set 3. There are 32 preemption levels, so ICC_AP1R0_EL1 is the only
  active-priorities register: bit n set means an interrupt of group priority n << 3 is active.
- vCPU i has MPIDR affinity 0.0.0.i; its redistributor frames are at i * GICR_STRIDE in the
  GICR window (RD_base, then SGI_base at +0x10000). GICR_TYPER.Last marks the last one.

Interrupt life cycle (IHI 0069 4.1 "Interrupt states"): inactive, pending, active, active and pending.
- Pending state = a latch (set by an edge, ISPENDR or an SGI; cleared by acknowledge or
  ICPENDR) OR, for a level-sensitive INTID, the current input line level. So a level line that
  is still high when acknowledged becomes active-and-pending, and pends again the moment it is
  deactivated. An edge-triggered INTID latches only on a rising edge of its line.
- The redistributor forwards to vCPU v the highest-priority interrupt that is pending, not
  active, enabled, and targeted at v, provided GICD_CTLR.EnableGrp1 = 1 and v's redistributor
  is awake (GICR_WAKER.ProcessorSleep = 0: guests must do the WAKER handshake, as Linux does).
  Ties go to the lowest INTID.
- The CPU interface signals it (IRQ) if ICC_IGRPEN1_EL1.Enable = 1, its priority is higher
  (numerically lower) than ICC_PMR_EL1, and its group priority (priority masked by
  ICC_BPR1_EL1) is higher than the running priority (ICC_RPR_EL1: the highest active group
  priority, 0xFF when idle).
- SPI routing by GICD_IROUTER<n>: IRM = 0 targets the vCPU whose affinity matches (Aff0 =
  index, Aff1-3 = 0; no match means the SPI is never delivered). IRM = 1 (1 of N) targets the
  lowest-numbered participating vCPU, i.e. one that is awake and has ICC_IGRPEN1_EL1 set. The
  choice is deterministic; it does not move an SPI to another vCPU because the chosen one is
  busy at a higher priority (real hardware may).

Simplifications (all IMPLEMENTATION DEFINED or UNPREDICTABLE territory in IHI 0069):
- Register writes take effect at once, so GICD_CTLR.RWP and GICR_CTLR.RWP/UWP read 0 and
  GICR_WAKER.ChildrenAsleep follows ProcessorSleep immediately. No WakeRequest is raised for a
  sleeping redistributor, so `wakeup_pending` equals `irq_signalled`.
- ICC_EOIR1_EL1 drops the highest active priority whatever INTID it names (software must EOI
  in nesting order, otherwise the architecture is UNPREDICTABLE); with EOImode = 0 it also
  deactivates the INTID written. Writes of special (1020-1023) or unimplemented INTIDs to
  EOIR1/DIR are ignored, and so are DIR writes while EOImode = 0.
- ICC_CTLR_EL1: only EOImode is writable; CBPR and PMHE are RAZ/WI. ICC_SRE_EL1 reads 0x7.
- ICC_HPPIR1_EL1 reports the interrupt the redistributor forwards, ignoring PMR, running
  priority and ICC_IGRPEN1_EL1.
- MMIO: 32-bit registers take aligned 4-byte accesses; IPRIORITYR also takes bytes; 64-bit
  registers (GICD_IROUTER, GICR_TYPER) take 8-byte or either 4-byte half. Other sizes, and
  reserved offsets, read as zero and ignore writes, and are reported to `trace` if set.
- Reset values of registers the architecture leaves UNKNOWN: priorities 0, SPIs and PPIs
  level-sensitive, IROUTER 0 (vCPU 0), PMR 0 (everything masked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Iterator

from snapshot.plain import U8, U32, U64, MaxLen, Range
from vmm import sysreg
from vmm.layout import GICR_STRIDE, MAX_VCPUS
from vmm.sysreg import SysReg

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1

# --- INTID space (IHI 0069 2.2 "INTIDs") ---------------------------------------------------------
NUM_SGIS = 16  # SGIs are INTIDs 0-15
NUM_PRIVATE = 32  # SGIs and PPIs (16-31), banked per redistributor
SPI_FIRST = 32
MAX_SPIS = 960  # keeps SPI INTIDs below the special range 1020-1023 with a multiple of 32
INTID_SPURIOUS = 1023  # IHI 0069 2.2 special INTIDs (1020-1023): "no pending interrupt"

# --- Priorities (IHI 0069 4.8 "Interrupt prioritization") ------------------------------------------
PRIORITY_BITS = 5  # implemented priority bits [7:3]: 32 levels
PRIORITY_MASK = (0xFF << (8 - PRIORITY_BITS)) & 0xFF  # 0xF8
IDLE_PRIORITY = 0xFF  # ICC_RPR_EL1 with nothing active
BPR1_MIN = 8 - PRIORITY_BITS  # IHI 0069 4.8 + ICC_BPR1_EL1: minimum BPR0 (7 - bits) plus one
PREEMPTION_SHIFT = 8 - PRIORITY_BITS  # AP1R0 bit n <-> group priority n << 3

# --- Distributor (IHI 0069 12.9) ------------------------------------------------------------------
GICD_CTLR = 0x0000  # IHI 0069 12.9 GICD_CTLR
GICD_TYPER = 0x0004  # IHI 0069 12.9 GICD_TYPER
GICD_IIDR = 0x0008  # IHI 0069 12.9 GICD_IIDR
GICD_TYPER2 = 0x000C  # IHI 0069 12.9 GICD_TYPER2 (GICv3.1; RAZ here)
GICD_STATUSR = 0x0010  # IHI 0069 12.9 GICD_STATUSR (optional; RAZ/WI here)
GICD_ITARGETSR = 0x0800  # IHI 0069 12.9 GICD_ITARGETSR<n>: RES0 with affinity routing
GICD_ITARGETSR_END = 0x0C00
GICD_SGIR = 0x0F00  # IHI 0069 12.9 GICD_SGIR: RES0 with affinity routing
GICD_IROUTER = 0x6000  # IHI 0069 12.9 GICD_IROUTER<n> at 0x6000 + 8n, n = 32..1019
GICD_IROUTER_END = 0x7FE0
GICD_PIDR2 = 0xFFE8  # IHI 0069 12.9 GICD_PIDR2 (identification registers)

# GICD_CTLR bits, single Security state view (IHI 0069 12.9 GICD_CTLR, DS = 1).
GICD_CTLR_ENABLE_GRP1 = 1 << 1  # EnableGrp1 (EnableGrp1NS / EnableGrp1A in the 2-state views)
GICD_CTLR_ARE = 1 << 4  # ARE (ARE_NS in the 2-state views): RAO/WI
GICD_CTLR_DS = 1 << 6  # DS: RAO/WI, one Security state

# GICD_TYPER fields (IHI 0069 12.9 GICD_TYPER).
GICD_TYPER_IDBITS_SHIFT = 19  # IDbits [23:19]: INTID bits - 1
GICD_TYPER_RSS = 1 << 26  # SGI target Aff0 0-255 via ICC_SGI1R_EL1.RS
INTID_BITS = 16

# GICD_IROUTER<n> fields (IHI 0069 12.9 GICD_IROUTER<n>).
IROUTER_IRM = 1 << 31  # 1 of N routing
IROUTER_AFF_MASK = 0xFF_00FF_FFFF  # Aff3 [39:32], Aff2 [23:16], Aff1 [15:8], Aff0 [7:0]
IROUTER_WRITABLE = IROUTER_AFF_MASK | IROUTER_IRM

# Identification (IHI 0069 12.9 GICD_IIDR and GICD_PIDR2): implementer Arm (JEP106 0x43B), product 0.
IIDR_VALUE = 0x0000_043B
PIDR2_VALUE = 0x3B  # ArchRev [7:4] = 3 (GICv3), JEDEC [3] = 1, DES_1 [2:0] = 3

# --- Redistributor (IHI 0069 12.10 RD_base, 12.11 SGI_base) --------------------------------------
GICR_SGI_BASE = 0x1_0000  # SGI_base frame, 64 KiB after RD_base
GICR_CTLR = 0x0000  # IHI 0069 12.10 GICR_CTLR (no LPIs: RAZ/WI)
GICR_IIDR = 0x0004  # IHI 0069 12.10 GICR_IIDR
GICR_TYPER = 0x0008  # IHI 0069 12.10 GICR_TYPER (64-bit)
GICR_WAKER = 0x0014  # IHI 0069 12.10 GICR_WAKER
GICR_PIDR2 = 0xFFE8  # IHI 0069 12.10 GICR_PIDR2 (identification registers)

GICR_TYPER_LAST = 1 << 4  # IHI 0069 12.10 GICR_TYPER.Last
GICR_TYPER_PROCNUM_SHIFT = 8  # Processor_Number [23:8]
GICR_TYPER_AFF_SHIFT = 32  # Affinity_Value [63:32] = Aff3.Aff2.Aff1.Aff0

GICR_WAKER_PROCESSOR_SLEEP = 1 << 1  # IHI 0069 12.10 GICR_WAKER.ProcessorSleep
GICR_WAKER_CHILDREN_ASLEEP = 1 << 2  # GICR_WAKER.ChildrenAsleep (RO)

# --- Register bank shared by GICD and GICR SGI_base (IHI 0069 12.9 / 12.11, same offsets) ---------
IGROUPR = 0x0080  # 1 bit per INTID, RAO/WI here (all Group 1)
ISENABLER = 0x0100  # 1 bit per INTID, write 1 to enable
ICENABLER = 0x0180  # 1 bit per INTID, write 1 to disable
ISPENDR = 0x0200  # 1 bit per INTID, write 1 to set the pending latch
ICPENDR = 0x0280  # 1 bit per INTID, write 1 to clear the pending latch
ISACTIVER = 0x0300  # 1 bit per INTID, write 1 to activate
ICACTIVER = 0x0380  # 1 bit per INTID, write 1 to deactivate
IPRIORITYR = 0x0400  # 8 bits per INTID, byte-accessible
ICFGR = 0x0C00  # 2 bits per INTID: Int_config[1] = 1 edge-triggered, 0 level-sensitive
IGRPMODR = 0x0D00  # 1 bit per INTID, RAZ/WI (no Secure groups)
NSACR = 0x0E00  # 2 bits per INTID, RAZ/WI
BIT_ARRAY_BYTES = 0x80  # 1024 INTIDs / 8
PRIORITY_ARRAY_BYTES = 0x400
CFG_ARRAY_BYTES = 0x100
_SGI_CONFIG_EDGE = (1 << NUM_SGIS) - 1  # SGIs: ICFGR0 reads 0xAAAAAAAA, not writable

# --- CPU interface register fields (IHI 0069 12.2) ------------------------------------------------
ICC_SRE_VALUE = 0x7  # IHI 0069 12.2 ICC_SRE_EL1: SRE, DFB, DIB all RAO/WI
ICC_CTLR_EOIMODE = 1 << 1  # IHI 0069 12.2 ICC_CTLR_EL1.EOImode
ICC_CTLR_PRIBITS_SHIFT = 8  # PRIbits [10:8] = priority bits - 1
ICC_CTLR_RSS = 1 << 18  # RSS: SGI Aff0 targets 0-255
ICC_IGRPEN1_ENABLE = 1 << 0  # IHI 0069 12.2 ICC_IGRPEN1_EL1.Enable
INTID_FIELD_MASK = (1 << 24) - 1  # INTID field [23:0] of IAR/EOIR/DIR/HPPIR
# ICC_SGI1R_EL1 fields (IHI 0069 12.2 ICC_SGI1R_EL1).
SGI1R_TARGETLIST_MASK = 0xFFFF  # [15:0]
SGI1R_AFF1_SHIFT = 16  # Aff1 [23:16]
SGI1R_INTID_SHIFT = 24  # INTID [27:24]
SGI1R_AFF2_SHIFT = 32  # Aff2 [39:32]
SGI1R_IRM = 1 << 40  # 1: all PEs but self
SGI1R_RS_SHIFT = 44  # RS [47:44]: TargetList covers Aff0 16*RS .. 16*RS + 15
SGI1R_AFF3_SHIFT = 48  # Aff3 [55:48]

_ICC_REGS = frozenset(
    {
        sysreg.ICC_SRE_EL1,
        sysreg.ICC_CTLR_EL1,
        sysreg.ICC_PMR_EL1,
        sysreg.ICC_BPR1_EL1,
        sysreg.ICC_IGRPEN1_EL1,
        sysreg.ICC_IAR1_EL1,
        sysreg.ICC_EOIR1_EL1,
        sysreg.ICC_DIR_EL1,
        sysreg.ICC_HPPIR1_EL1,
        sysreg.ICC_RPR_EL1,
        sysreg.ICC_AP1R0_EL1,
        sysreg.ICC_SGI1R_EL1,
    }
)


# --- State ------------------------------------------------------------------------------------
# Limits declared on the state types are checked when a snapshot is decoded (snapshot.plain).
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


def _assign_bank(dst: IrqBankState, src: IrqBankState) -> None:
    dst.enabled[:] = src.enabled
    dst.pending_latch[:] = src.pending_latch
    dst.active[:] = src.active
    dst.line_level[:] = src.line_level
    dst.edge[:] = src.edge
    dst.priority[:] = src.priority


def _copy_bank(b: IrqBankState) -> IrqBankState:
    return IrqBankState(b.enabled[:], b.pending_latch[:], b.active[:], b.line_level[:], b.edge[:], b.priority[:])


def _copy_state(s: Gicv3State) -> Gicv3State:
    """An independent copy of `s` (every leaf is an int or bool): a deep copy, written out
    because `copy.deepcopy` costs ~20x more and in-process reset restores the GIC every time."""
    d = s.distributor
    return Gicv3State(
        num_vcpus=s.num_vcpus,
        num_spis=s.num_spis,
        distributor=DistributorState(d.enable_grp1, _copy_bank(d.spis), d.irouter[:]),
        redistributors=[RedistributorState(r.processor_sleep, _copy_bank(r.private)) for r in s.redistributors],
        cpu_interfaces=[CpuInterfaceState(c.pmr, c.bpr1, c.eoimode, c.igrpen1, c.ap1r0) for c in s.cpu_interfaces],
    )


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


class _BadAccess(Exception):
    """Internal: the access hits no register, or a register with the wrong size/alignment."""


RESERVED = "reserved"
BAD_SIZE = "unsupported access size"


def _require(ok: bool) -> None:
    if not ok:
        raise _BadAccess(BAD_SIZE)


def _read64(value: int, offset_in_reg: int, size: int) -> int:
    """A 64-bit register read whole (8 bytes) or as either 32-bit half."""
    if size == 8 and offset_in_reg == 0:
        return value
    _require(size == 4 and offset_in_reg in (0, 4))
    return (value >> (8 * offset_in_reg)) & MASK32


def _write64(old: int, offset_in_reg: int, size: int, value: int) -> int:
    """`old` with a whole (8-byte) or half (4-byte) write merged in."""
    if size == 8 and offset_in_reg == 0:
        return value & MASK64
    _require(size == 4 and offset_in_reg in (0, 4))
    shift = 8 * offset_in_reg
    return (old & ~(MASK32 << shift)) | ((value & MASK32) << shift)


def _bits(word: int) -> Iterator[int]:
    """Bit positions set in `word`, lowest first."""
    while word:
        low = word & -word
        yield low.bit_length() - 1
        word ^= low


# --- The register bank shared by GICD and GICR SGI_base ----------------------------------------------
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
            for b in _bits(s.enabled[w] & self.pending_word(w) & ~s.active[w]):
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
            _require(size == 4 and offset % 4 == 0)
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
            _require(size in (1, 4) and offset % size == 0)
            value = 0
            for i in range(size):
                intid = offset - IPRIORITYR + i
                if self.contains(intid):
                    value |= self.priority(intid) << (8 * i)
            return value
        if ICFGR <= offset < ICFGR + CFG_ARRAY_BYTES:
            _require(size == 4 and offset % 4 == 0)
            value = 0
            first = (offset - ICFGR) * 4  # 16 INTIDs per register
            for i in range(16):
                if self.contains(first + i):
                    w, bit = self._loc(first + i)
                    value |= (2 if s.edge[w] & bit else 0) << (2 * i)
            return value
        if IGRPMODR <= offset < IGRPMODR + BIT_ARRAY_BYTES or NSACR <= offset < NSACR + CFG_ARRAY_BYTES:
            _require(size == 4 and offset % 4 == 0)
            return 0
        return None

    def write(self, offset: int, size: int, value: int) -> bool:
        """Store to the bank register at `offset`; False if `offset` is not a bank register."""
        s = self.s
        if IGROUPR <= offset < IPRIORITYR:
            _require(size == 4 and offset % 4 == 0)
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
            _require(size in (1, 4) and offset % size == 0)
            for i in range(size):
                intid = offset - IPRIORITYR + i
                if self.contains(intid):
                    s.priority[intid - self.first] = (value >> (8 * i)) & PRIORITY_MASK
            return True
        if ICFGR <= offset < ICFGR + CFG_ARRAY_BYTES:
            _require(size == 4 and offset % 4 == 0)
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
            _require(size == 4 and offset % 4 == 0)
            return True
        return False


class _Window:
    """An `MmioDevice` front for one of the GIC's MMIO windows."""

    def __init__(
        self,
        read: Callable[[int, int, int], int],
        write: Callable[[int, int, int, int], None],
    ) -> None:
        self._read = read
        self._write = write

    def mmio_read(self, offset: int, size: int, vcpu: int) -> int:
        return self._read(offset, size, vcpu)

    def mmio_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        self._write(offset, size, value, vcpu)


# --- The GIC ------------------------------------------------------------------------------------
class Gicv3:
    """Distributor, one redistributor and one CPU interface per vCPU.

    MMIO: `distributor` (GICD window) and `redistributors` (the whole GICR region) are
    `MmioDevice`s. CPU interface: `handles` / `sysreg_read` / `sysreg_write` for the ICC_*
    registers. Inputs: `set_line`. Outputs, polled by the VMM: `irq_signalled`,
    `wakeup_pending`. `trace`, if set, receives a `GicAccess` for every unimplemented MMIO access.
    """

    def __init__(
        self,
        num_vcpus: int,
        num_spis: int = 64,
        trace: Callable[[GicAccess], None] | None = None,
    ) -> None:
        if not 1 <= num_vcpus <= MAX_VCPUS:
            raise ValueError(f"num_vcpus must be 1..{MAX_VCPUS}, got {num_vcpus}")
        if num_spis % 32 or not 0 <= num_spis <= MAX_SPIS:
            raise ValueError(f"num_spis must be a multiple of 32 in 0..{MAX_SPIS}, got {num_spis}")
        self.num_vcpus = num_vcpus
        self.num_spis = num_spis
        self.trace = trace
        self.distributor = _Window(self._gicd_read, self._gicd_write)
        self.redistributors = _Window(self._gicr_read, self._gicr_write)
        self._install(
            Gicv3State(
                num_vcpus=num_vcpus,
                num_spis=num_spis,
                distributor=DistributorState(False, IrqBankState.reset(num_spis), [0] * num_spis),
                redistributors=[
                    RedistributorState(True, IrqBankState.reset(NUM_PRIVATE, _SGI_CONFIG_EDGE))
                    for _ in range(num_vcpus)
                ],
                cpu_interfaces=[CpuInterfaceState() for _ in range(num_vcpus)],
            )
        )

    def _install(self, state: Gicv3State) -> None:
        self._s = state
        self._spis = IrqBank(state.distributor.spis, SPI_FIRST)
        self._private = [IrqBank(r.private, 0, _SGI_CONFIG_EDGE) for r in state.redistributors]

    # --- inputs ------------------------------------------------------------------------------
    def set_line(self, intid: int, level: bool, vcpu: int | None = None) -> None:
        """Drive the input line of a PPI (`vcpu` required) or an SPI (`vcpu` must be None).

        SGIs have no line: they come from ICC_SGI1R_EL1 or GICR_ISPENDR0.
        """
        if NUM_SGIS <= intid < NUM_PRIVATE:
            if vcpu is None or not 0 <= vcpu < self.num_vcpus:
                raise ValueError(f"PPI {intid} needs a vCPU index in 0..{self.num_vcpus - 1}, got {vcpu}")
            self._private[vcpu].set_line(intid, level)
        elif self._spis.contains(intid):
            if vcpu is not None:
                raise ValueError(f"SPI {intid} is routed by GICD_IROUTER; do not pass a vCPU")
            self._spis.set_line(intid, level)
        else:
            raise ValueError(f"INTID {intid} has no input line (PPIs 16-31, SPIs 32-{SPI_FIRST + self.num_spis - 1})")

    # --- outputs -----------------------------------------------------------------------------
    def irq_signalled(self, vcpu: int) -> bool:
        """True if vCPU `vcpu`'s IRQ line is asserted: ICC_IAR1_EL1 would return an INTID now.

        PSTATE.I is the VMM's business; this is the line the CPU interface drives.
        """
        return self._signalled(vcpu) is not None

    def wakeup_pending(self, vcpu: int) -> bool:
        """True if a WFI on `vcpu` should complete: an IRQ is signalled, whatever PSTATE.I says.

        DDI 0487 ("Wait For Interrupt", WFI wake-up events) counts an IRQ regardless of PSTATE.I; the GIC's
        IRQ output already applies PMR, running priority and group enables, so in this model
        this equals `irq_signalled` (no WakeRequest for sleeping redistributors).
        """
        return self.irq_signalled(vcpu)

    # --- routing and prioritisation ---------------------------------------------------------------
    def _participates(self, vcpu: int) -> bool:
        """Whether `vcpu` can be chosen for a 1-of-N SPI (GICD_CTLR.E1NWF is RAZ/WI)."""
        return not self._s.redistributors[vcpu].processor_sleep and self._s.cpu_interfaces[vcpu].igrpen1

    def spi_target(self, intid: int) -> int | None:
        """The vCPU an SPI is currently routed to by GICD_IROUTER, or None if none."""
        route = self._s.distributor.irouter[intid - SPI_FIRST]
        if route & IROUTER_IRM:
            return next((v for v in range(self.num_vcpus) if self._participates(v)), None)
        aff0 = route & 0xFF
        if route & IROUTER_AFF_MASK & ~0xFF or aff0 >= self.num_vcpus:
            return None
        return aff0

    def _bank_for(self, intid: int, vcpu: int) -> IrqBank:
        return self._private[vcpu] if intid < NUM_PRIVATE else self._spis

    def _hppi(self, vcpu: int) -> tuple[int, int] | None:
        """(INTID, priority) the redistributor forwards to `vcpu`, or None.

        Candidates are scanned in INTID order and only a strictly higher priority replaces the
        best so far, so ties go to the lowest INTID.
        """
        s = self._s
        if not s.distributor.enable_grp1 or s.redistributors[vcpu].processor_sleep:
            return None
        best: tuple[int, int] | None = None
        for bank, routed in ((self._private[vcpu], False), (self._spis, True)):
            for intid in bank.forwardable():
                if routed and self.spi_target(intid) != vcpu:
                    continue
                prio = bank.priority(intid)
                if best is None or prio < best[1]:
                    best = (intid, prio)
        return best

    @staticmethod
    def _group_priority(priority: int, bpr1: int) -> int:
        """Group priority: the bits of `priority` above the binary point (IHI 0069 4.8)."""
        return priority & (0xFF << bpr1) & 0xFF

    def running_priority(self, vcpu: int) -> int:
        """ICC_RPR_EL1: highest active group priority, IDLE_PRIORITY (0xFF) when none."""
        ap = self._s.cpu_interfaces[vcpu].ap1r0
        if not ap:
            return IDLE_PRIORITY
        return ((ap & -ap).bit_length() - 1) << PREEMPTION_SHIFT

    def _signalled(self, vcpu: int) -> tuple[int, int] | None:
        """The forwarded interrupt if the CPU interface signals it, else None."""
        ci = self._s.cpu_interfaces[vcpu]
        if not ci.igrpen1:
            return None
        hp = self._hppi(vcpu)
        if hp is None:
            return None
        prio = hp[1]
        if prio >= ci.pmr or self._group_priority(prio, ci.bpr1) >= self.running_priority(vcpu):
            return None
        return hp

    # --- CPU interface operations --------------------------------------------------------------
    def _acknowledge(self, vcpu: int) -> int:
        sig = self._signalled(vcpu)
        if sig is None:
            return INTID_SPURIOUS
        intid, prio = sig
        self._bank_for(intid, vcpu).acknowledge(intid)
        ci = self._s.cpu_interfaces[vcpu]
        ci.ap1r0 |= 1 << (self._group_priority(prio, ci.bpr1) >> PREEMPTION_SHIFT)
        return intid

    def _implemented(self, intid: int) -> bool:
        return intid < NUM_PRIVATE or self._spis.contains(intid)

    def _end_of_interrupt(self, vcpu: int, value: int) -> None:
        intid = value & INTID_FIELD_MASK
        if not self._implemented(intid):
            return
        ci = self._s.cpu_interfaces[vcpu]
        ci.ap1r0 &= ci.ap1r0 - 1  # priority drop: clear the highest active priority
        if not ci.eoimode:
            self._bank_for(intid, vcpu).deactivate(intid)

    def _deactivate(self, vcpu: int, value: int) -> None:
        intid = value & INTID_FIELD_MASK
        if self._s.cpu_interfaces[vcpu].eoimode and self._implemented(intid):
            self._bank_for(intid, vcpu).deactivate(intid)

    def _generate_sgi(self, vcpu: int, value: int) -> None:
        """ICC_SGI1R_EL1: pend SGI INTID on the targets (vCPU v has affinity 0.0.0.v)."""
        intid = (value >> SGI1R_INTID_SHIFT) & 0xF
        if value & SGI1R_IRM:
            targets = [v for v in range(self.num_vcpus) if v != vcpu]
        else:
            upper = (value >> SGI1R_AFF1_SHIFT) & 0xFF, (value >> SGI1R_AFF2_SHIFT) & 0xFF, (value >> SGI1R_AFF3_SHIFT) & 0xFF
            if any(upper):
                return
            base = 16 * ((value >> SGI1R_RS_SHIFT) & 0xF)
            targets = [base + b for b in _bits(value & SGI1R_TARGETLIST_MASK) if base + b < self.num_vcpus]
        for v in targets:
            self._private[v].set_pending(intid)

    def handles(self, reg: SysReg) -> bool:
        """True if `reg` is one of the CPU interface registers this model implements."""
        return reg in _ICC_REGS

    def _check_vcpu(self, vcpu: int) -> None:
        if not 0 <= vcpu < self.num_vcpus:
            raise ValueError(f"vCPU index {vcpu} out of range 0..{self.num_vcpus - 1}")

    def sysreg_read(self, vcpu: int, reg: SysReg) -> int:
        """MRS of ICC register `reg` on `vcpu`. Reading ICC_IAR1_EL1 acknowledges.

        Write-only registers (EOIR1, DIR, SGI1R) read 0.
        """
        self._check_vcpu(vcpu)
        ci = self._s.cpu_interfaces[vcpu]
        if reg == sysreg.ICC_IAR1_EL1:
            return self._acknowledge(vcpu)
        if reg == sysreg.ICC_HPPIR1_EL1:
            hp = self._hppi(vcpu)
            return INTID_SPURIOUS if hp is None else hp[0]
        if reg == sysreg.ICC_RPR_EL1:
            return self.running_priority(vcpu)
        if reg == sysreg.ICC_PMR_EL1:
            return ci.pmr
        if reg == sysreg.ICC_BPR1_EL1:
            return ci.bpr1
        if reg == sysreg.ICC_IGRPEN1_EL1:
            return ICC_IGRPEN1_ENABLE if ci.igrpen1 else 0
        if reg == sysreg.ICC_AP1R0_EL1:
            return ci.ap1r0
        if reg == sysreg.ICC_CTLR_EL1:
            eoimode = ICC_CTLR_EOIMODE if ci.eoimode else 0
            return eoimode | ((PRIORITY_BITS - 1) << ICC_CTLR_PRIBITS_SHIFT) | ICC_CTLR_RSS
        if reg == sysreg.ICC_SRE_EL1:
            return ICC_SRE_VALUE
        if reg in _ICC_REGS:
            return 0  # write-only
        raise ValueError(f"{sysreg.sysreg_name(reg)} is not a GIC CPU interface register")

    def sysreg_write(self, vcpu: int, reg: SysReg, value: int) -> None:
        """MSR of `value` to ICC register `reg` on `vcpu`. Writes to read-only registers are ignored."""
        self._check_vcpu(vcpu)
        ci = self._s.cpu_interfaces[vcpu]
        if reg == sysreg.ICC_EOIR1_EL1:
            self._end_of_interrupt(vcpu, value)
        elif reg == sysreg.ICC_DIR_EL1:
            self._deactivate(vcpu, value)
        elif reg == sysreg.ICC_SGI1R_EL1:
            self._generate_sgi(vcpu, value)
        elif reg == sysreg.ICC_PMR_EL1:
            ci.pmr = value & PRIORITY_MASK
        elif reg == sysreg.ICC_BPR1_EL1:
            ci.bpr1 = max(value & 7, BPR1_MIN)
        elif reg == sysreg.ICC_IGRPEN1_EL1:
            ci.igrpen1 = bool(value & ICC_IGRPEN1_ENABLE)
        elif reg == sysreg.ICC_AP1R0_EL1:
            ci.ap1r0 = value & MASK32
        elif reg == sysreg.ICC_CTLR_EL1:
            ci.eoimode = bool(value & ICC_CTLR_EOIMODE)
        elif reg not in _ICC_REGS:
            raise ValueError(f"{sysreg.sysreg_name(reg)} is not a GIC CPU interface register")

    # --- MMIO: distributor ------------------------------------------------------------------------
    def _typer(self) -> int:
        return (
            GICD_TYPER_RSS
            | ((INTID_BITS - 1) << GICD_TYPER_IDBITS_SHIFT)
            | (self.num_spis // 32)  # ITLinesNumber: SPIs up to 32 * (N + 1) - 1
        )

    def _gicd_read(self, offset: int, size: int, vcpu: int) -> int:
        try:
            return self._gicd_read_reg(offset, size)
        except _BadAccess as e:
            self._report("GICD", offset, size, False, 0, vcpu, str(e))
            return 0

    def _gicd_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        try:
            self._gicd_write_reg(offset, size, value)
        except _BadAccess as e:
            self._report("GICD", offset, size, True, value, vcpu, str(e))

    def _gicd_read_reg(self, offset: int, size: int) -> int:
        d = self._s.distributor
        value = self._spis.read(offset, size)
        if value is not None:
            return value
        if GICD_IROUTER <= offset < GICD_IROUTER_END:
            intid, off = divmod(offset - GICD_IROUTER, 8)
            route = d.irouter[intid - SPI_FIRST] if self._spis.contains(intid) else 0
            return _read64(route, off, size)
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
            _require(size == 4)
            return fixed[offset]
        if GICD_ITARGETSR <= offset < GICD_ITARGETSR_END:
            _require(size in (1, 4) and offset % size == 0)
            return 0
        raise _BadAccess(RESERVED)

    def _gicd_write_reg(self, offset: int, size: int, value: int) -> None:
        d = self._s.distributor
        if self._spis.write(offset, size, value):
            return
        if GICD_IROUTER <= offset < GICD_IROUTER_END:
            intid, off = divmod(offset - GICD_IROUTER, 8)
            if self._spis.contains(intid):
                i = intid - SPI_FIRST
                d.irouter[i] = _write64(d.irouter[i], off, size, value) & IROUTER_WRITABLE
            else:
                _write64(0, off, size, value)  # size check only
            return
        if offset == GICD_CTLR:
            _require(size == 4)
            d.enable_grp1 = bool(value & GICD_CTLR_ENABLE_GRP1)
            return
        if offset in (GICD_TYPER, GICD_IIDR, GICD_TYPER2, GICD_STATUSR, GICD_SGIR, GICD_PIDR2):
            _require(size == 4)
            return  # read-only, or RES0 with affinity routing
        if GICD_ITARGETSR <= offset < GICD_ITARGETSR_END:
            _require(size in (1, 4) and offset % size == 0)
            return
        raise _BadAccess(RESERVED)

    # --- MMIO: redistributors -----------------------------------------------------------------------
    def _gicr_typer(self, index: int) -> int:
        last = GICR_TYPER_LAST if index == self.num_vcpus - 1 else 0
        return (index << GICR_TYPER_AFF_SHIFT) | (index << GICR_TYPER_PROCNUM_SHIFT) | last

    def _gicr_locate(self, offset: int) -> tuple[int, int]:
        """(redistributor index, offset within its 128 KiB frame pair)."""
        index, off = divmod(offset, GICR_STRIDE)
        if index >= self.num_vcpus:
            raise _BadAccess(RESERVED)
        return index, off

    def _gicr_read(self, offset: int, size: int, vcpu: int) -> int:
        try:
            index, off = self._gicr_locate(offset)
            if off >= GICR_SGI_BASE:
                value = self._private[index].read(off - GICR_SGI_BASE, size)
                if value is None:
                    raise _BadAccess(RESERVED)
                return value
            return self._gicr_rd_read(index, off, size)
        except _BadAccess as e:
            self._report("GICR", offset, size, False, 0, vcpu, str(e))
            return 0

    def _gicr_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        try:
            index, off = self._gicr_locate(offset)
            if off >= GICR_SGI_BASE:
                if not self._private[index].write(off - GICR_SGI_BASE, size, value):
                    raise _BadAccess(RESERVED)
                return
            self._gicr_rd_write(index, off, size, value)
        except _BadAccess as e:
            self._report("GICR", offset, size, True, value, vcpu, str(e))

    def _gicr_rd_read(self, index: int, off: int, size: int) -> int:
        if GICR_TYPER <= off < GICR_TYPER + 8:
            return _read64(self._gicr_typer(index), off - GICR_TYPER, size)
        if off == GICR_WAKER:
            _require(size == 4)
            asleep = self._s.redistributors[index].processor_sleep
            return (GICR_WAKER_PROCESSOR_SLEEP | GICR_WAKER_CHILDREN_ASLEEP) if asleep else 0
        fixed = {GICR_CTLR: 0, GICR_IIDR: IIDR_VALUE, GICR_PIDR2: PIDR2_VALUE}
        if off in fixed:
            _require(size == 4)
            return fixed[off]
        raise _BadAccess(RESERVED)

    def _gicr_rd_write(self, index: int, off: int, size: int, value: int) -> None:
        if GICR_TYPER <= off < GICR_TYPER + 8:
            _write64(0, off - GICR_TYPER, size, value)  # read-only; size check only
            return
        if off == GICR_WAKER:
            _require(size == 4)
            self._s.redistributors[index].processor_sleep = bool(value & GICR_WAKER_PROCESSOR_SLEEP)
            return
        if off in (GICR_CTLR, GICR_IIDR, GICR_PIDR2):
            _require(size == 4)
            return
        raise _BadAccess(RESERVED)

    def _report(self, frame: str, offset: int, size: int, write: bool, value: int, vcpu: int, reason: str) -> None:
        if self.trace is not None:
            self.trace(GicAccess(frame, offset, size, write, value, vcpu, reason))

    # --- snapshot ---------------------------------------------------------------------------------
    def save_state(self) -> Gicv3State:
        """A deep copy of the GIC's state; later activity does not change it."""
        return _copy_state(self._s)

    def rollback(self, state: Gicv3State) -> None:
        """Return to `state`, saved earlier by this GIC: `restore_state` without its checks
        and without allocating (the values are copied into the current state, for
        in-process reset). Unchanged after a ValueError for a GIC of another shape."""
        s = self._s
        if state.num_vcpus != s.num_vcpus or state.num_spis != s.num_spis:
            raise ValueError("GIC rollback to a state saved from a GIC of another shape")
        s.distributor.enable_grp1 = state.distributor.enable_grp1
        s.distributor.irouter[:] = state.distributor.irouter
        _assign_bank(s.distributor.spis, state.distributor.spis)
        for dst, src in zip(s.redistributors, state.redistributors):
            dst.processor_sleep = src.processor_sleep
            _assign_bank(dst.private, src.private)
        for ci, saved in zip(s.cpu_interfaces, state.cpu_interfaces):
            ci.pmr = saved.pmr
            ci.bpr1 = saved.bpr1
            ci.eoimode = saved.eoimode
            ci.igrpen1 = saved.igrpen1
            ci.ap1r0 = saved.ap1r0

    def restore_state(self, state: Gicv3State) -> None:
        """Replace the GIC's state with a copy of `state`.

        Raises ValueError if `state` was saved from a GIC with a different vCPU or SPI count,
        or its lists have the wrong lengths; the GIC is unchanged in that case.
        """
        if state.num_vcpus != self.num_vcpus:
            raise ValueError(
                f"GIC state is for {state.num_vcpus} vCPU(s) but this GIC has {self.num_vcpus}"
            )
        if state.num_spis != self.num_spis:
            raise ValueError(f"GIC state has {state.num_spis} SPIs but this GIC has {self.num_spis}")
        if len(state.redistributors) != self.num_vcpus or len(state.cpu_interfaces) != self.num_vcpus:
            raise ValueError("GIC state: redistributor/CPU interface lists do not match num_vcpus")
        banks = [(state.distributor.spis, self.num_spis)] + [(r.private, NUM_PRIVATE) for r in state.redistributors]
        for bank, count in banks:
            lists = (bank.enabled, bank.pending_latch, bank.active, bank.line_level, bank.edge)
            if len(bank.priority) != count or any(len(x) != count // 32 for x in lists):
                raise ValueError(f"GIC state: an interrupt bank has the wrong size (expected {count} INTIDs)")
        if len(state.distributor.irouter) != self.num_spis:
            raise ValueError(f"GIC state: expected {self.num_spis} GICD_IROUTER values")
        self._install(_copy_state(state))
