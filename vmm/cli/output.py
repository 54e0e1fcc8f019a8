"""What the `microvm` command writes: the guest's console on stdout, reports on stderr,
tables, the --json summary, and the standard streams made safe to write.

stdout is the guest's (or the report's) channel. If it is closed (`>&-`), it is plugged with
/dev/null before any file is opened, so no snapshot file can become fd 1, and the command is
refused. If writing it fails (`>/dev/full`, EIO), the run stops and the failure is reported as
an output error (exit 2), never as a fault of the guest.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence, TextIO

from vmm.cli.status import EXIT_CODES, UsageError
from vmm.scheduler import RunResult, StopReason

STREAMS = ((0, "stdin"), (1, "stdout"), (2, "stderr"))


def plug_closed_streams() -> list[str]:
    """Open /dev/null on each of fds 0, 1, 2 that is closed, so that no file opened later takes
    its number; return the names of those that were closed. Call first thing in main()."""
    closed = []
    for fd, name in STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            closed.append(name)
            devnull = os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            mode = "r" if fd == 0 else "w"
            setattr(sys, name, open(fd, mode, closefd=False))
    return closed


class StdoutError(UsageError):
    """stdout cannot be written (a full disk, EIO): an output error, exit status 2."""


class GuardedStdout:
    """sys.stdout for a command: a write or flush that fails with an OSError other than
    BrokenPipeError (which main() turns into status 141) raises StdoutError instead, so it is
    reported as one line, not a traceback and not a guest fault."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.failed = False

    def _guard(self, call: Callable[[], object]) -> object:
        try:
            return call()
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.failed = True
            raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        return self._guard(lambda: self.stream.write(text))  # type: ignore[return-value]

    def flush(self) -> None:
        self._guard(self.stream.flush)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


class StdoutConsole:
    """The guest's console streamed to stdout as it is written (an `on_console` sink).

    A failed write (reader gone: BrokenPipeError; disk full or EIO: OSError) is kept in
    `error` and raised on: inside the UART hook it stops the vCPU at once. `check()` then
    raises it again, so the command reports the output error instead of the guest fault that
    the stop looks like."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def __call__(self, data: bytes) -> None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:
            self.error = exc
            raise

    def check(self) -> None:
        """After every run of the VM, before acting on its result: BrokenPipeError (main()
        exits quietly with 141) or UsageError for another write failure."""
        exc = self.error
        if exc is None:
            return
        if isinstance(exc, BrokenPipeError):
            raise exc
        raise StdoutError(f"cannot write the guest's console to stdout: {exc.strerror or exc}")


def console_sink(json_output: bool) -> StdoutConsole | None:
    """Where the guest's console goes as it is written: stdout, unless --json collects it."""
    return None if json_output else StdoutConsole()


def check_console(console: StdoutConsole | None) -> None:
    if console is not None:
        console.check()


@dataclass
class RunTotals:
    """A command's whole run, summed over the `run()` segments it was cut into (snapshot
    points, dirty epochs): virtual time and the instructions each vCPU retired."""

    instructions: int = 0
    retired: list[int] = field(default_factory=list)

    def add(self, result: RunResult) -> RunResult:
        self.instructions += result.instructions
        per_vcpu = result.retired_per_vcpu
        if len(self.retired) < len(per_vcpu):
            self.retired += [0] * (len(per_vcpu) - len(self.retired))
        for i, n in enumerate(per_vcpu):
            self.retired[i] += n
        return result


def finish(
    quiet: bool,
    json_output: bool,
    result: RunResult,
    totals: RunTotals,
    vm: object,
    seconds: float,
    **extra: object,
) -> int:
    """Report the end of a run (one stderr line unless quiet; with --json one JSON object on
    stdout: stop reason, exit status, the whole run's virtual time and retired instructions,
    state digest, console output, `extra`) and return the exit status."""
    status = EXIT_CODES[result.reason]
    if not quiet:
        report(result, totals, seconds)
    if json_output:
        summary = {
            "stop": result.reason.value,
            "detail": result.detail,
            "exit_status": status,
            "instructions": totals.instructions,
            "retired_per_vcpu": totals.retired,
            "virtual_time_ns": vm.clock,  # type: ignore[attr-defined]
            "seconds": round(seconds, 6),
            "state_digest": vm.state_digest(),  # type: ignore[attr-defined]
            "console": vm.console_output.decode("utf-8", errors="backslashreplace"),  # type: ignore[attr-defined]
            "fault": result.fault.format() if result.fault is not None else None,
            **extra,
        }
        print(json.dumps(summary, sort_keys=True))
    return status


def report(result: RunResult, totals: RunTotals, seconds: float) -> None:
    """The fault report (if any) and one summary line on stderr: the whole run's virtual time
    and the instructions retired per vCPU, with the host rate they give."""
    if result.reason is StopReason.FAULT and result.fault is not None:
        print(result.fault.format(), file=sys.stderr)
    line = f"microvm: {result.reason.value}"
    if result.detail:
        line += f" ({result.detail})"
    retired = sum(totals.retired)
    line += f"; {totals.instructions:,} instructions of virtual time in {seconds:.2f} s"
    per_vcpu = " + ".join(f"{n:,}" for n in totals.retired)
    rate = f", {retired / seconds / 1e6:.1f} M instructions/s" if seconds > 0 else ""
    line += f"; retired per vCPU: {per_vcpu}{rate}"
    print(line, file=sys.stderr)


def note(quiet: bool, text: str) -> None:
    """One `microvm: ...` line on stderr unless quiet."""
    if not quiet:
        print(f"microvm: {text}", file=sys.stderr)


_NUMBER = re.compile(r"-?[\d,]+(\.\d+)?")  # a cell printed as a number: right-aligned


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls such as ESC and newline,
    format characters such as bidi overrides) written as its Python escape (`\x1b`, `\n`,
    `\u202e`): strings from a file can neither drive the terminal nor fake rows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None) -> None:
    """Print `rows` as aligned columns (with a header line if given); columns whose every
    cell is a number are right-aligned. Cells are shown `printable`."""
    body = [tuple(printable(c) for c in r) for r in rows]
    all_rows = ([tuple(headers)] if headers else []) + body
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    numeric = [bool(body) and all(_NUMBER.fullmatch(r[i]) for r in body) for i in range(len(widths))]
    for r in all_rows:
        cells = (c.rjust(w) if right else c.ljust(w) for c, w, right in zip(r, widths, numeric))
        print("  ".join(cells).rstrip())
