"""The parts vmm/vcpu.py composes, checked on their own: the register transfer between Unicorn
and VcpuState (vmm.vcpu_registers), the vector offsets of exception entry
(vmm.exception_entry), the syndromes of aborts (vmm.sync_exceptions) and the reset state
(vmm.vcpu_state). Guests exercise them end to end in test_vm_core, test_hostile_guests,
test_syndrome and test_snapshot."""
from __future__ import annotations

import pytest
from unicorn import UC_MEM_FETCH_UNMAPPED, UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_UNMAPPED

from vmm import arch
from vmm.engine import new_engine
from vmm.exception_entry import vector_offset
from vmm.sync_exceptions import external_abort
from vmm.vcpu_registers import read_registers, write_registers
from vmm.vcpu_state import VcpuState, reset_state


def _state(uc, **changes) -> VcpuState:
    return VcpuState(index=0, mpidr=1 << 31, pc=0x4000_0000, power="on", **{**read_registers(uc), **changes})


@pytest.mark.parametrize("pstate", [arch.PSTATE_EL1H_MASKED, arch.PSTATE_EL1T | arch.PSTATE_DAIF, arch.PSTATE_EL0T])
def test_registers_round_trip_through_unicorn_with_sp_in_its_bank(pstate: int) -> None:
    uc = new_engine()
    state = _state(
        uc,
        x=[0x1000 + i for i in range(31)],
        v=[bytes([i]) * 16 for i in range(32)],
        sp_el0=0x8000,
        sp_el1=0x9000,
        pstate=pstate,
        fpcr=0x0300_0000,  # RMode = round towards zero
        fpsr=0x1,  # IOC
    )
    write_registers(uc, state)
    assert read_registers(uc) == {f: getattr(state, f) for f in read_registers(uc)}


def test_vector_offsets_follow_the_exception_level_and_stack_pointer_taken_from() -> None:
    assert vector_offset(arch.PSTATE_EL0T) == arch.VECTOR_LOWER_EL_AARCH64
    assert vector_offset(arch.PSTATE_EL1T) == arch.VECTOR_CURRENT_EL_SP0
    assert vector_offset(arch.PSTATE_EL1H_MASKED) == arch.VECTOR_CURRENT_EL_SPX


@pytest.mark.parametrize(
    "access, el0, ec, wnr",
    [
        (UC_MEM_FETCH_UNMAPPED, True, arch.EC_IABT_LOWER, False),
        (UC_MEM_FETCH_UNMAPPED, False, arch.EC_IABT_CURRENT, False),
        (UC_MEM_READ_UNMAPPED, False, arch.EC_DABT_CURRENT, False),
        (UC_MEM_WRITE_UNMAPPED, True, arch.EC_DABT_LOWER, True),
    ],
)
def test_external_aborts_carry_class_fsc_wnr_and_the_physical_address(access: int, el0: bool, ec: int, wnr: bool) -> None:
    abort = external_abort(access, 0x1234_5678, pc=0x4000_0010, el0=el0)
    assert (abort.ec, abort.far, abort.preferred_return) == (ec, 0x1234_5678, 0x4000_0010)
    assert abort.iss & 0x3F == arch.FSC_SYNC_EXTERNAL
    assert bool(abort.iss & arch.ISS_DABT_WNR) == wnr
    assert abort.esr == arch.esr(ec, abort.iss)
    assert "0x12345678" in abort.reason


def test_reset_keeps_the_initial_vector_and_system_registers_and_clears_the_rest() -> None:
    initial = _state(new_engine(), v=[bytes([7]) * 16] * 32, x=[5] * 31, sp_el1=0x100)
    state = reset_state(initial, mpidr=(1 << 31) | 3, entry=0x4008_0000, x0=0x4800_0000)
    assert (state.pc, state.x[0], state.x[1:], state.sp_el1, state.mpidr) == (0x4008_0000, 0x4800_0000, [0] * 30, 0, (1 << 31) | 3)
    assert (state.v, state.sysregs, state.power, state.pstate) == (initial.v, initial.sysregs, "on", arch.PSTATE_EL1H_MASKED)
