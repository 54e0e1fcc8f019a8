"""System registers the VMM traps on every vCPU for determinism and identity.

Unicorn reads PMCCNTR_EL0 from host time and RNDR from the host's entropy; either would make a
run depend on the host, so they are trapped here (the generic counters and timers belong to
`vmm.interrupts`). MPIDR_EL1 is trapped because Unicorn reports the same value on every
instance.
"""
from __future__ import annotations

from vmm.vcpu import SysReg, Vcpu, VcpuHooks

MPIDR_EL1: SysReg = (3, 0, 0, 0, 5)
from vmm.native_sysreg import PMCCNTR_EL0  # noqa: E402  (one definition, served natively there)
RNDR: SysReg = (3, 3, 2, 4, 0)  # FEAT_RNG
RNDRRS: SysReg = (3, 3, 2, 4, 1)

NZCV = 0x4000_0000  # PSTATE.Z: RNDR "no entropy available" result (DDI 0487 C6.2.x RNDR)


def _rndr_fails(vcpu: Vcpu) -> int:
    """RNDR/RNDRRS report failure (Z set, result 0): architecturally allowed and deterministic."""
    from unicorn import arm64_const as a64

    vcpu.uc.reg_write(a64.UC_ARM64_REG_NZCV, NZCV)
    return 0


def base_sysreg_traps(hooks: VcpuHooks) -> None:
    """Install the traps every machine needs into `hooks`."""
    reads = {
        MPIDR_EL1: lambda v: v.mpidr,
        PMCCNTR_EL0: lambda v: v.now(),  # virtual cycles = instructions, exact per instruction
        RNDR: _rndr_fails,
        RNDRRS: _rndr_fails,
    }
    hooks.sysreg_read.update(reads)
    # Writes to the counters and MPIDR are ignored, as for read-only registers at EL1.
    for enc in (MPIDR_EL1, PMCCNTR_EL0):
        hooks.sysreg_write[enc] = lambda v, value: None
