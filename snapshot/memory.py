"""Memory files in any format: the one place that picks raw (snapshot.memfile) or the frames
container (snapshot.framewriter / snapshot.framereader: lz4, or uncompressed frames for an encrypted file). A chain may mix
formats: all record the same content digest."""
from __future__ import annotations

from typing import Literal

import numpy as np

from snapshot import framereader, framewriter
from snapshot.commit import OpenedPair
from snapshot.crypto import Sealer
from snapshot.framelayout import DEFAULT_FRAME_SIZE, check_frame_size
from snapshot.memfile import check_identity, compute_digest, read_into, write_diff, write_full
from snapshot.meminfo import FULL, LZ4, MemFileInfo, Run
from snapshot.progress import Progress


def check_compression(compress: str | None, page_size: int, frame_size: int = DEFAULT_FRAME_SIZE) -> None:
    """ValueError unless `compress` is None (raw) or "lz4" with a `frame_size` (bytes) of
    whole `page_size` pages."""
    if compress not in (None, LZ4):
        raise ValueError(f"compress must be None or 'lz4', got {compress!r}")
    if compress == LZ4:
        check_frame_size(frame_size, page_size)


def write_memory(
    fd: int,
    ram: np.ndarray,
    kind: Literal["full", "diff"],
    page_size: int,
    *,
    runs: tuple[Run, ...] = (),
    parent_digest: str | None = None,
    compress: str | None = None,
    frame_size: int = DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
    key: bytes | None = None,
) -> MemFileInfo:
    """Write `ram` to the empty file `fd` as a memory file of `kind` in pages of `page_size`
    bytes (a diff records `runs` over the image `parent_digest`): raw, or LZ4 frames with
    compress="lz4". With `key` (32 bytes) the file is encrypted: always a frames container
    (compressed or not), every frame sealed under a fresh file id (snapshot.crypto)."""
    check_compression(compress, page_size, frame_size)
    if kind != FULL:
        assert parent_digest is not None
    if compress == LZ4 or key is not None:
        options = {
            "frame_size": frame_size,
            "threads": threads,
            "progress": progress,
            "compress": compress == LZ4,
            "sealer": Sealer.create(key, "memory file") if key is not None else None,
        }
        if kind == FULL:
            return framewriter.write_full(fd, ram, page_size, **options)  # type: ignore[arg-type]
        return framewriter.write_diff(fd, ram, runs, page_size, parent_digest=parent_digest, **options)  # type: ignore[arg-type]
    if kind == FULL:
        return write_full(fd, ram, page_size, progress=progress)
    return write_diff(fd, ram, runs, page_size, parent_digest=parent_digest, progress=progress)


def read_memory(
    pair: OpenedPair,
    ram: np.ndarray,
    verify: bool,
    *,
    parent: MemFileInfo | None = None,
    source: framereader.Source = "stream",
    zeroed: bool = False,
    progress: Progress | None = None,
) -> None:
    """Read the pair's memory file into `ram` (over `parent` for a diff), raw or lz4;
    `source` and `zeroed` only matter for lz4 (see framereader.read_into)."""
    fd, info = pair.memory_fd, pair.memory
    if info.framed:
        framereader.read_into(
            fd, ram, info, verify, parent=parent, source=source, zeroed=zeroed, progress=progress, name=pair.memory_path, key=pair.key
        )
    else:
        read_into(fd, ram, info, verify, parent=parent, progress=progress, name=pair.memory_path)


def check_memory_file(pair: OpenedPair) -> None:
    """The O(1)-in-RAM checks of the pair's memory file, before any RAM is allocated for it:
    raw, its size and identity trailer (memfile.check_identity); lz4, its size, footer and
    index (framereader.check_file). MemoryFileMismatchError / CorruptMemoryFileError naming it."""
    if pair.memory.framed:
        framereader.check_file(pair.memory_fd, pair.memory, name=pair.memory_path, key=pair.key)
    else:
        check_identity(pair.memory_fd, pair.memory_path, pair.memory)


def memory_digest(pair: OpenedPair, *, progress: Progress | None = None) -> str:
    """The digest of what the pair's memory file records, recomputed (either format; an lz4
    file's frame checksums are checked on the way)."""
    if pair.memory.framed:
        return framereader.compute_digest(pair.memory_fd, pair.memory, progress=progress, name=pair.memory_path, key=pair.key)
    return compute_digest(pair.memory_fd, pair.memory, progress=progress, name=pair.memory_path)
