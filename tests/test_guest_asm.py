"""guests.asm: the assembler wrapper and the snippets hand-written programs share."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from guests import asm, build
from guests.asm import RESULTS, RESULTS_PTR, U64_MAX, AssemblerMissingError, AssemblyError
from vmm import MicroVM, StopReason, VmConfig, psci
from vmm.layout import RAM_BASE

B_OPCODE = 0b000101  # B <label>: bits [31:26] (DDI 0487 C6.2.26), imm26 = offset / 4


@pytest.fixture
def keystone() -> None:
    pytest.importorskip("keystone")


def run(tmp_path: Path, source: str) -> MicroVM:
    """A VM that ran `source` (assembled at RAM_BASE) until it powered off."""
    image = tmp_path / "guest.bin"
    image.write_bytes(asm.assemble(source))
    vm = MicroVM(VmConfig(image=str(image)))
    assert vm.run(100_000).reason is StopReason.POWER_OFF
    return vm


def branch_target(image: bytes, offset: int) -> int:
    """Where the B instruction at `offset` in `image` jumps to (an offset in `image`)."""
    word = int.from_bytes(image[offset : offset + 4], "little")
    assert word >> 26 == B_OPCODE, f"no B at {offset:#x}: {word:#010x}"
    imm26 = word & ((1 << 26) - 1)
    return offset + 4 * (imm26 - (1 << 26) if imm26 >> 25 else imm26)


# --- load_constant, psci_call -------------------------------------------------------------------
EDGE_VALUES = [
    0, 1, 0xFFFF, 0x1_0000, 0xFFFF_0000, 1 << 63, U64_MAX, -1, -2, 1 << 64, (1 << 64) + 5,
    0x1234_0000_0000_5678, 0x0000_FFFF_0000_FFFF, 0xFFFF_0000_FFFF_0000,
]


def test_load_constant_loads_edge_values_into_the_register(tmp_path: Path, keystone: None) -> None:
    # Each register starts all ones, so a sequence that leaves any old bit set is caught.
    lines = []
    for n, value in enumerate(EDGE_VALUES, start=1):
        lines += [f"movn x{n}, #0", asm.load_constant(f"x{n}", value)]
    vm = run(tmp_path, "\n".join(lines + [asm.POWER_OFF]))
    got = [vm.vcpus[0].reg(n) for n in range(1, len(EDGE_VALUES) + 1)]
    assert got == [v & U64_MAX for v in EDGE_VALUES]


def test_load_constant_writes_movk_only_for_nonzero_halfwords() -> None:
    assert asm.load_constant("x3", 0) == "movz x3, #0"
    assert asm.load_constant("x3", 1 << 64) == "movz x3, #0"
    assert asm.load_constant("x3", 0x0005_0000_0000_0007) == "movz x3, #7\nmovk x3, #5, lsl #48"
    assert asm.load_constant("x3", -1).count("movk") == 3


def test_psci_call_passes_its_arguments_and_leaves_the_result_in_x0(tmp_path: Path, keystone: None) -> None:
    source = "\n".join([
        RESULTS_PTR,
        asm.psci_call(psci.PSCI_FEATURES, psci.CPU_ON_64), "str x0, [x28]",
        asm.psci_call(psci.PSCI_FEATURES, 0xFFFF_FFFF), "str x0, [x28, #8]",
        asm.psci_call(psci.PSCI_VERSION), "str x0, [x28, #16]",
        asm.POWER_OFF,
    ])
    vm = run(tmp_path, source)
    slots = [vm.memory.read_u64(RESULTS + 8 * i) for i in range(3)]
    assert slots == [psci.SUCCESS, psci.NOT_SUPPORTED & U64_MAX, 0x1_0001]  # PSCI 1.1


# --- vector_table -------------------------------------------------------------------------------
# Offsets from VBAR_EL1 (DDI 0487 D1.10.2), written out here rather than taken from guests.asm.
ARCHITECTED_OFFSETS = {
    "cur_sp0_sync": 0x000, "cur_sp0_irq": 0x080, "cur_sp0_fiq": 0x100, "cur_sp0_serror": 0x180,
    "cur_spx_sync": 0x200, "cur_spx_irq": 0x280, "cur_spx_fiq": 0x300, "cur_spx_serror": 0x380,
    "lower_sync": 0x400, "lower_irq": 0x480, "lower_fiq": 0x500, "lower_serror": 0x580,
    "lower32_sync": 0x600, "lower32_irq": 0x680, "lower32_fiq": 0x700, "lower32_serror": 0x780,
}


def test_vector_table_has_16_entries_of_0x80_bytes_at_the_architected_offsets(keystone: None) -> None:
    named = {"cur_sp0_sync": "on_sync", "cur_spx_irq": "on_irq", "lower_sync": "on_lower", "lower32_serror": "on_serror"}
    handlers = "\n".join(f"{label}:\n    nop" for label in named.values())
    image = asm.assemble(f"nop\n{asm.vector_table(**named)}\n{handlers}")
    table = 0x800  # the nop pushes `vectors` to the next 2 KiB boundary
    assert len(image) == table + 16 * 0x80 + 4 * len(named)
    assert sorted(ARCHITECTED_OFFSETS) == sorted(asm.VECTOR_ENTRIES)
    handler_at = {label: table + 16 * 0x80 + 4 * i for i, label in enumerate(named.values())}
    for entry, offset in ARCHITECTED_OFFSETS.items():
        expected = handler_at[named[entry]] if entry in named else table + offset  # else `b .`
        assert branch_target(image, table + offset) == expected, entry


def test_vector_table_refuses_an_entry_name_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="no vector table entry 'cur_spx_irqq'"):
        asm.vector_table(cur_spx_irqq="handler")


# --- assemble -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, reason",
    [
        ("movz x0, #1\nfrobnicate x1, x2", "Invalid mnemonic"),
        ("b nowhere", "Cannot find a symbol"),
        ("str x99, [x0]", "Invalid operand"),
    ],
)
def test_rejected_source_raises_assembly_error_naming_the_problem(source: str, reason: str, keystone: None) -> None:
    with pytest.raises(AssemblyError, match=f"^assembly failed: {reason}") as caught:
        asm.assemble(source)
    assert caught.value.reason.startswith(reason)
    assert caught.value.code > 0


def test_assemble_links_at_the_base_and_returns_bytes(keystone: None) -> None:
    base = RAM_BASE + 0x20_0000
    image = asm.assemble(".quad here\nhere:", base)
    assert isinstance(image, bytes) and int.from_bytes(image, "little") == base + 8
    assert asm.assemble("") == b""


def test_missing_keystone_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keystone", None)  # makes `import keystone` fail
    with pytest.raises(AssemblerMissingError, match=r"keystone-engine.*dev extra") as caught:
        asm.assemble("nop")
    assert isinstance(caught.value, ImportError)


def test_guest_build_reports_an_assembly_failure_in_one_line(monkeypatch: pytest.MonkeyPatch, keystone: None) -> None:
    monkeypatch.setattr(build, "source_of", lambda name: "frobnicate x0")
    with pytest.raises(SystemExit, match=r"^guests/build: hello: assembly failed: Invalid mnemonic"):
        build.assemble("hello")
