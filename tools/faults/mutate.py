"""Corrupted and hostile snapshot files: mutations of the corpus, and what loading them must do.

A `Mutation` changes one file of a corpus copy (state or memory file of `base`, `top` or
`other`, see tools.faults.corpus). `draw(rng, info)` picks one from a family:

accidental (what a disk, a copy or a user can do; must never load as different data):
  bitflip, overwrite, truncate (at every region boundary: msgpack fields, CRC trailer, memory
  runs and pages), append, extend (a hole past the end), swap (a file of another snapshot),
  odd-file (empty, directory, FIFO, symlink to /dev/zero, dangling or looping symlink,
  missing), mismatch (a memory file that is not the recorded one but has its size or name:
  an unfinished temp, a file of holes, the bare image, another snapshot's staged file, a hole
  punched into recorded data)
forged (a valid CRC-64 over a body built to be hostile; may load if it happens to be valid):
  field (a value of the decoded state replaced by an edge value or another type, a field
  dropped or an unknown one added), huge-length (a msgpack header declaring ~4 G items or
  bytes), header (wrong magic, architecture or version), bomb (deep nesting, container
  floods, wide maps, huge strings, extension types, non-str keys, random bytes), cut (the
  body truncated, CRC recomputed)
forged and refused (each must fail with the typed error named, never load):
  link (a chain that loops, a NUL in the parent name, a parent digest that disagrees with
  its link, a missing parent), range (an int just outside the range its state dataclass
  declares, found from snapshot.plain's markers: every field's neighbours), claim (16 GiB of
  RAM claimed beside a small raw file, or by an 80-byte lz4 file of 4 KiB frames: refused
  within LOAD_MEMORY_BOUND, measured); range also sets ints that declare no range to
  hostile magnitudes, which must be refused or load and run within the same bounds

Memory-file families whose damage the O(1) pair check can see (MMAP_CHECKED) are also loaded
with the mmap backend without a digest pass: it must refuse them too.

`run_case` applies a mutation in a fresh directory of hard links (the corpus itself is never
written) and loads (copy backend, digests verified), describes (with --verify when a memory
file was changed) and, when snapshot.chain exists, verifies every snapshot whose chain
includes the mutated file. Every call must return or raise a SnapshotError; a load that
succeeds must give the original state (accidental) or a VM that runs (forged); a corrupt
memory file must fail describe --verify and chain verify as it fails the load.
"""
from __future__ import annotations

import functools
import math
import os
import random
import shutil
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack

from snapshot.commit import recorded_memory
from snapshot.envelope import CRC_SIZE, MAGIC_AARCH64, MAX_ARRAY_ITEMS, MAX_DECODED_CONTAINERS, MAX_STATE_FILE_SIZE, crc64, read_state_file
from snapshot.errors import (
    ChainLoopError,
    CorruptMemoryFileError,
    EncodingError,
    MemoryFileMismatchError,
    MissingParentError,
    SnapshotError,
)
from snapshot.frames import FOOTER_SIZE
from snapshot.meminfo import TRAILER_SIZE, MemFileInfo
from snapshot.plain import int_bounds
from vmm.state import MicrovmState
from snapshot.describe import describe
from vmm.persist import MACHINE
from vmm import sysreg
from vmm.machine import MicroVM
from tools.faults.corpus import QUANTUM, Corpus, link_files
from tools.faults.outcome import Hang, Stopwatch, Trial, Verdict, describe_exception, failed, watchdog

ACCIDENTAL = ("bitflip", "overwrite", "truncate", "append", "extend", "swap", "odd-file", "mismatch")
FORGED = ("field", "huge-length", "header", "bomb", "cut", "link", "range", "claim")
FAMILIES = ACCIDENTAL + FORGED
# Memory-file damage the mmap backend's O(1) check (size + identity trailer) must refuse.
MMAP_CHECKED = frozenset({"truncate", "append", "extend", "swap", "odd-file", "mismatch"})
# A load refused for a claimed size may use at most this much memory (tracemalloc peak).
LOAD_MEMORY_BOUND = 256 << 20
# How often each family is drawn, relative to the others: field edits reach every device's
# restore code, so they get the largest share.
WEIGHTS = {"field": 6, "bitflip": 2, "truncate": 2, "range": 2}
WEIGHTED_FAMILIES = tuple(f for f in FAMILIES for _ in range(WEIGHTS.get(f, 1)))  # draw from this
# Snapshots that must be checked when a file of snapshot X is mutated: X and every diff over it.
DEPENDANTS = {"base": ("base", "top"), "top": ("top",), "other": ("other",)}
# A forged state that loads is run for this long (instructions of virtual time).
ACCEPTED_RUN = 2 * QUANTUM
# Decoding a state file may use at most this much memory (bytes, tracemalloc peak): a fixed
# multiple of the deserialization limit, whatever the file declares.
DECODE_MEMORY_BOUND = 16 * MAX_STATE_FILE_SIZE

