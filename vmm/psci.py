"""PSCI 1.1 firmware interface, called by the guest with HVC (or SMC).

Source: Arm Power State Coordination Interface, DEN0022 (PSCI 1.1). Function IDs use the
SMC32 (0x84..) and SMC64 (0xC4..) conventions; for SMC32 IDs only the low 32 bits of the
arguments count. Results go back in x0 as a signed 64-bit value.

Simplifications (documented in docs/machine.md): CPU_SUSPEND treats every power state as
standby (the call returns SUCCESS when the vCPU wakes, which PSCI permits), and only affinity
level 0 is distinct (one cluster).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from vmm.layout import (  # function IDs (DEN0022 5.1, table 5) live with the guest-facing constants
    AFFINITY_INFO_32,
    AFFINITY_INFO_64,
    CPU_OFF,
    CPU_ON_32,
    CPU_ON_64,
    CPU_SUSPEND_32,
    CPU_SUSPEND_64,
    MIGRATE_INFO_TYPE,
    PSCI_FEATURES,
    PSCI_VERSION,
    SYSTEM_OFF,
    SYSTEM_RESET,
)
from vmm.vcpu import ExitKind, PowerState

if TYPE_CHECKING:
    from vmm.memory import GuestMemory
    from vmm.vcpu import Vcpu

# Return codes (DEN0022 5.2.2).
SUCCESS = 0
NOT_SUPPORTED = -1
INVALID_PARAMETERS = -2
DENIED = -3
ALREADY_ON = -4
ON_PENDING = -5
INTERNAL_FAILURE = -6
NOT_PRESENT = -7
DISABLED = -8
INVALID_ADDRESS = -9

# AFFINITY_INFO results (DEN0022 5.7).
AFFINITY_ON = 0
AFFINITY_OFF = 1
AFFINITY_ON_PENDING = 2

# MIGRATE_INFO_TYPE: 2 = Trusted OS not present or does not require migration (DEN0022 5.9).
MIGRATE_INFO_NOT_REQUIRED = 2

VERSION_1_1 = (1 << 16) | 1

MPIDR_AFF_MASK = 0xFF_00FF_FFFF  # Aff3 (39:32), Aff2..Aff0 (23:0)


def _is_smc32(fid: int) -> bool:
    return (fid >> 30) & 1 == 0


class Psci:
    """Dispatches PSCI calls for a set of vCPUs."""

    def __init__(self, vcpus: Sequence[Vcpu], memory: GuestMemory) -> None:
        self.vcpus = vcpus
        self.memory = memory
        self.calls = 0  # PSCI calls handled, for stats
        self._table: dict[int, Callable[[Vcpu, list[int]], int | None]] = {
            PSCI_VERSION: lambda v, a: VERSION_1_1,
            PSCI_FEATURES: self._features,
            CPU_SUSPEND_32: self._cpu_suspend,
            CPU_SUSPEND_64: self._cpu_suspend,
            CPU_OFF: self._cpu_off,
            CPU_ON_32: self._cpu_on,
            CPU_ON_64: self._cpu_on,
            AFFINITY_INFO_32: self._affinity_info,
            AFFINITY_INFO_64: self._affinity_info,
            MIGRATE_INFO_TYPE: lambda v, a: MIGRATE_INFO_NOT_REQUIRED,
            SYSTEM_OFF: self._system_off,
            SYSTEM_RESET: self._system_reset,
        }

    def _find(self, mpidr: int) -> Vcpu | None:
        for v in self.vcpus:
            if (v.mpidr & MPIDR_AFF_MASK) == (mpidr & MPIDR_AFF_MASK):
                return v
        return None

    def __call__(self, vcpu: Vcpu, fid: int) -> None:
        """Handle one call from `vcpu` (x0 = function ID); writes the result to x0."""
        self.calls += 1
        fid &= 0xFFFF_FFFF
        args = [vcpu.reg(i) for i in (1, 2, 3)]
        if _is_smc32(fid):
            args = [a & 0xFFFF_FFFF for a in args]
        handler = self._table.get(fid)
        result = NOT_SUPPORTED if handler is None else handler(vcpu, args)
        if result is not None:
            vcpu.set_reg(0, result)

    def _features(self, vcpu: Vcpu, args: list[int]) -> int:
        # For CPU_SUSPEND bit 1 = 0: original power_state format (DEN0022 5.15.2).
        return SUCCESS if (args[0] & 0xFFFF_FFFF) in self._table else NOT_SUPPORTED

    def _cpu_suspend(self, vcpu: Vcpu, args: list[int]) -> int:
        vcpu.waiting = True
        vcpu.request_exit(ExitKind.WAIT, "PSCI CPU_SUSPEND")
        return SUCCESS

    def _cpu_off(self, vcpu: Vcpu, args: list[int]) -> int | None:
        vcpu.power = PowerState.OFF
        vcpu.waiting = False
        vcpu.request_exit(ExitKind.CPU_OFF, "PSCI CPU_OFF")
        return None  # does not return to the caller

    def _cpu_on(self, vcpu: Vcpu, args: list[int]) -> int:
        target_mpidr, entry, context = args
        target = self._find(target_mpidr)
        if target is None:
            return INVALID_PARAMETERS
        if target.power is PowerState.ON:
            return ALREADY_ON
        if target.power is PowerState.ON_PENDING:
            return ON_PENDING
        if entry % 4 or not self.memory.contains(entry, 4):
            return INVALID_ADDRESS
        # Powered on at the next scheduling round, so the order of vCPUs in a round never
        # decides whether a secondary runs in the round it was started.
        target.power = PowerState.ON_PENDING
        target.pending_entry = entry
        target.pending_context = context
        return SUCCESS

    def _affinity_info(self, vcpu: Vcpu, args: list[int]) -> int:
        target_affinity, level = args[0], args[1]
        if level > 3:
            return INVALID_PARAMETERS
        # Affinity fields above `level` select the node; everything is one cluster here.
        shift_mask = {0: MPIDR_AFF_MASK, 1: 0xFF_00FF_FF00, 2: 0xFF_00FF_0000, 3: 0xFF_0000_0000}[level]
        members = [v for v in self.vcpus if (v.mpidr & shift_mask) == (target_affinity & shift_mask)]
        if not members:
            return INVALID_PARAMETERS
        if any(v.power is PowerState.ON for v in members):
            return AFFINITY_ON
        if any(v.power is PowerState.ON_PENDING for v in members):
            return AFFINITY_ON_PENDING
        return AFFINITY_OFF

    def _system_off(self, vcpu: Vcpu, args: list[int]) -> None:
        vcpu.request_exit(ExitKind.SYSTEM_OFF, "PSCI SYSTEM_OFF")

    def _system_reset(self, vcpu: Vcpu, args: list[int]) -> None:
        vcpu.request_exit(ExitKind.SYSTEM_RESET, "PSCI SYSTEM_RESET")


def complete_pending_power_on(vcpus: Sequence[Vcpu]) -> list[Vcpu]:
    """At a round boundary: vCPUs started with CPU_ON begin at their entry point (x0 = context)."""
    started = []
    for v in vcpus:
        if v.power is PowerState.ON_PENDING:
            v.reset(v.pending_entry, x0=v.pending_context)
            started.append(v)
    return started
