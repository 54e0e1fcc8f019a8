"""The deterministic scheduler and the virtual clock.

Virtual time is counted in instructions: one guest instruction = 1 ns, and the generic
timer's counter runs at 1 GHz, so counter ticks = virtual ns = instructions per vCPU.

The schedule is a sequence of *rounds*. A round [t0, t1) runs every runnable vCPU in index
order for t1 - t0 instructions. Round ends lie on a grid that depends only on guest state:
multiples of the quantum, plus the timer deadlines known when the round starts. Between rounds
the VMM powers on vCPUs started with CPU_ON, updates interrupt lines, wakes waiting vCPUs and
delivers IRQs.

Within its turn a vCPU also stops at its *own* timer events, at the exact instruction: the
instruction position in a slice is known (vmm.icount), so instruction k of a turn starting at
t0 runs at virtual time t0 + k. A turn is cut into sub-slices ending at the vCPU's next timer
deadline; a timer register write stops the sub-slice after the MSR and the rest of the turn is
planned anew; at each such point the vCPU's timer lines are updated and it takes its IRQ (the
same steps as a round boundary, for this vCPU only). A vCPU that waits (WFI, CPU_SUSPEND)
sleeps until its next timer deadline if that falls inside the round, and runs on from there;
otherwise it gives up the rest of its turn, as does one that stops (CPU_OFF, power-off, fault).
So a timer interrupt is taken at exactly its programmed time, whenever it was armed. Interrupts
from other sources (SGIs, devices) are taken at round boundaries.

`run(max_instructions=N)` stops at the first round end at or after start + N: pauses (and so
snapshots) happen only at round ends, and a pause never changes the schedule. Hence
run(N + M) == run(N); run(M) whenever start + N is a round end, e.g. N a multiple of the
quantum from boot. When every vCPU waits, virtual time jumps to the next timer deadline.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Callable, Protocol, Sequence

from snapshot.plain import Range
from vmm.config import MAX_QUANTUM

from vmm.psci import complete_pending_power_on
from vmm.vcpu import ExitKind, PowerState, SliceExit

# Ours: the latest virtual time (ns) a VM may reach or a snapshot may record, ~146 years.
# Virtual time is the generic timer's count (CNTPCT = clock, CNTVCT = clock - CNTVOFF, 64-bit
# registers); this bound keeps the clock plus any round and deadline arithmetic inside a
# signed 64-bit value, where the C hooks and Unicorn's instruction counts compute.
MAX_CLOCK = 1 << 62

if TYPE_CHECKING:
    from vmm.fault import FaultReport
    from vmm.vcpu import Vcpu


class StopReason(str, enum.Enum):
    """Why `MicroVM.run` returned."""

    POWER_OFF = "power_off"  # PSCI SYSTEM_OFF
    RESET = "reset"  # PSCI SYSTEM_RESET requested
    BUDGET = "budget"  # max_instructions reached (the VM can run on)
    FAULT = "fault"  # a guest fault the guest could not handle
    ALL_OFF = "all_vcpus_off"  # every vCPU powered off with CPU_OFF
    DEADLOCK = "deadlock"  # every vCPU waits and no event is pending
    OUTPUT = "output"  # the console showed what `MicroVM.run_until_output` waited for
    INTERRUPTED = "interrupted"  # a deferred SIGINT/SIGTERM paused the VM at a round end (it can run on)

    @property
    def final(self) -> bool:
        """True if the VM cannot run any further."""
        return self in (StopReason.POWER_OFF, StopReason.RESET, StopReason.FAULT, StopReason.ALL_OFF)


@dataclass
class RunResult:
    """Outcome of one `run` call. `instructions` is virtual time elapsed (instructions per vCPU);
    `retired` is the instructions the vCPUs executed in all (less than `instructions` x vCPUs
    while vCPUs wait or are off; a faulting slice counts whole, as in `Vcpu.run_slice`), and
    `retired_per_vcpu[i]` vCPU i's share of it."""

    reason: StopReason
    instructions: int
    detail: str = ""
    fault: FaultReport | None = None
    retired: int = 0
    retired_per_vcpu: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason in (StopReason.POWER_OFF, StopReason.BUDGET, StopReason.OUTPUT)


