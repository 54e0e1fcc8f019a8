"""`CpuInterface`: one vCPU's GIC CPU interface, the ICC_* system registers (IHI 0069 12.2):
acknowledge (IAR1), priority drop and deactivation (EOIR1, DIR), SGI generation (SGI1R),
priority mask, binary point and running priority (PMR, BPR1, RPR, AP1R0).

It signals an IRQ when its redistributor forwards an interrupt whose priority is higher than
PMR and whose group priority is higher than the running priority (IHI 0069 4.8).
"""
from __future__ import annotations

from typing import Protocol

from vmm import sysreg
from vmm.devices.gic.bank import IrqBank, bit_positions
from vmm.devices.gic.registers import (
    BPR1_MIN,
    ICC_CTLR_EOIMODE,
    ICC_CTLR_PRIBITS_SHIFT,
    ICC_CTLR_RSS,
    ICC_IGRPEN1_ENABLE,
    ICC_SRE_VALUE,
    IDLE_PRIORITY,
    INTID_FIELD_MASK,
    INTID_SPURIOUS,
    MASK32,
    PREEMPTION_SHIFT,
    PRIORITY_BITS,
    PRIORITY_MASK,
    SGI1R_AFF1_SHIFT,
    SGI1R_AFF2_SHIFT,
    SGI1R_AFF3_SHIFT,
    SGI1R_INTID_SHIFT,
    SGI1R_IRM,
    SGI1R_RS_SHIFT,
    SGI1R_TARGETLIST_MASK,
)
from vmm.devices.gic.state import CpuInterfaceState
from vmm.sysreg import SysReg

