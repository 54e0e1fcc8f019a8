"""Deferring SIGINT/SIGTERM while the guest runs, so Ctrl-C stops the VM at a clean point.

Python runs signal handlers in the main thread between bytecodes, and that includes the Python
callbacks Unicorn calls from inside `emu_start`. A handler that raises there (SIGINT's default
raises KeyboardInterrupt) cannot unwind through C: ctypes prints "Exception ignored ..." and the
vCPU stops as if the guest had faulted. So while a VM runs, `DeferredSignals` replaces each
Python-level handler of SIGINT and SIGTERM by one that only records the signal. The scheduler
polls `pending` at every slice end and stops at the end of the round in progress (a pause
point, which does not change the schedule: vmm.scheduler), and on leaving the context the
original handler is called once per recorded signal, outside Unicorn, where raising is safe.

Why not `emu_stop()` from the handler: a stop at a host-timed instruction would add a slice
boundary (CLREX, a new translation block) at a point that depends on host timing, which the
guest can see (an exclusive pair across it fails). A round is at most vCPUs x quantum
instructions, well under a second at the default quantum.

Handlers that are not Python callables (SIG_DFL, SIG_IGN) are left alone: a default SIGTERM
still ends the process at once, as the user asked of the system. Outside the main thread
nothing can be installed and the context does nothing (signals are delivered to the main
thread, which is then not inside this thread's Unicorn).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Callable, Union

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Union[Callable[[int, Union[FrameType, None]], object], int, signal.Handlers, None]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the handler the CLI installs (`raise_terminated`): a KeyboardInterrupt
    so that every `except KeyboardInterrupt` cleanup runs, told apart by its signal number."""

    signum = signal.SIGTERM


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler that raises `Terminated` (the CLI's; see vmm.cli)."""
    raise Terminated()


class DeferredSignals:
    """`with DeferredSignals() as d:` records SIGINT/SIGTERM instead of running their Python
    handlers; `d.pending` says one arrived. On exit the handlers are put back and each recorded
    signal's handler runs (e.g. raises KeyboardInterrupt). Nesting works: an inner context
    records into the outer one's handler when it leaves."""

    def __init__(self, signals: tuple[int, ...] = DEFERRED_SIGNALS) -> None:
        self._signals = signals
        self._saved: dict[int, Handler] = {}
        self._received: list[int] = []

    @property
    def pending(self) -> bool:
        """True once a deferred signal arrived (cheap: polled at every slice end)."""
        return bool(self._received)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._received:
            self._received.append(signum)

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self._signals:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._saved[signum] = handler
                signal.signal(signum, self._record)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        saved, self._saved = self._saved, {}
        received, self._received = self._received, []
        for signum in received:
            handler = saved.get(signum)
            if callable(handler):
                handler(signum, None)
