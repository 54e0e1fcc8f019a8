"""The `lz4` memory-file format: guest RAM cut into independently compressed frames, an index
and a footer (Firedancer's fd_checkpt frame design, plus what it leaves out).

A frame covers `frame_size` bytes of RAM (frame n = RAM bytes [n*F, (n+1)*F), the last one
shorter if the RAM size is not a multiple of F). Its *payload* is what the memory file records
of that range (snapshot.memfile's extents): all of it for a full file; for a diff, the bytes of
the recorded pages in it, concatenated in address order (frames without any are absent). The
file, all integers little-endian:

    frame data  each present frame's stored bytes, back to back from byte 0, in frame order
    index       one _ENTRY (40 bytes) per present frame, in frame order:
                  frame u64 | offset u64 | stored_size u32 | payload_size u32 | style u8
                  | 7 zero bytes | checksum u64 (XXH3-64 of the payload; 0 for ZERO)
    footer      _FOOTER (80 bytes): magic | version u32 | codec u32 | RAM length u64
                  | frame_size u64 | entry count u64 | index offset u64
                  | index checksum u64 (XXH3-64) | content digest (16 raw bytes, the
                  MemFileInfo digest) | footer checksum u64 (XXH3-64 of the bytes before it)

Styles: RAW stores the payload verbatim (used when LZ4 does not shrink it), LZ4 stores one LZ4
block without a size prefix (lz4.block), ZERO stores nothing (an all-zero payload costs no
bytes). fd_checkpt's gaps, closed here: its frames have no index (a reader walks them in
order), no checksums (a flipped bit restores silently) and an LZ4 frame may be larger than its
input. Here any frame is located from the index alone and verified by its own checksum, and
the footer binds the file to its state file through the content digest, which is defined as
for a raw file (snapshot.memfile), so a chain may mix formats.

Encrypted files (a `sealer` given to the writers, a `key` to the readers; snapshot.crypto,
docs/snapshot-format.md section 8) put the 42-byte sealed file header before the frame data and
store each present frame sealed as item i of the entry count, with its style in the associated
data (so TAG_SIZE more bytes each; a ZERO frame stores its tag alone) and checksum 0; format
"frames" is this container with compression off (every frame RAW or ZERO). Sealing runs on the
workers and is deterministic for a given file id, so encrypted output is bit-identical whatever
the number of threads too.

Determinism: each frame is compressed alone with fixed settings and written in frame order, so
the file is bit-identical whatever the number of threads. Readers decode frames in parallel
from pread (`source="stream"`) or from a read-only mmap of the file (`source="mmap"`); both
give identical RAM. Restored RAM is anonymous memory either way: lazily loaded copy-on-write
RAM (persist's mmap backend over the base) needs the raw format.

Threads: lz4.block, xxhash and numpy's copies release the GIL, so frames are compressed,
checked and copied on a pool of `threads` workers (1 = all in the calling thread).

Untrusted input: before any frame is read, the file size must be the recorded one, the footer
must check out and match the MemFileInfo, the index size must follow from it and the file size,
and every index entry (frame number, payload size, offset, stored size, style) must be the one
the MemFileInfo implies. A frame decompresses into at most its payload size, must produce
exactly that, and must match its checksum (CorruptMemoryFileError naming the frame otherwise).
"""
from __future__ import annotations

import mmap
import os
import queue
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from typing import Callable, Iterable, Iterator, Literal, NamedTuple, Sequence, TypeVar

import lz4.block
import numpy as np
import xxhash

from snapshot.crypto import HEADER_SIZE, TAG_SIZE, MissingKeyError, Sealer, frame_kind
from snapshot.errors import (
    CorruptMemoryFileError,
    IncompatibleError,
    MemoryFileMismatchError,
    MemoryIoError,
    from_os_error,
    show_path,
)
from snapshot.fileio import FileRef, check_length, open_dest, open_source, pread_exact, pwrite_all, start_writeback
from snapshot.meminfo import (
    DEFAULT_PAGE_SIZE,
    DIFF,
    FRAMES,
    FULL,
    LZ4,
    MemFileInfo,
    Run,
    canonical_runs,
    nonzero_pages,
    check_parent_info,
    check_ram_size,
    digest_hasher,
    digest_regions,
    extents_digest,
    ram_view,
)
from snapshot.progress import Progress, no_progress

