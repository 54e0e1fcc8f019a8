"""`GenericTimer`: one vCPU's Arm generic timer, the EL1 virtual and EL1 physical timers.

Source: Arm ARM DDI 0487, D12 "The Generic Timer in AArch64 state" (D12.1 counter, D12.2 timers)
and the register descriptions of CNTFRQ_EL0, CNTPCT_EL0, CNTVCT_EL0 (and their FEAT_ECV
self-synchronized views CNTPCTSS_EL0/CNTVCTSS_EL0, identical here), CNT{P,V}_{CTL,CVAL,TVAL}_EL0
and CNTKCTL_EL1.

Time contract: the model never reads host time. Every call takes `now`, the physical count
(CNTPCT_EL0) in ticks. The VM's virtual clock runs one guest instruction per nanosecond and the
counter at CNTFRQ_HZ = 1 GHz, so one tick is one virtual nanosecond. The virtual count is
CNTVCT = (CNTPCT - cntvoff) mod 2**64; `cntvoff` is set by the VMM (never by the guest: there is
no EL2), e.g. so that a restored VM's virtual counter continues where it stopped.

Timer semantics (DDI 0487 D12.2.4 "Operation of the CompareValue views of the timers"):
- The condition is met when count - CVAL >= 0, i.e. count >= CVAL as unsigned 64-bit values.
- CTL.ISTATUS reads 1 iff ENABLE = 1 and the condition is met, whatever IMASK says (the
  architecture makes ISTATUS UNKNOWN while ENABLE = 0; this model reads 0).
- The output (the PPI line to the GIC) is asserted iff ENABLE = 1, IMASK = 0 and the condition
  is met. It is level-sensitive: the VMM forwards `output_levels` to `Gicv3.set_line`.
- TVAL is a signed 32-bit view: a read returns (CVAL - count) truncated to 32 bits (bits
  [63:32] of the MRS result are zero); a write sets CVAL = count + SignExtend(TVAL[31:0]).

Simplifications: CNTFRQ_EL0 is fixed (an MSR from EL1 is UNDEFINED architecturally; here it is
ignored), MSR to the read-only counters is ignored, and the event stream (CNTKCTL_EL1.EVNTEN) is
not generated. CNTKCTL_EL1 is stored; `el0_access_allowed` evaluates its EL0 access controls
so the trap hook can apply them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from snapshot.plain import U64, Width
from vmm import sysreg
from vmm.sysreg import SysReg

# The counter frequency: 1 GHz, so a counter tick is one virtual nanosecond (one guest instruction).
CNTFRQ_HZ = 1_000_000_000

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

# CNT{P,V}_CTL_EL0 bits (DDI 0487 D24.9 CNTV_CTL_EL0).
CTL_ENABLE = 1 << 0
CTL_IMASK = 1 << 1
CTL_ISTATUS = 1 << 2  # read-only, computed
CTL_WRITABLE = CTL_ENABLE | CTL_IMASK

# CNTKCTL_EL1 bits (DDI 0487 D24.9 CNTKCTL_EL1); bits [9:0] are stored, the rest RES0 here.
CNTKCTL_EL0PCTEN = 1 << 0  # EL0 may read CNTPCT_EL0 (and CNTFRQ_EL0)
CNTKCTL_EL0VCTEN = 1 << 1  # EL0 may read CNTVCT_EL0 (and CNTFRQ_EL0)
CNTKCTL_EL0VTEN = 1 << 8  # EL0 may access CNTV_{CTL,CVAL,TVAL}_EL0
CNTKCTL_EL0PTEN = 1 << 9  # EL0 may access CNTP_{CTL,CVAL,TVAL}_EL0
CNTKCTL_WRITABLE = 0x3FF


@dataclass
class TimerChannelState:
    """One timer (virtual or physical): CTL holds only ENABLE and IMASK; CVAL is a u64."""

    ctl: Annotated[int, Width(2)] = 0  # CTL_WRITABLE
    cval: U64 = 0


@dataclass
class TimerState:
    """Everything a snapshot needs for one vCPU's generic timer; all ints fit in a u64."""

    virt: TimerChannelState = field(default_factory=TimerChannelState)
    phys: TimerChannelState = field(default_factory=TimerChannelState)
    cntkctl: Annotated[int, Width(10)] = 0  # CNTKCTL_WRITABLE
    cntvoff: U64 = 0


