"""Crash consistency: SIGKILL a process while it saves (or rebases) a snapshot, then check.

A trial runs one `Scenario` action in a forked child whose file-system calls are traced into
a shared page (`Trace`: one phase per call). The child is killed with a real SIGKILL either
just before or just after its k-th traced call (`KillPoint.at_call`), or by the parent after
a random delay (`KillPoint.delay`, seconds after the first traced call). The phase the kill
landed in (memory write, state write, fsync, rename, ...) tags the trial.

After the kill the destination must load (copy backend, every digest verified) as the
snapshot it held before or the complete new one, never a torn or mismatched pair; the other
snapshots in the directory must be untouched; and the action, run again without a kill,
must succeed and leave exactly the expected files (no temporaries, no staged files).

snapshot.commit's own tests crash a stand-in state at every call of `commit_pair`; this
campaign kills real VM saves (and rebases) at random points and in random phases.
"""
from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from tools.faults.child import Child
from tools.faults.outcome import Hang, Stopwatch, Trial, Verdict, failed, watchdog
from tools.faults.scenarios import Scenario

# Traced os functions: every call that creates, writes, syncs, renames or removes a file.
TRACED_CALLS = ("open", "write", "pwrite", "ftruncate", "fsync", "replace", "rename", "unlink")
PHASES = ("lock", "read", "create", "memory-write", "state-write", "fsync", "rename", "cleanup", "other")
CHILD_TIME_LIMIT = 60.0  # seconds a child may run before the trial counts as a hang
CHECK_TIME_LIMIT = 60.0  # seconds the checks after a kill may take
_TRACE_CAPACITY = 1 << 16  # calls recorded per child
_HEADER = 16  # call count (u64), action duration (f64)


class Trace:
    """A shared anonymous mapping (it survives fork): the call count, the action's duration
    and one phase byte per call."""

    def __init__(self) -> None:
        self._buf = mmap.mmap(-1, _HEADER + _TRACE_CAPACITY)

    def reset(self) -> None:
        self._buf[:_HEADER] = bytes(_HEADER)

    @property
    def count(self) -> int:
        return int(struct.unpack_from("<Q", self._buf, 0)[0])

    @property
    def seconds(self) -> float:
        """Wall time of the action in the child (set when it completes)."""
        return float(struct.unpack_from("<d", self._buf, 8)[0])

    @seconds.setter
    def seconds(self, value: float) -> None:
        struct.pack_into("<d", self._buf, 8, value)

    def record(self, phase: str) -> int:
        """Log one call; returns its number (from 1)."""
        n = self.count + 1
        if n <= _TRACE_CAPACITY:
            self._buf[_HEADER + n - 1] = PHASES.index(phase)
        struct.pack_into("<Q", self._buf, 0, n)
        return n

    def phase(self, n: int) -> str:
        """Phase of call number `n` (from 1); 'other' if there is no such call."""
        if 1 <= n <= min(self.count, _TRACE_CAPACITY):
            return PHASES[self._buf[_HEADER + n - 1]]
        return "other"

    def phases(self) -> list[str]:
        return [self.phase(n) for n in range(1, min(self.count, _TRACE_CAPACITY) + 1)]


def _classify(name: str, args: tuple[object, ...], fd_names: dict[int, str]) -> str:
    """The phase of one traced call, from its name, arguments and the file behind an fd."""
    if name == "open":
        flags = args[1] if len(args) > 1 and isinstance(args[1], int) else 0
        if flags & os.O_CREAT:
            return "create"
        return "lock" if flags & os.O_DIRECTORY else "read"
    if name in ("replace", "rename"):
        return "rename"
    if name == "unlink":
        return "cleanup"
    if name == "fsync":
        return "fsync"
    target = fd_names.get(args[0], "") if args and isinstance(args[0], int) else ""
    if ".mem.tmp-" in target:
        return "memory-write"
    if ".snap.tmp-" in target:
        return "state-write"
    return "other"


