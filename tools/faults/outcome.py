"""Verdicts of campaign trials and the per-category tally the bench reports.

A trial either survives (every contract held) or fails in exactly one way: `LOST_DATA` (a
snapshot that should load is gone, torn or silently different), `WRONG_EXCEPTION` (anything
but a SnapshotError escaped, or a guest stopped for an internal reason), `HANG` (a bound on
wall time or on a child process was exceeded) or `VIOLATION` (another contract broke: a stray
temporary file, a failed follow-up save, an unexpected stop reason).
"""
from __future__ import annotations

import enum
import signal
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

# Failures kept per category for the report (the counts are always complete).
MAX_FAILURES_KEPT = 20


class Verdict(str, enum.Enum):
    SURVIVED = "survived"
    LOST_DATA = "lost_data"
    WRONG_EXCEPTION = "wrong_exception"
    HANG = "hangs"
    VIOLATION = "violations"


@dataclass
class Trial:
    """The result of one trial: `case` says what was done, `detail` what went wrong (if
    anything), `tags` the sub-kinds it counts under (e.g. the phase a kill landed in)."""

    case: str
    verdict: Verdict = Verdict.SURVIVED
    detail: str = ""
    seconds: float = 0.0
    tags: tuple[str, ...] = ()
    peak_bytes: int = 0  # memory peak measured during the trial, if measured

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.SURVIVED

    def __str__(self) -> str:
        text = f"{self.case}: {self.verdict.value}"
        return f"{text} ({self.detail})" if self.detail else text


def failed(case: str, verdict: Verdict, detail: str, *, seconds: float = 0.0, tags: tuple[str, ...] = ()) -> Trial:
    """A trial that broke a contract."""
    return Trial(case, verdict, detail, seconds, tags)


def describe_exception(exc: BaseException) -> str:
    """'TypeError: ... at file.py:12' - the exception and the innermost frame it came from."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


@dataclass
class Tally:
    """Counts of one category: trials, per verdict, per tag; slowest trial; first failures."""

    trials: int = 0
    verdicts: Counter[Verdict] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    max_seconds: float = 0.0
    max_peak_bytes: int = 0
    failures: list[Trial] = field(default_factory=list)

    def add(self, trial: Trial) -> Trial:
        self.trials += 1
        self.verdicts[trial.verdict] += 1
        self.tags.update(trial.tags)
        self.max_seconds = max(self.max_seconds, trial.seconds)
        self.max_peak_bytes = max(self.max_peak_bytes, trial.peak_bytes)
        if not trial.ok and len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(trial)
        return trial

    @property
    def clean(self) -> bool:
        """No lost data, wrong exception, hang or violation."""
        return self.verdicts[Verdict.SURVIVED] == self.trials

    def figures(self) -> dict[str, object]:
        out: dict[str, object] = {"trials": self.trials}
        out.update({v.value: self.verdicts[v] for v in Verdict})
        out["max_trial_seconds"] = round(self.max_seconds, 3)
        if self.max_peak_bytes:
            out["max_decode_peak_bytes"] = self.max_peak_bytes
        if self.tags:
            out["by_kind"] = dict(sorted(self.tags.items()))
        return out


class Hang(BaseException):
    """Raised by `watchdog` when its bound passes (a BaseException, so `except Exception` in
    the code under test cannot swallow it)."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise Hang in the block if it runs longer than `seconds` of wall time (SIGALRM; only in
    the main thread - elsewhere the block just runs). C code is interrupted when it returns to
    the interpreter."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Stopwatch:
    """Wall time since creation, in seconds."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0