DEFAULT_FRAME_SIZE = 2 << 20  # bytes of RAM per frame: one AArch64 level-2 block (4 KiB granule)
# Ours: bounds the buffers of one frame; far below LZ4_MAX_INPUT_SIZE (0x7E000000, lz4.h).
MAX_FRAME_SIZE = 64 << 20
FOOTER_MAGIC = b"MVMFRAME"
FORMAT_VERSION = 1  # of the layout in the module docstring
CODEC_LZ4_BLOCK = 1  # LZ4 block format (lz4_Block_format.md), no size prefix
MAX_DEFAULT_THREADS = 8  # ours: more threads than this stop paying off for 2 MiB frames
IN_FLIGHT_PER_THREAD = 4  # ours: frames queued per worker, bounding the memory held
# Ours: RAM bytes of frames a reader has in flight (submitted, not yet consumed); each holds
# at most its stored bytes and its payload. Readers cap their window (and workers) so that
# window x frame_size stays within this (one frame at least): verify and describe peak at
# about 2 x READ_WINDOW_BYTES over the interpreter's own memory, whatever the RAM size.
READ_WINDOW_BYTES = 32 << 20

STYLE_RAW = 0
STYLE_LZ4 = 1
STYLE_ZERO = 2
STYLE_NAMES = {STYLE_RAW: "RAW", STYLE_LZ4: "LZ4", STYLE_ZERO: "ZERO"}

_FOOTER_HEAD = struct.Struct("<8sIIQQQQQ16s")  # the footer without its trailing checksum
FOOTER_SIZE = _FOOTER_HEAD.size + 8
_ENTRY = np.dtype(
    [
        ("frame", "<u8"),
        ("offset", "<u8"),
        ("stored", "<u4"),
        ("payload", "<u4"),
        ("style", "u1"),
        ("pad", "u1", (7,)),
        ("checksum", "<u8"),
    ]
)
ENTRY_SIZE = _ENTRY.itemsize  # 40 bytes

