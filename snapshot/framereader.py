"""Reading frames memory files (snapshot.framelayout's format): restoring RAM, the digest, one
frame, and the file's checks and styles. Every entry point checks the file first
(snapshot.frameindex: size, header, footer, index), then reads frames through the index.

Readers decode frames in parallel on snapshot.workers from pread (`source="stream"`) or from
a read-only mmap of the file (`source="mmap"`); both give identical RAM. At most a
READ_WINDOW_BYTES window of frames is in flight, whatever the RAM size. Restored RAM is
anonymous memory either way: lazily loaded copy-on-write RAM (persist's mmap backend over the
base) needs the raw format. Encrypted files need their `key` (snapshot.crypto).

A frame decompresses into at most its payload size, must produce exactly that, and must match
its checksum (CorruptMemoryFileError naming the frame otherwise); an encrypted frame must open
(TamperedError naming it).
"""
from __future__ import annotations

import mmap
from contextlib import contextmanager
from typing import Iterator, Literal

import lz4.block
import numpy as np
import xxhash

from snapshot.crypto import frame_kind
from snapshot.errors import CorruptMemoryFileError, MemoryFileMismatchError, MemoryIoError, from_os_error
from snapshot.fileio import FileRef, open_source, pread_bytes
from snapshot.frameindex import Index, check_framed, read_index
from snapshot.framelayout import STYLE_LZ4, STYLE_NAMES, STYLE_ZERO
from snapshot.meminfo import (
    MemFileInfo,
    check_parent_info,
    check_ram_size,
    digest_hasher,
    digest_regions,
    extents_digest,
    ram_view,
)
from snapshot.progress import Progress, no_progress
from snapshot.workers import Workers, default_threads

# Ours: RAM bytes of frames a reader has in flight (submitted, not yet consumed); each holds
# at most its stored bytes and its payload. Readers cap their window (and workers) so that
# window x frame_size stays within this (one frame at least): verify and describe peak at
# about 2 x READ_WINDOW_BYTES over the interpreter's own memory, whatever the RAM size.
READ_WINDOW_BYTES = 32 << 20

Source = Literal["stream", "mmap"]


