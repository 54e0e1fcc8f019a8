"""vmm.icount: Unicorn's instruction counter, read in hooks and after runs, and the MRS probe."""
from __future__ import annotations

import pytest
from asm import POWER_OFF, boot
from unicorn import UC_ARCH_ARM64, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_ARM, Uc
from unicorn import arm64_const as a64

from vmm import StopReason, sysreg
from vmm.icount import InstructionCounter, InstructionCounterError, mrs_steps_past_skip
from vmm.sysreg_traps import MPIDR_EL1, RNDR

BASE = 0x10000
NOP = (0xD503201F).to_bytes(4, "little")
MRS_X0_CNTFRQ = (0xD53BE000).to_bytes(4, "little")


def engine(code: bytes) -> tuple[Uc, InstructionCounter]:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_MAX)
    uc.mem_map(BASE, 0x1000)
    uc.mem_write(BASE, code)
    return uc, InstructionCounter(uc)


def test_counted_in_hooks_and_after_runs() -> None:
    uc, counter = engine(NOP * 64)
    seen: list[tuple[int, int]] = []

    def hook(uc: Uc, address: int, size: int, _ud: object) -> None:
        seen.append(((address - BASE) // 4, counter.counted()))
        if address == BASE + 4 * 30:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_CODE, hook, None, BASE + 4 * 7, BASE + 4 * 30)
    uc.emu_start(BASE, BASE + 4 * 64, count=20)
    assert seen[0] == (7, 8) and seen[-1] == (19, 20)  # in the hook of instruction i: i + 1
    assert counter.counted() == 21  # ran out of count: the stop is in the hook of instruction 21
    assert uc.reg_read(a64.UC_ARM64_REG_PC) == BASE + 4 * 20
    seen.clear()
    uc.emu_start(BASE, BASE + 4 * 64, count=1_000)
    assert seen[-1] == (30, 31) and counter.counted() == 31  # stopped by the hook at 30
    assert uc.reg_read(a64.UC_ARM64_REG_PC) == BASE + 4 * 30  # in front of it


def test_counters_of_two_engines_are_independent() -> None:
    (a, ca), (b, cb) = engine(NOP * 16), engine(NOP * 16)
    a.emu_start(BASE, BASE + 64, count=5)
    b.emu_start(BASE, BASE + 64, count=9)
    assert (ca.counted(), cb.counted()) == (6, 10)


def test_a_skipped_mrs_of_an_implemented_register_steps_on_and_counts_once() -> None:
    uc, counter = engine(NOP + MRS_X0_CNTFRQ + NOP * 4)
    counts: list[int] = []
    uc.hook_add(UC_HOOK_CODE, lambda uc, a, s, u: counts.append(counter.counted()))

    def on_mrs(uc: Uc, reg: int, cp: object, _ud: object) -> int:
        uc.reg_write(reg, 42)
        return 1

    uc.hook_add(UC_HOOK_INSN, on_mrs, None, 1, 0, a64.UC_ARM64_INS_MRS)
    uc.emu_start(BASE, BASE + 24, count=100)
    assert uc.reg_read(a64.UC_ARM64_REG_X0) == 42
    assert counts == [1, 2, 3, 4, 5, 6]  # no instruction counted twice
    assert uc.reg_read(a64.UC_ARM64_REG_PC) == BASE + 24


def test_mrs_probe_tells_implemented_registers_from_the_others() -> None:
    steps = mrs_steps_past_skip([sysreg.CNTVCT_EL0, sysreg.CNTV_TVAL_EL0, MPIDR_EL1, RNDR, sysreg.ICC_IAR1_EL1])
    # QEMU implements the counters, timers, MPIDR and RNDR; Unicorn has no GIC CPU interface.
    assert steps == {sysreg.CNTVCT_EL0, sysreg.CNTV_TVAL_EL0, MPIDR_EL1, RNDR}
    assert mrs_steps_past_skip([]) == frozenset()


def test_every_trapped_mrs_costs_one_instruction(tmp_path) -> None:
    """GIC (not implemented by QEMU) and timer (implemented) reads, back to back: exact times."""
    src = f"""
        mrs x1, ICC_IAR1_EL1      // 0
        mrs x2, cntvct_el0        // 1
        mrs x3, mpidr_el1         // 2
        mrs x4, ICC_HPPIR1_EL1    // 3
        mrs x5, cntpct_el0        // 4
        mrs x6, cntvct_el0        // 5
        {POWER_OFF}
    """
    for quantum in (1, 2, 3, 5, 100):
        vm = boot(tmp_path, src, quantum=quantum)
        assert vm.run(1_000).reason is StopReason.POWER_OFF
        assert [vm.vcpus[0].reg(i) for i in (2, 5, 6)] == [1, 4, 5], quantum


def test_a_slice_whose_count_does_not_add_up_fails_loudly(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_BLOCK_COUNTER", "0")  # Unicorn's count= (tests/test_block_counter.py: the other path)
    vm = boot(tmp_path, "b .", quantum=1_000)
    assert vm.run(1_000).reason is StopReason.BUDGET
    counter = vm.vcpus[0]._icount
    monkeypatch.setattr(counter, "counted", lambda: 7)  # as if the struct layout had changed
    with pytest.raises(InstructionCounterError, match="a slice of 1000 instructions counted 6"):
        vm.run(1_000)