ICC_REGS = frozenset(
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
# Group 0 (and the other-security-state SGI alias): RAZ/WI, IAR0/HPPIR0 read spurious.
ICC_GROUP0_REGS = frozenset(
    {
        sysreg.ICC_IAR0_EL1,
        sysreg.ICC_EOIR0_EL1,
        sysreg.ICC_HPPIR0_EL1,
        sysreg.ICC_BPR0_EL1,
        sysreg.ICC_AP0R0_EL1,
        sysreg.ICC_ASGI1R_EL1,
        sysreg.ICC_SGI0R_EL1,
        sysreg.ICC_IGRPEN0_EL1,
    }
)


def handles(reg: SysReg) -> bool:
    """True if `reg` is one of the CPU interface registers this model implements."""
    return reg in ICC_REGS or reg in ICC_GROUP0_REGS


def _not_icc(reg: SysReg) -> ValueError:
    return ValueError(f"{sysreg.sysreg_name(reg)} is not a GIC CPU interface register")


def group_priority(priority: int, bpr1: int) -> int:
    """Group priority: the bits of `priority` above the binary point (IHI 0069 4.8)."""
    return priority & (0xFF << bpr1) & 0xFF


class Forwarding(Protocol):
    """What a CPU interface needs from the rest of the GIC (its redistributor and the
    distributor behind it); `Gicv3` provides it."""

    num_vcpus: int

    def highest_pending(self, vcpu: int) -> tuple[int, int] | None:
        """(INTID, priority) forwarded to `vcpu`, or None."""
        ...

    def implemented(self, intid: int) -> bool:
        """Whether `intid` is an SGI, a PPI or an implemented SPI."""
        ...

    def bank_for(self, intid: int, vcpu: int) -> IrqBank:
        """The bank holding implemented `intid` as `vcpu` sees it."""
        ...


class CpuInterface:
    """The ICC_* registers of vCPU `index` over its `CpuInterfaceState` (held, not copied)."""

    def __init__(self, state: CpuInterfaceState, index: int, gic: Forwarding) -> None:
        self.s = state
        self.index = index
        self._gic = gic

    def running_priority(self) -> int:
        """ICC_RPR_EL1: highest active group priority, IDLE_PRIORITY (0xFF) when none."""
        ap = self.s.ap1r0
        if not ap:
            return IDLE_PRIORITY
        return ((ap & -ap).bit_length() - 1) << PREEMPTION_SHIFT

    def signalled(self) -> tuple[int, int] | None:
        """The forwarded (INTID, priority) if this interface signals it as an IRQ, else None."""
        ci = self.s
        if not ci.igrpen1:
            return None
        hp = self._gic.highest_pending(self.index)
        if hp is None:
            return None
        prio = hp[1]
        if prio >= ci.pmr or group_priority(prio, ci.bpr1) >= self.running_priority():
            return None
        return hp

    # --- operations -------------------------------------------------------------------------------
    def _acknowledge(self) -> int:
        sig = self.signalled()
        if sig is None:
            return INTID_SPURIOUS
        intid, prio = sig
        self._gic.bank_for(intid, self.index).acknowledge(intid)
        ci = self.s
        ci.ap1r0 |= 1 << (group_priority(prio, ci.bpr1) >> PREEMPTION_SHIFT)
        return intid

    def _end_of_interrupt(self, value: int) -> None:
        intid = value & INTID_FIELD_MASK
        if not self._gic.implemented(intid):
            return
        ci = self.s
        ci.ap1r0 &= ci.ap1r0 - 1  # priority drop: clear the highest active priority
        if not ci.eoimode:
            self._gic.bank_for(intid, self.index).deactivate(intid)

    def _deactivate(self, value: int) -> None:
        intid = value & INTID_FIELD_MASK
        if self.s.eoimode and self._gic.implemented(intid):
            self._gic.bank_for(intid, self.index).deactivate(intid)

    def _generate_sgi(self, value: int) -> None:
        """ICC_SGI1R_EL1: pend SGI INTID on the targets (vCPU v has affinity 0.0.0.v)."""
        intid = (value >> SGI1R_INTID_SHIFT) & 0xF
        count = self._gic.num_vcpus
        if value & SGI1R_IRM:
            targets = [v for v in range(count) if v != self.index]
        else:
            upper = (value >> SGI1R_AFF1_SHIFT) & 0xFF, (value >> SGI1R_AFF2_SHIFT) & 0xFF, (value >> SGI1R_AFF3_SHIFT) & 0xFF
            if any(upper):
                return
            base = 16 * ((value >> SGI1R_RS_SHIFT) & 0xF)
            targets = [base + b for b in bit_positions(value & SGI1R_TARGETLIST_MASK) if base + b < count]
        for v in targets:
            self._gic.bank_for(intid, v).set_pending(intid)

    # --- registers --------------------------------------------------------------------------------
    def read(self, reg: SysReg) -> int:
        """MRS of `reg`. Reading ICC_IAR1_EL1 acknowledges; write-only registers (EOIR1, DIR,
        SGI1R) and group 0 read 0. ValueError if `reg` is not a CPU interface register."""
        ci = self.s
        if reg == sysreg.ICC_IAR1_EL1:
            return self._acknowledge()
        if reg == sysreg.ICC_HPPIR1_EL1:
            hp = self._gic.highest_pending(self.index)
            return INTID_SPURIOUS if hp is None else hp[0]
        if reg == sysreg.ICC_RPR_EL1:
            return self.running_priority()
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
        if reg in (sysreg.ICC_IAR0_EL1, sysreg.ICC_HPPIR0_EL1):
            return INTID_SPURIOUS
        if handles(reg):
            return 0  # write-only, or group 0
        raise _not_icc(reg)

    def write(self, reg: SysReg, value: int) -> None:
        """MSR of `value` to `reg`. Writes to read-only registers and group 0 are ignored.
        ValueError if `reg` is not a CPU interface register."""
        ci = self.s
        if reg == sysreg.ICC_EOIR1_EL1:
            self._end_of_interrupt(value)
        elif reg == sysreg.ICC_DIR_EL1:
            self._deactivate(value)
        elif reg == sysreg.ICC_SGI1R_EL1:
            self._generate_sgi(value)
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
        elif not handles(reg):
            raise _not_icc(reg)
