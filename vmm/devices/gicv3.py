"""`Gicv3`: the GICv3 interrupt controller of the microVM, as far as a Non-secure EL1 guest can tell.

Source: Arm Generic Interrupt Controller Architecture Specification, GIC architecture version
3 and 4, IHI 0069 (chapter 4 "Physical Interrupt Handling and Prioritization", chapter 12
"Programmers' Model": 12.9 GICD_*, 12.10/12.11 GICR_* RD_base/SGI_base, 12.2 ICC_*).

`Gicv3` composes the parts in `vmm.devices.gic` (the register map, the plain state, the
interrupt bank, the GICD and GICR windows, the per-vCPU CPU interface) and does what spans
them: input lines, SPI routing, the interrupt each redistributor forwards, and save/restore.
This module re-exports the parts' public names.

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

from typing import Callable

# This module names the whole GIC: besides `Gicv3` it re-exports the register map and the
# parts' public names (`from vmm.devices.gicv3 import GICD_CTLR, Gicv3State` keeps working).
from vmm.devices.gic.bank import IrqBank
from vmm.devices.gic.cpu_interface import ICC_GROUP0_REGS, ICC_REGS, CpuInterface, handles  # noqa: F401
from vmm.devices.gic.distributor import Distributor
from vmm.devices.gic.mmio import BAD_SIZE, RESERVED, GicAccess  # noqa: F401
from vmm.devices.gic.redistributor import Redistributors
from vmm.devices.gic.registers import *  # noqa: F403
from vmm.devices.gic.registers import IROUTER_AFF_MASK, IROUTER_IRM, MAX_SPIS, NUM_PRIVATE, NUM_SGIS, SPI_FIRST
from vmm.devices.gic.state import (  # noqa: F401
    CpuInterfaceState,
    DistributorState,
    Gicv3State,
    IrqBankState,
    RedistributorState,
)
from vmm.layout import MAX_VCPUS
from vmm.sysreg import SysReg


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
        state = Gicv3State.reset(num_vcpus, num_spis)
        # The windows stay the same objects for the GIC's life (the MMIO bus holds them).
        self.distributor = Distributor(state.distributor, self._report)
        self.redistributors = Redistributors(state.redistributors, self._report)
        self._install(state)

    def _install(self, state: Gicv3State) -> None:
        """Make `state` (of this GIC's shape) the live state of every part."""
        self._s = state
        self.distributor.bind(state.distributor)
        self.redistributors.bind(state.redistributors)
        self._cpus = [CpuInterface(ci, v, self) for v, ci in enumerate(state.cpu_interfaces)]

    def _report(self, access: GicAccess) -> None:
        if self.trace is not None:
            self.trace(access)

    # --- inputs ------------------------------------------------------------------------------
    def set_line(self, intid: int, level: bool, vcpu: int | None = None) -> None:
        """Drive the input line of a PPI (`vcpu` required) or an SPI (`vcpu` must be None).

        SGIs have no line: they come from ICC_SGI1R_EL1 or GICR_ISPENDR0.
        """
        spis = self.distributor.spis
        if NUM_SGIS <= intid < NUM_PRIVATE:
            if vcpu is None or not 0 <= vcpu < self.num_vcpus:
                raise ValueError(f"PPI {intid} needs a vCPU index in 0..{self.num_vcpus - 1}, got {vcpu}")
            self.redistributors.banks[vcpu].set_line(intid, level)
        elif spis.contains(intid):
            if vcpu is not None:
                raise ValueError(f"SPI {intid} is routed by GICD_IROUTER; do not pass a vCPU")
            spis.set_line(intid, level)
        else:
            raise ValueError(f"INTID {intid} has no input line (PPIs 16-31, SPIs 32-{SPI_FIRST + self.num_spis - 1})")

    # --- outputs -----------------------------------------------------------------------------
    def irq_signalled(self, vcpu: int) -> bool:
        """True if vCPU `vcpu`'s IRQ line is asserted: ICC_IAR1_EL1 would return an INTID now.

        PSTATE.I is the VMM's business; this is the line the CPU interface drives.
        """
        return self._cpus[vcpu].signalled() is not None

    def wakeup_pending(self, vcpu: int) -> bool:
        """True if a WFI on `vcpu` should complete: an IRQ is signalled, whatever PSTATE.I says.

        DDI 0487 ("Wait For Interrupt", WFI wake-up events) counts an IRQ regardless of PSTATE.I; the GIC's
        IRQ output already applies PMR, running priority and group enables, so in this model
        this equals `irq_signalled` (no WakeRequest for sleeping redistributors).
        """
        return self.irq_signalled(vcpu)

    # --- routing and prioritisation (what a CpuInterface asks: cpu_interface.Forwarding) --------
    def _participates(self, vcpu: int) -> bool:
        """Whether `vcpu` can be chosen for a 1-of-N SPI (GICD_CTLR.E1NWF is RAZ/WI)."""
        return not self.redistributors.asleep(vcpu) and self._s.cpu_interfaces[vcpu].igrpen1

    def spi_target(self, intid: int) -> int | None:
        """The vCPU an SPI is currently routed to by GICD_IROUTER, or None if none."""
        route = self.distributor.route(intid)
        if route & IROUTER_IRM:
            return next((v for v in range(self.num_vcpus) if self._participates(v)), None)
        aff0 = route & 0xFF
        if route & IROUTER_AFF_MASK & ~0xFF or aff0 >= self.num_vcpus:
            return None
        return aff0

    def implemented(self, intid: int) -> bool:
        """Whether `intid` is an SGI, a PPI or one of this GIC's SPIs."""
        return intid < NUM_PRIVATE or self.distributor.spis.contains(intid)

    def bank_for(self, intid: int, vcpu: int) -> IrqBank:
        """The bank holding implemented `intid` as `vcpu` sees it (its own SGIs and PPIs)."""
        return self.redistributors.banks[vcpu] if intid < NUM_PRIVATE else self.distributor.spis

    def highest_pending(self, vcpu: int) -> tuple[int, int] | None:
        """(INTID, priority) the redistributor forwards to `vcpu`, or None.

        Candidates are scanned in INTID order and only a strictly higher priority replaces the
        best so far, so ties go to the lowest INTID.
        """
        if not self._s.distributor.enable_grp1 or self.redistributors.asleep(vcpu):
            return None
        best: tuple[int, int] | None = None
        for bank, routed in ((self.redistributors.banks[vcpu], False), (self.distributor.spis, True)):
            for intid in bank.forwardable():
                if routed and self.spi_target(intid) != vcpu:
                    continue
                prio = bank.priority(intid)
                if best is None or prio < best[1]:
                    best = (intid, prio)
        return best

    def running_priority(self, vcpu: int) -> int:
        """ICC_RPR_EL1 of `vcpu`: highest active group priority, 0xFF when none."""
        return self._cpus[vcpu].running_priority()

    # --- CPU interface ---------------------------------------------------------------------------
    def handles(self, reg: SysReg) -> bool:
        """True if `reg` is one of the CPU interface registers this model implements."""
        return handles(reg)

    def _cpu(self, vcpu: int) -> CpuInterface:
        if not 0 <= vcpu < self.num_vcpus:
            raise ValueError(f"vCPU index {vcpu} out of range 0..{self.num_vcpus - 1}")
        return self._cpus[vcpu]

    def sysreg_read(self, vcpu: int, reg: SysReg) -> int:
        """MRS of ICC register `reg` on `vcpu`. Reading ICC_IAR1_EL1 acknowledges.

        Write-only registers (EOIR1, DIR, SGI1R) read 0.
        """
        return self._cpu(vcpu).read(reg)

    def sysreg_write(self, vcpu: int, reg: SysReg, value: int) -> None:
        """MSR of `value` to ICC register `reg` on `vcpu`. Writes to read-only registers are ignored."""
        self._cpu(vcpu).write(reg, value)

    # --- snapshot ---------------------------------------------------------------------------------
    def save_state(self) -> Gicv3State:
        """A deep copy of the GIC's state; later activity does not change it."""
        return self._s.copy()

    def rollback(self, state: Gicv3State) -> None:
        """Return to `state`, saved earlier by this GIC: `restore_state` without its checks
        and without allocating (the values are copied into the current state, for
        in-process reset). Unchanged after a ValueError for a GIC of another shape."""
        self._s.assign(state)

    def restore_state(self, state: Gicv3State) -> None:
        """Replace the GIC's state with a copy of `state`.

        Raises ValueError if `state` was saved from a GIC with a different vCPU or SPI count,
        or its lists have the wrong lengths; the GIC is unchanged in that case.
        """
        state.check_shape(self.num_vcpus, self.num_spis)
        self._install(state.copy())
