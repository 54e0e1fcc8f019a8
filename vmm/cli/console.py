"""The interactive console (`--console`): the terminal's keys go to the guest's UART as they
are typed, the guest's output comes back, and an escape key drives the VMM.

Keys: Ctrl-] (0x1d, telnet's escape) then
    p  pause / continue        s  save a full snapshot into --snapshot-dir
    q  quit (exit status 3, as when a budget ends: the guest did not stop by itself)
    c  continue (after p)
    ?  this list               Ctrl-] again: send a literal 0x1d to the guest
Every other byte, Ctrl-C included, goes to the guest (the terminal is in raw mode).

A console run is not deterministic: when a key reaches the guest depends on when it was typed.
Keys are delivered at round ends only (the VM runs one round between polls), so the VM is
always at a pause point when it is paused or snapshotted. To reproduce a session, give the same
bytes with --input.
"""
from __future__ import annotations

import os
import select
import sys
import termios
from typing import Callable

from vmm.cli.output import RunTotals
from vmm.cli.status import UsageError
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason

ESCAPE = 0x1D  # Ctrl-]
HELP = "Ctrl-] then: p pause/continue, s snapshot, q quit, c continue, ? help"


class _Keys:
    """Splits typed bytes into guest input and escape commands."""

    def __init__(self) -> None:
        self.escaped = False

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        to_guest, commands = bytearray(), []
        for b in data:
            if self.escaped:
                self.escaped = False
                if b == ESCAPE:
                    to_guest.append(b)
                else:
                    commands.append(chr(b).lower())
            elif b == ESCAPE:
                self.escaped = True
            else:
                to_guest.append(b)
        return bytes(to_guest), commands


def _raw(fd: int) -> list:  # type: ignore[type-arg]
    """Put terminal `fd` in raw input mode (no echo, no line editing, no signals from keys)
    but keep output processing (\\n -> \\r\\n); return the old attributes."""
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR | termios.IGNCR | termios.BRKINT | termios.ISTRIP)
    new[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    new[6][termios.VMIN], new[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return old


def _say(text: str) -> None:
    print(f"\r\n[microvm: {text}]\r", file=sys.stderr, flush=True)


def run_console(
    vm: MicroVM,
    budget: int | None,
    *,
    saver: Callable[[list[int]], None],
    totals: RunTotals,
    check: Callable[[], None],
) -> RunResult:
    """Run `vm` (for `budget` instructions, or until it stops) on the interactive console."""
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        fd = -1
    if fd < 0 or not os.isatty(fd):
        raise UsageError("--console needs a terminal on stdin; for input from a file or pipe use --input FILE (or -)")
    keys = _Keys()
    old = _raw(fd)
    _say(HELP)
    paused = False
    end = None if budget is None else vm.clock + budget
    result = RunResult(StopReason.BUDGET, 0, retired_per_vcpu=[0] * len(vm.vcpus))
    try:
        while True:
            if end is not None and vm.clock >= end:
                return result
            idle = paused or result.reason is StopReason.DEADLOCK
            if not idle:
                step = vm.config.quantum if end is None else min(vm.config.quantum, end - vm.clock)
                result = totals.add(vm.run(step))
                check()
                if result.reason.final:
                    return result
            ready, _, _ = select.select([fd], [], [], None if idle else 0)
            if not ready:
                continue
            data = os.read(fd, 4096)
            if not data:  # the terminal went away
                return result
            to_guest, commands = keys.feed(data)
            if to_guest:
                vm.uart.queue_input(to_guest)
                if result.reason is StopReason.DEADLOCK:
                    result = RunResult(StopReason.BUDGET, 0, retired_per_vcpu=[0] * len(vm.vcpus))
            for command in commands:
                if command == "q":
                    _say(f"quit at virtual time {vm.clock:,}")
                    return RunResult(StopReason.BUDGET, 0, "quit from the console", retired_per_vcpu=[0] * len(vm.vcpus))
                if command == "p":
                    paused = not paused
                    _say(f"paused at virtual time {vm.clock:,}; Ctrl-] c continues" if paused else "continuing")
                elif command == "c":
                    paused = False
                    _say("continuing")
                elif command == "s":
                    try:
                        saver([vm.clock])
                        _say(f"snapshot saved at virtual time {vm.clock:,}")
                    except UsageError as e:
                        _say(str(e))
                else:
                    _say(HELP)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
