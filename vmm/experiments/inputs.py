"""`Input`: what differs between the runs of a fan-out, read from JSON Lines as untrusted input.

One JSON object per line (blank lines are skipped):

    {"id": "case-1",                         # required: 1..128 characters
     "uart": "hello\\n",                      # bytes queued on the UART receiver (see BYTES)
     "mmds": {"latest": {"k": "v"}},          # the MMDS data store's contents (a JSON object)
     "writes": [{"gpa": "0x80100000", "hex": "deadbeef"}],   # guest-memory writes, in order
     "registers": {"x0": 7, "pc": "0x80000000", "vcpu1.x2": 1},  # set after the writes
     "budget": 5000000,                       # instructions of virtual time (default: the run's)
     "stop_at": "DONE"}                       # stop at the round end where the console has it

BYTES is a string (its UTF-8 encoding) or an object {"hex": "..."} or {"base64": "..."};
a write is an object with "gpa" and one of "hex", "base64", "text". Numbers may be JSON
integers or strings in Python's integer syntax ("0x8000_0000"). Registers are x0..x30 and pc,
of vCPU 0 unless prefixed "vcpuN.". Unknown fields are refused (a typo must not pass silently).

Every size is checked before anything is decoded or allocated: a line is at most MAX_LINE_BYTES
(read with a bounded readline), and each field has its own limit below. A bad line raises
`InputError` naming the file and line; no line is ever evaluated or unpickled. What depends on
the machine (a gpa outside RAM, a vCPU it does not have, MMDS data it refuses) is checked by the
worker and reported as that input's result (stop reason "input_error").
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from vmm.errors import VmmError

MAX_LINE_BYTES = 4 << 20  # one JSON line
MAX_ID_CHARS = 128
MAX_UART_BYTES = 64 << 10
MAX_MMDS_JSON_BYTES = 64 << 10  # the MMDS data re-encoded; the store has its own limit too
MAX_WRITES = 256
MAX_WRITE_BYTES = 1 << 20  # all writes of one input together
MAX_REGISTERS = 64
MAX_STOP_AT_BYTES = 256
MAX_BUDGET = 10**12  # instructions of virtual time
MAX_NUMBER_CHARS = 40  # an integer given as a string
U64 = (1 << 64) - 1

FIELDS = frozenset({"id", "uart", "mmds", "writes", "registers", "budget", "stop_at"})
_REGISTER = re.compile(r"(?:vcpu(\d{1,2})\.)?(x(\d{1,2})|pc)")


class InputError(VmmError):
    """An input line is not a valid Input; the message names the file, the line and the field."""


@dataclass(frozen=True)
class MemoryWrite:
    """`data` stored at guest physical address `gpa` before the run."""

    gpa: int
    data: bytes


@dataclass(frozen=True)
class RegisterValue:
    """Register `name` ("x0".."x30" or "pc") of vCPU `vcpu` set to `value` before the run."""

    vcpu: int
    name: str
    value: int


@dataclass(frozen=True)
class Input:
    """One run of a fan-out: from the snapshot, apply these, then run. `budget` None means the
    run's default budget."""

    id: str
    uart: bytes = b""
    mmds: dict[str, Any] | None = None
    writes: tuple[MemoryWrite, ...] = ()
    registers: tuple[RegisterValue, ...] = ()
    budget: int | None = None
    stop_at: bytes | None = None


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise ValueError(f"{what}: a number of more than {MAX_NUMBER_CHARS} characters")
        try:
            value = int(value, 0)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value:#x} is out of range [{lo:#x}, {hi:#x}]")
    return value


