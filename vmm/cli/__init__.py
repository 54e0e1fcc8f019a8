"""The `microvm` command line (console entry point `vmm.cli:main`).

Every user error (bad config, unknown guest, unreadable or unusable file, unwritable stdout)
prints one line on stderr and exits with status 2; there is no traceback for user error.
Ctrl-C and SIGTERM stop a running guest at a round end and exit 130/143 with one line.

Modules: `options` (arguments), `inputs` (files the user names), `output` (stdout, stderr,
tables, --json), `status` (exit codes), and the commands: `run` (run, restore, serve, dirty-map),
`snapshots` (describe, verify, rebase), `about` (guests, info, --version, demo), `fanout` (one snapshot over many inputs), `console`
(the interactive --console).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Sequence

from snapshot.errors import SnapshotError
from vmm.cli import about, fanout, run, snapshots
from vmm.cli.options import build_parser
from vmm.cli.output import GuardedStdout, StdoutError, plug_closed_streams, print_table
from vmm.cli.status import (
    EXIT_BROKEN_PIPE,
    EXIT_BUDGET,
    EXIT_CODES,
    EXIT_DEADLOCK,
    EXIT_FAULT,
    EXIT_OK,
    EXIT_RESET,
    EXIT_SIGINT,
    EXIT_USAGE,
    UsageError,
)
from vmm.errors import VmmError
from vmm.signals import raise_terminated

__all__ = [
    "main", "build_parser", "print_table", "UsageError", "COMMANDS", "EXIT_CODES", "EXIT_OK", "EXIT_FAULT",
    "EXIT_USAGE", "EXIT_BUDGET", "EXIT_DEADLOCK", "EXIT_RESET", "EXIT_BROKEN_PIPE", "EXIT_SIGINT",
]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": about.cmd_info,
    "guests": about.cmd_guests,
    "demo": about.cmd_demo,
    "run": run.cmd_run,
    "restore": run.cmd_restore,
    "serve": run.cmd_serve,
    "dirty-map": run.cmd_dirty_map,
    "describe": snapshots.cmd_describe,
    "verify": snapshots.cmd_verify,
    "rebase": snapshots.cmd_rebase,
    "fanout": fanout.cmd_fanout,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: run the command `argv` (default sys.argv[1:]) and return its
    exit status. If the reader of stdout goes away early (`microvm demo | head -3`), the
    command stops quietly with EXIT_BROKEN_PIPE, as a program killed by SIGPIPE would; the
    Python docs' "Note on SIGPIPE" (signal module) pattern. If stdout cannot be written at
    all (closed, or a full disk), that is one line and status 2."""
    closed = plug_closed_streams()
    if "stdout" in closed:
        print("microvm: error: standard output is closed; redirect it (e.g. >/dev/null) instead of closing it", file=sys.stderr)
        return EXIT_USAGE
    guard = GuardedStdout(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # so a closed pipe shows up here rather than at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except StdoutError as e:  # failed at the last flush (a failure inside the command is reported there)
        _discard_stdout()
        print(f"microvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sys.stdout = guard.stream
    if guard.failed:
        _discard_stdout()
    return status


def _discard_stdout() -> None:
    """Python flushes stdout again at exit: send what is left to devnull instead."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dispatch(argv: Sequence[str] | None) -> int:
    """Parse `argv` and run its command; user errors become one line on stderr, status 2;
    SIGINT/SIGTERM one line and 128 + the signal's number."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = COMMANDS.get(getattr(args, "command", None) or "")
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return func(args)
    except (VmmError, UsageError, SnapshotError) as e:
        print(f"microvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"microvm: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
