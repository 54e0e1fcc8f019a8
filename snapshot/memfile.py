"""The memory file `<name>.mem`: a raw image of guest RAM (Firecracker's layout), followed by a
48-byte identity trailer.

Byte offset in the file = guest physical address - RAM base, for the first `length` bytes (the
RAM size). A *full* file holds every page (all-zero pages may be filesystem holes, which read
as zeros). A *diff* file holds only the dirty page runs at their offsets; everything else is a
hole, and it is restored by laying it over its base (the image it was taken against).

Identity trailer (ours; files written before it have none and are exactly `length` bytes,
recorded as MemFileInfo.trailer False): after the image, written last, all little-endian:

    magic b"MVMRAWID" | version u32 (1) | page_size u32 | length u64
    | content digest (16 raw bytes) | checksum u64 (XXH3-64 of the 40 bytes before it)

It lets a reader tie the file to its state file in O(1), without reading the image
(`check_identity`): a file of another snapshot or VM, an unfinished temp file, a file of the
right size made of holes, or one with another page size is refused before anything else is
read. What it cannot see is damage inside the image: only the content digest, recomputed from
the whole image, finds a flipped byte. A punched hole is seen without reading: the writer
records the page runs it wrote as data (MemFileInfo.data_runs; a diff's are its page runs),
and a reader that finds a hole inside one (SEEK_DATA/SEEK_HOLE, `has_extra_holes`) checks the
digest even where it would skip it (a filesystem or copy that turns zero blocks into holes
costs that pass, and still loads).

Which file a state file belongs to is recorded as a `MemFileInfo`, whose `digest` is defined
over what the file logically contains, so a verifier can recompute it from the file alone
(`compute_digest`). It is XXH3-128, as its canonical 32-char lowercase hex:

- full: XXH3-128 of the image, file bytes [0, length), holes read as zeros (the value
  `head -c <length> <name>.mem | xxhsum -H2` prints).
- diff: XXH3-128 of
      DIFF_DIGEST_DOMAIN || le64(length) || le64(page_size) || parent digest (16 raw bytes)
      || for each run of the page map, in order: le64(first_page) || le64(page_count)
                                          || file bytes [first_page, first_page + page_count)
  so the digest also binds the page map and the parent the diff applies to. A diff's pages
  are recorded as a page map: one bit per page of RAM, bit i = byte i // 8, bit i % 8 (LSB
  first), padding bits zero; its runs are the maximal runs of set bits.

XXH3 detects accidents (a torn or mismatched pair), not forgery: snapshot files are trusted to
be the user's own. Readers still treat them as hostile input: lengths are checked against the
recorded info before anything is read, and nothing past the recorded extents is read.
"""
from __future__ import annotations

import errno
import mmap
import os
import re
import struct
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Annotated, Iterable, Iterator, Literal, Optional

import numpy as np
import xxhash

from snapshot.errors import (
    CorruptMemoryFileError,
    IncompatibleError,
    MemoryFileMismatchError,
    MemoryIoError,
    MissingParentError,
    ParentMismatchError,
    from_os_error,
    open_regular_readonly,
    show_path,
)
from snapshot.plain import U32, U64, MaxLen
from snapshot.progress import Progress, no_progress