def _read_workers(threads: int | None, frame_size: int) -> tuple[int, int]:
    """(workers, window) for reading frames of `frame_size` bytes: the window holds at most
    READ_WINDOW_BYTES of frames (at least one), and no more workers than it has frames."""
    window = max(1, READ_WINDOW_BYTES // frame_size)
    return min(default_threads() if threads is None else threads, window), window


class _Reader:
    """Stored bytes of frames, from pread (stream) or a read-only mapping of the file (mmap)."""

    def __init__(self, fd: int, where: FileRef, source: Source, size: int) -> None:
        if source not in ("stream", "mmap"):
            raise ValueError(f"source must be 'stream' or 'mmap', got {source!r}")
        self._fd, self._where = fd, where
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._released = 0  # bytes at the start of the mapping already released
        if source == "mmap" and size:
            try:
                self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            except OSError as exc:
                raise from_os_error(exc, "mapping", where, MemoryIoError) from exc
            self._view = memoryview(self._map)

    def read(self, offset: int, size: int) -> memoryview | bytes | bytearray:
        if self._view is not None:
            return self._view[offset : offset + size]
        return pread_bytes(self._fd, self._where, offset, size)

    def release(self, end: int) -> None:
        """Drop the mapped file pages wholly below byte `end` from this process (mmap only;
        they stay in the page cache): a file read once, front to back, never doubles RSS."""
        if self._map is None:
            return
        end -= end % mmap.PAGESIZE
        if end > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view still held by a traceback: freed with it
                pass
            self._map = None


@contextmanager
def _reader(fd: int, where: FileRef, source: Source, size: int) -> Iterator[_Reader]:
    reader = _Reader(fd, where, source, size)
    try:
        yield reader
    finally:
        reader.close()


def _payload(where: FileRef, reader: _Reader, index: Index, i: int) -> memoryview | bytes | None:
    """The verified payload of the index's entry `i`; None for a ZERO frame. An encrypted
    file's frame is opened first (TamperedError naming it)."""
    entry, frame = index.entries[i], index.frames[i]
    style = int(entry["style"])
    sealer = index.sealer
    if sealer is not None:
        stored = sealer.open_item(reader.read(int(entry["offset"]), int(entry["stored"])), i, len(index.frames), frame_kind(style))
    elif style == STYLE_ZERO:
        return None
    else:
        stored = reader.read(int(entry["offset"]), int(entry["stored"]))
    if style == STYLE_ZERO:
        return None
    payload: memoryview | bytes | bytearray = stored
    if style == STYLE_LZ4:
        try:
            payload = lz4.block.decompress(stored, uncompressed_size=frame.size)
        except (lz4.block.LZ4BlockError, ValueError) as exc:
            raise CorruptMemoryFileError(where, f"LZ4 block does not decode ({exc})", frame=frame.number) from None
        if len(payload) != frame.size:
            raise CorruptMemoryFileError(
                where, f"LZ4 block decodes to {len(payload)} bytes, expected {frame.size}", frame=frame.number
            )
    if sealer is None and xxhash.xxh3_64_intdigest(payload) != int(entry["checksum"]):
        raise CorruptMemoryFileError(where, "checksum mismatch", frame=frame.number)
    return payload  # type: ignore[return-value]


def _restore_frame(where: FileRef, reader: _Reader, ram: np.ndarray, zeroed: bool, index: Index, i: int) -> int:
    """Decode the index's frame `i` into `ram` at its extents; returns its payload size."""
    frame = index.frames[i]
    payload = _payload(where, reader, index, i)
    if payload is None:
        if not zeroed:
            for offset, n in frame.segments:
                ram[offset : offset + n].fill(0)
        return frame.size
    data = np.frombuffer(payload, np.uint8)
    pos = 0
    for offset, n in frame.segments:
        np.copyto(ram[offset : offset + n], data[pos : pos + n])
        pos += n
    return frame.size


def _decode_into(
    fd: int,
    where: FileRef,
    ram: np.ndarray,
    info: MemFileInfo,
    source: Source,
    zeroed: bool,
    threads: int | None,
    progress: Progress | None,
    key: bytes | None,
) -> None:
    """Check the file and decode every frame into `ram` (checked by the caller) on workers,
    at most a READ_WINDOW_BYTES window of frames in flight."""
    advance = progress or no_progress
    index = read_index(fd, where, info, key)
    ends = (index.entries["offset"] + index.entries["stored"]).tolist()
    workers_n, window = _read_workers(threads, info.frame_size)

    def restore(i: int) -> int:
        return _restore_frame(where, reader, ram, zeroed, index, i)

    with _reader(fd, where, source, info.file_length) as reader, Workers(workers_n) as workers:
        for i, done in enumerate(workers.ordered(restore, range(len(index.frames)), window)):
            reader.release(ends[i])
            advance(done)


def read_into(
    src: FileRef,
    ram: np.ndarray,
    info: MemFileInfo,
    verify_digest: bool = True,
    *,
    parent: MemFileInfo | None = None,
    source: Source = "stream",
    zeroed: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    name: FileRef | None = None,
    key: bytes | None = None,
) -> None:
    """Eager restore of the lz4 memory file `src` (path or fd) into writable `ram`, like
    memfile.read_into: a full file overwrites every byte of `ram` (ZERO frames are skipped if
    `zeroed` says `ram` is all zeros already, e.g. fresh np.zeros); a diff's pages are laid
    over `ram`, which must hold `parent` (MissingParentError / ParentMismatchError).

    Every check of snapshot.frameindex runs before a frame is read; each frame is checked
    against its checksum (CorruptMemoryFileError naming it). With `verify_digest` the digest
    of the restored extents is recomputed too (MemoryFileMismatchError). `source`: "stream"
    (pread) or "mmap" (decode from a read-only mapping): identical results. On any error `ram`
    holds unspecified contents and must be discarded; no worker touches it after the raise.
    `progress` advances by extent_bytes(info) in all. `name`: the file as messages show it
    (default `src`; give the path when `src` is an fd). `key`: an encrypted file's
    (MissingKeyError / WrongKeyError / TamperedError naming the file).
    """
    where = src if name is None else name
    ram_view(ram, info.page_size, writable=True)
    check_framed(info)
    check_ram_size(info, ram.size)
    check_parent_info(info, parent)
    with open_source(src) as fd:
        _decode_into(fd, where, ram, info, source, zeroed, threads, progress, key)
    if verify_digest:
        found = extents_digest(ram, info.kind, info.page_size, info.iter_runs(), info.parent_digest)
        if found != info.digest:
            raise MemoryFileMismatchError(where, "digest", found, info.digest)


def compute_digest(
    src: FileRef,
    info: MemFileInfo,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    name: FileRef | None = None,
    key: bytes | None = None,
) -> str:
    """The digest of what the lz4 memory file `src` records (same definition as a raw file's),
    after checking its footer, index and every frame checksum. Streams: frames are hashed in
    order as they are decoded, with at most a READ_WINDOW_BYTES window of frames in memory,
    whatever the RAM size. `progress` advances by extent_bytes(info); `name`, `key` as for
    read_into."""
    check_framed(info)
    where = src if name is None else name
    advance = progress or no_progress
    hasher = digest_hasher(info)
    zeros: memoryview | None = None
    with open_source(src) as fd:
        index = read_index(fd, where, info, key)
        regions = digest_regions(info)
        next_region = next(regions, None)
        workers_n, window = _read_workers(threads, info.frame_size)

        def decode(i: int) -> memoryview | bytes | None:
            return _payload(where, reader, index, i)

        with _reader(fd, where, "stream", info.file_length) as reader, Workers(workers_n) as workers:
            for i, payload in enumerate(workers.ordered(decode, range(len(index.frames)), window)):
                frame = index.frames[i]
                if payload is None:
                    if zeros is None:
                        zeros = memoryview(np.zeros(info.frame_size, np.uint8)).cast("B")
                    payload = zeros
                data = memoryview(payload).cast("B")
                pos = 0
                for offset, n in frame.segments:
                    if next_region is not None and offset == next_region[0]:  # a run starts here
                        hasher.update(next_region[2])
                        next_region = next(regions, None)
                    hasher.update(data[pos : pos + n])
                    pos += n
                advance(frame.size)
    return hasher.hexdigest()


def read_frame(src: FileRef, info: MemFileInfo, number: int, *, key: bytes | None = None) -> bytes:
    """The verified payload of frame `number` (RAM bytes [number*F, ...)), located through the
    index without reading any other frame. ValueError if the file holds no such frame."""
    check_framed(info)
    with open_source(src) as fd:
        index = read_index(fd, src, info, key)
        at = next((i for i, f in enumerate(index.frames) if f.number == number), None)
        if at is None:
            raise ValueError(f"{len(index.frames)} frames, none is frame {number}")
        with _reader(fd, src, "stream", info.file_length) as reader:
            payload = _payload(src, reader, index, at)
    return bytes(index.frames[at].size) if payload is None else bytes(payload)


def check_file(src: FileRef, info: MemFileInfo, *, name: FileRef | None = None, key: bytes | None = None) -> None:
    """Every check of snapshot.frameindex (the ones that need no frame): size, footer, index, and an
    encrypted file's header against `key` (reads the header, footer and index only;
    CorruptMemoryFileError / MemoryFileMismatchError / MissingKeyError / WrongKeyError)."""
    check_framed(info)
    with open_source(src) as fd:
        read_index(fd, src if name is None else name, info, key)


def frame_styles(src: FileRef, info: MemFileInfo, *, key: bytes | None = None) -> dict[str, int]:
    """How many frames the file stores in each style, e.g. {"RAW": 1, "LZ4": 40, "ZERO": 23}
    (reads the header, footer and index only)."""
    check_framed(info)
    with open_source(src) as fd:
        styles = read_index(fd, src, info, key).entries["style"]
    return {name: int(np.count_nonzero(styles == code)) for code, name in STYLE_NAMES.items()}
