"""Byte-level I/O of memory files, shared by both formats (snapshot.memfile's raw image and
snapshot.frames' LZ4 frames): bounded pread/pwrite loops, opening a destination or an untrusted
source, and the file's length and data extents. No format knowledge lives here."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager, suppress
from typing import Iterable, Iterator

from snapshot.errors import MemoryFileMismatchError, MemoryIoError, from_os_error, open_regular_readonly, show_path

MAX_IO_CHUNK = 64 << 20  # bytes per pwrite/pread call (crosvm's RAM chunk size)
FILE_MODE = 0o600  # new memory files hold guest secrets: owner-only

FileRef = int | str | os.PathLike[str]  # an open fd, or a path


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


def pread_bytes(fd: int, where: FileRef, offset: int, size: int) -> bytes | bytearray:
    """`size` bytes at byte `offset` of `fd` (one pread, with no buffer to clear, nearly
    always); the caller bounds `size`. MemoryIoError naming `where` if the file ends first or
    reading fails."""
    try:
        data = os.pread(fd, size, offset)
        if len(data) == size:
            return data
        buf = bytearray(size)
        pread_exact(fd, memoryview(buf), offset, where)
    except OSError as exc:
        raise from_os_error(exc, "reading", where, MemoryIoError) from exc
    return buf


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


def check_length(fd: int, where: FileRef, expected: int) -> None:
    """The file open at `fd` must be `expected` bytes long: MemoryFileMismatchError naming
    `where` if not, MemoryIoError if it cannot be inspected."""
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise from_os_error(exc, "inspecting", where, MemoryIoError) from exc
    if size != expected:
        raise MemoryFileMismatchError(where, "length", f"{size} bytes", f"{expected} bytes")


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
