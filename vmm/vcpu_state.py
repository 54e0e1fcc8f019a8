"""A vCPU's state as plain data: what a snapshot carries (`VcpuState`) and what an in-process
rollback restores (`VcpuCheckpoint`).

This is the vCPU's persistence boundary, as Firecracker's aarch64 `VcpuState` is: `Vcpu.save_state()`
returns a `VcpuState` and `Vcpu.restore_state()` takes one back (vmm/vcpu.py). `vmm.persist`
encodes it with snapshot.plain, whose markers below bound every field when a file is decoded.
Field and key names are the snapshot format (docs/snapshot-format.md): add, never rename.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from snapshot.plain import U32, U64, Len, MaxLen, Width
from vmm import arch
from vmm.sysreg import SysReg, generic_name

if TYPE_CHECKING:
    from unicorn import Uc


@dataclass(frozen=True)
class SavedSysreg:
    """A system register that is part of `VcpuState`, keyed by its encoding."""

    name: str
    enc: SysReg  # (op0, op1, crn, crm, op2)

    @property
    def key(self) -> str:
        """Generic assembler name, e.g. S3_0_C1_C0_0 for SCTLR_EL1: the stable snapshot key."""
        return generic_name(self.enc)


# The curated list of EL1/EL0 system registers a snapshot carries (add-only across versions).
# Registers Unicorn implements as RAZ/WI (AFSR0/1, AMAIR, CSSELR) are left out. SP_EL0/SP_EL1
# are fields of their own; timer and GIC CPU-interface registers belong to those devices.
SAVED_SYSREGS: tuple[SavedSysreg, ...] = (
    SavedSysreg("SCTLR_EL1", (3, 0, 1, 0, 0)),
    SavedSysreg("CPACR_EL1", (3, 0, 1, 0, 2)),
    SavedSysreg("TTBR0_EL1", (3, 0, 2, 0, 0)),
    SavedSysreg("TTBR1_EL1", (3, 0, 2, 0, 1)),
    SavedSysreg("TCR_EL1", (3, 0, 2, 0, 2)),
    SavedSysreg("SPSR_EL1", (3, 0, 4, 0, 0)),
    SavedSysreg("ELR_EL1", (3, 0, 4, 0, 1)),
    SavedSysreg("ESR_EL1", (3, 0, 5, 2, 0)),
    SavedSysreg("FAR_EL1", (3, 0, 6, 0, 0)),
    SavedSysreg("PAR_EL1", (3, 0, 7, 4, 0)),
    SavedSysreg("MAIR_EL1", (3, 0, 10, 2, 0)),
    SavedSysreg("VBAR_EL1", (3, 0, 12, 0, 0)),
    SavedSysreg("CONTEXTIDR_EL1", (3, 0, 13, 0, 1)),
    SavedSysreg("TPIDR_EL1", (3, 0, 13, 0, 4)),
    SavedSysreg("TPIDR_EL0", (3, 3, 13, 0, 2)),
    SavedSysreg("TPIDRRO_EL0", (3, 3, 13, 0, 3)),
    SavedSysreg("MDSCR_EL1", (2, 0, 0, 2, 2)),
    # Written by Linux at boot (measured: every MSR of a boot to the busybox prompt).
    SavedSysreg("PMUSERENR_EL0", (3, 3, 9, 14, 0)),
    *(SavedSysreg(f"DBGBVR{n}_EL1", (2, 0, 0, n, 4)) for n in range(6)),  # DDI 0487 D19.3: 6 breakpoints
    *(SavedSysreg(f"DBGBCR{n}_EL1", (2, 0, 0, n, 5)) for n in range(6)),
    *(SavedSysreg(f"DBGWVR{n}_EL1", (2, 0, 0, n, 6)) for n in range(4)),  # 4 watchpoints
    *(SavedSysreg(f"DBGWCR{n}_EL1", (2, 0, 0, n, 7)) for n in range(4)),
)
_SYSREG_BY_NAME = {r.name: r for r in SAVED_SYSREGS}


def saved_sysreg(name: str) -> SavedSysreg:
    """The saved system register called `name`, e.g. 'ELR_EL1' (KeyError if not saved)."""
    return _SYSREG_BY_NAME[name]


def saved_sysreg_key(name: str) -> str:
    """The `VcpuState.sysregs` key of a saved system register, e.g. 'ELR_EL1'."""
    return _SYSREG_BY_NAME[name].key


class PowerState(str, enum.Enum):
    """PSCI power state of a vCPU (PSCI 1.1, 5.1.5 AFFINITY_INFO)."""

    ON = "on"
    OFF = "off"
    ON_PENDING = "on_pending"


@dataclass
class VcpuState:
    """Everything architecturally visible about one vCPU, as plain data.

    Widths are checked when a snapshot is decoded (snapshot.plain markers)."""

    index: Annotated[int, Width(5)]  # 0..31
    mpidr: U64
    x: Annotated[list[U64], Len(31)]  # X0..X30
    sp_el0: U64
    sp_el1: U64
    pc: U64
    pstate: U32
    v: Annotated[list[Annotated[bytes, Len(16)]], Len(32)]  # V0..V31, little-endian
    fpcr: U32
    fpsr: U32
    sysregs: Annotated[dict[str, U64], MaxLen(64)]  # keyed by SavedSysreg.key
    power: Literal["on", "off", "on_pending"]
    waiting: bool = False  # in WFI or PSCI CPU_SUSPEND (standby), until an interrupt
    pending_entry: U64 = 0  # CPU_ON entry point while ON_PENDING
    pending_context: U64 = 0  # CPU_ON context id while ON_PENDING

    def __post_init__(self) -> None:
        """ValueError (EncodingError when decoded) for a state this machine cannot be in: PSTATE
        at an exception level other than EL0t/EL1t/EL1h (no EL2, EL3 or AArch32 here) or a
        system register that is not one of SAVED_SYSREGS."""
        mode = self.pstate & (arch.PSTATE_M_MASK | arch.PSTATE_NRW)
        if mode not in _VALID_PSTATE_MODES:
            raise ValueError(f"pstate {self.pstate:#x}: M[4:0] = {mode:#x} is not EL0t, EL1t or EL1h")
        unknown = next((key for key in self.sysregs if key not in _SAVED_SYSREG_KEYS), None)
        if unknown is not None:
            raise ValueError(f"sysregs: {unknown[:40]!r} is not a saved system register")


_VALID_PSTATE_MODES = frozenset({arch.PSTATE_EL0T, arch.PSTATE_EL1T, arch.PSTATE_EL1H})
_SAVED_SYSREG_KEYS = frozenset(r.key for r in SAVED_SYSREGS)


def reset_state(initial: VcpuState, mpidr: int, entry: int, x0: int = 0, x1: int = 0) -> VcpuState:
    """The state after an architectural reset into EL1h, MMU off, DAIF masked, at `entry` with
    X0/X1 set (the Linux boot protocol), powered on. `initial` is the vCPU's state as its
    engine started: its V registers and system registers are kept, all else is 0."""
    return VcpuState(
        index=initial.index,
        mpidr=mpidr,
        x=[x0, x1] + [0] * 29,
        sp_el0=0,
        sp_el1=0,
        pc=entry,
        pstate=arch.PSTATE_EL1H_MASKED,
        v=list(initial.v),
        fpcr=0,
        fpsr=0,
        sysregs=dict(initial.sysregs),
        power=PowerState.ON.value,
    )


@dataclass(frozen=True)
class VcpuCheckpoint:
    """One vCPU's state for an in-process rollback (`Vcpu.checkpoint`): the Unicorn CPU context
    of the instance that took it, plus the VMM's own fields. Never persisted."""

    owner: Uc  # the only instance this context may be restored into
    context: object  # unicorn UcContext
    pc: int
    mpidr: int
    power: PowerState
    waiting: bool
    pending_entry: int
    pending_context: int
