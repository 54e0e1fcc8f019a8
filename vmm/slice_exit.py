"""How a vCPU slice ends early (`SliceExit`) and the raw facts of a guest fault (`FaultInfo`).

`Vcpu.run_slice` returns None when all its instructions ran, else a `SliceExit`; the scheduler
(vmm/scheduler.py) acts on its `kind`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitKind(str, enum.Enum):
    """Why a slice ended before its instruction count ran out."""

    WAIT = "wait"  # WFI or CPU_SUSPEND: sleep until an interrupt is pending
    CPU_OFF = "cpu_off"
    SYSTEM_OFF = "system_off"
    SYSTEM_RESET = "system_reset"
    FAULT = "fault"
    REPLAN = "replan"  # the VMM stopped here to plan the rest of the slice anew (a timer event)


@dataclass
class SliceExit:
    """A slice's early end: why, a one-line detail, and for FAULT the machine's fault report."""

    kind: ExitKind
    detail: str = ""
    fault: object | None = None  # vmm.fault.FaultReport for FAULT


@dataclass
class FaultInfo:
    """Raw facts about a fault the guest could not handle; `vmm.fault` formats them."""

    reason: str
    pc: int
    ec: int | None = None
    esr: int | None = None
    far: int | None = None