_X86_64_MAGIC = 0x0710_1984_8664_0000  # squib: SNAPSHOT_MAGIC_X86_64


@dataclass
class SnapshotFiles:
    """What the generator knows of one corpus snapshot: its state bytes, decoded envelope,
    region boundaries in the state file, and its memory file's info."""

    name: str
    state: bytes
    envelope: dict[str, Any]
    memory: MemFileInfo
    state_boundaries: list[int]
    memory_boundaries: list[int]


@dataclass
class CorpusInfo:
    corpus: Corpus
    snapshots: dict[str, SnapshotFiles] = field(default_factory=dict)


def _key_offsets(blob: bytes, node: Any, out: set[int], depth: int = 0) -> None:
    """Offsets in `blob` where each map key of `node` (and the value after it) starts."""
    if depth > 8:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            packed = msgpack.packb(key)
            at = blob.find(packed)
            if at >= 0:
                out.update((at, at + len(packed)))
            _key_offsets(blob, value, out, depth + 1)
    elif isinstance(node, list):
        for value in node[:4]:
            _key_offsets(blob, value, out, depth + 1)


def _extent_boundaries(path: Path) -> set[int]:
    """Offsets where the data extents of the file at `path` start and end (SEEK_DATA/HOLE)."""
    out: set[int] = set()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            out.update((start, offset))
    finally:
        os.close(fd)
    return out


