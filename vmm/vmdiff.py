"""What differs between two VMs, as a readable report (for tests: `assert_vms_equal`).

`diff_vms(a, b)` compares everything guest-visible that `MicroVM.state_digest` covers, plus
the config and (optionally) the console output, and says where they differ:

- fields of the saved state by path, registers by name: `vcpus[1].pc`, `vcpus[0].x3`,
  `vcpus[0].sysregs[SCTLR_EL1]`, `interrupts.timers[0].virt.cval`, `devices.uart0.tx_count`,
  `devices.mmds.data_json`, `scheduler.clock`;
- RAM as ranges of guest physical addresses (differing pages coalesced into runs, each range
  trimmed to its first and last differing byte), with the first differing bytes of each side;
- the console output: lengths and the first differing offset, with context.

An empty `VmDiff` is falsy. Reading RAM costs one pass over both VMs' memory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmm.machine import MicroVM

PAGE_SIZE = 4096  # bytes compared per step when looking for differing memory
COMPARE_CHUNK = 16 << 20  # bytes of RAM compared per numpy pass (bounds the temporaries)
SHOWN_BYTES = 16  # bytes quoted from each side at the first difference of a memory range
SHOWN_RANGES = 8  # memory ranges listed in the report; the rest are summed up
SHOWN_FIELDS = 40  # field differences listed in the report; the rest are counted
SHOWN_CHARS = 48  # characters of console output or long values quoted on each side

# Lists whose items are registers named by index: vcpus[i].x[3] is shown as vcpus[i].x3.
_NUMBERED_REGISTERS = frozenset({"x", "v"})
# Top-level sections whose integers read best in decimal (times, counts); others are hex.
_DECIMAL_SECTIONS = frozenset({"config", "scheduler"})


@dataclass(frozen=True)
class FieldDiff:
    """One field of the saved state that differs: `path` as in the module docstring."""

    path: str
    a: Any
    b: Any

    def __str__(self) -> str:
        decimal = self.path.split(".", 1)[0].split("[", 1)[0] in _DECIMAL_SECTIONS
        return f"{self.path}: {_show(self.a, decimal)} != {_show(self.b, decimal)}"


@dataclass(frozen=True)
class MemoryRangeDiff:
    """Guest physical [start, end) holds `differing` bytes that differ, the first at `start`
    (`end` - 1 is the last); `a_bytes`/`b_bytes` are up to SHOWN_BYTES bytes from `start`."""

    start: int
    end: int
    differing: int
    a_bytes: bytes
    b_bytes: bytes

    def __str__(self) -> str:
        return (
            f"memory [{self.start:#x}, {self.end:#x}): {self.differing} of {self.end - self.start} bytes differ; "
            f"from {self.start:#x}: {self.a_bytes.hex(' ')} != {self.b_bytes.hex(' ')}"
        )


@dataclass(frozen=True)
class ConsoleDiff:
    """The console outputs differ first at byte `offset`; `a`/`b` are their lengths in bytes
    and `a_text`/`b_text` what each side printed from there (SHOWN_CHARS bytes at most)."""

    offset: int
    a: int
    b: int
    a_text: bytes
    b_text: bytes

    def __str__(self) -> str:
        return (
            f"console output ({self.a} vs {self.b} bytes) differs from byte {self.offset}: "
            f"{self.a_text!r} != {self.b_text!r}"
        )


@dataclass
class VmDiff:
    """Every difference found; falsy when the VMs are equivalent."""

    fields: list[FieldDiff] = field(default_factory=list)
    memory: list[MemoryRangeDiff] = field(default_factory=list)
    memory_size: tuple[int, int] | None = None  # (a, b) RAM sizes in bytes when they differ
    console: ConsoleDiff | None = None

    def __bool__(self) -> bool:
        return bool(self.fields or self.memory or self.memory_size or self.console)

    def __str__(self) -> str:
        if not self:
            return "the VMs are equivalent"
        lines: list[str] = []
        lines.extend(f"  {d}" for d in self.fields[:SHOWN_FIELDS])
        if len(self.fields) > SHOWN_FIELDS:
            lines.append(f"  ... and {len(self.fields) - SHOWN_FIELDS} more fields")
        if self.memory_size is not None:
            lines.append(f"  memory size: {self.memory_size[0]} != {self.memory_size[1]} bytes")
        lines.extend(f"  {d}" for d in self.memory[:SHOWN_RANGES])
        if len(self.memory) > SHOWN_RANGES:
            rest = self.memory[SHOWN_RANGES:]
            lines.append(f"  ... and {len(rest)} more memory ranges ({sum(d.differing for d in rest)} differing bytes)")
        if self.console is not None:
            lines.append(f"  {self.console}")
        counts = f"{_count(len(self.fields), 'field')}, {_count(len(self.memory), 'memory range')}"
        if self.console is not None:
            counts += ", console output"
        return f"the VMs differ ({counts}):\n" + "\n".join(lines)


def diff_vms(a: MicroVM, b: MicroVM, *, console: bool = True) -> VmDiff:
    """Everything that differs between `a` and `b` (both paused). `console`: also compare the
    console outputs (a restored VM's output starts at its restore, so compare those
    separately)."""
    diff = VmDiff()
    _diff_values("", state_tree(a), state_tree(b), diff.fields)
    if a.memory.size != b.memory.size or a.memory.base != b.memory.base:
        diff.memory_size = (a.memory.size, b.memory.size)
    else:
        diff.memory = diff_memory(a.memory.view(), b.memory.view(), a.memory.base)
    if console:
        diff.console = diff_console(a.console_output, b.console_output)
    return diff


def assert_vms_equal(a: MicroVM, b: MicroVM, *, console: bool = True) -> None:
    """AssertionError carrying `diff_vms(a, b)`'s report unless the VMs are equivalent."""
    __tracebackhide__ = True  # pytest: show the caller's line, not this one
    diff = diff_vms(a, b, console=console)
    if diff:
        raise AssertionError(str(diff))


