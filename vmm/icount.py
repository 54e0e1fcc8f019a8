"""`InstructionCounter`: how many instructions the running `emu_start` call has counted.

`Uc.emu_start(count=N)` makes Unicorn count instructions in its engine struct
(`uc_struct.emu_counter`, include/uc_priv.h): a code hook that runs before every other hook
increments it before each instruction and stops the run once it exceeds N. Unicorn has no API
that reads it, yet it is exactly what the VMM needs to know the virtual time of an instruction
that traps in the middle of a slice, or how far a slice got when a hook ended it early.

So the field is located once per process by probing a scratch engine: run NOPs under a
distinctive `count`, find the 8-byte slot holding that count (`emu_count`; reads never go past
it), and keep the one slot before it that holds i + 1 in the code hooks of instructions i = 5
and i = 77. Reading it afterwards is one ctypes load. `Vcpu.run_slice` checks the value after
every slice that ran to its count (it must be count + 1), so a Unicorn build laid out otherwise
fails loudly at the first slice instead of skewing virtual time.

Contract of `counted()` for the current (or last) `emu_start(count=N)` call of the engine:
- inside a hook of instruction i (0-based): i + 1 (Unicorn's count hook runs first);
- after a run that used up its count: N + 1 (the stop happens in the count hook of
  instruction N + 1, which does not execute);
- after a hook stopped the run at instruction i: i + 1.

Counting stays exact only if no hook makes Unicorn count an instruction twice. Writing the PC
from a hook ends the translation block, and where the block would have run on, the next
instruction's count hook has already fired when it does: that instruction is counted again
when it runs. Trapped MSRs end their block anyway; a trapped MRS whose access the hook skips
steps on by itself if QEMU implements the register, and stays put (an UNDEFINED path) if not.
`mrs_steps_past_skip` finds out which, once per process, so the MRS hook writes the PC only
where it must.
"""
from __future__ import annotations

import ctypes
from typing import Iterable

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, Uc, UcError
from unicorn import arm64_const as a64

from vmm.arch import INSN_NOP, PSTATE_EL1H_MASKED
from vmm.engine import new_engine

# A count no field of a fresh engine holds by chance (the probe's needle).
_PROBE_COUNT = 0x5EED_C0DE_1234_ABCD
_PROBE_INDICES = (5, 77)  # instructions whose code hooks sample the engine struct
_PROBE_BASE = 0x10000
_MAX_SCAN = 64 * 1024  # bytes of the engine struct searched for the count slot, at most
_WORD = 8

_offset: int | None = None  # of emu_counter in the engine struct, once probed
_mrs_steps: dict[tuple[int, int, int, int, int], bool] = {}  # encoding -> steps past a skip
_INSN_MRS = 0xD530_0000  # MRS X0, <sysreg>: op0[19] op1[18:16] CRn[15:12] CRm[11:8] op2[7:5]


class InstructionCounterError(RuntimeError):
    """Unicorn's instruction counter could not be found or read back a wrong value."""


def _handle(uc: Uc) -> int:
    handle = uc._uch  # the uc_engine pointer the Python binding keeps (a ctypes c_void_p)
    value = getattr(handle, "value", handle)
    if not isinstance(value, int) or value == 0:
        raise InstructionCounterError("cannot get the Unicorn engine handle from the Python binding")
    return value


def _word(address: int) -> int:
    return ctypes.c_uint64.from_address(address).value


def _scan_limit(base: int) -> int:
    """Bytes readable at `base`, the engine struct (calloc'ed): its allocation size where the C
    library tells it (glibc, musl), else _MAX_SCAN."""
    usable = getattr(ctypes.CDLL(None), "malloc_usable_size", None)
    if usable is None:
        return _MAX_SCAN
    usable.restype, usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    return min(int(usable(base)), _MAX_SCAN)