def _copy_state(s: TimerState) -> TimerState:
    """An independent copy of `s` (a deep copy of ints, without `copy.deepcopy`'s cost)."""
    return TimerState(
        TimerChannelState(s.virt.ctl, s.virt.cval), TimerChannelState(s.phys.ctl, s.phys.cval), s.cntkctl, s.cntvoff
    )


def _condition_met(ch: TimerChannelState, count: int) -> bool:
    return count >= ch.cval


def _output(ch: TimerChannelState, count: int) -> bool:
    return ch.ctl & CTL_WRITABLE == CTL_ENABLE and _condition_met(ch, count)


def _sign_extend32(value: int) -> int:
    value &= MASK32
    return value - (1 << 32) if value & (1 << 31) else value


class GenericTimer:
    """The generic timer of one vCPU. All `now` arguments are physical counter ticks (ns)."""

    # register -> (channel name, role)
    _CHANNEL_REGS: dict[SysReg, tuple[str, str]] = {
        sysreg.CNTV_CTL_EL0: ("virt", "ctl"),
        sysreg.CNTV_CVAL_EL0: ("virt", "cval"),
        sysreg.CNTV_TVAL_EL0: ("virt", "tval"),
        sysreg.CNTP_CTL_EL0: ("phys", "ctl"),
        sysreg.CNTP_CVAL_EL0: ("phys", "cval"),
        sysreg.CNTP_TVAL_EL0: ("phys", "tval"),
    }
    _PHYS_COUNT_REGS = frozenset({sysreg.CNTPCT_EL0, sysreg.CNTPCTSS_EL0})
    _VIRT_COUNT_REGS = frozenset({sysreg.CNTVCT_EL0, sysreg.CNTVCTSS_EL0})
    _OTHER_REGS = _PHYS_COUNT_REGS | _VIRT_COUNT_REGS | {sysreg.CNTFRQ_EL0, sysreg.CNTKCTL_EL1}

    def __init__(self) -> None:
        self._s = TimerState()

    # --- VMM side -------------------------------------------------------------------------------
    @property
    def cntvoff(self) -> int:
        """Virtual offset in ticks: CNTVCT = CNTPCT - cntvoff (mod 2**64).

        Keep it <= now: while now < cntvoff the virtual count has wrapped to near 2**64 and
        every enabled virtual timer condition is met, as on hardware.
        """
        return self._s.cntvoff

    @cntvoff.setter
    def cntvoff(self, value: int) -> None:
        self._s.cntvoff = value & MASK64

    def virtual_count(self, now: int) -> int:
        """CNTVCT_EL0 at physical count `now`."""
        return (now - self._s.cntvoff) & MASK64

    def _count(self, channel: str, now: int) -> int:
        return self.virtual_count(now) if channel == "virt" else now & MASK64

    def output_levels(self, now: int) -> tuple[bool, bool]:
        """(virtual, physical) timer output lines at `now`: ENABLE and not IMASK and condition met."""
        s = self._s
        return _output(s.virt, self.virtual_count(now)), _output(s.phys, now & MASK64)

    def next_deadline(self, now: int) -> int | None:
        """Smallest physical count > `now` at which an output newly asserts; None if none will.

        Only timers with ENABLE = 1, IMASK = 0 and the condition not yet met count: an output
        that is already asserted, masked or disabled has no deadline. The answer is valid until
        the guest next writes a timer register or the VMM changes `cntvoff`.
        """
        best: int | None = None
        for name in ("virt", "phys"):
            ch: TimerChannelState = getattr(self._s, name)
            count = self._count(name, now)
            if ch.ctl & CTL_WRITABLE != CTL_ENABLE or _condition_met(ch, count):
                continue
            deadline = now + (ch.cval - count)  # the count reaches CVAL before it can wrap
            if best is None or deadline < best:
                best = deadline
        return best

    # --- system registers -----------------------------------------------------------------------
    def handles(self, reg: SysReg) -> bool:
        """True if `reg` is one of this model's registers."""
        return reg in self._CHANNEL_REGS or reg in self._OTHER_REGS

    def el0_access_allowed(self, reg: SysReg, write: bool = False) -> bool:
        """Whether CNTKCTL_EL1 lets EL0 perform this access (DDI 0487 D12.5, CNTKCTL_EL1).

        The trap hook applies this to EL0 accesses; when False the architecture traps the access
        to EL1 as a trapped MSR/MRS (ESR_EL1.EC = 0x18).
        """
        k = self._s.cntkctl
        if reg == sysreg.CNTFRQ_EL0:
            return not write and bool(k & (CNTKCTL_EL0PCTEN | CNTKCTL_EL0VCTEN))
        if reg in self._PHYS_COUNT_REGS:
            return not write and bool(k & CNTKCTL_EL0PCTEN)
        if reg in self._VIRT_COUNT_REGS:
            return not write and bool(k & CNTKCTL_EL0VCTEN)
        if reg in self._CHANNEL_REGS:
            channel, _ = self._CHANNEL_REGS[reg]
            return bool(k & (CNTKCTL_EL0VTEN if channel == "virt" else CNTKCTL_EL0PTEN))
        return False  # CNTKCTL_EL1 and anything else: EL1 only

    def sysreg_read(self, reg: SysReg, now: int) -> int:
        """Value an MRS of `reg` returns at physical count `now` (a u64)."""
        s = self._s
        if reg == sysreg.CNTFRQ_EL0:
            return CNTFRQ_HZ
        if reg in self._PHYS_COUNT_REGS:
            return now & MASK64
        if reg in self._VIRT_COUNT_REGS:
            return self.virtual_count(now)
        if reg == sysreg.CNTKCTL_EL1:
            return s.cntkctl
        channel, role = self._lookup(reg)
        ch: TimerChannelState = getattr(s, channel)
        count = self._count(channel, now)
        if role == "ctl":
            met = ch.ctl & CTL_ENABLE and _condition_met(ch, count)
            return ch.ctl | (CTL_ISTATUS if met else 0)
        if role == "cval":
            return ch.cval
        return (ch.cval - count) & MASK32  # TVAL

    def sysreg_write(self, reg: SysReg, value: int, now: int) -> None:
        """Effect of an MSR of `value` to `reg` at physical count `now`."""
        s = self._s
        if reg == sysreg.CNTFRQ_EL0 or reg in self._PHYS_COUNT_REGS or reg in self._VIRT_COUNT_REGS:
            return  # fixed frequency; the counters are read-only
        if reg == sysreg.CNTKCTL_EL1:
            s.cntkctl = value & CNTKCTL_WRITABLE
            return
        channel, role = self._lookup(reg)
        ch: TimerChannelState = getattr(s, channel)
        if role == "ctl":
            ch.ctl = value & CTL_WRITABLE
        elif role == "cval":
            ch.cval = value & MASK64
        else:
            ch.cval = (self._count(channel, now) + _sign_extend32(value)) & MASK64

    def _lookup(self, reg: SysReg) -> tuple[str, str]:
        try:
            return self._CHANNEL_REGS[reg]
        except KeyError:
            raise ValueError(f"{sysreg.sysreg_name(reg)} is not a generic timer register") from None

    # --- snapshot -------------------------------------------------------------------------------
    def save_state(self) -> TimerState:
        """A copy of the timer's state; later guest accesses do not change it."""
        return _copy_state(self._s)

    def rollback(self, state: TimerState) -> None:
        """Return to `state`, saved earlier by this timer (in-process reset): `restore_state`
        without its masking, which a state this timer saved never needs."""
        self._s = _copy_state(state)

    def restore_state(self, state: TimerState) -> None:
        """Replace the timer's state with a copy of `state` (masked to architectural widths)."""
        s = _copy_state(state)
        for ch in (s.virt, s.phys):
            ch.ctl &= CTL_WRITABLE
            ch.cval &= MASK64
        s.cntkctl &= CNTKCTL_WRITABLE
        s.cntvoff &= MASK64
        self._s = s