def _install_tracer(trace: Trace, kill_at: int | None, after: bool) -> None:
    """In the child: wrap TRACED_CALLS so each is logged, and SIGKILL ourselves just before
    (or just after) call number `kill_at`."""
    fd_names: dict[int, str] = {}
    me = os.getpid()

    def traced(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            n = trace.record(_classify(name, args, fd_names))
            if n == kill_at and not after:
                os.kill(me, signal.SIGKILL)
            result = real(*args, **kwargs)
            if name == "open" and isinstance(result, int) and isinstance(args[0], (str, bytes, os.PathLike)):
                fd_names[result] = os.fsdecode(args[0])
            if n == kill_at and after:
                os.kill(me, signal.SIGKILL)
            return result

        return call

    for name in TRACED_CALLS:
        setattr(os, name, traced(name, getattr(os, name)))


@dataclass(frozen=True)
class KillPoint:
    """Where to kill the child: just before/after its traced call number `at_call`, or
    `delay` seconds after its first traced call; neither: let it finish."""

    at_call: int | None = None
    after: bool = False
    delay: float | None = None

    def __str__(self) -> str:
        if self.at_call is not None:
            return f"SIGKILL {'after' if self.after else 'before'} call {self.at_call}"
        if self.delay is not None:
            return f"SIGKILL {self.delay * 1000:.2f} ms into the action"
        return "no kill"


NO_KILL = KillPoint()


@dataclass
class ChildRun:
    """How an action in a child ended: 'done', 'killed', 'error' (`error`: what it raised),
    'hang' or 'crashed'; `phase`: the phase of the call the kill landed on ('finished' if the
    action completed first)."""

    ending: str
    phase: str = "finished"
    error: str = ""


def run_in_child(action: Callable[[], object], kill: KillPoint, trace: Trace) -> ChildRun:
    """Run `action` in a forked child, traced, killed as `kill` says."""
    trace.reset()

    def traced_action() -> None:
        _install_tracer(trace, kill.at_call, kill.after)
        clock = Stopwatch()
        action()
        trace.seconds = clock.seconds

    child = Child(traced_action)
    killed_phase = "finished"
    if kill.delay is not None:
        deadline = time.monotonic() + CHILD_TIME_LIMIT
        while trace.count == 0 and not child.exited() and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(kill.delay)
        if not child.exited():
            killed_phase = trace.phase(trace.count)
            child.kill()
    end = child.wait(CHILD_TIME_LIMIT)
    if end.ending == "killed":
        phase = trace.phase(kill.at_call) if kill.at_call is not None else killed_phase
        return ChildRun("killed", phase)
    return ChildRun(end.ending, error=end.error)


def measure(scenario: Scenario, trace: Trace) -> None:
    """Run `scenario` once without a kill: record its call phases and duration."""
    scenario.prepare()
    run = run_in_child(scenario.action, NO_KILL, trace)
    if run.ending != "done":
        raise RuntimeError(f"{scenario.name}: a kill-free run failed: {run.ending} {run.error}")
    scenario.seconds = trace.seconds
    scenario.phases = trace.phases()


def kill_points(
    scenario: Scenario, rng: random.Random, count: int, timer_every: int = 4, phases: list[str] | None = None
) -> Iterator[KillPoint]:
    """`count` kill points: every `timer_every`-th one (0: none) a random delay within the
    action's duration; the others a random call of a phase taken in turn from `phases`
    (default: every phase the action goes through, shuffled), so every phase is hit whatever
    its share of the calls."""
    by_phase: dict[str, list[int]] = {}
    for n, phase in enumerate(scenario.phases, start=1):
        by_phase.setdefault(phase, []).append(n)
    if phases is None:
        order = sorted(by_phase)
        rng.shuffle(order)
    else:
        order = [p for p in phases if p in by_phase]
    for i in range(count):
        if timer_every and i % timer_every == timer_every - 1:
            yield KillPoint(delay=rng.uniform(0, scenario.seconds))
        else:
            yield KillPoint(at_call=rng.choice(by_phase[order[i % len(order)]]), after=rng.random() < 0.5)


def run_trial(scenario: Scenario, kill: KillPoint, trace: Trace) -> Trial:
    """One kill of `scenario`, and every check after it."""
    case = f"{scenario.name}: {kill}"
    clock = Stopwatch()
    scenario.prepare()
    run = run_in_child(scenario.action, kill, trace)
    tags = (f"phase:{run.phase}", f"scenario:{scenario.name}")
    if run.ending == "hang":
        return failed(case, Verdict.HANG, f"child still running after {CHILD_TIME_LIMIT} s", tags=tags)
    if run.ending in ("error", "crashed"):
        return failed(case, Verdict.WRONG_EXCEPTION, f"the action raised {run.error}", tags=tags)
    try:
        with watchdog(CHECK_TIME_LIMIT):
            verdict, detail, side = scenario.check_loads((scenario.before, scenario.after))
            if verdict is Verdict.SURVIVED:
                again = run_in_child(scenario.action, NO_KILL, trace)
                if again.ending != "done":
                    verdict, detail = Verdict.VIOLATION, f"the next run failed: {again.ending} {again.error}"
                else:
                    verdict, detail = scenario.check_final()
    except Hang as exc:
        return failed(case, Verdict.HANG, f"checks: {exc}", tags=tags)
    return Trial(case, verdict, detail, clock.seconds, tags + (f"loaded:{side}",))
