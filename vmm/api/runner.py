"""`GuestRunner`: runs a MicroVM on its own thread, one scheduling round at a time.

Every use of the VM goes through this thread, so the API thread never touches the VM while the
guest runs:
- `resume()` lets the guest run; the thread calls `vm.run(1)` (exactly one round: run() stops at
  the first round end at or after start + 1) until told otherwise.
- `pause()` returns once the thread is between rounds and will not start another: the guest is
  stopped at a round end. Which round end depends on when the request arrived (host timing),
  an input, like the moment a Firecracker pause lands; what the guest sees at that point does
  not (run(N + M) == run(N); run(M) at round ends, vmm.scheduler).
- `call(fn)` runs `fn(vm)` on the thread between two rounds and returns its result (or raises
  its exception): host-side changes to the VM (MMDS puts, snapshots) land at round ends, never
  inside one, whether the guest is running or paused.

When the guest stops for good (power-off, reset, fault, every vCPU off) the thread calls
`on_stop(result)` and ends; later calls raise `GuestStoppedError`. A round that ends in deadlock
(every vCPU waits, no event pending) leaves the guest running but idle: the thread waits for
the next `call` (a host input may wake it) instead of spinning.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from vmm.errors import VmmError
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason


class GuestStoppedError(VmmError):
    """The guest has stopped for good (powered off, reset, faulted): nothing more can run."""


class GuestRunner:
    """The VM's thread. Create it paused; `resume()` to run. `close()` ends the thread."""

    def __init__(self, vm: MicroVM, on_stop: Callable[[RunResult], None] | None = None) -> None:
        self.vm = vm
        self._on_stop = on_stop
        self._cond = threading.Condition()
        self._tasks: deque[tuple[Callable[[MicroVM], Any], Future[Any]]] = deque()
        self._want_run = False
        self._running = False  # a round is in progress
        self._idle = False  # the last round ended in deadlock
        self._closing = False
        self.result: RunResult | None = None  # set when the guest has stopped for good
        self.rounds = 0
        self._thread = threading.Thread(target=self._loop, name="microvm-guest", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the guest is resumed (even between rounds or idle in deadlock)."""
        return self._want_run and self.result is None

    def resume(self) -> None:
        with self._cond:
            self._check_alive()
            self._want_run = True
            self._cond.notify_all()

    def pause(self) -> None:
        """Stop the guest at the next round end; returns once it is stopped."""
        with self._cond:
            self._want_run = False
            self._cond.notify_all()
            while self._running:
                self._cond.wait()

    def call(self, fn: Callable[[MicroVM], Any]) -> Any:
        """`fn(vm)` run between rounds on the VM's thread; its result, or its exception."""
        future: Future[Any] = Future()
        with self._cond:
            self._check_alive()
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future.result()

    def close(self) -> None:
        """Stop the thread (at a round end) and wait for it."""
        with self._cond:
            self._closing = True
            self._want_run = False
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _check_alive(self) -> None:
        if self.result is not None:
            raise GuestStoppedError(f"the guest has stopped ({self.result.reason.value})")
        if self._closing:
            raise GuestStoppedError("the VM is shutting down")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._tasks and not (self._want_run and not self._idle):
                    self._cond.wait()
                if self._closing and not self._tasks:
                    return
                tasks = list(self._tasks)
                self._tasks.clear()
                run = self._want_run and not self._idle and not tasks
                self._running = run
            for fn, future in tasks:
                try:
                    future.set_result(fn(self.vm))
                except BaseException as exc:  # handed to the caller, who re-raises it
                    future.set_exception(exc)
            if tasks:
                with self._cond:
                    self._idle = False  # a host input may have woken the guest
                continue
            if run:
                result = self._round()
                if result is not None:
                    return

    def _round(self) -> RunResult | None:
        """Run one round; the final result if the guest stopped for good."""
        try:
            result = self.vm.run(1)
        except BaseException as exc:  # a VMM bug: report it as a stop rather than hang
            result = RunResult(StopReason.FAULT, 0, detail=f"VMM error: {type(exc).__name__}: {exc}")
        final = result.reason.final
        with self._cond:
            self.rounds += 1
            self._running = False
            self._idle = result.reason is StopReason.DEADLOCK
            if final:
                self.result = result
                for _, future in self._tasks:
                    future.set_exception(GuestStoppedError(f"the guest has stopped ({result.reason.value})"))
                self._tasks.clear()
            self._cond.notify_all()
        if final:
            if self._on_stop is not None:
                self._on_stop(result)
            return result
        return None