class InterruptSource(Protocol):
    """What the scheduler needs from the interrupt controller and timers (vmm.interrupts)."""

    def round_boundary(self, now: int) -> None:
        """Bring interrupt lines up to date for virtual time `now`."""

    def wakeup_pending(self, vcpu: int) -> bool: ...

    def irq_signalled(self, vcpu: int) -> bool: ...

    def next_deadline(self, now: int) -> int | None:
        """Earliest virtual time > now at which a timer fires, or None."""

    def vcpu_boundary(self, vcpu: int, now: int) -> None:
        """Bring vCPU `vcpu`'s own (timer) interrupt lines up to date for virtual time `now`."""

    def vcpu_deadline(self, vcpu: int, now: int) -> int | None:
        """Earliest virtual time > now at which one of vCPU `vcpu`'s timers fires, or None."""


@dataclass
class SchedulerState:
    """Scheduler position, as plain data."""

    clock: Annotated[int, Range(0, MAX_CLOCK)]  # virtual ns since boot
    quantum: Annotated[int, Range(1, MAX_QUANTUM)]
    stopped: str | None  # StopReason value once final
    stop_detail: str = ""


class Scheduler:
    """Runs vCPUs in deterministic rounds and keeps virtual time."""

    def __init__(self, vcpus: Sequence[Vcpu], quantum: int, interrupts: InterruptSource | None = None) -> None:
        self.vcpus = vcpus
        self.quantum = quantum
        self.interrupts = interrupts
        self.clock = 0
        self.stopped: StopReason | None = None
        self.stop_detail = ""
        self.fault: FaultReport | None = None
        self.retired = 0  # instructions executed by all vCPUs since this scheduler was made

    def _next_round_end(self) -> int:
        end = (self.clock // self.quantum + 1) * self.quantum
        if self.interrupts is not None:
            deadline = self.interrupts.next_deadline(self.clock)
            if deadline is not None and self.clock < deadline < end:
                end = deadline
        return end

    def _between_rounds(self) -> None:
        complete_pending_power_on(self.vcpus)
        irq = self.interrupts
        if irq is None:
            # No interrupt controller: a wait returns at once (a spurious wakeup, which WFI and
            # CPU_SUSPEND standby both permit).
            for v in self.vcpus:
                v.waiting = False
            return
        irq.round_boundary(self.clock)
        for v in self.vcpus:
            if v.power is PowerState.ON:
                self._wake_or_interrupt(irq, v)

    @staticmethod
    def _wake_or_interrupt(irq: InterruptSource, v: Vcpu) -> None:
        """Wake `v` if an interrupt is pending for it, then take the IRQ if it is signalled."""
        if v.waiting and irq.wakeup_pending(v.index):
            v.waiting = False
        if not v.waiting and irq.irq_signalled(v.index):
            v.take_irq()

    def _vcpu_boundary(self, irq: InterruptSource, v: Vcpu, now: int) -> None:
        """A boundary inside `v`'s turn, at virtual time `now`: its timer lines, then wake/IRQ."""
        irq.vcpu_boundary(v.index, now)
        self._wake_or_interrupt(irq, v)

    def _run_turn(self, v: Vcpu, end: int) -> SliceExit | None:
        """Run `v` from the round start to `end` in sub-slices that end at its timer events.

        None if `v` reached `end`; otherwise the exit that ended its turn (a vCPU still waiting
        for an interrupt at `end` returns its WAIT exit).
        """
        irq = self.interrupts
        now = self.clock
        while True:
            deadline = irq.vcpu_deadline(v.index, now) if irq is not None else None
            stop = end if deadline is None else min(deadline, end)
            ex = v.run_slice(stop - now, now)
            now += v.executed
            self.retired += v.executed
            v.retired += v.executed
            if ex is not None and ex.kind is not ExitKind.REPLAN:
                if ex.kind is not ExitKind.WAIT or irq is None:
                    return ex  # stopped, or asleep with no timer of its own to wake it
            if now >= end:
                return ex if v.waiting else None
            if irq is None:
                continue
            self._vcpu_boundary(irq, v, now)
            while v.waiting:  # asleep: jump to its next timer event inside the round
                deadline = irq.vcpu_deadline(v.index, now)
                if deadline is None or deadline >= end:
                    return ex
                now = deadline
                self._vcpu_boundary(irq, v, now)

    def _stop(self, reason: StopReason, detail: str) -> None:
        self.stopped = reason
        self.stop_detail = detail

    def _handle_exit(self, vcpu: Vcpu, ex: SliceExit) -> None:
        if ex.kind is ExitKind.SYSTEM_OFF:
            self._stop(StopReason.POWER_OFF, f"vCPU {vcpu.index} called PSCI SYSTEM_OFF")
        elif ex.kind is ExitKind.SYSTEM_RESET:
            self._stop(StopReason.RESET, f"vCPU {vcpu.index} called PSCI SYSTEM_RESET")
        elif ex.kind is ExitKind.FAULT:
            self.fault = ex.fault  # type: ignore[assignment]
            summary = getattr(ex.fault, "summary", None)
            self._stop(StopReason.FAULT, summary() if callable(summary) else ex.detail)

    def run(
        self,
        max_instructions: int | None = None,
        until: Callable[[], bool] | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> RunResult:
        """Run rounds until the VM stops or `max_instructions` of virtual time have passed,
        or, with `until`, the first round end at which `until()` is true (StopReason.OUTPUT).

        `interrupted` is polled at every round end: once it returns True the run stops there
        (StopReason.INTERRUPTED), a pause point like a budget's end."""
        retired = self.retired
        per_vcpu = [v.retired for v in self.vcpus]
        result = self._run(max_instructions, until, interrupted)
        result.retired = self.retired - retired
        result.retired_per_vcpu = [v.retired - before for v, before in zip(self.vcpus, per_vcpu)]
        return result

    def _run(
        self, max_instructions: int | None, until: Callable[[], bool] | None, interrupted: Callable[[], bool] | None
    ) -> RunResult:
        if max_instructions is not None and max_instructions < 0:
            raise ValueError("max_instructions must be >= 0")
        start = self.clock
        if self.stopped is not None:
            return RunResult(self.stopped, 0, self.stop_detail, self.fault)
        target = None if max_instructions is None else start + max_instructions
        while True:
            if target is not None and self.clock >= target:
                return RunResult(StopReason.BUDGET, self.clock - start)
            if interrupted is not None and interrupted():
                return RunResult(StopReason.INTERRUPTED, self.clock - start, "stopped by a signal at a round end")
            self._between_rounds()
            on = [v for v in self.vcpus if v.power is PowerState.ON]
            runnable = [v for v in on if not v.waiting]
            if not runnable:
                if any(v.power is PowerState.ON_PENDING for v in self.vcpus):
                    continue
                if not on:
                    self._stop(StopReason.ALL_OFF, "every vCPU is powered off")
                    return RunResult(StopReason.ALL_OFF, self.clock - start, self.stop_detail)
                deadline = self.interrupts.next_deadline(self.clock) if self.interrupts else None
                if deadline is None:
                    detail = "deadlock: all vCPUs waiting, no event pending"
                    return RunResult(StopReason.DEADLOCK, self.clock - start, detail)
                # Idle: jump virtual time (nothing executes, so where the jump lands is free).
                self.clock = deadline if target is None else min(deadline, target)
                continue
            end = self._next_round_end()
            for v in runnable:
                ex = self._run_turn(v, end)
                if ex is not None:
                    self._handle_exit(v, ex)
                    if self.stopped is not None:
                        break
            self.clock = end
            if self.stopped is not None:
                return RunResult(self.stopped, self.clock - start, self.stop_detail, self.fault)
            if until is not None and until():
                return RunResult(StopReason.OUTPUT, self.clock - start)

    def save_state(self) -> SchedulerState:
        return SchedulerState(
            clock=self.clock,
            quantum=self.quantum,
            stopped=self.stopped.value if self.stopped else None,
            stop_detail=self.stop_detail,
        )

    def restore_state(self, state: SchedulerState) -> None:
        self.clock = state.clock
        self.quantum = state.quantum
        self.stopped = StopReason(state.stopped) if state.stopped else None
        self.stop_detail = state.stop_detail
