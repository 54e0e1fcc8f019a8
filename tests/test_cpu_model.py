"""The CPU model a guest discovers (vmm/cpu_model.py) and the GICv3 group-0 registers, through
both the native system-register filter and the Python reference hooks."""
from __future__ import annotations

import pytest

from asm import POWER_OFF, RESULTS_PTR, boot, result
from vmm import StopReason
from vmm.native_fill import ENV_SWITCH

SOURCE = "\n".join(
    [
        RESULTS_PTR,
        "mrs x0, ID_AA64PFR0_EL1",
        "str x0, [x28, #0]",
        "mrs x0, S3_0_C0_C6_1",  # ID_AA64ISAR1_EL1
        "str x0, [x28, #8]",
        "mov x0, #0xff",
        "msr S3_0_C12_C8_4, x0",  # ICC_AP0R0_EL1: RAZ/WI
        "mrs x0, S3_0_C12_C8_4",
        "str x0, [x28, #16]",
        "mrs x0, S3_0_C12_C8_0",  # ICC_IAR0_EL1: no group-0 interrupt
        "str x0, [x28, #24]",
        "msr S3_0_C12_C12_6, x0",  # ICC_IGRPEN0_EL1: WI
        POWER_OFF,
    ]
)


def field(value: int, shift: int) -> int:
    return (value >> shift) & 0xF


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_features_needing_firmware_are_hidden_and_group0_exists(tmp_path, monkeypatch, native: str) -> None:
    monkeypatch.setenv(ENV_SWITCH, native)
    vm = boot(tmp_path, SOURCE)
    if native == "0":
        assert vm.vcpus[0].native_sysreg is None  # the Python reference hooks
    r = vm.run(100_000)
    assert r.reason is StopReason.POWER_OFF, r
    pfr0, isar1 = result(vm, 0), result(vm, 1)
    assert field(pfr0, 32) == 0  # SVE
    assert field(pfr0, 24) == 1  # GIC system registers
    assert field(pfr0, 56) == 1 and field(pfr0, 60) == 1  # CSV2, CSV3
    assert field(pfr0, 16) != 0xF and field(pfr0, 0) == 2  # FP present, EL0 AArch64 (from Unicorn)
    assert [field(isar1, s) for s in (4, 8, 24, 28)] == [0, 0, 0, 0]  # APA, API, GPA, GPI
    assert field(isar1, 20) != 0  # LRCPC: other features stay as Unicorn's `max` has them
    assert result(vm, 2) == 0
    assert result(vm, 3) == 1023


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_dc_zva_is_shown_prohibited_and_still_zeroes(tmp_path, monkeypatch, native: str) -> None:
    """DCZID_EL0.DZP = 1 (software then zeroes with stores), BS = 4 (64 bytes), at EL1 and
    every read; a DC ZVA executed anyway zeroes its 64-byte block."""
    monkeypatch.setenv(ENV_SWITCH, native)
    source = "\n".join(
        [
            RESULTS_PTR,
            "mrs x0, dczid_el0",
            "str x0, [x28, #0]",
            "mrs x1, dczid_el0",
            "str x1, [x28, #8]",
            "mov x2, #-1",
            "add x3, x28, #64",
            "stp x2, x2, [x3]",
            "dc zva, x3",
            "ldr x4, [x3]",
            "str x4, [x28, #16]",
            POWER_OFF,
        ]
    )
    vm = boot(tmp_path, source)
    assert vm.run(100_000).reason is StopReason.POWER_OFF
    assert [result(vm, i) for i in range(3)] == [0x14, 0x14, 0]
    if native == "1" and vm.vcpus[0].native_sysreg is not None:
        assert vm.vcpus[0].native_sysreg.python_calls == 0  # served in C, no Python call


EL0_READS = ("id_aa64pfr0_el1", "mpidr_el1", "S3_0_C12_C12_0")  # trapped or served by the VMM; ICC_IAR1_EL1


@pytest.mark.parametrize("register", EL0_READS)
@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_el0_reads_of_el1_registers_the_vmm_serves_are_undefined(tmp_path, monkeypatch, native: str, register: str) -> None:
    """Unicorn calls the system-register hook before its own access checks: an EL0 MRS of an
    EL1 register the VMM serves must still be UNDEFINED (EC 0x00 to EL1), not served (or, as
    it was, left spinning on the MRS)."""
    from asm import vector_table

    monkeypatch.setenv(ENV_SWITCH, native)
    source = "\n".join(
        [
            RESULTS_PTR,
            "adr x0, vectors",
            "msr vbar_el1, x0",
            "adr x0, el0",
            "msr elr_el1, x0",
            "msr spsr_el1, xzr",  # EL0t, interrupts unmasked
            "eret",
            "el0:",
            "mov x3, #7",
            f"mrs x3, {register}",
            "b .",
            "lower_sync:",
            "mrs x0, esr_el1",
            "str x0, [x28, #0]",
            "mrs x0, elr_el1",
            "adr x1, el0",
            "sub x0, x0, x1",
            "str x0, [x28, #8]",
            "str x3, [x28, #16]",
            POWER_OFF,
            vector_table(lower_sync="lower_sync"),
        ]
    )
    vm = boot(tmp_path, source)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    esr, elr_offset, x3 = (result(vm, i) for i in range(3))
    assert (esr >> 26, elr_offset, x3) == (0x00, 4, 7)  # UNDEFINED at the MRS; x3 untouched
