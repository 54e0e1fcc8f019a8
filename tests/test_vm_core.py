"""VM core: config validation, boot, PSCI, exception entry, faults, scheduler budget."""
from __future__ import annotations

import struct

import pytest
from asm import POWER_OFF, RESULTS_PTR, boot, mov64, result, vector_table

from vmm import ConfigError, ImageError, MicroVM, StopReason, VmConfig
from vmm import arch, psci
from vmm.layout import MIB, RAM_BASE


# --- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vcpus": 0}, "vcpus must be an integer from 1 to 32"),
        ({"vcpus": 33}, "vcpus must be an integer from 1 to 32"),
        ({"vcpus": True}, "vcpus must be an integer"),
        ({"mem_size": 8 * MIB}, "16 MiB to 16 GiB"),
        ({"mem_size": 17 * MIB}, "multiples of 2 MiB"),
        ({"mem_size": 32 * 1024 * MIB}, "16 MiB to 16 GiB"),
        ({"quantum": 0}, "quantum must be"),
        ({"guest": "hello", "image": "x.bin"}, "not both"),
        ({"params": {"n": -1}}, "guest parameter 'n'"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VmConfig(**kwargs)


def test_unknown_guest_and_parameter_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown guest 'nope'.*hello"):
        MicroVM(VmConfig(guest="nope"))
    with pytest.raises(ConfigError, match="has no parameter 'bogus'"):
        MicroVM(VmConfig(guest="hello", params={"bogus": 1}))


def test_unreadable_and_oversized_images_are_refused(tmp_path) -> None:
    with pytest.raises(ImageError, match="cannot read image"):
        MicroVM(VmConfig(image=str(tmp_path / "missing.bin")))
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(15 * MIB))
    with pytest.raises(ImageError, match="fit below the device tree"):
        MicroVM(VmConfig(image=str(big), mem_size=16 * MIB))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        MicroVM(VmConfig(image=str(empty)))


# --- boot ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vcpus", [1, 3])
def test_hello_prints_and_powers_off(vcpus: int) -> None:
    vm = MicroVM(VmConfig(guest="hello", vcpus=vcpus))
    r = vm.run(10_000_000)
    assert r.reason is StopReason.POWER_OFF
    assert vm.console_output == f"Hello from microvm-harness! vCPUs: {vcpus}\n".encode()
    assert vm.run().reason is StopReason.POWER_OFF  # a stopped VM stays stopped
    assert vm.run().instructions == 0


