"""Helpers for tests that run small hand-written AArch64 programs (assembled with keystone)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmm import MicroVM, VmConfig
from vmm.layout import RAM_BASE

# Scratch area the test programs store results into (RAM_BASE + 1 MiB).
RESULTS = RAM_BASE + 0x10_0000


def assemble(source: str, base: int = RAM_BASE) -> bytes:
    keystone = pytest.importorskip("keystone")
    ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    encoding, _ = ks.asm(source, base)
    return bytes(encoding)


def mov64(reg: str, value: int) -> str:
    """movz/movk sequence loading a 64-bit constant."""
    lines = [f"movz {reg}, #{value & 0xFFFF}"]
    for shift in (16, 32, 48):
        part = (value >> shift) & 0xFFFF
        if part:
            lines.append(f"movk {reg}, #{part}, lsl #{shift}")
    return "\n".join(lines)


def boot(tmp_path: Path, source: str, **config: object) -> MicroVM:
    """A VM whose image is `source` assembled at RAM_BASE."""
    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(source))
    return MicroVM(VmConfig(image=str(image), **config))  # type: ignore[arg-type]


def result(vm: MicroVM, index: int) -> int:
    """The index-th u64 the program stored at RESULTS."""
    return vm.memory.read_u64(RESULTS + 8 * index)


POWER_OFF = "\n".join([mov64("x0", 0x8400_0008), "hvc #0"])
RESULTS_PTR = mov64("x28", RESULTS)


def vector_table(**entries: str) -> str:
    """A VBAR_EL1 table labelled `vectors`: 16 entries of 0x80 bytes, each `b <label>` for the
    entries named (keys: cur_sp0_sync, cur_spx_sync, cur_spx_irq, lower_sync, ...), else `b .`."""
    kinds = ("sync", "irq", "fiq", "serror")
    groups = ("cur_sp0", "cur_spx", "lower", "lower32")
    lines = [".p2align 11", "vectors:"]
    for group in groups:
        for kind in kinds:
            target = entries.get(f"{group}_{kind}", ".")
            lines += [f"    b {target}", ".p2align 7"]
    return "\n".join(lines)