FULL: Literal["full"] = "full"
DIFF: Literal["diff"] = "diff"
RAW: Literal["raw"] = "raw"  # format of this module's files: the raw image
LZ4: Literal["lz4"] = "lz4"  # format of snapshot.frames' files: LZ4 frames + index + footer
DEFAULT_PAGE_SIZE = 4096  # bytes; AArch64 4 KiB translation granule
MIN_PAGE_SIZE = 512  # bytes; smallest page size accepted (a power of two)
MAX_IO_CHUNK = 64 << 20  # bytes per pwrite/pread call (crosvm's RAM chunk size)
# Ours: a full file leaves a hole only for zero gaps of at least this many bytes; shorter gaps
# are written as zeros. Page-sized holes cost a syscall and an extent each (65k extents for
# 1 GiB of scattered zero pages: 4x slower writes, seconds to delete with online discard).
MIN_HOLE = 1 << 20
DIFF_DIGEST_DOMAIN = b"microvm-harness/memfile/diff/v1\x00"  # prefix of every diff digest
DIGEST_HEX_CHARS = 32  # XXH3-128 as hex
FILE_MODE = 0o600  # new memory files hold guest secrets: owner-only
# Ours: a diff's page map is one bit per page; 16 GiB of RAM (vmm.layout's maximum) in
# MIN_PAGE_SIZE pages needs 4 MiB, well inside the state file's 10 MB limit.
MAX_PAGE_MAP_BYTES = (16 << 30) // MIN_PAGE_SIZE // 8
# Ours: a full file's data runs are separated by holes of at least MIN_HOLE, so 16 GiB holds at
# most this many 16-byte runs (~256 KiB).
MAX_DATA_RUNS_BYTES = 16 * ((16 << 30) // MIN_HOLE + 1)
TRAILER_MAGIC = b"MVMRAWID"  # ours: the identity trailer (module docstring)
TRAILER_VERSION = 1
_TRAILER_HEAD = struct.Struct("<8sIIQ16s")  # the trailer without its checksum
_RUN_HEADER = struct.Struct("<QQ")  # a diff digest's run prefix: le64 first page || le64 page count
TRAILER_SIZE = _TRAILER_HEAD.size + 8  # 48 bytes

_RUN_BATCH = 1 << 16  # runs turned into Python ints at a time by MemFileInfo.iter_runs
_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")
Run = tuple[int, int]  # (first_page, page_count)
FileRef = int | str | os.PathLike[str]  # an open fd, or a path


def check_digest_text(name: str, value: object) -> None:
    """ValueError unless `value` is a digest as text: DIGEST_HEX_CHARS lowercase hex characters."""
    if not isinstance(value, str) or not _HEX_DIGEST.fullmatch(value):
        raise ValueError(f"{name} must be {DIGEST_HEX_CHARS} lowercase hex characters")


def check_page_size(page_size: int) -> None:
    """ValueError unless `page_size` (bytes) is a power of two >= MIN_PAGE_SIZE."""
    if type(page_size) is not int or page_size < MIN_PAGE_SIZE or page_size & (page_size - 1):
        raise ValueError(f"page size must be a power of two >= {MIN_PAGE_SIZE}, got {page_size!r}")


@dataclass(frozen=True)
class MemFileInfo:
    """What a state file records about its memory file (plain dataclass: see snapshot.plain).

    kind: "full" or "diff". length: file length = RAM size, bytes. page_size: bytes.
    digest: see the module docstring. pages_written: the pages of RAM whose contents the file
    carries as data, the same for raw and lz4 files of the same RAM (full: the non-zero pages,
    `nonzero_pages`; diff: the dirty pages, = the page map's set bits). Bytes actually written
    differ by format (raw writes short zero gaps too; lz4 compresses): see the SaveReport.
    page_map (diff only): the diff's pages, one bit per page (module docstring); `runs` gives
    them as sorted, non-adjacent (first_page, page_count) runs. A bitmap rather than a run
    list keeps the state file small and bounded (length/page_size/8 bytes) and its encoding
    cheap however scattered the dirty pages are.
    parent_digest (diff only): digest of the image the diff must be laid over.
    format: "raw" (this module's layout) or "lz4" (snapshot.frames: the same extents, cut
    into frames of `frame_size` bytes of RAM, in a file of `file_size` bytes). The digest is
    the same for both formats: it covers what the file records, not how it is stored.
    """

    kind: Literal["full", "diff"]
    length: U64
    page_size: U32
    digest: str
    pages_written: U64
    page_map: Annotated[bytes, MaxLen(MAX_PAGE_MAP_BYTES)] = b""
    parent_digest: str | None = None
    format: Literal["raw", "lz4"] = RAW
    frame_size: U64 = 0  # lz4 only: bytes of RAM per frame, a multiple of page_size
    file_size: Optional[U64] = None  # lz4 only: bytes of the file (raw files: file_length)
    trailer: bool = False  # raw only: the file ends with the identity trailer (state format 1.1)
    # raw full only: the page runs written as data, le64 first page || le64 page count each, in
    # order (the rest of the image was left as holes); empty: not recorded (1.0 files)
    data_runs: Annotated[bytes, MaxLen(MAX_DATA_RUNS_BYTES)] = b""

    def __post_init__(self) -> None:
        check_page_size(self.page_size)
        if self.format == RAW and (self.frame_size or self.file_size is not None):
            raise ValueError("a raw memory file has no frame size and no file size of its own")
        if self.format != RAW and (
            self.frame_size <= 0 or self.frame_size % self.page_size or not self.file_size or self.trailer
        ):
            raise ValueError(
                "a compressed memory file needs a frame size (whole pages), a positive file size and no raw trailer"
            )
        if self.length <= 0 or self.length % self.page_size:
            raise ValueError(f"length {self.length} is not a positive multiple of the page size")
        if self.data_runs and (self.format != RAW or self.kind != FULL or len(self.data_runs) % 16):
            raise ValueError("data_runs is recorded only for a raw full file, as 16-byte runs")
        check_digest_text("digest", self.digest)
        npages = self.length // self.page_size
        if self.kind == FULL:
            if self.page_map or self.parent_digest is not None:
                raise ValueError("a full memory file has no page map and no parent")
            if self.pages_written > npages:
                raise ValueError(f"pages_written {self.pages_written} exceeds {npages} pages")
        else:
            check_digest_text("parent_digest", self.parent_digest)
            if _count_page_map(self.page_map, npages) != self.pages_written:
                raise ValueError("pages_written is not the number of pages in the page map")

    @classmethod
    def diff(
        cls, length: int, page_size: int, digest: str, runs: Iterable[Run], parent_digest: str
    ) -> MemFileInfo:
        """The info of a diff holding the pages of `runs` (any order; see page_mask)."""
        mask = page_mask(runs, length // page_size)
        pages = int(np.count_nonzero(mask))
        page_map = np.packbits(mask, bitorder="little").tobytes()
        return cls(DIFF, length, page_size, digest, pages, page_map, parent_digest)

    @property
    def file_length(self) -> int:
        """Bytes of the memory file itself: `length` (+ TRAILER_SIZE with the trailer) for
        raw, `file_size` for lz4."""
        if self.file_size is not None:
            return self.file_size
        return self.length + TRAILER_SIZE if self.trailer else self.length

    @cached_property
    def run_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first pages, page counts) of the diff's runs as int64 arrays (empty if full): 16
        bytes per run, where a tuple of Python ints costs ~150."""
        if not self.page_map:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        bits = np.unpackbits(np.frombuffer(self.page_map, np.uint8), bitorder="little")
        starts, ends = _run_edges(bits[: self.length // self.page_size].astype(bool))
        return starts, ends - starts

    @property
    def runs(self) -> tuple[Run, ...]:
        """The diff's pages as sorted, non-adjacent (first_page, page_count) runs; () if full.
        Readers iterate `iter_runs()` instead, which never holds them all as objects."""
        return tuple(self.iter_runs())

    def iter_runs(self) -> Iterator[Run]:
        """The runs of `runs`, produced lazily (a bounded batch of Python ints at a time)."""
        starts, counts = self.run_bounds
        for at in range(0, len(starts), _RUN_BATCH):
            yield from zip(starts[at : at + _RUN_BATCH].tolist(), counts[at : at + _RUN_BATCH].tolist())


def _count_page_map(page_map: bytes, npages: int) -> int:
    """Number of set bits of a page map; ValueError unless it is exactly ceil(npages / 8)
    bytes with zero padding bits."""
    if len(page_map) != (npages + 7) // 8:
        raise ValueError(f"page_map is {len(page_map)} bytes, expected {(npages + 7) // 8} for {npages} pages")
    packed = np.frombuffer(page_map, np.uint8)
    if npages % 8 and packed[-1] >> (npages % 8):
        raise ValueError("page_map has bits set past the last page")
    return int(np.unpackbits(packed).sum(dtype=np.int64))


def _run_array(runs: Iterable[Run], npages: int) -> tuple[np.ndarray, np.ndarray]:
    """(first pages, page counts) of `runs` as int64 arrays, in the order given. ValueError
    for a run that is empty, negative or past `npages`."""
    arr = np.asarray(runs if isinstance(runs, (list, tuple)) else list(runs), dtype=np.int64).reshape(-1, 2)
    first, count = arr[:, 0], arr[:, 1]
    bad = (first < 0) | (count < 1) | (first > npages - count)
    if bad.any():
        f, c = arr[np.argmax(bad)].tolist()
        raise ValueError(f"dirty run ({f}, {c}) is empty or outside {npages} pages")
    return first, count


def page_mask(runs: Iterable[Run], npages: int) -> np.ndarray:
    """Bool mask over `npages` pages of the pages in `runs` (first_page, page_count), which
    may overlap and come in any order. ValueError for a run that is empty, negative or past
    `npages`."""
    first, count = _run_array(runs, npages)
    total = int(count.sum())
    if total > npages:  # overlapping runs: how many runs cover each page (+1 at a start, -1 past an end)
        depth = np.cumsum(np.bincount(first, minlength=npages + 1) - np.bincount(first + count, minlength=npages + 1))
        return depth[:-1] > 0
    mask = np.zeros(npages, dtype=bool)  # every page of every run set directly: O(pages + runs), not O(npages) work
    mask[np.arange(total) + np.repeat(first - (np.cumsum(count) - count), count)] = True
    return mask


def canonical_runs(runs: Iterable[Run], npages: int) -> tuple[Run, ...]:
    """`runs` sorted with overlapping and adjacent runs merged. ValueError for a run that is
    empty, negative or past `npages`. Runs already in that form (a dirty bitmap's) are
    returned as they are, in time proportional to their number, not to `npages`."""
    first, count = _run_array(runs, npages)
    if np.all(first[1:] > first[:-1] + count[:-1]):  # ascending, with a clean page between runs
        return tuple(zip(first.tolist(), count.tolist()))
    return _runs_of(page_mask(zip(first.tolist(), count.tolist()), npages))


def _run_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a per-page bool mask, as int64 page numbers."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(edges == 1).astype(np.int64), np.flatnonzero(edges == -1).astype(np.int64)


def _runs_of(mask: np.ndarray, min_gap: int = 1) -> tuple[Run, ...]:
    """Runs of True in a per-page bool mask, as (first_page, page_count); runs separated by
    fewer than `min_gap` False pages are merged."""
    starts, ends = _run_edges(mask)
    if len(starts) > 1 and min_gap > 1:
        keep = np.concatenate(([True], starts[1:] - ends[:-1] >= min_gap))
        starts = starts[keep]
        ends = ends[np.concatenate((keep[1:], [True]))]
    return tuple(zip(starts.tolist(), (ends - starts).tolist()))


# --- digest -----------------------------------------------------------------------------------
def _new_hasher(
    kind: str, length: int, page_size: int, parent_digest: str | None
) -> xxhash.xxh3_128:
    if kind == FULL:
        return xxhash.xxh3_128()
    assert parent_digest is not None
    return xxhash.xxh3_128(
        DIFF_DIGEST_DOMAIN
        + length.to_bytes(8, "little")
        + page_size.to_bytes(8, "little")
        + bytes.fromhex(parent_digest)
    )


def _regions(
    kind: str, length: int, page_size: int, runs: Iterable[Run]
) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, byte count, digest prefix) of each extent the digest covers, in order."""
    if kind == FULL:
        yield 0, length, b""
        return
    pack = _RUN_HEADER.pack
    for first, count in runs:
        yield first * page_size, count * page_size, pack(first, count)


def digest_hasher(info: MemFileInfo) -> xxhash.xxh3_128:
    """A hasher primed for the digest of `info` (diff: with its domain prefix); feed it
    `digest_regions(info)` in order: each prefix, then the RAM bytes of that region."""
    return _new_hasher(info.kind, info.length, info.page_size, info.parent_digest)


def digest_regions(info: MemFileInfo) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, byte count, digest prefix) of each extent `info` records, in order."""
    return _regions(info.kind, info.length, info.page_size, info.iter_runs())


def io_chunks(offset: int, count: int) -> Iterable[tuple[int, int]]:
    """The byte range [offset, offset+count) as consecutive (offset, count) pieces of at most
    MAX_IO_CHUNK bytes each, in order (none if count is 0): the unit of one pread/pwrite call
    and of one hash update, bounding the bytes any single call touches. A range of one piece
    (a diff's page run, nearly always) costs no generator."""
    if 0 < count <= MAX_IO_CHUNK:
        return ((offset, count),)
    return _chunks(offset, count)


def _chunks(offset: int, count: int) -> Iterator[tuple[int, int]]:
    end = offset + count
    while offset < end:
        n = min(MAX_IO_CHUNK, end - offset)
        yield offset, n
        offset += n


def extents_digest(
    ram: np.ndarray,
    kind: Literal["full", "diff"],
    page_size: int,
    runs: Iterable[Run] = (),
    parent_digest: str | None = None,
) -> str:
    """The digest (module docstring) of a memory file of `kind` recording `runs` (diff) or
    everything (full), computed from `ram` holding those extents at their offsets: what a
    writer records for `ram`, and what a reader that restored into `ram` must find."""
    view = ram_view(ram, page_size)
    hasher = _new_hasher(kind, len(view), page_size, parent_digest)
    for offset, count, prefix in _regions(kind, len(view), page_size, runs):
        hasher.update(prefix)
        for off, n in io_chunks(offset, count):
            hasher.update(view[off : off + n])
    return hasher.hexdigest()


# --- low-level I/O ----------------------------------------------------------------------------
def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    """Write all of `data` at byte `offset` of `fd` (retrying short writes); OSError passes."""
    data = memoryview(data)
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def pread_exact(fd: int, into: memoryview, offset: int, where: FileRef) -> None:
    """Fill all of the writable byte view `into` from byte `offset` of `fd`, retrying short
    reads. MemoryIoError naming `where` (the file as messages show it) if the file ends first;
    OSError passes (callers turn it into MemoryIoError with from_os_error)."""
    while into:
        n = os.preadv(fd, [into], offset)
        if n == 0:
            raise MemoryIoError(
                f"reading {show_path(where)}: file ended early at byte {offset} "
                "(changed while read?)"
            )
        into, offset = into[n:], offset + n


@contextmanager
def open_dest(dest: FileRef) -> Iterator[int]:
    """Context manager yielding a writable fd for a memory file being written: `dest` itself if
    it is an fd (left open, its contents untouched), else the path `dest` created or truncated
    to 0 bytes with mode FILE_MODE, closed on exit. MemoryIoError if it cannot be created."""
    if isinstance(dest, int):
        yield dest
        return
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise from_os_error(exc, "creating", dest, MemoryIoError) from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_source(src: FileRef) -> Iterator[int]:
    """Context manager yielding a readable fd for a memory file being read: `src` itself if it
    is an fd (left open), else the path `src` opened read-only as untrusted input (a regular
    file; errors.open_regular_readonly), closed on exit. MemoryIoError if it cannot be opened."""
    if isinstance(src, int):
        yield src
        return
    fd = open_regular_readonly(src, MemoryIoError)
    try:
        yield fd
    finally:
        os.close(fd)


def ram_view(ram: np.ndarray, page_size: int, *, writable: bool = False) -> memoryview:
    """`ram` as a flat byte memoryview of len(ram) bytes (no copy). TypeError unless `ram` is a
    1-D numpy uint8 array; ValueError unless it is contiguous, a positive whole number of
    `page_size`-byte pages (page_size checked as check_page_size does) and, with `writable`,
    writable."""
    check_page_size(page_size)
    if not isinstance(ram, np.ndarray) or ram.dtype != np.uint8 or ram.ndim != 1:
        raise TypeError("ram must be a 1-D numpy uint8 array")
    if not ram.flags.c_contiguous or ram.size == 0 or ram.size % page_size:
        raise ValueError(f"ram must be contiguous and a positive multiple of {page_size} bytes")
    if writable and not ram.flags.writeable:
        raise ValueError("ram must be writable to restore into it")
    return memoryview(ram).cast("B")


def check_ram_size(info: MemFileInfo, ram_size: int) -> None:
    """IncompatibleError unless the memory file `info` describes holds exactly `ram_size` bytes
    of RAM (its `length`)."""
    if info.length != ram_size:
        raise IncompatibleError(
            f"memory file holds {info.length} bytes of RAM, the VM has {ram_size} bytes"
        )


def _check_raw(info: MemFileInfo) -> None:
    if info.format != RAW:
        raise IncompatibleError(f"the memory file is {info.format}-compressed; read it with snapshot.frames")


def check_length(fd: int, where: FileRef, expected: int) -> None:
    """The file open at `fd` must be `expected` bytes long: MemoryFileMismatchError naming
    `where` if not, MemoryIoError if it cannot be inspected."""
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise from_os_error(exc, "inspecting", where, MemoryIoError) from exc
    if size != expected:
        raise MemoryFileMismatchError(where, "length", f"{size} bytes", f"{expected} bytes")


def trailer_bytes(info: MemFileInfo) -> bytes:
    """The identity trailer (module docstring) of a raw memory file recording `info`."""
    head = _TRAILER_HEAD.pack(TRAILER_MAGIC, TRAILER_VERSION, info.page_size, info.length, bytes.fromhex(info.digest))
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


def check_identity(fd: int, where: FileRef, info: MemFileInfo) -> None:
    """O(1) pair check of the raw memory file open at `fd` against the `info` its state file
    records: its length (check_length) and, if `info.trailer`, its identity trailer (magic,
    checksum, version, then page size, RAM length and digest equal to `info`'s).
    MemoryFileMismatchError naming `where` if the file is not the recorded one (no trailer, or
    another file's), CorruptMemoryFileError if the trailer is damaged. Reads 48 bytes."""
    _check_raw(info)
    check_length(fd, where, info.file_length)
    if not info.trailer:
        return
    raw = bytearray(TRAILER_SIZE)
    try:
        pread_exact(fd, memoryview(raw), info.length, where)
    except OSError as exc:
        raise from_os_error(exc, "reading", where, MemoryIoError) from exc
    head = bytes(raw[: _TRAILER_HEAD.size])
    magic, version, page_size, length, digest = _TRAILER_HEAD.unpack(head)
    if magic != TRAILER_MAGIC:
        raise MemoryFileMismatchError(where, "identity trailer", "missing", f"the trailer of digest {info.digest}")
    if xxhash.xxh3_64_intdigest(head) != int.from_bytes(raw[_TRAILER_HEAD.size :], "little"):
        raise CorruptMemoryFileError(where, "identity trailer checksum mismatch")
    if version != TRAILER_VERSION:
        raise IncompatibleError(f"memory file trailer version {version} is not supported (this build reads {TRAILER_VERSION})")
    for what, found, expected in (
        ("page size", page_size, info.page_size),
        ("RAM length", length, info.length),
        ("digest", digest.hex(), info.digest),
    ):
        if found != expected:
            raise MemoryFileMismatchError(where, what, found, expected)


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, count) of the data extents of `fd` within [start, end), by SEEK_DATA/SEEK_HOLE;
    the whole range if the filesystem does not support them."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # not supported here
                yield pos, end - pos
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def written_regions(info: MemFileInfo) -> Iterator[tuple[int, int]]:
    """(byte offset, byte count) of every range the writer of a raw file wrote as data: a
    diff's runs, a full file's recorded data_runs; none if a full file recorded nothing."""
    if info.kind == DIFF:
        pairs: Iterable[Run] = info.iter_runs()
    else:
        pairs = np.frombuffer(info.data_runs, "<u8").reshape(-1, 2).tolist()
    for first, count in pairs:
        yield first * info.page_size, count * info.page_size


def has_extra_holes(fd: int, where: FileRef, info: MemFileInfo) -> bool:
    """Whether the raw file open at `fd` has a hole inside a range its writer wrote as data
    (written_regions): a hole punched into data, or a filesystem or copy that dropped zero
    blocks. Only a digest pass tells those apart; callers that skip it run it then. Costs
    SEEK_DATA/SEEK_HOLE calls, about two per written range; reads nothing."""
    try:
        for offset, count in written_regions(info):
            if sum(n for _, n in data_extents(fd, offset, offset + count)) < count:
                return True
    except OSError as exc:
        raise from_os_error(exc, "inspecting", where, MemoryIoError) from exc
    return False


def _write_trailer(fd: int, info: MemFileInfo) -> None:
    pwrite_all(fd, trailer_bytes(info), info.length)


def _reset_length(fd: int, length: int) -> None:
    """Make the file `length` bytes of holes: drop old contents (if any), then extend.

    An empty file is not truncated first: on ext4, truncate-to-zero then write makes close()
    flush the data (auto_da_alloc), which costs more than the rest of a diff save.
    """
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    os.ftruncate(fd, length)


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Ask the kernel to start writing bytes [offset, offset + count) of `fd` to disk now,
    without waiting: the disk then works while the next chunk is copied, the final fsync has
    less left to do, and a large save does not fill the page cache with dirty pages (which
    throttles every writer on the machine). Linux: POSIX_FADV_DONTNEED starts writeback of
    the range's dirty pages and drops only its clean ones. Durability is unchanged: the
    caller still fsyncs. A no-op where unsupported."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with suppress(OSError):
            advise(fd, offset, count, os.POSIX_FADV_DONTNEED)


class _BackgroundDigest:
    """XXH3-128 of a buffer, computed on a thread (xxhash releases the GIL) while I/O runs."""

    def __init__(self, data: memoryview) -> None:
        self._hasher = xxhash.xxh3_128()
        self._data = data
        self._thread = threading.Thread(target=self._run, name="memfile-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for offset, n in io_chunks(0, len(self._data)):
            self._hasher.update(self._data[offset : offset + n])

    def hexdigest(self) -> str:
        self._thread.join()
        return self._hasher.hexdigest()


# --- writers ----------------------------------------------------------------------------------
def write_full(
    dest: FileRef,
    ram: np.ndarray,
    page_size: int = DEFAULT_PAGE_SIZE,
    *,
    progress: Progress | None = None,
) -> MemFileInfo:
    """Write all of `ram` as a full memory file at `dest` (an fd, or a path created mode 0600).

    The file is truncated, set to len(ram) bytes, and only runs of non-zero pages are written:
    zero gaps of at least MIN_HOLE bytes stay holes, shorter ones are written as zeros; the
    identity trailer follows (TRAILER_SIZE bytes at len(ram)). `ram`
    must not change during the call. Does not fsync (the commit does). Raises MemoryIoError
    (errno in the message) if writing fails. `progress` advances by len(ram) bytes in all
    (holes count as done when passed).
    """
    view = ram_view(ram, page_size)
    advance = progress or no_progress
    digest = _BackgroundDigest(view)
    try:
        nonzero = nonzero_pages(view, page_size)
        runs = _runs_of(nonzero, max(1, MIN_HOLE // page_size))
        with open_dest(dest) as fd:
            try:
                _reset_length(fd, len(view))
                done = 0
                for first, count in runs:
                    for offset, n in io_chunks(first * page_size, count * page_size):
                        pwrite_all(fd, view[offset : offset + n], offset)
                        start_writeback(fd, offset, n)
                        advance(offset + n - done)
                        done = offset + n
                advance(len(view) - done)
                hexdigest = digest.hexdigest()
                written = int(np.count_nonzero(nonzero))  # pages_written: the non-zero pages (MemFileInfo)
                data_runs = np.asarray(runs, dtype="<u8").reshape(-1, 2).tobytes()
                info = MemFileInfo(FULL, len(view), page_size, hexdigest, written, trailer=True, data_runs=data_runs)
                _write_trailer(fd, info)
            except OSError as exc:
                raise from_os_error(exc, "writing", dest, MemoryIoError) from exc
    finally:
        digest.hexdigest()  # always join: the thread reads `ram`
    return info


def nonzero_pages(view: np.ndarray | memoryview, page_size: int) -> np.ndarray:
    """Per page of `view` (bytes of whole pages), True if any byte is non-zero (checked over
    8-byte words: page sizes are multiples of 8)."""
    words = np.frombuffer(view, dtype=np.uint64)
    return np.bitwise_or.reduce(words.reshape(-1, page_size // 8), axis=1) != 0  # 2x faster than any(axis=1)


def write_diff(
    dest: FileRef,
    ram: np.ndarray,
    runs: Iterable[Run],
    page_size: int = DEFAULT_PAGE_SIZE,
    *,
    parent_digest: str,
    progress: Progress | None = None,
) -> MemFileInfo:
    """Write the dirty page `runs` [(first_page, page_count), ...] of `ram` as a diff memory
    file at `dest`: len(ram) bytes of image, only the runs written, the rest holes, then the
    identity trailer.

    `parent_digest` is the digest of the image this diff applies on top of (the MemFileInfo of
    the snapshot the dirty epoch started from); restoring checks it. Runs are canonicalised
    (sorted, merged). Raises MemoryIoError if writing fails, ValueError for bad runs.
    `progress` advances by the bytes of the runs written.
    """
    view = ram_view(ram, page_size)
    advance = progress or no_progress
    check_digest_text("parent_digest", parent_digest)
    length = len(view)
    canon = canonical_runs(runs, length // page_size)
    hasher = _new_hasher(DIFF, length, page_size, parent_digest)
    with open_dest(dest) as fd:
        try:
            _reset_length(fd, length)
            for offset, count, prefix in _regions(DIFF, length, page_size, canon):
                hasher.update(prefix)
                for off, n in io_chunks(offset, count):
                    part = view[off : off + n]
                    hasher.update(part)
                    if os.pwrite(fd, part, off) != n:  # one call for nearly every run
                        pwrite_all(fd, part, off)
                    advance(n)
            info = replace(MemFileInfo.diff(length, page_size, hasher.hexdigest(), canon, parent_digest), trailer=True)
            _write_trailer(fd, info)
        except OSError as exc:
            raise from_os_error(exc, "writing", dest, MemoryIoError) from exc
    return info


# --- readers ----------------------------------------------------------------------------------
def _stream(
    fd: int,
    where: FileRef,
    info: MemFileInfo,
    dest: memoryview | None,
    hash_it: bool,
    progress: Progress | None = None,
) -> str | None:
    """Read the extents `info` records from `fd`, into `dest` at the same offsets (or a scratch
    buffer if None), hashing them if `hash_it`. Returns the hex digest or None. Reads nothing
    outside the recorded extents. `progress` advances by extent_bytes(info) in all."""
    advance = progress or no_progress
    hasher = digest_hasher(info) if hash_it else None
    scratch = memoryview(b"")
    if dest is None:
        counts = info.run_bounds[1]
        largest = info.length if info.kind == FULL else int(counts.max(initial=0)) * info.page_size
        scratch = memoryview(bytearray(min(MAX_IO_CHUNK, largest)))
    try:
        for offset, count, prefix in digest_regions(info):
            if hasher is not None:
                hasher.update(prefix)
            for off, n in io_chunks(offset, count):
                into = dest[off : off + n] if dest is not None else scratch[:n]
                pread_exact(fd, into, off, where)
                if hasher is not None:
                    hasher.update(into)
                advance(n)
    except OSError as exc:
        raise from_os_error(exc, "reading", where, MemoryIoError) from exc
    return hasher.hexdigest() if hasher is not None else None


def extent_bytes(info: MemFileInfo) -> int:
    """Bytes of the extents `info` records (what reading or verifying the file goes through):
    the whole length for a full file, the pages of the runs for a diff."""
    return info.length if info.kind == FULL else info.pages_written * info.page_size


def _check_digest(where: FileRef, found: str | None, info: MemFileInfo) -> None:
    if found is not None and found != info.digest:
        raise MemoryFileMismatchError(where, "digest", found, info.digest)


def compute_digest(
    src: FileRef, info: MemFileInfo, *, progress: Progress | None = None, name: FileRef | None = None
) -> str:
    """Recompute the digest of the memory file `src` (path or fd) for the extents `info`
    records (see the module docstring). Checks the file's identity first (check_identity).
    `progress` advances by extent_bytes(info) in all. `name`: the file as messages show it
    (default `src`; give the path when `src` is an fd)."""
    where = src if name is None else name
    with open_source(src) as fd:
        check_identity(fd, where, info)
        digest = _stream(fd, where, info, None, True, progress)
    assert digest is not None
    return digest


def check_parent_info(info: MemFileInfo, parent: MemFileInfo | None) -> None:
    """For a diff `info`: MissingParentError if `parent` (the info of the image it will be laid
    over) is None, ParentMismatchError unless parent.digest is the diff's parent_digest. A full
    file needs no parent: no check, whatever `parent` is."""
    if info.kind != DIFF:
        return
    assert info.parent_digest is not None
    if parent is None:
        raise MissingParentError(info.parent_digest)
    if parent.digest != info.parent_digest:
        raise ParentMismatchError(info.parent_digest, parent.digest)


def read_into(
    src: FileRef,
    ram: np.ndarray,
    info: MemFileInfo,
    verify_digest: bool = True,
    *,
    parent: MemFileInfo | None = None,
    progress: Progress | None = None,
    name: FileRef | None = None,
) -> None:
    """Eager restore: copy the memory file `src` (path or fd) into writable `ram`.

    Full: every byte of ram is overwritten. Diff: only the recorded runs are copied over what
    `ram` already holds, which must be the image `parent` (MissingParentError /
    ParentMismatchError otherwise). The file must pass check_identity and len(ram) must be
    `info.length` (MemoryFileMismatchError / IncompatibleError, before anything is read). With
    `verify_digest` (forced on when the file has_extra_holes), a digest mismatch raises
    MemoryFileMismatchError after the copy: on any
    error `ram` holds unspecified contents and must be discarded. `progress` advances by
    extent_bytes(info) in all. `name` as for compute_digest.
    """
    where = src if name is None else name
    view = ram_view(ram, info.page_size, writable=True)
    _check_raw(info)
    check_ram_size(info, len(view))
    check_parent_info(info, parent)
    with open_source(src) as fd:
        check_identity(fd, where, info)
        verify_digest = verify_digest or has_extra_holes(fd, where, info)
        found = _stream(fd, where, info, view, verify_digest, progress)
    _check_digest(where, found, info)


def map_private(
    src: FileRef,
    size: int,
    *,
    info: MemFileInfo | None = None,
    verify_digest: bool = False,
    progress: Progress | None = None,
    name: FileRef | None = None,
) -> np.ndarray:
    """Lazy restore: a writable numpy uint8 array of `size` bytes over a MAP_PRIVATE mapping of
    the memory file `src` (path or fd), like Firecracker's File backend: pages load on first
    touch, and writes are copy-on-write and never reach the file.

    Without `info`, the file length must equal `size` (MemoryFileMismatchError). With `info`, it
    must be a full file of that size (a diff is only meaningful over its base: use read_into)
    that passes check_identity (O(1): the recorded file, not another one), and `verify_digest`
    recomputes its digest first (reads the whole file once; the only check that sees damage
    inside the image; forced on when the file has_extra_holes). The file must not be modified while mapped: MAP_PRIVATE shows later
    changes to pages not yet copied. `progress` advances by the bytes verified
    (extent_bytes(info) with `verify_digest`, else 0). `name` as for compute_digest.
    """
    where = src if name is None else name
    if type(size) is not int or size <= 0:
        raise ValueError(f"size must be a positive number of bytes, got {size!r}")
    if info is not None:
        if info.kind != FULL:
            raise IncompatibleError("a diff memory file cannot be mapped; lay it over its base")
        _check_raw(info)
        check_ram_size(info, size)
    with open_source(src) as fd:
        if info is None:
            check_length(fd, where, size)
        else:
            check_identity(fd, where, info)
            if verify_digest or has_extra_holes(fd, where, info):
                _check_digest(where, _stream(fd, where, info, None, True, progress), info)
        try:
            mapping = mmap.mmap(
                fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise from_os_error(exc, "mapping", where, MemoryIoError) from exc
    return np.frombuffer(mapping, dtype=np.uint8)