def _decode_bytes(value: object, what: str, limit: int) -> bytes:
    """BYTES (see the module docstring), at most `limit` bytes; the length is bounded before
    decoding (text: at least a byte a character, hex: 2 characters a byte, base64: 4 per 3)."""
    if isinstance(value, str):
        value = {"text": value}
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()
        if not isinstance(text, str):
            raise ValueError(f"{what}.{kind}: expected a string")
        bound = {"hex": 2 * limit, "base64": 4 * ((limit + 2) // 3), "text": limit}.get(kind)
        if bound is None:
            raise ValueError(f"{what}: expected \"hex\", \"base64\" or \"text\", got {kind[:20]!r}")
        if len(text) > bound:  # before decoding
            raise ValueError(f"{what}: more than {limit} bytes")
        try:
            if kind == "hex":
                data = bytes.fromhex(text)
            elif kind == "base64":
                data = base64.b64decode(text, validate=True)
            else:
                data = text.encode("utf-8")
        except (binascii.Error, ValueError) as e:  # UnicodeEncodeError is a ValueError
            raise ValueError(f"{what}: not valid {kind}: {e}") from None
    else:
        raise ValueError(f"{what}: expected a string or an object {{\"hex\"|\"base64\": ...}}")
    if len(data) > limit:
        raise ValueError(f"{what}: {len(data)} bytes, more than {limit}")
    return data


def _writes(value: object) -> tuple[MemoryWrite, ...]:
    if not isinstance(value, list):
        raise ValueError("writes: expected a list")
    if len(value) > MAX_WRITES:
        raise ValueError(f"writes: {len(value)} writes, more than {MAX_WRITES}")
    out, total = [], 0
    for i, w in enumerate(value):
        what = f"writes[{i}]"
        if not isinstance(w, dict) or "gpa" not in w or len(w) != 2:
            raise ValueError(f"{what}: expected {{\"gpa\": ..., \"hex\"|\"base64\"|\"text\": ...}}")
        gpa = _int(w["gpa"], f"{what}.gpa", 0, U64)
        (kind, text), = ((k, v) for k, v in w.items() if k != "gpa")
        data = _decode_bytes({kind: text}, what, MAX_WRITE_BYTES - total)
        total += len(data)
        out.append(MemoryWrite(gpa, data))
    return tuple(out)


def _registers(value: object) -> tuple[RegisterValue, ...]:
    if not isinstance(value, dict):
        raise ValueError("registers: expected an object {\"x0\": value, ...}")
    if len(value) > MAX_REGISTERS:
        raise ValueError(f"registers: {len(value)} registers, more than {MAX_REGISTERS}")
    out = []
    for name, v in value.items():
        m = _REGISTER.fullmatch(name)
        if m is None or (m.group(3) is not None and int(m.group(3)) > 30):
            raise ValueError(f"registers: {name[:40]!r} is not x0..x30 or pc (optionally vcpuN.)")
        out.append(RegisterValue(int(m.group(1) or 0), m.group(2), _int(v, f"registers.{name}", 0, U64)))
    return tuple(out)


def _mmds(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("mmds: expected a JSON object")
    if len(json.dumps(value, separators=(",", ":"))) > MAX_MMDS_JSON_BYTES:
        raise ValueError(f"mmds: more than {MAX_MMDS_JSON_BYTES} bytes of JSON")
    return value


def parse_input(obj: object) -> Input:
    """An Input from one decoded JSON value (ValueError naming the field if it is not one)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0][:40]!r} (known: {', '.join(sorted(FIELDS))})")
    ident = obj.get("id")
    if not isinstance(ident, str) or not 1 <= len(ident) <= MAX_ID_CHARS:
        raise ValueError(f"id: expected a string of 1 to {MAX_ID_CHARS} characters")
    return Input(
        id=ident,
        uart=_decode_bytes(obj["uart"], "uart", MAX_UART_BYTES) if "uart" in obj else b"",
        mmds=_mmds(obj["mmds"]) if "mmds" in obj else None,
        writes=_writes(obj["writes"]) if "writes" in obj else (),
        registers=_registers(obj["registers"]) if "registers" in obj else (),
        budget=_int(obj["budget"], "budget", 0, MAX_BUDGET) if obj.get("budget") is not None else None,
        stop_at=_stop_at(obj["stop_at"]) if obj.get("stop_at") is not None else None,
    )


def _stop_at(value: object) -> bytes:
    data = _decode_bytes(value, "stop_at", MAX_STOP_AT_BYTES)
    if not data:
        raise ValueError("stop_at: must not be empty")
    return data


def parse_line(line: bytes | str, name: str = "<input>", lineno: int = 1) -> Input:
    """An Input from one JSON line; InputError naming `name` and `lineno` if it is not one."""
    if len(line) > MAX_LINE_BYTES:
        raise InputError(f"{name}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(line)
        return parse_input(obj)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        message = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise InputError(f"{name}:{lineno}: {message}") from None


def read_inputs(path: str | os.PathLike[str]) -> Iterator[Input]:
    """The inputs of the JSON Lines file at `path`, one at a time (the file is never read
    whole). InputError for an unreadable file (also a FIFO or device) or a bad line."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as e:
        raise InputError(f"cannot read inputs {p}: {e.strerror or e}") from None
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InputError(f"inputs {p}: not a regular file")
        lineno = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            if len(line) > MAX_LINE_BYTES:
                raise InputError(f"{p}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
            if line.strip():
                yield parse_line(line, str(p), lineno)


def count_inputs(path: str | os.PathLike[str]) -> int:
    """Check every line of the file at `path` and count its inputs (a first streaming pass, so
    a bad line is reported before any run; InputError as `read_inputs`)."""
    return sum(1 for _ in read_inputs(path))


def as_inputs(inputs: str | os.PathLike[str] | Iterable[Input]) -> Iterator[Input]:
    """`inputs` as a stream of Input: a path is read with `read_inputs`."""
    if isinstance(inputs, (str, os.PathLike)):
        return read_inputs(inputs)
    return iter(inputs)


def input_to_json(inp: Input) -> dict[str, Any]:
    """The JSON object `parse_input` reads back as `inp` (bytes as hex)."""
    obj: dict[str, Any] = {"id": inp.id}
    if inp.uart:
        obj["uart"] = {"hex": inp.uart.hex()}
    if inp.mmds is not None:
        obj["mmds"] = inp.mmds
    if inp.writes:
        obj["writes"] = [{"gpa": w.gpa, "hex": w.data.hex()} for w in inp.writes]
    if inp.registers:
        obj["registers"] = {(f"vcpu{r.vcpu}." if r.vcpu else "") + r.name: r.value for r in inp.registers}
    if inp.budget is not None:
        obj["budget"] = inp.budget
    if inp.stop_at is not None:
        obj["stop_at"] = {"hex": inp.stop_at.hex()}
    return obj