Source = Literal["stream", "mmap"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Frame:
    """One frame of a memory file: its number, the RAM extents (byte offset, byte count) its
    payload covers, in address order, and the payload's size in bytes."""

    number: int
    segments: tuple[tuple[int, int], ...]
    size: int


def check_frame_size(frame_size: int, page_size: int) -> None:
    """ValueError unless `frame_size` is whole pages of `page_size`, at most MAX_FRAME_SIZE."""
    if type(frame_size) is not int or not 0 < frame_size <= MAX_FRAME_SIZE or frame_size % page_size:
        raise ValueError(
            f"frame size must be a multiple of {page_size} bytes up to {MAX_FRAME_SIZE}, got {frame_size!r}"
        )


def default_threads() -> int:
    """Workers used when none are given: the CPUs this process may run on, at most
    MAX_DEFAULT_THREADS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_THREADS))


def _read_workers(threads: int | None, frame_size: int) -> tuple[int, int]:
    """(workers, window) for reading frames of `frame_size` bytes: the window holds at most
    READ_WINDOW_BYTES of frames (at least one), and no more workers than it has frames."""
    window = max(1, READ_WINDOW_BYTES // frame_size)
    return min(default_threads() if threads is None else threads, window), window


def present_frames(info: MemFileInfo) -> int:
    """How many frames a lz4 file recording `info` stores (index entries), computed from the
    MemFileInfo without building the layout: O(pages / 8) numpy work for a diff."""
    frames = -(-info.length // info.frame_size)
    if info.kind == FULL:
        return frames
    bits = np.unpackbits(np.frombuffer(info.page_map, np.uint8), bitorder="little")
    per_frame = info.frame_size // info.page_size
    padded = np.zeros(frames * per_frame, np.uint8)
    npages = info.length // info.page_size
    padded[:npages] = bits[:npages]
    return int(np.count_nonzero(padded.reshape(frames, per_frame).any(axis=1)))


def frame_layout(
    kind: Literal["full", "diff"], length: int, page_size: int, frame_size: int, runs: Iterable[Run] = ()
) -> list[Frame]:
    """The frames of a memory file of `kind` over `length` bytes of RAM (diff: recording the
    canonical page `runs`), in frame order."""
    if kind == FULL:
        sizes = ((off, min(frame_size, length - off)) for off in range(0, length, frame_size))
        return [Frame(off // frame_size, ((off, n),), n) for off, n in sizes]
    frames: list[tuple[int, list[tuple[int, int]]]] = []
    for first, count in runs:
        start, end = first * page_size, (first + count) * page_size
        while start < end:
            number = start // frame_size
            stop = min(end, (number + 1) * frame_size)
            if frames and frames[-1][0] == number:
                frames[-1][1].append((start, stop - start))
            else:
                frames.append((number, [(start, stop - start)]))
            start = stop
    return [Frame(number, tuple(segments), sum(n for _, n in segments)) for number, segments in frames]


def _info_layout(info: MemFileInfo) -> list[Frame]:
    return frame_layout(info.kind, info.length, info.page_size, info.frame_size, info.iter_runs())


# --- workers ----------------------------------------------------------------------------------
class _Workers:
    """A pool of `threads` workers (1: everything runs in the calling thread)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = default_threads() if threads is None else threads
        if type(self.threads) is not int or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self._pool = ThreadPoolExecutor(self.threads, "frames") if self.threads > 1 else None

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        """`fn(*args)` on a worker (inline with one thread: done on return)."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future[R] = Future()
        done.set_result(fn(*args))
        return done

    def ordered(self, fn: Callable[[T], R], items: Iterable[T], window: int | None = None) -> Iterator[R]:
        """fn(item) for each item, results in order, at most `window` (default
        IN_FLIGHT_PER_THREAD x threads) submitted and not yet consumed. The first exception is
        raised when its result is reached."""
        if self._pool is None:
            yield from map(fn, items)
            return
        todo = iter(items)
        ahead = IN_FLIGHT_PER_THREAD * self.threads if window is None else max(1, window)
        pending = deque(self._pool.submit(fn, item) for item in islice(todo, ahead))
        while pending:
            result = pending.popleft().result()
            pending.extend(self._pool.submit(fn, item) for item in islice(todo, 1))
            yield result

    def close(self) -> None:
        """Cancel what has not started and wait for what has (nothing touches RAM after)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- writers ----------------------------------------------------------------------------------
def _gather(view: memoryview, frame: Frame) -> memoryview | bytes:
    """The frame's payload: a view of RAM for one extent, a copy for several."""
    if len(frame.segments) == 1:
        offset, n = frame.segments[0]
        return view[offset : offset + n]
    return b"".join(view[offset : offset + n] for offset, n in frame.segments)


class _Encoded(NamedTuple):
    """One frame as written: style, stored bytes, checksum, the non-zero pages of its payload,
    and the pooled buffer `stored` lives in (sealed frames; returned once written)."""

    style: int
    stored: memoryview | bytes
    checksum: int
    nonzero: int
    buffer: bytearray | None = None


def _encode(view: memoryview, frame: Frame, compress: bool, page_size: int, checksummed: bool = True) -> _Encoded:
    """One frame: ZERO if its payload is all zeros, LZ4 if `compress` and that is smaller than
    the payload, RAW otherwise. The checksum is 0 unless `checksummed` (a sealed frame has
    none). The zero check counts the payload's non-zero pages on the way (one pass)."""
    payload = _gather(view, frame)
    nonzero = int(np.count_nonzero(nonzero_pages(payload, page_size)))  # payloads are whole pages
    if not nonzero:
        return _Encoded(STYLE_ZERO, b"", 0, 0)
    checksum = xxhash.xxh3_64_intdigest(payload) if checksummed else 0
    if compress:
        packed = lz4.block.compress(payload, store_size=False)
        if len(packed) < len(payload):
            return _Encoded(STYLE_LZ4, packed, checksum, nonzero)
    return _Encoded(STYLE_RAW, payload, checksum, nonzero)


class _SealPool:
    """Output buffers for sealed frames, reused once written (sealing into fresh bytes would
    fault in a new page for every 4 KiB of the file)."""

    def __init__(self, sealer: Sealer, frame_size: int) -> None:
        self.sealer, self._size = sealer, frame_size + TAG_SIZE
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def seal(self, encoded: _Encoded, index: int, count: int) -> _Encoded:
        """`encoded` sealed as item `index` of `count` (its style in the associated data); its
        checksum becomes 0: the GCM tag authenticates it, and a clear XXH3 of the plaintext
        would let a guessed payload be confirmed."""
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            buf = bytearray(self._size)
        out = memoryview(buf)[: len(encoded.stored) + TAG_SIZE]
        self.sealer.seal_into(encoded.stored, index, count, frame_kind(encoded.style), out)
        return _Encoded(encoded.style, out, 0, encoded.nonzero, buf)

    def release(self, encoded: _Encoded) -> None:
        if encoded.buffer is not None:
            self._free.put(encoded.buffer)


def _write(
    dest: FileRef,
    ram: np.ndarray,
    page_size: int,
    kind: Literal["full", "diff"],
    runs: tuple[Run, ...],
    parent_digest: str | None,
    frame_size: int,
    threads: int | None,
    progress: Progress | None,
    compress: bool,
    sealer: Sealer | None,
) -> MemFileInfo:
    view = ram_view(ram, page_size)
    check_frame_size(frame_size, page_size)
    advance = progress or no_progress
    layout = frame_layout(kind, len(view), page_size, frame_size, runs)
    index = np.zeros(len(layout), _ENTRY)
    index["frame"] = [f.number for f in layout]
    index["payload"] = [f.size for f in layout]

    pool = _SealPool(sealer, frame_size) if sealer is not None else None

    def encode(item: tuple[int, Frame]) -> _Encoded:
        encoded = _encode(view, item[1], compress, page_size, pool is None)
        return encoded if pool is None else pool.seal(encoded, item[0], len(layout))

    offset = 0
    nonzero = 0
    with _Workers(threads) as workers, open_dest(dest) as fd:
        digest = workers.submit(extents_digest, ram, kind, page_size, runs, parent_digest)
        try:
            if sealer is not None:
                pwrite_all(fd, sealer.header, 0)
                offset = HEADER_SIZE
            for i, encoded in enumerate(workers.ordered(encode, enumerate(layout))):
                style, stored, checksum = encoded.style, encoded.stored, encoded.checksum
                pwrite_all(fd, stored, offset)
                start_writeback(fd, offset, len(stored))  # as a raw save does (snapshot.fileio)
                index[i]["offset"], index[i]["stored"] = offset, len(stored)
                index[i]["style"], index[i]["checksum"] = style, checksum
                offset += len(stored)
                nonzero += encoded.nonzero
                if pool is not None:
                    pool.release(encoded)
                advance(layout[i].size)
            content = bytes.fromhex(digest.result())
            blob = index.tobytes()
            footer = _FOOTER_HEAD.pack(
                FOOTER_MAGIC, FORMAT_VERSION, CODEC_LZ4_BLOCK, len(view), frame_size, len(layout),
                offset, xxhash.xxh3_64_intdigest(blob), content,
            )
            tail = blob + footer + xxhash.xxh3_64_intdigest(footer).to_bytes(8, "little")
            pwrite_all(fd, tail, offset)
            end = offset + len(tail)
            if os.fstat(fd).st_size != end:  # an fd that held a longer file
                os.ftruncate(fd, end)
        except OSError as exc:
            raise from_os_error(exc, "writing", dest, MemoryIoError) from exc
    if kind == FULL:  # pages_written: the non-zero pages, as for a raw file (MemFileInfo)
        info = MemFileInfo(FULL, len(view), page_size, content.hex(), nonzero)
    else:
        assert parent_digest is not None
        info = MemFileInfo.diff(len(view), page_size, content.hex(), runs, parent_digest)
    encryption_id = sealer.file_id.hex() if sealer is not None else ""
    return replace(
        info, format=LZ4 if compress else FRAMES, frame_size=frame_size, file_size=end, trailer=False, encryption_id=encryption_id
    )


def write_full(
    dest: FileRef,
    ram: np.ndarray,
    page_size: int = DEFAULT_PAGE_SIZE,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
    compress: bool = True,
    sealer: Sealer | None = None,
) -> MemFileInfo:
    """Write all of `ram` as a full lz4 memory file at `dest` (an fd, or a path created mode
    0600): every frame, ZERO ones costing nothing. `ram` must not change during the call.
    The info's digest is the raw full digest of `ram`; pages_written counts the pages of
    RAM that are not zero (as for a raw file). Does not fsync. MemoryIoError if writing fails. `progress`
    advances by len(ram) bytes in all. `compress=False`: every frame RAW or ZERO (format
    "frames"). `sealer` (a new file's, snapshot.crypto): encrypt, each frame sealed on the
    workers (the file id is recorded as encryption_id)."""
    return _write(dest, ram, page_size, FULL, (), None, frame_size, threads, progress, compress, sealer)


def write_diff(
    dest: FileRef,
    ram: np.ndarray,
    runs: Iterable[Run],
    page_size: int = DEFAULT_PAGE_SIZE,
    *,
    parent_digest: str,
    frame_size: int = DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
    compress: bool = True,
    sealer: Sealer | None = None,
) -> MemFileInfo:
    """Write the dirty page `runs` of `ram` as a diff lz4 memory file at `dest`: only frames
    holding dirty pages, each holding only those pages. Same info (digest, page map, parent) as
    memfile.write_diff would record, plus the format fields. `progress` advances by the bytes
    of the runs; `compress` and `sealer` as for write_full."""
    canon = canonical_runs(runs, len(ram_view(ram, page_size)) // page_size)
    return _write(dest, ram, page_size, DIFF, canon, parent_digest, frame_size, threads, progress, compress, sealer)


# --- readers ----------------------------------------------------------------------------------
@dataclass
class _Index:
    """A checked index: entry i stores `frames[i]`."""

    entries: np.ndarray
    frames: list[Frame]
    sealer: Sealer | None = None  # an encrypted file's, opened with the key


def _check_lz4(info: MemFileInfo) -> None:
    if not info.framed:
        raise IncompatibleError(f"the memory file is {info.format}, not lz4: read it with snapshot.memfile")
    check_frame_size(info.frame_size, info.page_size)


def _open_sealer(fd: int, where: FileRef, info: MemFileInfo, key: bytes | None) -> Sealer | None:
    """The encrypted file's sealer, from its clear header (MissingKeyError, WrongKeyError,
    TamperedError naming it); MemoryFileMismatchError if its file id is not the recorded one.
    None for a file that is not encrypted (a key given then is not needed)."""
    if not info.encrypted:
        return None
    name = show_path(where)
    if key is None:
        raise MissingKeyError(name)
    sealer = Sealer.open(key, _pread(fd, where, 0, HEADER_SIZE), name)
    if sealer.file_id.hex() != info.encryption_id:
        raise MemoryFileMismatchError(where, "encryption id", sealer.file_id.hex(), info.encryption_id)
    return sealer


def _pread(fd: int, where: FileRef, offset: int, size: int) -> bytes | bytearray:
    """`size` bytes at `offset` (one pread, with no buffer to clear, nearly always)."""
    try:
        data = os.pread(fd, size, offset)
        if len(data) == size:
            return data
        buf = bytearray(size)
        pread_exact(fd, memoryview(buf), offset, where)
    except OSError as exc:
        raise from_os_error(exc, "reading", where, MemoryIoError) from exc
    return buf


def _read_index(fd: int, where: FileRef, info: MemFileInfo, key: bytes | None = None) -> _Index:
    """The file's index, after every check in the module docstring's "untrusted input" (and,
    encrypted, its header opened with `key`)."""
    check_length(fd, where, info.file_length)
    size = info.file_length
    data_start = HEADER_SIZE if info.encrypted else 0
    if size < FOOTER_SIZE + data_start:
        raise CorruptMemoryFileError(where, f"{size} bytes is shorter than the {FOOTER_SIZE}-byte footer")
    sealer = _open_sealer(fd, where, info, key)
    raw_footer = _pread(fd, where, size - FOOTER_SIZE, FOOTER_SIZE)
    head = bytes(raw_footer[: _FOOTER_HEAD.size])
    magic, version, codec, length, frame_size, count, index_offset, index_sum, content = _FOOTER_HEAD.unpack(head)
    if magic != FOOTER_MAGIC:
        raise CorruptMemoryFileError(where, "no lz4 frame-format footer at its end")
    if xxhash.xxh3_64_intdigest(head) != int.from_bytes(raw_footer[_FOOTER_HEAD.size :], "little"):
        raise CorruptMemoryFileError(where, "footer checksum mismatch")
    if version != FORMAT_VERSION or codec != CODEC_LZ4_BLOCK:
        raise IncompatibleError(
            f"memory file frame format {version} codec {codec} is not supported "
            f"(this build reads format {FORMAT_VERSION} codec {CODEC_LZ4_BLOCK})"
        )
    for what, found, expected in (
        ("RAM length", length, info.length),
        ("frame size", frame_size, info.frame_size),
        ("digest", content.hex(), info.digest),
    ):
        if found != expected:
            raise MemoryFileMismatchError(where, what, found, expected)
    # Counts and sizes first, from the footer and the MemFileInfo alone: the layout (one
    # Python object per frame) is built only for an index the file really holds.
    if index_offset + count * ENTRY_SIZE + FOOTER_SIZE != size:
        raise CorruptMemoryFileError(where, f"index at byte {index_offset} does not end at the footer")
    implied = present_frames(info)
    if count != implied:
        raise CorruptMemoryFileError(where, f"index has {count} entries, the state file implies {implied}")
    frames = _info_layout(info)
    blob = _pread(fd, where, index_offset, count * ENTRY_SIZE)
    if xxhash.xxh3_64_intdigest(blob) != index_sum:
        raise CorruptMemoryFileError(where, "index checksum mismatch")
    entries = np.frombuffer(blob, _ENTRY)
    _check_entries(where, entries, frames, index_offset, data_start, info.format == LZ4)
    return _Index(entries, frames, sealer)


def _check_entries(
    where: FileRef, entries: np.ndarray, frames: Sequence[Frame], data_end: int, data_start: int, lz4_allowed: bool
) -> None:
    """CorruptMemoryFileError naming the first frame whose entry is not what `frames` implies or
    whose stored bytes are not where they must be (back to back from `data_start` up to
    `data_end`; an encrypted file's (data_start > 0) each TAG_SIZE bytes longer for its tag)."""
    stored = entries["stored"].astype(np.int64)
    overhead = TAG_SIZE if data_start else 0
    payload = entries["payload"].astype(np.int64)
    room = payload + overhead  # stored bytes of a RAW frame
    style = entries["style"]
    ends = np.cumsum(stored) + data_start
    starts = ends - stored
    bad = (
        (entries["frame"] != np.array([f.number for f in frames], dtype=np.uint64))
        | (payload != np.array([f.size for f in frames], dtype=np.int64))
        | (entries["offset"].astype(np.int64) != starts)
        | entries["pad"].any(axis=1)
        | ((style == STYLE_RAW) & (stored != room))
        | ((style == STYLE_LZ4) & ((stored <= overhead) | (stored >= room) | (not lz4_allowed)))
        | ((style == STYLE_ZERO) & ((stored != overhead) | (entries["checksum"] != 0)))
        | ((style != STYLE_ZERO) & (entries["checksum"] != 0) & (overhead > 0))
        | (style > STYLE_ZERO)
    )
    if bad.any():
        i = int(np.argmax(bad))
        number = frames[i].number
        raise CorruptMemoryFileError(where, f"index entry {i} is inconsistent", frame=number)
    if (ends[-1] if len(ends) else data_start) != data_end:
        raise CorruptMemoryFileError(where, f"frames end at byte {int(ends[-1]) if len(ends) else data_start}, the index starts at {data_end}")


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
        return _pread(self._fd, self._where, offset, size)

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


def _payload(where: FileRef, reader: _Reader, index: _Index, i: int) -> memoryview | bytes | None:
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


def _restore_frame(where: FileRef, reader: _Reader, ram: np.ndarray, zeroed: bool, index: _Index, i: int) -> int:
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
    index = _read_index(fd, where, info, key)
    ends = (index.entries["offset"] + index.entries["stored"]).tolist()
    workers_n, window = _read_workers(threads, info.frame_size)

    def restore(i: int) -> int:
        return _restore_frame(where, reader, ram, zeroed, index, i)

    with _reader(fd, where, source, info.file_length) as reader, _Workers(workers_n) as workers:
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

    Every check of the module docstring runs before a frame is read; each frame is checked
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
    _check_lz4(info)
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
    _check_lz4(info)
    where = src if name is None else name
    advance = progress or no_progress
    hasher = digest_hasher(info)
    zeros: memoryview | None = None
    with open_source(src) as fd:
        index = _read_index(fd, where, info, key)
        regions = digest_regions(info)
        next_region = next(regions, None)
        workers_n, window = _read_workers(threads, info.frame_size)

        def decode(i: int) -> memoryview | bytes | None:
            return _payload(where, reader, index, i)

        with _reader(fd, where, "stream", info.file_length) as reader, _Workers(workers_n) as workers:
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
    _check_lz4(info)
    with open_source(src) as fd:
        index = _read_index(fd, src, info, key)
        at = next((i for i, f in enumerate(index.frames) if f.number == number), None)
        if at is None:
            raise ValueError(f"{len(index.frames)} frames, none is frame {number}")
        with _reader(fd, src, "stream", info.file_length) as reader:
            payload = _payload(src, reader, index, at)
    return bytes(index.frames[at].size) if payload is None else bytes(payload)


def check_file(src: FileRef, info: MemFileInfo, *, name: FileRef | None = None, key: bytes | None = None) -> None:
    """Every check of the module docstring that needs no frame: size, footer, index, and an
    encrypted file's header against `key` (reads the header, footer and index only;
    CorruptMemoryFileError / MemoryFileMismatchError / MissingKeyError / WrongKeyError)."""
    _check_lz4(info)
    with open_source(src) as fd:
        _read_index(fd, src if name is None else name, info, key)


def frame_styles(src: FileRef, info: MemFileInfo, *, key: bytes | None = None) -> dict[str, int]:
    """How many frames the file stores in each style, e.g. {"RAW": 1, "LZ4": 40, "ZERO": 23}
    (reads the header, footer and index only)."""
    _check_lz4(info)
    with open_source(src) as fd:
        styles = _read_index(fd, src, info, key).entries["style"]
    return {name: int(np.count_nonzero(styles == code)) for code, name in STYLE_NAMES.items()}
