"""Assembling hand-written AArch64 code, and the snippets such programs share.

One home for guests/build.py (the built-in guests), tests/asm.py (test programs) and
tools/faults/hostile.py (hostile guests). Assembly uses keystone (`keystone-engine`, in the
project's `dev` extra); the snippet builders return assembly text and need nothing.
"""
from __future__ import annotations

from vmm.layout import RAM_BASE, SYSTEM_OFF

U64_MAX = (1 << 64) - 1  # all ones: values are masked to this before loading

# MOVZ/MOVK place a 16-bit immediate at bit 0, 16, 32 or 48 (DDI 0487 C6.2, MOVZ/MOVK).
_HALFWORD_SHIFTS = (16, 32, 48)

# Exception vector table at VBAR_EL1 (DDI 0487 D1.10.2): four groups (current EL with SP_EL0,
# current EL with SP_ELx, lower EL in AArch64, lower EL in AArch32) of four kinds, each entry
# 0x80 bytes, the table aligned to 2 KiB.
VECTOR_GROUPS = ("cur_sp0", "cur_spx", "lower", "lower32")
VECTOR_KINDS = ("sync", "irq", "fiq", "serror")
VECTOR_ENTRIES = tuple(f"{group}_{kind}" for group in VECTOR_GROUPS for kind in VECTOR_KINDS)
VECTOR_ENTRY_SIZE = 0x80
VECTOR_TABLE_ALIGN = 0x800


class AssemblyError(Exception):
    """keystone rejected the source. `reason` is keystone's message, `code` its error number."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(f"assembly failed: {reason}")
        self.reason = reason
        self.code = code


class AssemblerMissingError(ImportError):
    """keystone-engine is not installed."""


def assemble(source: str, base: int = RAM_BASE) -> bytes:
    """The machine code of AArch64 assembly `source`, linked to run at address `base` (b"" if
    it has no instructions or data). Raises AssemblyError if keystone rejects it and
    AssemblerMissingError if keystone is not installed."""
    try:
        import keystone
    except ImportError:
        raise AssemblerMissingError(
            "assembling needs keystone-engine, which is in the project's dev extra (pip install -e '.[dev]')"
        ) from None
    ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    try:
        encoding, _ = ks.asm(source, base)
    except keystone.KsError as e:
        raise AssemblyError(e.message, e.errno) from None
    return bytes(encoding or b"")


def load_constant(reg: str, value: int) -> str:
    """movz/movk lines loading `value` (masked to 64 bits) into X register `reg`; halfwords
    that are zero above the lowest get no movk."""
    value &= U64_MAX
    lines = [f"movz {reg}, #{value & 0xFFFF}"]
    lines += [f"movk {reg}, #{(value >> s) & 0xFFFF}, lsl #{s}" for s in _HALFWORD_SHIFTS if (value >> s) & 0xFFFF]
    return "\n".join(lines)


def psci_call(fid: int, *args: int) -> str:
    """A PSCI call (HVC) of function `fid` with x1.. = `args`; the result is in x0 (SMCCC)."""
    lines = [load_constant("x0", fid)] + [load_constant(f"x{i}", a) for i, a in enumerate(args, start=1)]
    return "\n".join(lines + ["hvc #0"])


def vector_table(**entries: str) -> str:
    """A VBAR_EL1 table labelled `vectors`: 16 entries of 0x80 bytes, each `b <label>` for the
    entries named (keys: VECTOR_ENTRIES, e.g. cur_spx_sync, cur_spx_irq, lower_sync), else
    `b .`. Raises ValueError for a key that names no entry."""
    unknown = sorted(set(entries) - set(VECTOR_ENTRIES))
    if unknown:
        raise ValueError(f"no vector table entry {unknown[0]!r} (entries: {', '.join(VECTOR_ENTRIES)})")
    lines = [f".p2align {VECTOR_TABLE_ALIGN.bit_length() - 1}", "vectors:"]
    for name in VECTOR_ENTRIES:
        lines += [f"    b {entries.get(name, '.')}", f".p2align {VECTOR_ENTRY_SIZE.bit_length() - 1}"]
    return "\n".join(lines)


# Conventions of the small hand-written programs (tests, hostile guests): x28 points at
# RESULTS, where they store what they saw as u64 slots, and they end with POWER_OFF.
RESULTS = RAM_BASE + 0x10_0000  # 1 MiB into RAM
RESULTS_PTR = load_constant("x28", RESULTS)
POWER_OFF = psci_call(SYSTEM_OFF)