def load_info(corpus: Corpus) -> CorpusInfo:
    info = CorpusInfo(corpus)
    for name in corpus.names:
        state = corpus.path(name).with_suffix(".snap").read_bytes()
        envelope = msgpack.unpackb(state[:-CRC_SIZE], raw=False)
        memory = recorded_memory(envelope["data"])
        bounds = {0, 1, CRC_SIZE - 1, len(state) - CRC_SIZE, len(state) - 1, len(state) // 2}
        _key_offsets(state, envelope, bounds)
        page = memory.page_size
        mem_bounds = {0, 1, page, memory.length // 2, memory.length - page, memory.length - 1}
        if memory.trailer:  # the identity trailer: its start, its fields, its checksum
            mem_bounds.update(memory.length + k for k in (0, 8, 24, TRAILER_SIZE - 8, TRAILER_SIZE - 1))
        for first, count in memory.runs:
            mem_bounds.update((first * page, (first + count) * page, first * page + 1))
        mem_bounds |= _extent_boundaries(corpus.path(name).with_suffix(".mem"))
        info.snapshots[name] = SnapshotFiles(
            name, state, envelope, memory, sorted(b for b in bounds if 0 <= b < len(state)), sorted(b for b in mem_bounds if 0 <= b < memory.file_length)
        )
    return info


@dataclass
class Mutation:
    """One change to one file of snapshot `snapshot` (`which` = 'snap' or 'mem')."""

    family: str
    snapshot: str
    which: str
    text: str
    apply: Callable[[Path], None]  # given the case directory
    refused_with: type[SnapshotError] | None = None  # forged and refused: the error required

    @property
    def accidental(self) -> bool:
        return self.family in ACCIDENTAL

    def __str__(self) -> str:
        return f"{self.family} {self.snapshot}.{self.which}: {self.text}"


# --- writing mutated files (never in place: the case directory holds hard links) ----------------
def _write_new(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _private_copy(path: Path) -> None:
    """Replace the hard link `path` by a copy of its own, so it can be changed in place."""
    tmp = path.with_name(path.name + ".new")
    shutil.copyfile(path, tmp)
    os.replace(tmp, path)


def _patch(path: Path, patches: list[tuple[int, bytes]]) -> None:
    _private_copy(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in patches:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _resize(path: Path, length: int, tail: bytes = b"") -> None:
    _private_copy(path)
    os.truncate(path, length)
    if tail:
        with open(path, "ab") as f:
            f.write(tail)


def seal(payload: bytes) -> bytes:
    """`payload` followed by its valid CRC-64 trailer."""
    return payload + crc64(payload).to_bytes(CRC_SIZE, "little")


def _pack(envelope: Any) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


# --- accidental families ----------------------------------------------------------------------
def _bitflip(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    size = len(s.state) if which == "snap" else s.memory.file_length
    offsets: list[int] = []
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        if which == "mem" and s.memory.runs and rng.random() < 0.8:  # mostly inside recorded data
            first, count = rng.choice(s.memory.runs)
            offsets.append(rng.randrange(first * s.memory.page_size, (first + count) * s.memory.page_size))
        elif which == "mem" and rng.random() < 0.6:  # a full image: mostly in its first pages
            offsets.append(rng.randrange(0, min(size, 4 << 20)))
        else:
            offsets.append(rng.randrange(size))
    bits = [rng.randrange(8) for _ in offsets]

    def apply(d: Path) -> None:
        path = d / f"{s.name}.{which}"
        with open(path, "rb") as f:
            old = []
            for o in offsets:
                f.seek(o)
                old.append(f.read(1)[0])
        _patch(path, [(o, bytes([b ^ (1 << bit)])) for o, b, bit in zip(offsets, old, bits)])

    return f"flip bit(s) {list(zip(offsets, bits))}", apply


def _overwrite(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    size = len(s.state) if which == "snap" else s.memory.file_length
    n = rng.choice((1, 4, 8, 64, 4096))
    offset = rng.randrange(size)
    fill = rng.choice(("zeros", "ones", "random"))
    data = {"zeros": bytes(n), "ones": b"\xff" * n, "random": rng.randbytes(n)}[fill]
    return f"{fill} x{n} at {offset}", lambda d: _patch(d / f"{s.name}.{which}", [(offset, data)])


def _truncate(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    at = rng.choice(s.state_boundaries if which == "snap" else s.memory_boundaries)
    return f"truncated at byte {at}", lambda d: _resize(d / f"{s.name}.{which}", at)


def truncations(info: CorpusInfo) -> Iterator[Mutation]:
    """A truncation at every region boundary of every file of the corpus: msgpack fields and
    the CRC trailer of state files, recorded runs and data extents of memory files."""
    for s in info.snapshots.values():
        for which, bounds in (("snap", s.state_boundaries), ("mem", s.memory_boundaries)):
            for at in bounds:
                apply = lambda d, s=s, which=which, at=at: _resize(d / f"{s.name}.{which}", at)  # noqa: E731
                yield Mutation("truncate", s.name, which, f"truncated at byte {at}", apply)


def _append(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    kind = rng.choice(("byte", "random", "copy", "crc") if which == "snap" else ("byte", "random", "page"))
    if kind == "byte":
        tail = b"\x00"
    elif kind == "random":
        tail = rng.randbytes(rng.randrange(1, 4097))
    elif kind == "crc":
        tail = s.state[-CRC_SIZE:]  # the trailer again
    elif kind == "copy":
        tail = s.state  # the whole file again
    else:
        tail = b"\x5a" * s.memory.page_size
    size = len(s.state) if which == "snap" else s.memory.file_length
    return f"{len(tail)} bytes ({kind}) appended", lambda d: _resize(d / f"{s.name}.{which}", size, tail)


def _extend(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    size = len(s.state) if which == "snap" else s.memory.file_length
    extra = rng.choice((1, 4096, 1 << 20, MAX_STATE_FILE_SIZE + 1, 1 << 32))
    return f"extended by a {extra}-byte hole", lambda d: _resize(d / f"{s.name}.{which}", size + extra)


def _swap(rng: random.Random, s: SnapshotFiles, which: str, names: list[str]) -> tuple[str, Callable[[Path], None]]:
    donor = rng.choice([n for n in names if n != s.name])

    def apply(d: Path) -> None:
        path = d / f"{s.name}.{which}"
        os.unlink(path)
        os.link(d / f"{donor}.{which}", path)

    return f"replaced by {donor}.{which}", apply


def _odd_file(rng: random.Random, s: SnapshotFiles, which: str) -> tuple[str, Callable[[Path], None]]:
    kind = rng.choice(("empty", "directory", "fifo", "dev-zero", "dangling", "loop", "missing", "unreadable"))

    def apply(d: Path) -> None:
        path = d / f"{s.name}.{which}"
        os.unlink(path)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "dangling":
            path.symlink_to(d / "no-such-file")
        elif kind == "loop":
            path.symlink_to(path.name)
        elif kind == "unreadable":
            path.write_bytes(b"x")
            path.chmod(0)  # root still reads it: a one-byte file then
        # "missing": nothing there

    return kind, apply


def punch_hole(path: Path, offset: int, count: int) -> bool:
    """Deallocate [offset, offset+count) of the file in place (fallocate PUNCH_HOLE, as
    `fallocate -p` does); False if the filesystem cannot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_WRONLY)
    try:
        punch_keep_size = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)
        return libc.fallocate(fd, punch_keep_size, ctypes.c_long(offset), ctypes.c_long(count)) == 0
    finally:
        os.close(fd)


def _mismatch(rng: random.Random, s: SnapshotFiles, names: list[str]) -> tuple[str, Callable[[Path], None]]:
    """A memory file of the recorded size (or at the recorded staged name) that is not the
    recorded file: the identity trailer tells most apart without reading the image; a hole
    punched into recorded data, the recorded data runs (memfile.has_extra_holes)."""
    kind = rng.choice(("unfinished", "holes", "bare-image", "foreign-staged", "punched"))
    donor = rng.choice([n for n in names if n != s.name])
    page = s.memory.page_size
    runs = s.memory.runs or ((0, s.memory.length // page),)
    first, count = rng.choice(runs)
    punch_at = rng.randrange(first, first + count) * page

    def apply(d: Path) -> None:
        path = d / f"{s.name}.mem"
        if kind == "punched":
            _private_copy(path)
            punch_hole(path, punch_at, page)
        elif kind == "unfinished":  # image written, trailer not yet (a temp mid-save)
            data = path.read_bytes()
            _write_new(path, data[: s.memory.length] + bytes(len(data) - s.memory.length))
        elif kind == "holes":
            size = path.stat().st_size
            os.unlink(path)
            with open(path, "wb") as f:
                f.truncate(size)
        elif kind == "bare-image":  # as a 1.0 writer would leave it
            _write_new(path, path.read_bytes()[: s.memory.length])
        else:  # the loader prefers a staged file named for the recorded digest
            shutil.copyfile(d / f"{donor}.mem", d / f".{s.name}.mem.staged-{s.memory.digest}")

    shown = {"foreign-staged": f" (from {donor})", "punched": f" at byte {punch_at}"}.get(kind, "")
    return kind + shown, apply


# --- forged families (valid CRC) --------------------------------------------------------------
def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys / indices) into a decoded msgpack tree, the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(_paths(value, prefix + (key,)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _copy(node: Any) -> Any:
    return msgpack.unpackb(_pack(node), raw=False, strict_map_key=False)


def _edge_values(rng: random.Random, value: Any) -> list[Any]:
    """Hostile replacements for `value`: edge cases of its own type, then other types."""
    if isinstance(value, bool):
        same: list[Any] = [not value]
    elif isinstance(value, int):
        edges = [-1, 0, 1, value + 1, value - 1, value * 2, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), rng.randrange(2**64)]
        same = [v for v in edges if -(2**63) <= v < 2**64]  # what msgpack can encode
    elif isinstance(value, float):
        same = [math.nan, math.inf, -0.0, 1e308]
    elif isinstance(value, str):
        same = ["", value + "x", value[:-1], "x" * 5000, "../" * 16 + "etc/passwd", "other.snap", "top.snap", "base.snap", "0" * 32, "\u202e\x00\n", value.upper()]
    elif isinstance(value, bytes):
        same = [b"", value + b"\x00", value[:-1], b"\xff" * len(value), rng.randbytes(len(value) or 1)]
    elif isinstance(value, list):
        same = [[], value[:-1], value + value[-1:], value[::-1], [None] * len(value), value * 50]
    elif isinstance(value, dict):
        same = [{}, dict(list(value.items())[:-1]), {**value, "unknown_field": 1}, {**value, "": None}]
    else:
        same = [0, "", {}]
    others = [None, True, 0, -1, 2**64 - 1, 1.5, "x", b"x", [], {}, [0] * 3, {"a": 1}]
    return same + others


def _field(rng: random.Random, s: SnapshotFiles) -> tuple[str, bytes]:
    envelope = _copy(s.envelope)
    paths = _paths(envelope)
    path = rng.choice(paths)
    parent, key = _get(envelope, path[:-1]), path[-1]
    action = rng.random()
    if action < 0.1 and isinstance(parent, dict):
        del parent[key]
        text = f"removed {'.'.join(map(str, path))}"
    elif action < 0.15 and isinstance(parent, dict):
        parent[f"x_{rng.randrange(1000)}"] = rng.choice((0, "x", None, [], {}))
        text = f"unknown field added next to {'.'.join(map(str, path))}"
    else:
        new = rng.choice(_edge_values(rng, parent[key]))
        parent[key] = new
        text = f"{'.'.join(map(str, path))} = {repr(new)[:60]}"
    return text, _pack(envelope)


# msgpack headers that declare far more than the file holds (msgpack spec: array32, map32,
# str32, bin32, ext32), and the largest fixed-size headers of each.
_HUGE_HEADERS = (
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01",
    b"\xdd\x7f\xff\xff\xff",
    b"\xdf\x00\x10\x00\x00",
    b"\xdc\xff\xff",
    b"\xde\xff\xff",
    b"\xda\xff\xff",
    b"\xc5\xff\xff",
)


def _huge_length(rng: random.Random, s: SnapshotFiles) -> tuple[str, bytes]:
    envelope = _copy(s.envelope)
    path = rng.choice(_paths(envelope))
    marker = rng.randbytes(16)
    parent = _get(envelope, path[:-1])
    parent[path[-1]] = marker
    payload = _pack(envelope)
    header = rng.choice(_HUGE_HEADERS)
    filler = rng.choice((b"", b"\x00" * 16, b"\x91" * 64))
    packed_marker = b"\xc4\x10" + marker
    at = payload.find(packed_marker)
    payload = payload[:at] + header + filler + payload[at + len(packed_marker) :]
    return f"{'.'.join(map(str, path))} declared by header {header.hex()}", payload


def _header(rng: random.Random, s: SnapshotFiles) -> tuple[str, bytes]:
    envelope = _copy(s.envelope)
    choice = rng.choice(("magic", "version", "shape"))
    if choice == "magic":
        value: Any = rng.choice((_X86_64_MAGIC, 0, MAGIC_AARCH64 ^ 1, 2**64 - 1, -1, "aarch64"))
        envelope["header"]["magic"] = value
    elif choice == "version":
        value = rng.choice(([2, 0, 0], [1, 1, 0], [0, 9, 9], [1, 0, 99], [1, 0], [1, 0, 0, 0], ["1", 0, 0], [65536, 0, 0], []))
        envelope["header"]["version"] = value
    else:
        value = rng.choice(({}, [], None, {"magic": MAGIC_AARCH64}, "header"))
        envelope["header"] = value
    return f"header {choice} = {value!r}", _pack(envelope)


def _bomb(rng: random.Random, s: SnapshotFiles) -> tuple[str, bytes]:
    kind = rng.choice(("deep-arrays", "deep-maps", "container-flood", "nested-flood", "wide-map", "long-string", "ext", "int-keys", "random", "nested-declared"))
    header = _pack(s.envelope["header"])
    if kind == "deep-arrays":
        data = b"\x91" * rng.choice((1000, 100_000, 2_000_000)) + b"\xc0"
    elif kind == "deep-maps":
        data = b"\x81\xa1k" * rng.choice((1000, 100_000)) + b"\xc0"
    elif kind == "container-flood":
        n = rng.choice((MAX_DECODED_CONTAINERS - 10, MAX_DECODED_CONTAINERS + 10, MAX_STATE_FILE_SIZE - 200))
        data = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    elif kind == "nested-flood":  # inner arrays short enough to pass the declared-length limit
        inner = rng.choice((16, 1000, MAX_ARRAY_ITEMS))
        outer = min(MAX_ARRAY_ITEMS, (MAX_STATE_FILE_SIZE - 200) // (inner + 3))
        data = b"\xdc" + outer.to_bytes(2, "big") + (b"\xdc" + inner.to_bytes(2, "big") + b"\x90" * inner) * outer
    elif kind == "wide-map":
        n = rng.choice((1000, 200_000))
        data = _pack({f"k{i}": i for i in range(n)})
    elif kind == "long-string":
        data = b"\xdb" + (MAX_STATE_FILE_SIZE - 100).to_bytes(4, "big") + b"a" * (MAX_STATE_FILE_SIZE - 100)
    elif kind == "ext":
        data = rng.choice((b"\xd6\xff\x00\x00\x00\x00", b"\xc7\x03\x05abc", _pack(msgpack.ExtType(1, b"x" * 100))))
    elif kind == "int-keys":
        data = b"\x81\x01\x02"
    elif kind == "nested-declared":
        data = b"\xdd\x00\x10\x00\x00" * 500 + b"\x00" * ((1 << 20) + 10)
    else:
        data = rng.randbytes(rng.randrange(1, 2000))
    payload = b"\x82\xa6header" + header + b"\xa4data" + data
    if rng.random() < 0.2:  # the bomb as the whole payload
        payload = data
    return f"{kind} ({len(payload)} bytes)", payload[: MAX_STATE_FILE_SIZE - CRC_SIZE]


def _cut(rng: random.Random, s: SnapshotFiles) -> tuple[str, bytes]:
    payload = s.state[:-CRC_SIZE]
    at = rng.choice(s.state_boundaries + [rng.randrange(len(payload))])
    at = min(at, len(payload) - 1)
    return f"body cut at byte {at}", payload[:at]


# --- forged and refused: each must fail with the typed error it names -----------------------
Refused = tuple[str, str, Callable[[Path], None], type[SnapshotError]]  # (snapshot, text, apply, error)


def _sealed_edit(s: SnapshotFiles, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    envelope = _copy(s.envelope)
    change(envelope["data"])
    blob = seal(_pack(envelope))
    return lambda d: _write_new(d / f"{s.name}.snap", blob)


def _link(rng: random.Random, info: CorpusInfo) -> Refused:
    """Chain links that cannot be followed (the diff `top` over `base`)."""
    top = info.snapshots["top"]
    kind = rng.choice(("self-loop", "loop-via-base", "nul-name", "digest-disagrees", "missing-parent"))
    if kind == "self-loop":
        return "top", kind, _sealed_edit(top, lambda d: d["parent"].__setitem__("state_name", "top.snap")), ChainLoopError
    if kind == "loop-via-base":  # base becomes a diff over top
        base = info.snapshots["base"]

        def change(d: dict[str, Any]) -> None:
            d["parent"] = {"state_name": "top.snap", "state_crc": 0, "memory_digest": top.memory.digest}
            d["memory"].update(kind="diff", parent_digest=top.memory.digest, trailer=True, data_runs=b"")
            npages = base.memory.length // base.memory.page_size
            d["memory"]["page_map"] = b"\x01" + bytes((npages + 7) // 8 - 1)
            d["memory"]["pages_written"] = 1

        return "base", kind, _sealed_edit(base, change), ChainLoopError
    if kind == "nul-name":
        name = rng.choice(("base\x00.snap", "\x00", "base.snap\x00../x"))
        return "top", f"{kind} {name!r}", _sealed_edit(top, lambda d: d["parent"].__setitem__("state_name", name)), EncodingError
    if kind == "digest-disagrees":
        digest = rng.choice(("0" * 32, info.snapshots["other"].memory.digest))
        return "top", kind, _sealed_edit(top, lambda d: d["parent"].__setitem__("memory_digest", digest)), EncodingError
    name = rng.choice(("gone.snap", "sub/base.snap", "../base.snap"))
    return "top", f"{kind} {name}", _sealed_edit(top, lambda d: d["parent"].__setitem__("state_name", name)), MissingParentError


def _range(rng: random.Random, info: CorpusInfo) -> tuple[str, str, Callable[[Path], None], type[SnapshotError] | None]:
    """An int of the state set outside its range. A field whose state dataclass declares a
    range (snapshot.plain markers) gets a value just outside it and must be refused with an
    EncodingError: every declared limit is probed, new ones included. A field that declares
    none gets a hostile magnitude and must be refused or load and run, within the time and
    LOAD_MEMORY_BOUND (a value used as a shift or a size shows up there)."""
    s = info.snapshots[rng.choice(sorted(info.snapshots))]
    path, low, high = rng.choice(int_bounds(MicrovmState, s.envelope["data"]))
    declared = low > -(2**63) or high < 2**64 - 1
    if declared:
        candidates = (low - 1, high + 1, high + rng.randrange(1, 2**20), 2**64 - 1, -(2**63))
    else:
        candidates = (2**33, 2**62, 2**63, 2**64 - 1, -1, -(2**63))
    value = rng.choice([v for v in candidates if -(2**63) <= v < 2**64 and (not declared or not low <= v <= high)])

    def change(data: dict[str, Any]) -> None:
        _get(data, path[:-1])[path[-1]] = value

    shown = f"declared {low}..{high}" if declared else "no declared range"
    return s.name, f"{'.'.join(map(str, path))} = {value} ({shown})", _sealed_edit(s, change), EncodingError if declared else None


def _claim(rng: random.Random, info: CorpusInfo) -> Refused:
    """16 GiB of RAM claimed beside a small file: refused (length, or the lz4 index the file
    cannot hold) before RAM or per-frame objects are allocated (LOAD_MEMORY_BOUND)."""
    s = info.snapshots[rng.choice(("base", "other"))]
    size = 16 << 30
    kind = rng.choice(("raw", "lz4-tiny"))

    def change(data: dict[str, Any]) -> None:
        data["vm"]["ram_size"] = data["vm"]["config"]["mem_size"] = data["memory"]["length"] = size
        if kind == "lz4-tiny":
            data["memory"].update(format="lz4", frame_size=s.memory.page_size, file_size=FOOTER_SIZE, trailer=False, data_runs=b"")

    write_state = _sealed_edit(s, change)
    footer = _lz4_empty_footer(size, s.memory.page_size, s.memory.digest)

    def apply(d: Path) -> None:
        write_state(d)
        if kind == "lz4-tiny":
            _write_new(d / f"{s.name}.mem", footer)

    expected = MemoryFileMismatchError if kind == "raw" else CorruptMemoryFileError
    return s.name, f"{kind} 16 GiB claim", apply, expected


def _lz4_empty_footer(length: int, frame_size: int, digest: str) -> bytes:
    """A valid frame-format footer declaring no entries (snapshot.frames' layout)."""
    import struct

    import xxhash

    head = struct.pack("<8sIIQQQQQ16s", b"MVMFRAME", 1, 1, length, frame_size, 0, 0, xxhash.xxh3_64_intdigest(b""), bytes.fromhex(digest))
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


_REFUSED: dict[str, Callable[[random.Random, CorpusInfo], Any]] = {"link": _link, "range": _range, "claim": _claim}
MEASURED = frozenset({"claim", "range"})  # families whose whole check is held to LOAD_MEMORY_BOUND


_FORGERS: dict[str, Callable[[random.Random, SnapshotFiles], tuple[str, bytes]]] = {
    "field": _field,
    "huge-length": _huge_length,
    "header": _header,
    "bomb": _bomb,
    "cut": _cut,
}


def draw(rng: random.Random, info: CorpusInfo, family: str | None = None) -> Mutation:
    """A random mutation (of `family`, or any) of a random file of the corpus."""
    family = family or rng.choice(WEIGHTED_FAMILIES)
    names = sorted(info.snapshots)
    if family in _REFUSED:
        target, text, apply, error = _REFUSED[family](rng, info)
        return Mutation(family, target, "snap", text, apply, refused_with=error)
    s = info.snapshots[rng.choice(names)]
    which = "snap" if family in FORGED else "mem" if family == "mismatch" else rng.choice(("snap", "mem"))
    if family == "mismatch":
        text, apply = _mismatch(rng, s, names)
        return Mutation(family, s.name, which, text, apply)
    if family in _FORGERS:
        text, payload = _FORGERS[family](rng, s)
        blob = seal(payload)
        return Mutation(family, s.name, which, text, lambda d: _write_new(d / f"{s.name}.snap", blob))
    if family == "swap":
        text, apply = _swap(rng, s, which, names)
    else:
        maker = {"bitflip": _bitflip, "overwrite": _overwrite, "truncate": _truncate, "append": _append, "extend": _extend, "odd-file": _odd_file}[family]
        text, apply = maker(rng, s, which)
    return Mutation(family, s.name, which, text, apply)


# --- running a case ---------------------------------------------------------------------------
def _chain_verify() -> Callable[[Path], Any] | None:
    """snapshot.chain.verify with this machine's schema (returns a report with `.ok`), if that
    module exists."""
    try:
        from snapshot.chain import verify
    except ImportError:
        return None
    return functools.partial(verify, schema=MACHINE)


def decode_peak(path: Path) -> int:
    """Peak bytes allocated (tracemalloc) while reading and decoding the state file `path`."""
    tracemalloc.start()
    try:
        read_state_file(path)
    except SnapshotError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@dataclass
class CaseLimits:
    """Bounds a case is held to: wall seconds (None: no watchdog) and whether to measure the
    decode's memory peak (tracemalloc, slow)."""

    seconds: float | None = None
    measure_memory: bool = False


def run_case(info: CorpusInfo, mutation: Mutation, d: Path, limits: CaseLimits = CaseLimits()) -> Trial:
    """Apply `mutation` to a hard-linked copy of the corpus in `d`, then load, describe and
    verify every affected snapshot; the verdict says whether every contract held. The trial's
    `seconds` are those of the load/describe/verify checks (what `limits.seconds` bounds)."""
    case = str(mutation)
    tags = (f"family:{mutation.family}", f"file:{mutation.which}")
    link_files(info.corpus.directory, d)
    mutation.apply(d)
    peak = 0
    try:
        if limits.measure_memory and mutation.which == "snap":
            peak = decode_peak(d / f"{mutation.snapshot}.snap")
        if mutation.family in MEASURED:  # what refusing (or running) it costs, measured
            tracemalloc.start()
        checks = Stopwatch()  # what the time bound applies to (not the tracemalloc run)
        try:
            if limits.seconds is None:
                verdict, detail, outcome = _check(info, mutation, d)
            else:
                with watchdog(limits.seconds):
                    verdict, detail, outcome = _check(info, mutation, d)
        finally:
            if mutation.family in MEASURED:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        if mutation.family in MEASURED and verdict is Verdict.SURVIVED and peak > LOAD_MEMORY_BOUND:
            verdict, detail = Verdict.VIOLATION, f"checking it used {peak} bytes (bound {LOAD_MEMORY_BOUND})"
    except Hang as exc:
        return failed(case, Verdict.HANG, str(exc), seconds=limits.seconds or 0.0, tags=tags)
    finally:
        _make_removable(d)
    if verdict is Verdict.SURVIVED and mutation.family not in MEASURED and peak > DECODE_MEMORY_BOUND:
        verdict, detail = Verdict.VIOLATION, f"decoding used {peak} bytes (bound {DECODE_MEMORY_BOUND})"
    if limits.seconds is not None and checks.seconds > limits.seconds:  # finished, but too late
        verdict, detail = Verdict.HANG, f"took {checks.seconds:.1f} s (bound {limits.seconds} s)"
    return Trial(case, verdict, detail, checks.seconds, tags + (f"outcome:{outcome}",), peak)


def _make_removable(d: Path) -> None:
    """Undo odd files a mutation left that would trip the next case's cleanup."""
    for n in os.listdir(d):
        p = d / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)


def sweep_registers(vm: MicroVM) -> None:
    """Read every GIC CPU-interface, generic-timer and PL011 register of every vCPU through
    the device models (as a guest's MRS and loads would): computations on restored values run
    here even if the guest never reaches them (a priority used as a shift, a FIFO level used as
    an index). Raises whatever a model raises."""
    from vmm.devices import gicv3, pl011

    gic = vm.interrupts.gic
    for index, timer in enumerate(vm.interrupts.timers):
        for reg in sorted(gicv3.ICC_REGS - {sysreg.ICC_SGI1R_EL1, sysreg.ICC_EOIR1_EL1, sysreg.ICC_DIR_EL1}):
            gic.sysreg_read(index, reg)
        for reg in sorted(set(timer._CHANNEL_REGS) | set(timer._OTHER_REGS)):
            timer.sysreg_read(reg, vm.clock)
    for offset in range(0, pl011.UARTDMACR + 4, 4):
        if offset != pl011.UARTDR:  # reading DR pops the FIFO: harmless, but keep the VM as loaded
            vm.uart.mmio_read(offset, 4, 0)


def _mmap_check(path: Path, expected: str) -> tuple[Verdict, str] | None:
    """The mmap backend without a digest pass must refuse the damage or load the snapshot
    intact; (verdict, detail) if it did neither."""
    try:
        vm = MicroVM.load_snapshot(path, "mmap")
    except SnapshotError:
        return None
    except Exception as exc:
        return Verdict.WRONG_EXCEPTION, describe_exception(exc)
    if vm.state_digest() != expected:
        return Verdict.LOST_DATA, "loads as a different state without an error"
    return None


def _check(info: CorpusInfo, mutation: Mutation, d: Path) -> tuple[Verdict, str, str]:
    """(verdict, detail, outcome) where outcome is 'refused' (SnapshotError), 'intact'
    (loads unchanged) or 'accepted' (a forgery that loads and runs)."""
    verify = _chain_verify()
    outcome = "refused"
    for name in DEPENDANTS[mutation.snapshot]:
        path = d / name
        expected = info.corpus.digests[name]
        load_error: SnapshotError | None = None
        must_refuse = mutation.refused_with if name == mutation.snapshot else None
        if mutation.family in MMAP_CHECKED and mutation.which == "mem":
            found = _mmap_check(path, expected)
            if found is not None:
                return found[0], f"mmap load {name}: {found[1]}", outcome
        try:
            vm = MicroVM.load_snapshot(path, "copy")
        except SnapshotError as exc:
            load_error = exc
            if must_refuse is not None and not isinstance(exc, must_refuse):
                return Verdict.VIOLATION, f"{name} refused with {describe_exception(exc)}, not {must_refuse.__name__}", outcome
        except Exception as exc:
            return Verdict.WRONG_EXCEPTION, f"load {name}: {describe_exception(exc)}", outcome
        else:
            if must_refuse is not None:
                return Verdict.VIOLATION, f"{name} loads; it must be refused with {must_refuse.__name__}", outcome
            if vm.state_digest() == expected:
                outcome = "intact" if outcome == "refused" else outcome
            elif mutation.accidental:
                return Verdict.LOST_DATA, f"{name} loads as a different state without an error", outcome
            else:
                outcome = "accepted"
                try:
                    sweep_registers(vm)
                    vm.run(ACCEPTED_RUN)
                except Exception as exc:
                    return Verdict.WRONG_EXCEPTION, f"running accepted {name}: {describe_exception(exc)}", outcome
        # describe --verify reads the memory file: only worth it when that file was changed.
        own_memory = mutation.which == "mem" and name == mutation.snapshot
        try:
            described = describe(path, verify=own_memory, schema=MACHINE)
        except SnapshotError:
            described = None
        except Exception as exc:
            return Verdict.WRONG_EXCEPTION, f"describe {name}: {describe_exception(exc)}", outcome
        if (
            described is not None
            and own_memory
            and isinstance(load_error, MemoryFileMismatchError)
            and load_error.what == "digest"
            and described["pair_ok"] is not False
        ):
            return Verdict.VIOLATION, f"describe --verify of {name} says pair_ok={described['pair_ok']} for a corrupt memory file", outcome
        if verify is not None:
            try:
                report = verify(path)
            except SnapshotError:
                report = None
            except Exception as exc:
                return Verdict.WRONG_EXCEPTION, f"verify {name}: {describe_exception(exc)}", outcome
            if report is not None and report.ok and load_error is not None and mutation.which == "mem":
                return Verdict.VIOLATION, f"verify says {name} is sound but loading it fails: {load_error}", outcome
    return Verdict.SURVIVED, "", outcome
