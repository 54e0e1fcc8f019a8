"""The checked index of a frames memory file (snapshot.framelayout's format): the file's
size, its header (encrypted files), footer and index read and checked against the MemFileInfo
the state file records, before any frame is read. The file is untrusted input.

Before any frame is read, the file size must be the recorded one, the footer must check out
and match the MemFileInfo, the index size must follow from it and the file size, and every
index entry (frame number, payload size, offset, stored size, style) must be the one the
MemFileInfo implies. Counts and sizes are checked from the footer and the MemFileInfo alone
before the layout (one Python object per frame) is built or the index is read: a small file
cannot make the reader allocate or loop for what it only claims. Each failure is a typed error
naming the file (CorruptMemoryFileError, MemoryFileMismatchError, IncompatibleError; for an
encrypted file MissingKeyError, WrongKeyError, TamperedError).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xxhash

from snapshot.crypto import HEADER_SIZE, TAG_SIZE, MissingKeyError, Sealer
from snapshot.errors import CorruptMemoryFileError, IncompatibleError, MemoryFileMismatchError, show_path
from snapshot.fileio import FileRef, check_length, pread_bytes
from snapshot.framelayout import (
    CODEC_LZ4_BLOCK,
    ENTRY,
    ENTRY_SIZE,
    FOOTER_HEAD,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    FORMAT_VERSION,
    STYLE_LZ4,
    STYLE_RAW,
    STYLE_ZERO,
    Frame,
    check_frame_size,
    info_layout,
    present_frames,
)
from snapshot.meminfo import LZ4, MemFileInfo


@dataclass
class Index:
    """A checked index: entry i stores `frames[i]`."""

    entries: np.ndarray
    frames: list[Frame]
    sealer: Sealer | None = None  # an encrypted file's, opened with the key


def check_framed(info: MemFileInfo) -> None:
    """IncompatibleError unless `info` records a frames file (lz4 or frames); ValueError if its
    frame size is not whole pages up to MAX_FRAME_SIZE."""
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
    sealer = Sealer.open(key, pread_bytes(fd, where, 0, HEADER_SIZE), name)
    if sealer.file_id.hex() != info.encryption_id:
        raise MemoryFileMismatchError(where, "encryption id", sealer.file_id.hex(), info.encryption_id)
    return sealer


def read_index(fd: int, where: FileRef, info: MemFileInfo, key: bytes | None = None) -> Index:
    """The file's index, after every check in the module docstring (and, encrypted, its header
    opened with `key`)."""
    check_length(fd, where, info.file_length)
    size = info.file_length
    data_start = HEADER_SIZE if info.encrypted else 0
    if size < FOOTER_SIZE + data_start:
        raise CorruptMemoryFileError(where, f"{size} bytes is shorter than the {FOOTER_SIZE}-byte footer")
    sealer = _open_sealer(fd, where, info, key)
    raw_footer = pread_bytes(fd, where, size - FOOTER_SIZE, FOOTER_SIZE)
    head = bytes(raw_footer[: FOOTER_HEAD.size])
    magic, version, codec, length, frame_size, count, index_offset, index_sum, content = FOOTER_HEAD.unpack(head)
    if magic != FOOTER_MAGIC:
        raise CorruptMemoryFileError(where, "no lz4 frame-format footer at its end")
    if xxhash.xxh3_64_intdigest(head) != int.from_bytes(raw_footer[FOOTER_HEAD.size :], "little"):
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
    frames = info_layout(info)
    blob = pread_bytes(fd, where, index_offset, count * ENTRY_SIZE)
    if xxhash.xxh3_64_intdigest(blob) != index_sum:
        raise CorruptMemoryFileError(where, "index checksum mismatch")
    entries = np.frombuffer(blob, ENTRY)
    _check_entries(where, entries, frames, index_offset, data_start, info.format == LZ4)
    return Index(entries, frames, sealer)


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
