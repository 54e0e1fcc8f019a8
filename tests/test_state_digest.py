"""Every register a snapshot saves is in `state_digest`: flipping any one changes the digest.

(A register the VMM restores but the digest ignores would let a restored VM differ from the
original while the digests say equal.)"""
from __future__ import annotations

from dataclasses import replace

import pytest

from vmm import MicroVM, VmConfig
from vmm.vcpu import SAVED_SYSREGS, VcpuState

BITS = (12, 0, 1, 2, 3, 4, 5, 8, 16, 20, 22, 24, 32, 40, 48)  # tried in order until one sticks


@pytest.fixture(scope="module")
def vm() -> MicroVM:
    vm = MicroVM(VmConfig(guest="hello"))
    vm.run(1_000)
    return vm


def _variants(state: VcpuState):
    """(name, state with that one register changed)."""
    for i in range(31):
        yield f"x{i}", replace(state, x=[v ^ (1 << 12) if k == i else v for k, v in enumerate(state.x)])
    for i in range(32):
        yield f"v{i}", replace(state, v=[bytes([b[0] ^ 1]) + b[1:] if k == i else b for k, b in enumerate(state.v)])
    yield "sp_el0", replace(state, sp_el0=state.sp_el0 ^ 0x1000)
    yield "sp_el1", replace(state, sp_el1=state.sp_el1 ^ 0x1000)
    yield "pc", replace(state, pc=state.pc ^ 0x1000)
    yield "pstate.nzcv", replace(state, pstate=state.pstate ^ 0x4000_0000)
    yield "fpcr", replace(state, fpcr=state.fpcr ^ (1 << 24))
    yield "fpsr", replace(state, fpsr=state.fpsr ^ 1)
    for reg in SAVED_SYSREGS:
        for bit in BITS:
            yield reg.name, replace(state, sysregs={**state.sysregs, reg.key: state.sysregs[reg.key] ^ (1 << bit)})


def test_flipping_each_saved_register_changes_the_digest(vm: MicroVM) -> None:
    v = vm.vcpus[0]
    original = v.save_state()
    digest = vm.state_digest()
    checked: set[str] = set()
    try:
        for name, changed in _variants(original):
            if name in checked:
                continue
            v.restore_state(changed)
            if v.save_state() == original:
                continue  # this bit does not stick (RES0/RES1): try the register's next bit
            checked.add(name)
            assert vm.state_digest() != digest, name
            v.restore_state(original)
            assert vm.state_digest() == digest, name
    finally:
        v.restore_state(original)
    expected = {f"x{i}" for i in range(31)} | {f"v{i}" for i in range(32)} | {r.name for r in SAVED_SYSREGS}
    expected |= {"sp_el0", "sp_el1", "pc", "pstate.nzcv", "fpcr", "fpsr"}
    assert checked == expected, sorted(expected - checked)
