"""The layout of a frames memory file (formats "lz4" and "frames"): guest RAM cut into
independently compressed frames, an index and a footer (Firedancer's fd_checkpt frame design,
plus what it leaves out). The constants, the entry and footer records, and which frames a file
holds; snapshot.framewriter writes it, snapshot.frameindex checks it, snapshot.framereader
decodes it.

A frame covers `frame_size` bytes of RAM (frame n = RAM bytes [n*F, (n+1)*F), the last one
shorter if the RAM size is not a multiple of F). Its *payload* is what the memory file records
of that range (snapshot.memfile's extents): all of it for a full file; for a diff, the bytes of
the recorded pages in it, concatenated in address order (frames without any are absent). The
file, all integers little-endian:

    frame data  each present frame's stored bytes, back to back from byte 0, in frame order
    index       one ENTRY (40 bytes) per present frame, in frame order:
                  frame u64 | offset u64 | stored_size u32 | payload_size u32 | style u8
                  | 7 zero bytes | checksum u64 (XXH3-64 of the payload; 0 for ZERO)
    footer      FOOTER_HEAD + checksum (80 bytes): magic | version u32 | codec u32
                  | RAM length u64 | frame_size u64 | entry count u64 | index offset u64
                  | index checksum u64 (XXH3-64) | content digest (16 raw bytes, the
                  MemFileInfo digest) | footer checksum u64 (XXH3-64 of the bytes before it)

Styles: RAW stores the payload verbatim (used when LZ4 does not shrink it), LZ4 stores one LZ4
block without a size prefix (lz4.block), ZERO stores nothing (an all-zero payload costs no
bytes). fd_checkpt's gaps, closed here: its frames have no index (a reader walks them in
order), no checksums (a flipped bit restores silently) and an LZ4 frame may be larger than its
input. Here any frame is located from the index alone and verified by its own checksum, and
the footer binds the file to its state file through the content digest, which is defined as
for a raw file (snapshot.memfile), so a chain may mix formats.

Encrypted files (snapshot.crypto, docs/snapshot-format.md section 8) put the 42-byte sealed
file header before the frame data and store each present frame sealed as item i of the entry
count, with its style in the associated data (so TAG_SIZE more bytes each; a ZERO frame stores
its tag alone) and checksum 0; format "frames" is this container with compression off (every
frame RAW or ZERO).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import xxhash

from snapshot.meminfo import FULL, MemFileInfo, Run

DEFAULT_FRAME_SIZE = 2 << 20  # bytes of RAM per frame: one AArch64 level-2 block (4 KiB granule)
# Ours: bounds the buffers of one frame; far below LZ4_MAX_INPUT_SIZE (0x7E000000, lz4.h).
MAX_FRAME_SIZE = 64 << 20
FOOTER_MAGIC = b"MVMFRAME"
FORMAT_VERSION = 1  # of the layout in the module docstring
CODEC_LZ4_BLOCK = 1  # LZ4 block format (lz4_Block_format.md), no size prefix

STYLE_RAW = 0
STYLE_LZ4 = 1
STYLE_ZERO = 2
STYLE_NAMES = {STYLE_RAW: "RAW", STYLE_LZ4: "LZ4", STYLE_ZERO: "ZERO"}

FOOTER_HEAD = struct.Struct("<8sIIQQQQQ16s")  # the footer without its trailing checksum
FOOTER_SIZE = FOOTER_HEAD.size + 8
ENTRY = np.dtype(
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
ENTRY_SIZE = ENTRY.itemsize  # 40 bytes


def pack_footer(length: int, frame_size: int, count: int, index_offset: int, index: bytes, content: bytes) -> bytes:
    """The FOOTER_SIZE-byte footer of a file over `length` bytes of RAM in frames of
    `frame_size` bytes, whose `count` entries (the bytes `index`) start at byte `index_offset`;
    `content` is the 16-byte content digest. Checksums of the index and of the footer's head
    included."""
    head = FOOTER_HEAD.pack(
        FOOTER_MAGIC, FORMAT_VERSION, CODEC_LZ4_BLOCK, length, frame_size, count,
        index_offset, xxhash.xxh3_64_intdigest(index), content,
    )
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


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


def info_layout(info: MemFileInfo) -> list[Frame]:
    """frame_layout of the file `info` records (builds one Frame per present frame: check
    present_frames against what the file holds first)."""
    return frame_layout(info.kind, info.length, info.page_size, info.frame_size, info.iter_runs())
