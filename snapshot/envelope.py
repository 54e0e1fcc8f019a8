"""The state file `<name>.snap`: a msgpack envelope followed by a CRC-64 trailer.

Layout (that of squib (a Firecracker-style microVM monitor for Apple Silicon, whose snapshot format this project follows: docs/snapshot-format.md), with msgpack for its bitcode):

    payload = msgpack({"header": {"magic": u64, "version": [major, minor, patch]},
                       "data": <plain dict, see snapshot.plain>})
    file    = payload || le64(CRC-64/Jones(payload))

`decode_state` treats its input as hostile and checks, in this order (squib's): size <=
MAX_STATE_FILE_SIZE, at least the 8-byte trailer, CRC, msgpack decode, header shape, magic,
major version equal and minor not newer. Decoding is bounded: a declared array or map longer
than any the state tree has (MAX_ARRAY_ITEMS, MAX_MAP_ENTRIES) is refused by the unpacker at
its header, string and binary lengths are capped by the payload size, nesting by msgpack's
fixed stack, and the number of decoded containers by MAX_DECODED_CONTAINERS, so a hostile
file fails in milliseconds instead of allocating without bound.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import anycrc
import msgpack

from snapshot.errors import (
    CrcMismatchError,
    EncodingError,
    MagicMismatchError,
    SizeLimitExceededError,
    SnapshotIoError,
    TooShortError,
    VersionMismatchError,
    from_os_error,
    open_regular_readonly,
)
from snapshot.plain import U16, U64, from_plain, to_plain

MAGIC_AARCH64 = 0x0710_1984_AAAA_0000  # squib: SNAPSHOT_MAGIC_AARCH64
SNAPSHOT_VERSION = (1, 2, 0)  # squib: SNAPSHOT_VERSION, the state-file format version (1.1: memory_file, raw trailer; 1.2: encryption)
MAX_STATE_FILE_SIZE = 10_000_000  # squib: SNAPSHOT_DESERIALIZATION_BYTES_LIMIT, in bytes
CRC_SIZE = 8  # squib: 8-byte little-endian CRC-64 trailer
# Ours: caps on what one state file may declare. The state tree's longest array is a GIC
# bank's priorities (at most 1020 INTIDs, GICv3 spec 2.2), its widest map a vCPU's 64 system
# registers or a record's fields; a whole 32-vCPU state holds ~600 maps and arrays. An empty
# container is 1 byte on disk but ~60 bytes decoded, so these bound decode memory and time
# (squib bounds only the input size) with a wide margin over any real state.
MAX_ARRAY_ITEMS = 4096
MAX_MAP_ENTRIES = 256
MAX_DECODED_CONTAINERS = 65_536

_CRC64_JONES = anycrc.Model("CRC64-REDIS")  # CRC-64/Jones: poly 0xad93d23594c935a9, reflected
_READ_CHUNK = 1 << 20  # bytes per read() when loading a state file
_ENVELOPE_KEYS = ("header", "data")
# msgpack's message for a declared length over a max_*_len limit: "N exceeds max_KIND_len(L)"
_DECLARED = re.compile(r"(\d+) exceeds max_(\w+)_len\((\d+)\)")


@dataclass(frozen=True)
class Header:
    """The state file header: architecture magic and format version (major, minor, patch)."""

    magic: U64
    version: tuple[U16, U16, U16]


def crc64(data: bytes | bytearray | memoryview) -> int:
    """CRC-64/Jones (Redis) of `data`; crc64(b"123456789") == 0xe9c6d914c4b8d9ca."""
    return int(_CRC64_JONES.calc(data))


def encode_state(
    data: dict[str, Any],
    *,
    version: tuple[int, int, int] = SNAPSHOT_VERSION,
    magic: int = MAGIC_AARCH64,
) -> bytes:
    """The bytes of a state file holding plain `data` (from `to_plain`).

    Raises EncodingError if `data` is not plain msgpack data, SizeLimitExceededError if the
    file would exceed MAX_STATE_FILE_SIZE (it could not be loaded back).
    """
    if type(data) is not dict:
        raise EncodingError(f"data: expected dict, got {type(data).__name__}")
    header = to_plain(Header(magic, tuple(version)))  # type: ignore[arg-type]
    try:
        payload = msgpack.packb({"header": header, "data": data}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"data is not plain msgpack data: {exc}") from exc
    size = len(payload) + CRC_SIZE
    if size > MAX_STATE_FILE_SIZE:
        raise SizeLimitExceededError(MAX_STATE_FILE_SIZE, size)
    return payload + crc64(payload).to_bytes(CRC_SIZE, "little")


class _TooManyContainers(Exception):
    pass


def unpack_bounded(payload: memoryview) -> Any:
    """msgpack-decode untrusted `payload` within fixed bounds (module docstring); EncodingError
    on any failure. Also decodes an encrypted state's opened payload (snapshot.sealedstate)."""
    budget = [MAX_DECODED_CONTAINERS]

    def count(container: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooManyContainers
        return container

    n = len(payload)
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=n,
            max_str_len=n,
            max_array_len=min(n, MAX_ARRAY_ITEMS),
            max_map_len=min(n // 2, MAX_MAP_ENTRIES),
            max_ext_len=0,  # no extension types (this also refuses msgpack timestamps)
            list_hook=count,
            object_hook=count,
        )
    except _TooManyContainers:
        raise EncodingError(f"more than {MAX_DECODED_CONTAINERS} maps and arrays") from None
    except msgpack.StackError:
        raise EncodingError("msgpack data nests too deeply") from None
    except msgpack.ExtraData:
        raise EncodingError("trailing bytes after the msgpack object") from None
    except ValueError as exc:
        declared = _DECLARED.match(str(exc))
        if declared is None or declared.group(2) not in ("array", "map"):
            raise EncodingError(f"msgpack decode failed: ValueError: {exc}") from None
        n, kind, limit = declared.groups()
        what = "an array" if kind == "array" else "a map"
        raise EncodingError(f"msgpack data declares {n} items in {what} (limit {limit})") from None
    except Exception as exc:  # msgpack raises assorted ValueError/TypeError/MemoryError types
        raise EncodingError(f"msgpack decode failed: {type(exc).__name__}: {exc}") from None


def decode_state(
    blob: bytes | bytearray | memoryview,
    *,
    magic: int = MAGIC_AARCH64,
    version: tuple[int, int, int] = SNAPSHOT_VERSION,
) -> tuple[Header, dict[str, Any]]:
    """(header, plain data) of state-file bytes `blob`, after every check in the module
    docstring's order. `magic`/`version` are what this build expects and supports."""
    view = memoryview(blob).cast("B")
    size = len(view)
    if size > MAX_STATE_FILE_SIZE:
        raise SizeLimitExceededError(MAX_STATE_FILE_SIZE, size)
    if size < CRC_SIZE:
        raise TooShortError(size, CRC_SIZE)
    payload = view[:-CRC_SIZE]
    stored = int.from_bytes(view[-CRC_SIZE:], "little")
    computed = crc64(payload)
    if stored != computed:
        raise CrcMismatchError(stored, computed)

    top = unpack_bounded(payload)
    if type(top) is not dict:
        raise EncodingError(f"expected a map at the top level, got {type(top).__name__}")
    for key in _ENVELOPE_KEYS:
        if key not in top:
            raise EncodingError(f"missing field {key!r}")
    if len(top) != len(_ENVELOPE_KEYS):
        extra = next(k for k in top if k not in _ENVELOPE_KEYS)
        raise EncodingError(f"unknown field {extra!r}")
    header: Header = from_plain(Header, top["header"], path="header")
    if header.magic != magic:
        raise MagicMismatchError(header.magic, magic)
    if header.version[0] != version[0] or header.version[1] > version[1]:
        raise VersionMismatchError(header.version, version)
    data = top["data"]
    if type(data) is not dict:
        raise EncodingError(f"data: expected dict, got {type(data).__name__}")
    return header, data


def read_state_file(path: str | os.PathLike[str]) -> tuple[Header, dict[str, Any]]:
    """Read and decode the state file at `path`.

    Reads at most MAX_STATE_FILE_SIZE + 1 bytes whatever the file claims to be; OSErrors
    become InvalidPathError (missing, not a regular file, ...) or SnapshotIoError.
    """
    fd = open_regular_readonly(path, SnapshotIoError)
    chunks: list[bytes] = []
    remaining = MAX_STATE_FILE_SIZE + 1
    try:
        while remaining > 0:
            chunk = os.read(fd, min(_READ_CHUNK, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise from_os_error(exc, "reading", path) from exc
    finally:
        os.close(fd)
    if remaining <= 0:
        raise SizeLimitExceededError(MAX_STATE_FILE_SIZE)
    return decode_state(b"".join(chunks))
