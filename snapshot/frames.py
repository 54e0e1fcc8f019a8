"""Frames memory files (formats "lz4" and "frames"): guest RAM cut into independently
compressed, checksummed (or sealed) frames, an index and a footer. The public face of the
format for vmm/, tools/ and tests; the code lives in one module per concern:

    snapshot.framelayout  the file layout: constants, entry and footer records, which frames
                          a file holds (Frame, frame_layout, present_frames)
    snapshot.workers      the ordered, bounded worker pool frames are encoded and decoded on
    snapshot.framewriter  write_full, write_diff: encode (and seal) frames, then index, footer
    snapshot.frameindex   the checks of the untrusted file before any frame is read
    snapshot.framereader  read_into, compute_digest, read_frame, check_file, frame_styles

docs/snapshot-format.md specifies the format (section 5, lz4) and its encryption (section 8).
"""
from __future__ import annotations

from snapshot.frameindex import Index, read_index
from snapshot.framelayout import (
    CODEC_LZ4_BLOCK,
    DEFAULT_FRAME_SIZE,
    ENTRY_SIZE,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    FORMAT_VERSION,
    MAX_FRAME_SIZE,
    STYLE_LZ4,
    STYLE_NAMES,
    STYLE_RAW,
    STYLE_ZERO,
    Frame,
    check_frame_size,
    frame_layout,
    present_frames,
)
from snapshot.framereader import (
    READ_WINDOW_BYTES,
    Source,
    check_file,
    compute_digest,
    frame_styles,
    read_frame,
    read_into,
)
from snapshot.framewriter import write_diff, write_full
from snapshot.meminfo import MemFileInfo  # the type every function here takes or returns
from snapshot.workers import IN_FLIGHT_PER_THREAD, MAX_DEFAULT_THREADS, default_threads

_read_index = read_index  # the name tests inspect a checked index by (before the split)

__all__ = [
    "CODEC_LZ4_BLOCK",
    "DEFAULT_FRAME_SIZE",
    "ENTRY_SIZE",
    "FOOTER_MAGIC",
    "FOOTER_SIZE",
    "FORMAT_VERSION",
    "IN_FLIGHT_PER_THREAD",
    "MAX_DEFAULT_THREADS",
    "MAX_FRAME_SIZE",
    "READ_WINDOW_BYTES",
    "STYLE_LZ4",
    "STYLE_NAMES",
    "STYLE_RAW",
    "STYLE_ZERO",
    "Frame",
    "Index",
    "MemFileInfo",
    "Source",
    "check_file",
    "check_frame_size",
    "compute_digest",
    "default_threads",
    "frame_layout",
    "frame_styles",
    "present_frames",
    "read_frame",
    "read_index",
    "read_into",
    "write_diff",
    "write_full",
]
