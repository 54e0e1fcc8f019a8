"""`Interrupts`: the GICv3, the per-vCPU generic timers, and their wiring to vCPUs and devices.

- The GIC CPU interface (ICC_*) and timer registers (CNT*) are trapped on every vCPU with the
  MRS/MSR hook and served by the models. Timer accesses happen at the exact virtual time of
  the trapping instruction (`Vcpu.now()`): counters read it, TVAL writes count from it.
- Device interrupt lines (PL011, MMDS) drive GIC SPIs; timer outputs drive PPIs 27 (virtual)
  and 30 (physical), refreshed at every timer register write, every round boundary and every
  boundary inside a vCPU's turn (`vcpu_boundary`).
- A timer register write that makes the vCPU's timer fire before its running sub-slice ends
  (or asserts an output at once) stops the slice after the MSR (`ExitKind.REPLAN`), so the
  scheduler can stop the vCPU at the new deadline or deliver the IRQ right after the MSR.
- The scheduler asks this object (`InterruptSource`) at boundaries which vCPUs to wake and
  which to interrupt, and when the next timer fires.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from vmm.devices.generic_timer import GenericTimer, TimerState
from vmm.devices.gicv3 import Gicv3, Gicv3State
from vmm.layout import PPI_PHYS_TIMER_NS, PPI_VIRTUAL_TIMER
from vmm.sysreg import SYSREG_NAMES, sysreg_name
from vmm.vcpu import ExitKind

if TYPE_CHECKING:
    from vmm.vcpu import SysReg, Vcpu, VcpuHooks


@dataclass
class InterruptsState:
    """GIC and timers, as plain data."""

    gic: Gicv3State
    timers: list[TimerState]


class Interrupts:
    """Owns the GIC and the timers of one machine."""

    def __init__(self, num_vcpus: int) -> None:
        self.gic = Gicv3(num_vcpus)
        self.timers = [GenericTimer() for _ in range(num_vcpus)]

    # --- wiring ---------------------------------------------------------------------------------
    def install_traps(self, hooks: VcpuHooks) -> None:
        """Route the ICC_* and CNT* system registers of every vCPU to the models."""
        gic, timers = self.gic, self.timers
        for reg in SYSREG_NAMES:
            if gic.handles(reg):
                hooks.sysreg_read[reg] = lambda v, r=reg: gic.sysreg_read(v.index, r)
                hooks.sysreg_write[reg] = lambda v, value, r=reg: gic.sysreg_write(v.index, r, value)
            elif timers[0].handles(reg):
                hooks.sysreg_read[reg] = lambda v, r=reg: timers[v.index].sysreg_read(r, v.now())
                hooks.sysreg_write[reg] = self._timer_writer(reg)

    def _timer_writer(self, reg: SysReg) -> Callable[[Vcpu, int], None]:
        def write(vcpu: Vcpu, value: int) -> None:
            index, now = vcpu.index, vcpu.now()
            timer = self.timers[index]
            before = timer.output_levels(now)
            timer.sysreg_write(reg, value, now)
            after = self._update_timer_lines(index, now)
            deadline = timer.next_deadline(now)
            rose = any(a and not b for a, b in zip(after, before))
            # The next instruction runs at now + 1: a deadline before the sub-slice's end, or
            # an output that asserted just now, needs the scheduler (vmm.scheduler._run_turn).
            if rose or (deadline is not None and deadline < vcpu.slice_end):
                vcpu.request_exit(ExitKind.REPLAN, f"{sysreg_name(reg)} written")

        return write

    def line(self, intid: int) -> Callable[[bool], None]:
        """The level setter a device drives its SPI with."""
        return lambda level: self.gic.set_line(intid, level)

    def _update_timer_lines(self, index: int, now: int) -> tuple[bool, bool]:
        """Drive vCPU `index`'s timer PPIs from its timer outputs at `now`; returns them."""
        virt, phys = levels = self.timers[index].output_levels(now)
        self.gic.set_line(PPI_VIRTUAL_TIMER, virt, index)
        self.gic.set_line(PPI_PHYS_TIMER_NS, phys, index)
        return levels

    # --- InterruptSource (vmm.scheduler) -----------------------------------------------------
    def round_boundary(self, now: int) -> None:
        for i in range(len(self.timers)):
            self._update_timer_lines(i, now)

    def vcpu_boundary(self, vcpu: int, now: int) -> None:
        self._update_timer_lines(vcpu, now)

    def vcpu_deadline(self, vcpu: int, now: int) -> int | None:
        return self.timers[vcpu].next_deadline(now)

    def wakeup_pending(self, vcpu: int) -> bool:
        return self.gic.wakeup_pending(vcpu)

    def irq_signalled(self, vcpu: int) -> bool:
        return self.gic.irq_signalled(vcpu)

    def next_deadline(self, now: int) -> int | None:
        deadlines = [d for d in (t.next_deadline(now) for t in self.timers) if d is not None]
        return min(deadlines) if deadlines else None

    # --- state ------------------------------------------------------------------------------------
    def save_state(self) -> InterruptsState:
        return InterruptsState(gic=self.gic.save_state(), timers=[t.save_state() for t in self.timers])

    def restore_state(self, state: InterruptsState) -> None:
        if len(state.timers) != len(self.timers):
            raise ValueError(f"timer state is for {len(state.timers)} vCPU(s) but this VM has {len(self.timers)}")
        self.gic.restore_state(state.gic)
        for timer, ts in zip(self.timers, state.timers):
            timer.restore_state(ts)

    def rollback(self, state: InterruptsState) -> None:
        """Return to `state`, saved earlier by this object (in-process reset: no checks)."""
        self.gic.rollback(state.gic)
        for timer, ts in zip(self.timers, state.timers):
            timer.rollback(ts)