def _probe() -> int:
    """Offset of `emu_counter` in the engine struct (see the module docstring)."""
    uc = new_engine()
    base = _handle(uc)
    n_insns = max(_PROBE_INDICES) + 2
    uc.mem_map(_PROBE_BASE, 4096)
    uc.mem_write(_PROBE_BASE, INSN_NOP.to_bytes(4, "little") * n_insns)
    samples: dict[int, list[int]] = {}
    limit = _scan_limit(base)

    def sample(uc: Uc, address: int, size: int, _ud: object) -> None:
        words: list[int] = []
        for off in range(0, limit - _WORD + 1, _WORD):
            value = _word(base + off)
            words.append(value)
            if value == _PROBE_COUNT:  # emu_count: the scan stops inside the struct
                break
        samples[(address - _PROBE_BASE) // 4] = words

    for i in _PROBE_INDICES:
        uc.hook_add(UC_HOOK_CODE, sample, None, _PROBE_BASE + 4 * i, _PROBE_BASE + 4 * i)
    end = _PROBE_BASE + 4 * (n_insns - 1)
    uc.emu_start(_PROBE_BASE, end, count=_PROBE_COUNT)
    if sorted(samples) != sorted(_PROBE_INDICES) or any(w[-1] != _PROBE_COUNT for w in samples.values()):
        raise InstructionCounterError("Unicorn's instruction count was not found in its engine struct")
    first, second = (samples[i] for i in _PROBE_INDICES)
    slots = [
        k
        for k in range(min(len(first), len(second)) - 1)
        if first[k] == _PROBE_INDICES[0] + 1 and second[k] == _PROBE_INDICES[1] + 1
    ]
    if len(slots) != 1:
        raise InstructionCounterError(f"Unicorn's instruction counter is ambiguous or missing ({len(slots)} candidates)")
    return slots[0] * _WORD


def _mrs(enc: tuple[int, int, int, int, int]) -> int:
    op0, op1, crn, crm, op2 = enc
    return _INSN_MRS | ((op0 & 1) << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5)


def mrs_steps_past_skip(encodings: Iterable[tuple[int, int, int, int, int]]) -> frozenset[tuple[int, int, int, int, int]]:
    """Those of `encodings` (op0, op1, CRn, CRm, op2) whose MRS Unicorn steps past by itself
    when an MRS hook returns 1 (access skipped); for the others the hook must set the PC.

    Probed on a scratch engine of the CPU model the vCPUs use (`max`), at EL1 (EL0 was seen to
    behave the same, whatever CNTKCTL_EL1 allows).
    """
    todo = [enc for enc in dict.fromkeys(encodings) if enc not in _mrs_steps]
    if todo:
        uc = new_engine()
        uc.mem_map(_PROBE_BASE, 4096 * ((8 * len(todo)) // 4096 + 1))
        uc.hook_add(UC_HOOK_INSN, lambda *_: 1, None, 1, 0, a64.UC_ARM64_INS_MRS)
        for i, enc in enumerate(todo):
            address = _PROBE_BASE + 8 * i
            uc.mem_write(address, _mrs(enc).to_bytes(4, "little") + INSN_NOP.to_bytes(4, "little"))
            uc.reg_write(a64.UC_ARM64_REG_PSTATE, PSTATE_EL1H_MASKED)
            try:
                uc.emu_start(address, address + 8, count=1)
            except UcError:  # then the hook sets the PC: the guest moves on, if maybe counted twice
                _mrs_steps[enc] = False
                continue
            _mrs_steps[enc] = uc.reg_read(a64.UC_ARM64_REG_PC) == address + 4
    return frozenset(enc for enc in encodings if _mrs_steps[enc])


class InstructionCounter:
    """Live view of one engine's `emu_counter`."""

    def __init__(self, uc: Uc) -> None:
        global _offset
        if _offset is None:
            _offset = _probe()
        self._uc = uc  # keeps the engine (and so the counted memory) alive
        self._cell = ctypes.c_uint64.from_address(_handle(uc) + _offset)

    @property
    def address(self) -> int:
        """Where the count lives (for native hooks that read it: vmm/_sysreg.c)."""
        return ctypes.addressof(self._cell)

    def counted(self) -> int:
        """Instructions counted so far by the current or last `emu_start` (contract above)."""
        return self._cell.value
