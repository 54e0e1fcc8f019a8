"""`Worker`: one process's share of a fan-out. It loads the snapshot once (mmap backend, lazy
copy-on-write RAM), takes a reset point there, and runs each input from that point: reset
(only the pages dirtied since the point are copied back), apply the input, run, record a
`Result`. So a result depends only on the snapshot and the input, never on which inputs the
worker ran before (the determinism property at scale; tests/test_experiments.py).

Applying an input, in this order: the MMDS data replaces the store, the UART bytes are queued
on the receiver, the memory writes are stored (and code translated from those pages is
dropped, so a patched instruction is executed as written), then the registers are set. What the
machine refuses (a gpa outside RAM, an absent vCPU, MMDS data the store rejects) gives the
result stop reason "input_error" and no run.

With `stop_at`, the run pauses every quantum of virtual time (at a round end, which does not
change the schedule: vmm.scheduler) and stops with reason "console" at the first pause where
the console output holds the string; otherwise it is one `run(budget)`.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vmm.devices.mmds.errors import MmdsError
from vmm.errors import GuestMemoryError
from vmm.experiments.inputs import Input
from vmm.machine import MicroVM
from vmm.persist import open_snapshot
from vmm.reset import ResetPoint
from vmm.scheduler import StopReason
from vmm.tlb import DIRTY_PAGE_SIZE

DEFAULT_BUDGET = 10_000_000  # instructions of virtual time, for an input that names none
MAX_CONSOLE_CHARS = 64 << 10  # console output kept in a result (the rest is counted)
CONSOLE = "console"  # stop reason: the stop_at string appeared
INPUT_ERROR = "input_error"  # stop reason: the machine refused the input; nothing ran
WORKER_LOST = "worker_lost"  # stop reason: every attempt's worker died (vmm.experiments.engines)
# Test hook: "ID@N,..." makes a worker process exit on input ID's attempts 1..N (tests of retry).
CRASH_ENV = "MICROVM_FANOUT_TEST_CRASH"
CRASH_EXIT = 70


@dataclass
class Result:
    """The outcome of one input. Every field but `wall_seconds` and `attempts` depends only on
    the snapshot and the input (`outcome()`).

    - `index`: the input's position in the stream (0-based); `id`: its id.
    - `stop_reason`: a StopReason value, "console", "input_error" or "worker_lost"; `detail`
      says more (the scheduler's detail, the refused field, the lost worker).
    - `virtual_instructions`: virtual time run (instructions per vCPU); `retired_instructions`:
      instructions the vCPUs executed in all.
    - `console`: the guest's UART output (UTF-8, undecodable bytes as \\x escapes), at most
      MAX_CONSOLE_CHARS characters; `console_bytes`: its whole length in bytes.
    - `state_digest`: `MicroVM.state_digest()` at the end ("" if nothing ran).
    - `dirty_pages`: 4 KiB pages that differ from the snapshot's, at most (written since it).
    - `fault`: the FaultReport as plain data, if the guest faulted.
    - `wall_seconds`: host time of reset, apply, run and digest; `attempts`: runs of this input
      started (more than 1 if a worker died under it and it was retried).
    """

    index: int
    id: str
    stop_reason: str
    detail: str = ""
    virtual_instructions: int = 0
    retired_instructions: int = 0
    console: str = ""
    console_bytes: int = 0
    state_digest: str = ""
    dirty_pages: int = 0
    fault: dict[str, Any] | None = None
    wall_seconds: float = 0.0
    attempts: int = 1

    def outcome(self) -> dict[str, Any]:
        """The deterministic fields: equal whatever the engine, worker count or order."""
        d = asdict(self)
        del d["wall_seconds"], d["attempts"]
        return d

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """Input number `index` of the stream, on its `attempt`-th run."""

    index: int
    input: Input
    attempt: int = 1


@dataclass
class _Crash:
    upto: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> _Crash:
        upto: dict[str, int] = {}
        for item in filter(None, os.environ.get(CRASH_ENV, "").split(",")):
            ident, _, n = item.rpartition("@")
            upto[ident] = int(n)
        return cls(upto)

    def check(self, job: Job) -> None:
        if job.attempt <= self.upto.get(job.input.id, 0):
            os._exit(CRASH_EXIT)


class Worker:
    """Runs inputs against one snapshot. `budget`: instructions of virtual time for an input
    that names none; `key`: an encrypted snapshot's. Raises SnapshotError if the snapshot
    cannot be loaded."""

    def __init__(self, snapshot: str | os.PathLike[str], *, budget: int = DEFAULT_BUDGET, key: bytes | None = None) -> None:
        self.budget = budget
        self.vm = MicroVM.load_snapshot(snapshot, "mmap", track_dirty_pages=True, key=key)
        # The reference image: the snapshot's RAM mapped a second time, copy-on-write (an
        # encrypted snapshot's is decrypted into private memory instead).
        image = open_snapshot(snapshot, "mmap", verify_memory=False, key=key).ram
        self.point = ResetPoint(self.vm, image)
        self._crash = _Crash.from_env()

    def run_batch(self, jobs: list[Job]) -> list[Result]:
        results = []
        for job in jobs:
            self._crash.check(job)
            result = self.run(job.input, index=job.index)
            result.attempts = job.attempt
            results.append(result)
        return results

    def run(self, inp: Input, *, index: int = 0) -> Result:
        """`inp` run from the snapshot's state."""
        t0 = time.perf_counter()
        vm = self.vm
        vm.reset_to(self.point)
        try:
            self._apply(inp)
        except (GuestMemoryError, MmdsError, ValueError) as e:
            return Result(index, inp.id, INPUT_ERROR, str(e), wall_seconds=time.perf_counter() - t0)
        budget = self.budget if inp.budget is None else inp.budget
        reason, detail, virtual, retired = self._run(budget, inp.stop_at)
        console = vm.console_output
        fault = vm.fault if reason == StopReason.FAULT.value else None
        return Result(
            index=index,
            id=inp.id,
            stop_reason=reason,
            detail=detail,
            virtual_instructions=virtual,
            retired_instructions=retired,
            console=console.decode("utf-8", "backslashreplace")[:MAX_CONSOLE_CHARS],
            console_bytes=len(console),
            state_digest=vm.state_digest(),
            dirty_pages=int(vm.dirty.pages().size),
            fault=asdict(fault) if fault is not None else None,
            wall_seconds=time.perf_counter() - t0,
        )

    def _apply(self, inp: Input) -> None:
        vm = self.vm
        if inp.mmds is not None:
            vm.mmds.put(inp.mmds)
        if inp.uart:
            vm.uart.queue_input(inp.uart)
        for w in inp.writes:  # all checked before any is stored
            if not vm.memory.contains(w.gpa, len(w.data)):
                raise GuestMemoryError(f"write of {len(w.data)} bytes at {w.gpa:#x} is outside RAM [{vm.memory.base:#x}, {vm.memory.end:#x})")
        for r in inp.registers:
            if r.vcpu >= len(vm.vcpus):
                raise ValueError(f"registers: vcpu{r.vcpu} does not exist (the machine has {len(vm.vcpus)} vCPUs)")
        pages: list[np.ndarray] = []
        for w in inp.writes:
            if w.data:
                vm.memory.write(w.gpa, w.data)
                offset = w.gpa - vm.memory.base
                pages.append(np.arange(offset // DIRTY_PAGE_SIZE, (offset + len(w.data) - 1) // DIRTY_PAGE_SIZE + 1))
        if pages:
            written = np.unique(np.concatenate(pages))
            for vcpu in vm.vcpus:
                vcpu.drop_translations(written)
        for r in inp.registers:
            vcpu = vm.vcpus[r.vcpu]
            if r.name == "pc":
                vcpu.pc = r.value
            else:
                vcpu.set_reg(int(r.name[1:]), r.value)

    def _run(self, budget: int, stop_at: bytes | None) -> tuple[str, str, int, int]:
        """(stop reason, detail, virtual instructions, retired instructions)."""
        vm = self.vm
        if stop_at is None:
            r = vm.run(budget)
            return r.reason.value, r.detail, r.instructions, r.retired
        start = vm.clock
        target, step, retired, scanned = start + budget, vm.config.quantum, 0, 0
        while True:
            if vm.clock >= target:
                return StopReason.BUDGET.value, "", vm.clock - start, retired
            r = vm.run(min(step, target - vm.clock))
            retired += r.retired
            if r.reason is not StopReason.BUDGET:
                return r.reason.value, r.detail, vm.clock - start, retired
            console = vm.console_output
            if console.find(stop_at, max(0, scanned - len(stop_at) + 1)) >= 0:
                return CONSOLE, f"console output has {stop_at[:40]!r}", vm.clock - start, retired
            scanned = len(console)
