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

What the state file records about the file (MemFileInfo, its digest) is snapshot.meminfo's.

XXH3 detects accidents (a torn or mismatched pair), not forgery: snapshot files are trusted to
be the user's own. Readers still treat them as hostile input: lengths are checked against the
recorded info before anything is read, and nothing past the recorded extents is read.
"""
from __future__ import annotations

import mmap
import os
import threading
from dataclasses import replace
from typing import Iterable, Iterator

import numpy as np
import xxhash

from snapshot.errors import (
    CorruptMemoryFileError,
    IncompatibleError,
    MemoryFileMismatchError,
    MemoryIoError,
    from_os_error,
)
from snapshot.fileio import MAX_IO_CHUNK, FileRef, check_length, data_extents, io_chunks, open_dest, open_source, pread_exact, pwrite_all, start_writeback
from snapshot.meminfo import (
    DEFAULT_PAGE_SIZE,
    DIFF,
    FULL,
    MIN_HOLE,
    RAW,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    TRAILER_VERSION,
    MemFileInfo,
    Run,
    _TRAILER_HEAD,
    _new_hasher,
    _regions,
    _runs_of,
    canonical_runs,
    check_digest_text,
    check_parent_info,
    check_ram_size,
    digest_hasher,
    digest_regions,
    nonzero_pages,
    ram_view,
)
from snapshot.progress import Progress, no_progress



def _check_raw(info: MemFileInfo) -> None:
    if info.format != RAW:
        raise IncompatibleError(f"the memory file is {info.format}-compressed; read it with snapshot.frames")


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