def state_tree(vm: MicroVM) -> dict[str, Any]:
    """The VM's guest-visible state except RAM and console, as plain dataclasses by section
    (the state-file layout of vmm.state, plus the config)."""
    return {
        "config": vm.config,
        "vcpus": [v.save_state() for v in vm.vcpus],
        "interrupts": vm.interrupts.save_state(),
        "devices": {"uart0": vm.uart.save_state(), "mmds": vm.mmds_device.save_state()},
        "scheduler": vm.scheduler.save_state(),
    }


def diff_memory(a: np.ndarray, b: np.ndarray, base: int) -> list[MemoryRangeDiff]:
    """Ranges where the equal-sized uint8 arrays `a` and `b` differ, at guest physical
    addresses from `base`: differing pages are coalesced into runs, each trimmed to its first
    and last differing byte."""
    if a.shape != b.shape:
        raise ValueError(f"memory arrays differ in size: {a.size} vs {b.size} bytes")
    pages: list[np.ndarray] = []
    for start in range(0, a.size, COMPARE_CHUNK):
        end = min(start + COMPARE_CHUNK, a.size)
        differs = a[start:end] != b[start:end]
        npages = -(-differs.size // PAGE_SIZE)
        padded = np.zeros(npages * PAGE_SIZE, dtype=bool)
        padded[: differs.size] = differs
        pages.append(np.flatnonzero(padded.reshape(npages, PAGE_SIZE).any(axis=1)) + start // PAGE_SIZE)
    dirty = np.concatenate(pages) if pages else np.empty(0, dtype=np.int64)
    out: list[MemoryRangeDiff] = []
    if dirty.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(dirty) != 1) + 1
    for run in np.split(dirty, breaks):
        lo, hi = int(run[0]) * PAGE_SIZE, min((int(run[-1]) + 1) * PAGE_SIZE, a.size)
        where = np.flatnonzero(a[lo:hi] != b[lo:hi])
        first, last = lo + int(where[0]), lo + int(where[-1])
        out.append(
            MemoryRangeDiff(
                start=base + first,
                end=base + last + 1,
                differing=int(where.size),
                a_bytes=a[first : first + SHOWN_BYTES].tobytes(),
                b_bytes=b[first : first + SHOWN_BYTES].tobytes(),
            )
        )
    return out


def diff_console(a: bytes, b: bytes) -> ConsoleDiff | None:
    """Where two console outputs first differ (None if equal)."""
    if a == b:
        return None
    offset = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return ConsoleDiff(offset, len(a), len(b), a[offset : offset + SHOWN_CHARS], b[offset : offset + SHOWN_CHARS])


# --- field walk -------------------------------------------------------------------------------
def _diff_values(path: str, a: Any, b: Any, out: list[FieldDiff]) -> None:
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            _diff_values(_join(path, f.name), getattr(a, f.name), getattr(b, f.name), out)
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = _join(path, key) if not path or path in ("devices",) else f"{path}[{key}]"
            _diff_values(sub, a.get(key, _ABSENT), b.get(key, _ABSENT), out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(FieldDiff(f"{path} (length)", len(a), len(b)))
        name = path.rsplit(".", 1)[-1]
        for i, (x, y) in enumerate(zip(a, b)):
            item = f"{path}{i}" if name in _NUMBERED_REGISTERS else f"{path}[{i}]"
            _diff_values(item, x, y, out)
    elif a != b or type(a) is not type(b):
        out.append(FieldDiff(path, a, b))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _show(value: Any, decimal: bool) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value) if decimal or 0 <= value < 10 else f"{value:#x}"
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:SHOWN_CHARS]).hex(" ")
        return text + (f" ... ({len(value)} bytes)" if len(value) > SHOWN_CHARS else "")
    text = repr(value)
    return text if len(text) <= 2 * SHOWN_CHARS else text[: 2 * SHOWN_CHARS] + "..."
