"""`VcpuHooks`: what a vCPU asks of its machine (system-register traps, PSCI, the TLB fill,
fault reports, interrupt state). The machine (vmm/machine.py) fills them in once, before it
makes its vCPUs; the vCPU calls them from inside Unicorn's hooks (vmm/vcpu.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from vmm.sysreg import SysReg

if TYPE_CHECKING:
    from vmm.native_fill import NativeFill
    from vmm.slice_exit import FaultInfo
    from vmm.vcpu import Vcpu

# Hook signatures the machine provides.
SysregRead = Callable[["Vcpu"], int]
SysregWrite = Callable[["Vcpu", int], None]


@dataclass
class VcpuHooks:
    """What a vCPU asks of its machine. The machine fills these in once at construction."""

    # Trapped system registers: encoding -> (read, write). Untrapped ones run natively.
    sysreg_read: dict[SysReg, SysregRead] = field(default_factory=dict)
    sysreg_write: dict[SysReg, SysregWrite] = field(default_factory=dict)
    # Trapped registers whose reads are constants of the CPU model (served in C where built).
    sysreg_const: dict[SysReg, int] = field(default_factory=dict)
    # Observed system-register writes: called before the MSR, which then runs natively.
    sysreg_observe: dict[SysReg, Callable[["Vcpu"], None]] = field(default_factory=dict)
    # PSCI call (HVC or SMC): returns nothing; sets x0 and/or ends the slice via vcpu.request_exit.
    psci: Callable[["Vcpu", int], None] | None = None
    # TLB fill policy: (vcpu, vaddr, access) -> (paddr, perms) or None for a fault.
    tlb_fill: Callable[["Vcpu", int, int], tuple[int, int] | None] | None = None
    # Its native first stage for this vCPU (vmm/native_fill.py), registered ahead of tlb_fill.
    # The instruction word a fetch from a VA would read now (None: it would fault); no side
    # effects. Watch hooks check with it that their instruction is still there.
    fetch_word: Callable[..., int | None] | None = None  # (vcpu, vaddr, el=None)
    tlb_fill_native: Callable[["Vcpu"], NativeFill | None] | None = None
    # MMIO dispatch errors and other faults end up here for a report.
    on_fault: Callable[["Vcpu", FaultInfo], object] | None = None
    # The generic timer's CNTVOFF for this vCPU (the native counter reads need it).
    cntvoff: Callable[["Vcpu"], int] | None = None
    # Called after a TLBI on this vCPU (its own TLB is flushed already): the others' next.
    on_tlbi: Callable[["Vcpu"], None] | None = None
    # Called after restore_state() (cached per-vCPU facts must be dropped).
    on_restore: Callable[["Vcpu"], None] | None = None
    # Is an interrupt pending for this vCPU (ignoring PSTATE.I)? Consulted at WFI.
    irq_pending: Callable[["Vcpu"], bool] | None = None
    # An LDTR/STTR at EL1 faulted on the data access at this VA: may EL0 make it? If so, the
    # next fill of its page uses EL0's permissions, and the vCPU runs the instruction again.
    unprivileged_retry: Callable[["Vcpu", int, object], bool] | None = None
    # Does the GIC signal an IRQ to this vCPU (taken as soon as PSTATE.I is clear)?
    irq_signalled: Callable[["Vcpu"], bool] | None = None