def test_boot_registers_follow_the_linux_arm64_protocol(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        str x0, [x28]
        str x1, [x28, #8]
        mrs x2, CurrentEL
        str x2, [x28, #16]
        mrs x3, sctlr_el1
        str x3, [x28, #24]
        mrs x4, daif
        str x4, [x28, #32]
        mrs x5, mpidr_el1
        str x5, [x28, #40]
        {POWER_OFF}
    """
    vm = boot(tmp_path, src, mem_size=64 * MIB)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    dtb = result(vm, 0)
    assert dtb == RAM_BASE + 64 * MIB - 2 * MIB
    assert vm.memory.read(dtb, 4) == b"\xd0\x0d\xfe\xed"  # FDT magic, big-endian
    assert result(vm, 2) == 1 << 2  # EL1
    assert result(vm, 3) & 1 == 0  # SCTLR_EL1.M: MMU off
    assert result(vm, 4) == 0xF << 6  # D, A, I, F masked
    assert result(vm, 5) == 1 << 31  # MPIDR_EL1 of vCPU 0


def test_device_tree_describes_the_machine() -> None:
    import fdt

    vm = MicroVM(VmConfig(guest="hello", vcpus=3, mem_size=32 * MIB))
    dtb_addr = vm.memory.end - 2 * MIB
    size = int.from_bytes(vm.memory.read(dtb_addr + 4, 4), "big")
    tree = fdt.parse_dtb(vm.memory.read(dtb_addr, size))
    dts = tree.to_dts()
    assert 'method = "hvc"' in dts
    assert dts.count('enable-method = "psci"') == 3
    assert "reg = <0x0 0x80000000 0x0 0x2000000>" in dts
    assert 'compatible = "arm,pl011", "arm,primecell"' in dts


def test_elf_images_load_at_their_physical_addresses(tmp_path) -> None:
    from asm import assemble

    entry = RAM_BASE + 0x20_0000
    code = assemble(f"{RESULTS_PTR}\nmov x1, #77\nstr x1, [x28]\n{POWER_OFF}", entry)
    ehdr_size, phdr_size = 64, 56
    offset = ehdr_size + phdr_size
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, offset, entry, entry, len(code), len(code) + 64, 4096)
    path = tmp_path / "guest.elf"
    path.write_bytes(ehdr + phdr + code)
    vm = MicroVM(VmConfig(image=str(path)))
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert result(vm, 0) == 77

    bad = tmp_path / "bad.elf"
    bad.write_bytes(ehdr[:20])
    with pytest.raises(ImageError, match="not a valid ELF"):
        MicroVM(VmConfig(image=str(bad)))


# --- PSCI -----------------------------------------------------------------------------------------------
def _psci_call(fid: int, *args: int, store: int) -> str:
    lines = [mov64("x0", fid)]
    for i, a in enumerate(args, start=1):
        lines.append(mov64(f"x{i}", a))
    lines += ["hvc #0", f"str x0, [x28, #{8 * store}]"]
    return "\n".join(lines)


def test_psci_calls_return_the_specified_codes(tmp_path) -> None:
    calls = [
        (psci.PSCI_VERSION, ()),
        (psci.PSCI_FEATURES, (psci.CPU_ON_64,)),
        (psci.PSCI_FEATURES, (0x8400_00FF,)),
        (0x8400_00FF, ()),
        (psci.MIGRATE_INFO_TYPE, ()),
        (psci.AFFINITY_INFO_64, (1, 0)),
        (psci.CPU_ON_64, (1, -1, 5)),  # entry = label `secondary`, patched below
        (psci.CPU_ON_64, (1, -1, 5)),
        (psci.AFFINITY_INFO_64, (1, 0)),
        (psci.CPU_ON_64, (0, -1, 0)),  # self
        (psci.CPU_ON_64, (7, -1, 0)),  # no such vCPU
        (psci.CPU_ON_64, (2, 0x1000, 0)),  # entry outside RAM
        (psci.AFFINITY_INFO_64, (1, 4)),  # bad level
        (psci.CPU_ON_32, (2, 0x8000_0001, 0)),  # misaligned entry
    ]
    body = []
    for n, (fid, args) in enumerate(calls):
        if -1 in args:
            a = [x for x in args]
            body.append(_psci_call(fid, a[0], 0, a[2], store=n).replace(mov64("x2", 0), "adr x2, secondary"))
        else:
            body.append(_psci_call(fid, *args, store=n))
    src = f"""
        {RESULTS_PTR}
        {chr(10).join(body)}
        // wait for the secondary to report its context id, then check AFFINITY_INFO again
    wait:
        ldr x0, [x28, #256]
        cbz x0, wait
        {_psci_call(psci.AFFINITY_INFO_64, 1, 0, store=33)}
        {POWER_OFF}
    secondary:
        {RESULTS_PTR}
        add x0, x0, #100
        str x0, [x28, #256]
        {mov64("x0", psci.CPU_OFF)}
        hvc #0
        b .
    """
    vm = boot(tmp_path, src, vcpus=3, quantum=1000)
    r = vm.run(10_000_000)
    assert r.reason is StopReason.POWER_OFF, r
    got = [result(vm, i) for i in range(len(calls))]
    neg = lambda c: c & 0xFFFF_FFFF_FFFF_FFFF  # noqa: E731
    assert got == [
        0x10001,
        psci.SUCCESS,
        neg(psci.NOT_SUPPORTED),
        neg(psci.NOT_SUPPORTED),
        2,
        psci.AFFINITY_OFF,
        psci.SUCCESS,
        neg(psci.ON_PENDING),
        psci.AFFINITY_ON_PENDING,
        neg(psci.ALREADY_ON),
        neg(psci.INVALID_PARAMETERS),
        neg(psci.INVALID_ADDRESS),
        neg(psci.INVALID_PARAMETERS),
        neg(psci.INVALID_ADDRESS),
    ]
    assert result(vm, 32) == 105  # the secondary got its context id in x0
    assert result(vm, 33) == psci.AFFINITY_OFF  # it powered itself off again


def test_system_reset_and_all_cpus_off_stop_the_vm(tmp_path) -> None:
    vm = boot(tmp_path, f"{mov64('x0', psci.SYSTEM_RESET)}\nhvc #0\nb .")
    assert vm.run(1_000_000).reason is StopReason.RESET
    vm = boot(tmp_path, f"{mov64('x0', psci.CPU_OFF)}\nhvc #0\nb .")
    r = vm.run(1_000_000)
    assert r.reason is StopReason.ALL_OFF


def test_psci_over_smc_works_too(tmp_path) -> None:
    vm = boot(tmp_path, f"{RESULTS_PTR}\n{mov64('x0', psci.PSCI_VERSION)}\nsmc #0\nstr x0, [x28]\n{POWER_OFF}")
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert result(vm, 0) == 0x10001


# --- exceptions -------------------------------------------------------------------------------------
VECTORS = vector_table(cur_sp0_sync="handler_cur_sp0", cur_spx_sync="handler_cur_spx", lower_sync="handler_lower")

# Each handler records (vector id, ESR, ELR, SPSR, FAR, SP) in the next 6-slot record and
# returns past the faulting instruction (or to ELR for SVC).
HANDLERS = f"""
handler_cur_sp0:
    mov x10, #1
    b record
handler_cur_spx:
    mov x10, #2
    b record
handler_lower:
    mov x10, #3
record:
    ldr x11, [x28, #504]      // record count
    mov x12, #48
    mul x12, x11, x12
    add x12, x12, x28
    str x10, [x12]
    mrs x13, esr_el1
    str x13, [x12, #8]
    mrs x14, elr_el1
    str x14, [x12, #16]
    mrs x15, spsr_el1
    str x15, [x12, #24]
    mrs x16, far_el1
    str x16, [x12, #32]
    mov x17, sp
    str x17, [x12, #40]
    add x11, x11, #1
    str x11, [x28, #504]
    lsr x13, x13, #26
    cmp x13, #0x15            // SVC: ELR already points past it
    b.eq do_eret
    add x14, x14, #4
    msr elr_el1, x14
do_eret:
    eret
"""


def _record(vm: MicroVM, n: int) -> dict[str, int]:
    base = 6 * n
    keys = ("vector", "esr", "elr", "spsr", "far", "sp")
    return {k: result(vm, base + i) for i, k in enumerate(keys)}


def test_synchronous_exceptions_are_delivered_with_architected_syndromes(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {mov64("x0", RAM_BASE + 0x80_0000)}
        mov sp, x0               // SP_EL0 selected? no: EL1h uses SP_EL1
    svc_site:
        svc #0x1234
    brk_site:
        brk #0x42
    udf_site:
        .word 0x00000000
    load_site:
        {mov64("x1", 0x1000)}
        ldr x2, [x1]
    done:
        {POWER_OFF}
    {HANDLERS}
    {VECTORS}
    """
    vm = boot(tmp_path, src)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert result(vm, 63) == 4
    svc, brk, udf, dabt = (_record(vm, i) for i in range(4))
    assert svc["vector"] == 2 and svc["esr"] >> 26 == arch.EC_SVC64 and svc["esr"] & 0xFFFF == 0x1234
    assert svc["esr"] & arch.ESR_IL
    assert svc["spsr"] & 0xF == arch.PSTATE_EL1H
    assert brk["esr"] >> 26 == arch.EC_BRK64 and brk["esr"] & 0xFFFF == 0x42
    assert brk["elr"] == svc["elr"]  # BRK's preferred return is the BRK itself, right after the SVC
    assert udf["esr"] >> 26 == arch.EC_UNKNOWN and udf["elr"] == brk["elr"] + 4
    assert dabt["esr"] >> 26 == arch.EC_DABT_CURRENT
    assert dabt["esr"] & 0x3F == arch.FSC_SYNC_EXTERNAL and not dabt["esr"] & arch.ISS_DABT_WNR
    assert dabt["far"] == 0x1000
    assert svc["sp"] == RAM_BASE + 0x80_0000


def test_exceptions_from_el0_use_the_lower_el_vector_and_bank_the_stack(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {mov64("x0", RAM_BASE + 0x80_0000)}
        mov sp, x0
        {mov64("x0", RAM_BASE + 0x40_0000)}
        msr sp_el0, x0
        adr x0, el0_code
        msr elr_el1, x0
        msr spsr_el1, xzr          // EL0t, interrupts unmasked
        eret
    el0_code:
        mov x5, sp
        str x5, [x28, #400]
        svc #7
        mov x5, sp
        str x5, [x28, #408]
        .word 0x00000000
        svc #8
    wait:
        b wait
    {HANDLERS}
    {VECTORS}
    """
    vm = boot(tmp_path, src)
    vm.run(200_000)
    first, second, third = (_record(vm, i) for i in range(3))
    assert first["vector"] == 3 and first["esr"] >> 26 == arch.EC_SVC64 and first["esr"] & 0xFFFF == 7
    assert first["spsr"] & 0xF == arch.PSTATE_EL0T
    assert first["sp"] == RAM_BASE + 0x80_0000  # the handler runs on SP_EL1
    assert result(vm, 50) == RAM_BASE + 0x40_0000 == result(vm, 51)  # EL0 keeps SP_EL0 across it
    assert second["vector"] == 3 and second["esr"] >> 26 == arch.EC_UNKNOWN
    assert third["esr"] & 0xFFFF == 8


@pytest.mark.parametrize(
    "body, words",
    [
        (".word 0x00000000", ["undefined instruction", "udf"]),
        ("svc #3", ["SVC instruction"]),
        (f"{mov64('x1', 0x0900_2000)}\nldr w2, [x1]", ["read from unmapped guest physical address 0x9002000"]),
        (f"{mov64('x1', 0x40)}\nstr x1, [x1]", ["write to unmapped guest physical address 0x40"]),
        (f"{mov64('x1', 0x7000_0000)}\nbr x1", ["instruction fetch from unmapped"]),
    ],
)
def test_faults_without_a_vector_table_stop_the_vm_with_a_report(tmp_path, body: str, words: list[str]) -> None:
    vm = boot(tmp_path, f"nop\n{body}\n{POWER_OFF}")
    r = vm.run(1_000_000)
    assert r.reason is StopReason.FAULT
    assert r.fault is not None and vm.fault is r.fault
    text = r.fault.format()
    for w in words:
        assert w in text
    assert "x0=" in text and "pstate=" in text
    assert vm.run().reason is StopReason.FAULT  # stays stopped


def test_a_fault_inside_the_vector_table_is_reported_not_looped(tmp_path) -> None:
    src = f"""
        adr x0, vectors
        msr vbar_el1, x0
        .word 0
    .p2align 11
    vectors:
        .word 0
    """
    vm = boot(tmp_path, src)
    r = vm.run(1_000_000)
    assert r.reason is StopReason.FAULT
    assert "no usable vector table" in r.fault.reason


def test_a_faulted_vm_does_not_disturb_another_vm(tmp_path) -> None:
    bad = boot(tmp_path, ".word 0")
    good = MicroVM(VmConfig(guest="hello"))
    assert bad.run(100_000).reason is StopReason.FAULT
    assert good.run(1_000_000).reason is StopReason.POWER_OFF
    assert good.console_output.startswith(b"Hello")


# --- scheduler and determinism ------------------------------------------------------------------
def test_budget_stops_at_a_round_end_and_the_vm_runs_on(tmp_path) -> None:
    vm = boot(tmp_path, "loop: add x9, x9, #1\nb loop", quantum=1000)
    r = vm.run(2500)
    assert r.reason is StopReason.BUDGET and r.instructions == 3000 and vm.clock == 3000
    assert vm.vcpus[0].reg(9) == 1500  # exactly quantum-sized slices: 2 instructions per iteration
    r = vm.run(1000)
    assert r.instructions == 1000 and vm.vcpus[0].reg(9) == 2000


def test_virtual_counter_and_rndr_are_deterministic(tmp_path) -> None:
    src = f"""
        {RESULTS_PTR}
        mrs x0, cntvct_el0
        str x0, [x28]
        mrs x0, cntfrq_el0
        str x0, [x28, #8]
        .word 0xd53b2400          // mrs x0, rndr
        mrs x1, nzcv
        str x0, [x28, #16]
        str x1, [x28, #24]
        {mov64("x2", 5000)}
    spin:
        subs x2, x2, #1
        b.ne spin
        mrs x0, cntvct_el0
        str x0, [x28, #32]
        {POWER_OFF}
    """
    vm = boot(tmp_path, src, quantum=1000)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert result(vm, 0) == 2  # exact: after the two instructions that load x28
    assert result(vm, 1) == 1_000_000_000
    assert result(vm, 2) == 0 and result(vm, 3) == 0x4000_0000  # RNDR: failure, Z set
    assert result(vm, 4) == 10_011  # 8 more, 1 mov, 5,000 x (subs, b.ne): whatever the quantum


def test_two_runs_of_the_same_guest_are_identical() -> None:
    digests = set()
    for _ in range(2):
        vm = MicroVM(VmConfig(guest="hello", vcpus=2, quantum=777))
        vm.run(5_000_000)
        digests.add((vm.state_digest(), vm.console_output))
    assert len(digests) == 1
