"""The memory file `<name>.mem`: a raw image of guest RAM, no header (Firecracker's layout).

Byte offset in the file = guest physical address - RAM base; the file is exactly as long as
RAM. A *full* file holds every page (all-zero pages may be filesystem holes, which read as
zeros). A *diff* file holds only the dirty page runs at their offsets; everything else is a
hole, and it is restored by laying it over its base (the image it was taken against).

Which file a state file belongs to is recorded as a `MemFileInfo`, whose `digest` is defined
over what the file logically contains, so a verifier can recompute it from the file alone
(`compute_digest`). It is XXH3-128, as its canonical 32-char lowercase hex:

- full: XXH3-128 of the whole file, bytes [0, length), holes read as zeros (the value
  `xxhsum -H2 <name>.mem` prints).
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

import mmap
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Iterable, Iterator, Literal, Optional

import numpy as np
import xxhash

from snapshot.errors import (
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

_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")
Run = tuple[int, int]  # (first_page, page_count)
FileRef = int | str | os.PathLike[str]  # an open fd, or a path


def _check_digest_text(name: str, value: object) -> None:
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
    file_size: Optional[U64] = None  # lz4 only: bytes of the file (raw files are `length`)

    def __post_init__(self) -> None:
        check_page_size(self.page_size)
        if self.format == RAW and (self.frame_size or self.file_size is not None):
            raise ValueError("a raw memory file has no frame size and no file size of its own")
        if self.format != RAW and (
            self.frame_size <= 0 or self.frame_size % self.page_size or self.file_size is None
        ):
            raise ValueError("a compressed memory file needs a frame size (whole pages) and a file size")
        if self.length <= 0 or self.length % self.page_size:
            raise ValueError(f"length {self.length} is not a positive multiple of the page size")
        _check_digest_text("digest", self.digest)
        npages = self.length // self.page_size
        if self.kind == FULL:
            if self.page_map or self.parent_digest is not None:
                raise ValueError("a full memory file has no page map and no parent")
            if self.pages_written > npages:
                raise ValueError(f"pages_written {self.pages_written} exceeds {npages} pages")
        else:
            _check_digest_text("parent_digest", self.parent_digest)
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
        """Bytes of the memory file itself: `length` for raw, `file_size` for lz4."""
        return self.length if self.file_size is None else self.file_size

    @cached_property
    def runs(self) -> tuple[Run, ...]:
        """The diff's pages as sorted, non-adjacent (first_page, page_count) runs; () if full."""
        if not self.page_map:
            return ()
        bits = np.unpackbits(np.frombuffer(self.page_map, np.uint8), bitorder="little")
        return _runs_of(bits[: self.length // self.page_size].astype(bool))


def _count_page_map(page_map: bytes, npages: int) -> int:
    """Number of set bits of a page map; ValueError unless it is exactly ceil(npages / 8)
    bytes with zero padding bits."""
    if len(page_map) != (npages + 7) // 8:
        raise ValueError(f"page_map is {len(page_map)} bytes, expected {(npages + 7) // 8} for {npages} pages")
    packed = np.frombuffer(page_map, np.uint8)
    if npages % 8 and packed[-1] >> (npages % 8):
        raise ValueError("page_map has bits set past the last page")
    return int(np.unpackbits(packed).sum(dtype=np.int64))


def page_mask(runs: Iterable[Run], npages: int) -> np.ndarray:
    """Bool mask over `npages` pages of the pages in `runs` (first_page, page_count), which
    may overlap and come in any order. ValueError for a run that is empty, negative or past
    `npages`."""
    arr = np.asarray(list(runs), dtype=np.int64).reshape(-1, 2)
    first, count = arr[:, 0], arr[:, 1]
    bad = (first < 0) | (count < 1) | (first > npages - count)
    if bad.any():
        f, c = arr[np.argmax(bad)].tolist()
        raise ValueError(f"dirty run ({f}, {c}) is empty or outside {npages} pages")
    delta = np.zeros(npages + 1, dtype=np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, first + count, -1)
    return np.cumsum(delta[:-1]) > 0


def canonical_runs(runs: Iterable[Run], npages: int) -> tuple[Run, ...]:
    """`runs` sorted with overlapping and adjacent runs merged. ValueError for a run that is
    empty, negative or past `npages`."""
    return _runs_of(page_mask(runs, npages))


def _runs_of(mask: np.ndarray, min_gap: int = 1) -> tuple[Run, ...]:
    """Runs of True in a per-page bool mask, as (first_page, page_count); runs separated by
    fewer than `min_gap` False pages are merged."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
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
    for first, count in runs:
        header = first.to_bytes(8, "little") + count.to_bytes(8, "little")
        yield first * page_size, count * page_size, header


def io_chunks(offset: int, count: int) -> Iterator[tuple[int, int]]:
    """The byte range [offset, offset+count) as consecutive (offset, count) pieces of at most
    MAX_IO_CHUNK bytes each, in order (none if count is 0): the unit of one pread/pwrite call
    and of one hash update, bounding the bytes any single call touches."""
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


def _reset_length(fd: int, length: int) -> None:
    """Make the file `length` bytes of holes: drop old contents (if any), then extend.

    An empty file is not truncated first: on ext4, truncate-to-zero then write makes close()
    flush the data (auto_da_alloc), which costs more than the rest of a diff save.
    """
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    os.ftruncate(fd, length)


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
    zero gaps of at least MIN_HOLE bytes stay holes, shorter ones are written as zeros. `ram`
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
                        advance(offset + n - done)
                        done = offset + n
                advance(len(view) - done)
            except OSError as exc:
                raise from_os_error(exc, "writing", dest, MemoryIoError) from exc
    finally:
        hexdigest = digest.hexdigest()  # always join: the thread reads `ram`
    return MemFileInfo(FULL, len(view), page_size, hexdigest, int(np.count_nonzero(nonzero)))


def nonzero_pages(view: np.ndarray | memoryview, page_size: int) -> np.ndarray:
    """Per page of `view` (bytes of whole pages), True if any byte is non-zero (checked over
    8-byte words: page sizes are multiples of 8)."""
    words = np.frombuffer(view, dtype=np.uint64)
    return words.reshape(-1, page_size // 8).any(axis=1)


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
    file at `dest`: length = len(ram) bytes, only the runs written, the rest holes.

    `parent_digest` is the digest of the image this diff applies on top of (the MemFileInfo of
    the snapshot the dirty epoch started from); restoring checks it. Runs are canonicalised
    (sorted, merged). Raises MemoryIoError if writing fails, ValueError for bad runs.
    `progress` advances by the bytes of the runs written.
    """
    view = ram_view(ram, page_size)
    advance = progress or no_progress
    _check_digest_text("parent_digest", parent_digest)
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
        except OSError as exc:
            raise from_os_error(exc, "writing", dest, MemoryIoError) from exc
    return MemFileInfo.diff(length, page_size, hasher.hexdigest(), canon, parent_digest)


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
    hasher = None
    if hash_it:
        hasher = _new_hasher(info.kind, info.length, info.page_size, info.parent_digest)
    regions = list(_regions(info.kind, info.length, info.page_size, info.runs))
    scratch = memoryview(b"")
    if dest is None:
        largest = max((count for _, count, _ in regions), default=0)
        scratch = memoryview(bytearray(min(MAX_IO_CHUNK, largest)))
    try:
        for offset, count, prefix in regions:
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


def compute_digest(src: FileRef, info: MemFileInfo, *, progress: Progress | None = None) -> str:
    """Recompute the digest of the memory file `src` (path or fd) for the extents `info`
    records (see the module docstring). Checks the file length first (MemoryFileMismatchError).
    `progress` advances by extent_bytes(info) in all."""
    _check_raw(info)
    with open_source(src) as fd:
        check_length(fd, src, info.length)
        digest = _stream(fd, src, info, None, True, progress)
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
) -> None:
    """Eager restore: copy the memory file `src` (path or fd) into writable `ram`.

    Full: every byte of ram is overwritten. Diff: only the recorded runs are copied over what
    `ram` already holds, which must be the image `parent` (MissingParentError /
    ParentMismatchError otherwise). The file length must equal `info.length` and len(ram)
    (MemoryFileMismatchError / IncompatibleError, checked before anything is read). With
    `verify_digest`, a digest mismatch raises MemoryFileMismatchError after the copy: on any
    error `ram` holds unspecified contents and must be discarded. `progress` advances by
    extent_bytes(info) in all.
    """
    view = ram_view(ram, info.page_size, writable=True)
    _check_raw(info)
    check_ram_size(info, len(view))
    check_parent_info(info, parent)
    with open_source(src) as fd:
        check_length(fd, src, info.length)
        found = _stream(fd, src, info, view, verify_digest, progress)
    _check_digest(src, found, info)


def map_private(
    src: FileRef,
    size: int,
    *,
    info: MemFileInfo | None = None,
    verify_digest: bool = False,
    progress: Progress | None = None,
) -> np.ndarray:
    """Lazy restore: a writable numpy uint8 array of `size` bytes over a MAP_PRIVATE mapping of
    the memory file `src` (path or fd), like Firecracker's File backend: pages load on first
    touch, and writes are copy-on-write and never reach the file.

    The file length must equal `size` (MemoryFileMismatchError). With `info`, it must be a full
    file of that size (a diff is only meaningful over its base: use read_into), and
    `verify_digest` recomputes its digest first (reads the whole file once). The file must not
    be modified while mapped: MAP_PRIVATE shows later changes to pages not yet copied.
    `progress` advances by the bytes verified (extent_bytes(info) with `verify_digest`, else 0).
    """
    if type(size) is not int or size <= 0:
        raise ValueError(f"size must be a positive number of bytes, got {size!r}")
    if info is not None:
        if info.kind != FULL:
            raise IncompatibleError("a diff memory file cannot be mapped; lay it over its base")
        _check_raw(info)
        check_ram_size(info, size)
    with open_source(src) as fd:
        check_length(fd, src, size)
        if info is not None and verify_digest:
            _check_digest(src, _stream(fd, src, info, None, True, progress), info)
        try:
            mapping = mmap.mmap(
                fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise from_os_error(exc, "mapping", src, MemoryIoError) from exc
    return np.frombuffer(mapping, dtype=np.uint8)
