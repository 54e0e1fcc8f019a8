"""Helpers for tests that run small hand-written AArch64 programs (assembled with keystone).

The assembler and the snippets are guests.asm's (`mov64` is the tests' name for its
load_constant); `assemble` here skips the test when keystone (the `dev` extra) is missing.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from guests import asm as guest_asm
from guests.asm import POWER_OFF, RESULTS, RESULTS_PTR, vector_table
from guests.asm import load_constant as mov64
from vmm import MicroVM, VmConfig
from vmm.layout import RAM_BASE

__all__ = ["POWER_OFF", "RESULTS", "RESULTS_PTR", "assemble", "boot", "mov64", "result", "vector_table"]


def assemble(source: str, base: int = RAM_BASE) -> bytes:
    """`source` assembled at `base` (guests.asm.assemble); skips the test without keystone."""
    pytest.importorskip("keystone")
    return guest_asm.assemble(source, base)


def boot(tmp_path: Path, source: str, **config: object) -> MicroVM:
    """A VM whose image is `source` assembled at RAM_BASE."""
    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(source))
    return MicroVM(VmConfig(image=str(image), **config))  # type: ignore[arg-type]


def result(vm: MicroVM, index: int) -> int:
    """The index-th u64 the program stored at RESULTS."""
    return vm.memory.read_u64(RESULTS + 8 * index)
