"""Exit statuses of the `microvm` command and the one error type for command-line mistakes."""
from __future__ import annotations

import signal

from vmm.scheduler import StopReason

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_DEADLOCK = 4
EXIT_RESET = 5
# Shell convention for a program stopped by a signal: 128 + the signal's number.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: stdout's reader went away
EXIT_SIGINT = 128 + signal.SIGINT  # 130: Ctrl-C
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143

EXIT_CODES = {
    StopReason.POWER_OFF: EXIT_OK,
    StopReason.ALL_OFF: EXIT_OK,
    StopReason.FAULT: EXIT_FAULT,
    StopReason.BUDGET: EXIT_BUDGET,
    StopReason.DEADLOCK: EXIT_DEADLOCK,
    StopReason.RESET: EXIT_RESET,
    StopReason.OUTPUT: EXIT_OK,
    StopReason.INTERRUPTED: EXIT_SIGINT,
}

EPILOG_EXIT = """exit status:
  0  the guest powered off (PSCI SYSTEM_OFF, or every vCPU called CPU_OFF)
  1  the guest faulted (a fault report is printed on stderr)
  2  usage, input or output error (one line on stderr)
  3  the instruction budget ran out before the guest powered off
  4  deadlock: every vCPU waits and no event is pending
  5  the guest asked for a system reset
130  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM: the VM stopped at a round end and no
     snapshot was written that was not asked for
141  stdout was closed early (e.g. piped into head)
"""


class UsageError(Exception):
    """A command-line mistake or an unusable input/output: printed as one line, exit status 2."""
