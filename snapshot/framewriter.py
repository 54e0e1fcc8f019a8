"""Writing frames memory files (snapshot.framelayout's format): each frame encoded (ZERO, LZ4
or RAW), optionally sealed, on a pool of `threads` workers (snapshot.workers; 1 = all in the
calling thread), then written in frame order with the index and footer after them.

Determinism: each frame is compressed alone with fixed settings and written in frame order, so
the file is bit-identical whatever the number of threads. Sealing (a `sealer` given to the
writers, snapshot.crypto) runs on the workers too and is deterministic for a given file id, so
encrypted output is bit-identical whatever the number of threads as well.
"""
from __future__ import annotations

import os
import queue
from dataclasses import replace
from typing import Iterable, Literal, NamedTuple

import lz4.block
import numpy as np
import xxhash

from snapshot.crypto import HEADER_SIZE, TAG_SIZE, Sealer, frame_kind
from snapshot.errors import MemoryIoError, from_os_error
from snapshot.fileio import FileRef, open_dest, pwrite_all, start_writeback
from snapshot.framelayout import (
    DEFAULT_FRAME_SIZE,
    ENTRY,
    STYLE_LZ4,
    STYLE_RAW,
    STYLE_ZERO,
    Frame,
    check_frame_size,
    frame_layout,
    pack_footer,
)
from snapshot.meminfo import (
    DEFAULT_PAGE_SIZE,
    DIFF,
    FRAMES,
    FULL,
    LZ4,
    MemFileInfo,
    Run,
    canonical_runs,
    extents_digest,
    nonzero_pages,
    ram_view,
)
from snapshot.progress import Progress, no_progress
from snapshot.workers import Workers


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
    index = np.zeros(len(layout), ENTRY)
    index["frame"] = [f.number for f in layout]
    index["payload"] = [f.size for f in layout]

    pool = _SealPool(sealer, frame_size) if sealer is not None else None

    def encode(item: tuple[int, Frame]) -> _Encoded:
        encoded = _encode(view, item[1], compress, page_size, pool is None)
        return encoded if pool is None else pool.seal(encoded, item[0], len(layout))

    offset = 0
    nonzero = 0
    with Workers(threads) as workers, open_dest(dest) as fd:
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
            tail = blob + pack_footer(len(view), frame_size, len(layout), offset, blob, content)
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
