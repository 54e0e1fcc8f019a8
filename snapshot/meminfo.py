"""What a state file records about its memory file (`MemFileInfo`), whatever the file's format:
its kind, RAM length, page size, a diff's page map and parent, and the content digest; plus the
page-map, run and digest helpers both formats (snapshot.memfile, snapshot.frames) share.

Which file a state file belongs to is recorded as a `MemFileInfo`, whose `digest` is defined
over what the file logically contains, so a verifier can recompute it from the file alone
(`compute_digest` of snapshot.memfile or snapshot.frames). It is XXH3-128, as its canonical 32-char lowercase hex:

- full: XXH3-128 of the image, file bytes [0, length), holes read as zeros (the value
  `head -c <length> <name>.mem | xxhsum -H2` prints).
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

import re
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Iterable, Iterator, Literal, Optional

import numpy as np
import xxhash

from snapshot.errors import IncompatibleError, MissingParentError, ParentMismatchError
from snapshot.fileio import io_chunks
from snapshot.plain import U32, U64, MaxLen

FULL: Literal["full"] = "full"
DIFF: Literal["diff"] = "diff"
RAW: Literal["raw"] = "raw"  # format of snapshot.memfile's files: the raw image
LZ4: Literal["lz4"] = "lz4"  # format of snapshot.frames' files: LZ4 frames + index + footer
# snapshot.frames' container with every frame stored uncompressed: what an encrypted snapshot
# saved without compression writes (an encrypted memory file is always a frames container)
FRAMES: Literal["frames"] = "frames"
DEFAULT_PAGE_SIZE = 4096  # bytes; AArch64 4 KiB translation granule
MIN_PAGE_SIZE = 512  # bytes; smallest page size accepted (a power of two)
# Ours: a full file leaves a hole only for zero gaps of at least this many bytes; shorter gaps
# are written as zeros. Page-sized holes cost a syscall and an extent each (65k extents for
# 1 GiB of scattered zero pages: 4x slower writes, seconds to delete with online discard).
MIN_HOLE = 1 << 20
DIFF_DIGEST_DOMAIN = b"microvm-harness/memfile/diff/v1\x00"  # prefix of every diff digest
DIGEST_HEX_CHARS = 32  # XXH3-128 as hex
# Ours: a diff's page map is one bit per page; 16 GiB of RAM (vmm.layout's maximum) in
# MIN_PAGE_SIZE pages needs 4 MiB, well inside the state file's 10 MB limit.
MAX_PAGE_MAP_BYTES = (16 << 30) // MIN_PAGE_SIZE // 8
# Ours: a full file's data runs are separated by holes of at least MIN_HOLE, so 16 GiB holds at
# most this many 16-byte runs (~256 KiB).
MAX_DATA_RUNS_BYTES = 16 * ((16 << 30) // MIN_HOLE + 1)

TRAILER_MAGIC = b"MVMRAWID"  # ours: the raw file's identity trailer (snapshot.memfile)
TRAILER_VERSION = 1
_TRAILER_HEAD = struct.Struct("<8sIIQ16s")  # the trailer without its checksum
TRAILER_SIZE = _TRAILER_HEAD.size + 8  # 48 bytes, counted by MemFileInfo.file_length

_RUN_HEADER = struct.Struct("<QQ")  # a diff digest's run prefix: le64 first page || le64 page count
_RUN_BATCH = 1 << 16  # runs turned into Python ints at a time by MemFileInfo.iter_runs
_HEX_DIGEST = re.compile(r"[0-9a-f]{32}")
Run = tuple[int, int]  # (first_page, page_count)


def check_digest_text(name: str, value: object) -> None:
    """ValueError unless `value` is a digest as text: DIGEST_HEX_CHARS lowercase hex characters."""
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
    format: "raw" (snapshot.memfile's layout), "lz4" (snapshot.frames: the same extents, cut
    into frames of `frame_size` bytes of RAM, in a file of `file_size` bytes) or "frames" (the
    same container, frames stored uncompressed). The digest is the same for every format: it
    covers what the file records, not how it is stored.
    encryption_id: set for an encrypted (sealed) file, always lz4 or frames (snapshot.crypto).
    """

    kind: Literal["full", "diff"]
    length: U64
    page_size: U32
    digest: str
    pages_written: U64
    page_map: Annotated[bytes, MaxLen(MAX_PAGE_MAP_BYTES)] = b""
    parent_digest: str | None = None
    format: Literal["raw", "lz4", "frames"] = RAW
    frame_size: U64 = 0  # lz4/frames only: bytes of RAM per frame, a multiple of page_size
    file_size: Optional[U64] = None  # lz4/frames only: bytes of the file (raw files: file_length)
    trailer: bool = False  # raw only: the file ends with the identity trailer (state format 1.1)
    # raw full only: the page runs written as data, le64 first page || le64 page count each, in
    # order (the rest of the image was left as holes); empty: not recorded (1.0 files)
    data_runs: Annotated[bytes, MaxLen(MAX_DATA_RUNS_BYTES)] = b""
    # encrypted files only (format 1.2): the memory file's file id (snapshot.crypto) as 32 hex
    # characters; "" = not encrypted. Not secret: it is in the file's clear header too.
    encryption_id: Annotated[str, MaxLen(DIGEST_HEX_CHARS)] = ""

    def __post_init__(self) -> None:
        check_page_size(self.page_size)
        if self.format == RAW and (self.frame_size or self.file_size is not None):
            raise ValueError("a raw memory file has no frame size and no file size of its own")
        if self.format != RAW and (
            self.frame_size <= 0 or self.frame_size % self.page_size or not self.file_size or self.trailer
        ):
            raise ValueError(
                "a frames memory file needs a frame size (whole pages), a positive file size and no raw trailer"
            )
        if self.encryption_id:
            check_digest_text("encryption_id", self.encryption_id)
            if self.format == RAW:
                raise ValueError("an encrypted memory file is a frames container, not raw")
        if self.length <= 0 or self.length % self.page_size:
            raise ValueError(f"length {self.length} is not a positive multiple of the page size")
        if self.data_runs and (self.format != RAW or self.kind != FULL or len(self.data_runs) % 16):
            raise ValueError("data_runs is recorded only for a raw full file, as 16-byte runs")
        check_digest_text("digest", self.digest)
        npages = self.length // self.page_size
        if self.kind == FULL:
            if self.page_map or self.parent_digest is not None:
                raise ValueError("a full memory file has no page map and no parent")
            if self.pages_written > npages:
                raise ValueError(f"pages_written {self.pages_written} exceeds {npages} pages")
        else:
            check_digest_text("parent_digest", self.parent_digest)
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
    def framed(self) -> bool:
        """Whether the file is a snapshot.frames container (lz4 or frames), not a raw image."""
        return self.format != RAW

    @property
    def encrypted(self) -> bool:
        """Whether the file's frames are sealed (snapshot.crypto): reading it needs the key."""
        return bool(self.encryption_id)

    @property
    def file_length(self) -> int:
        """Bytes of the memory file itself: `length` (+ TRAILER_SIZE with the trailer) for
        raw, `file_size` for lz4."""
        if self.file_size is not None:
            return self.file_size
        return self.length + TRAILER_SIZE if self.trailer else self.length

    @cached_property
    def run_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first pages, page counts) of the diff's runs as int64 arrays (empty if full): 16
        bytes per run, where a tuple of Python ints costs ~150."""
        if not self.page_map:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        bits = np.unpackbits(np.frombuffer(self.page_map, np.uint8), bitorder="little")
        starts, ends = _run_edges(bits[: self.length // self.page_size].astype(bool))
        return starts, ends - starts

    @property
    def runs(self) -> tuple[Run, ...]:
        """The diff's pages as sorted, non-adjacent (first_page, page_count) runs; () if full.
        Readers iterate `iter_runs()` instead, which never holds them all as objects."""
        return tuple(self.iter_runs())

    def iter_runs(self) -> Iterator[Run]:
        """The runs of `runs`, produced lazily (a bounded batch of Python ints at a time)."""
        starts, counts = self.run_bounds
        for at in range(0, len(starts), _RUN_BATCH):
            yield from zip(starts[at : at + _RUN_BATCH].tolist(), counts[at : at + _RUN_BATCH].tolist())


def _count_page_map(page_map: bytes, npages: int) -> int:
    """Number of set bits of a page map; ValueError unless it is exactly ceil(npages / 8)
    bytes with zero padding bits."""
    if len(page_map) != (npages + 7) // 8:
        raise ValueError(f"page_map is {len(page_map)} bytes, expected {(npages + 7) // 8} for {npages} pages")
    packed = np.frombuffer(page_map, np.uint8)
    if npages % 8 and packed[-1] >> (npages % 8):
        raise ValueError("page_map has bits set past the last page")
    return int(np.unpackbits(packed).sum(dtype=np.int64))


def _run_array(runs: Iterable[Run], npages: int) -> tuple[np.ndarray, np.ndarray]:
    """(first pages, page counts) of `runs` as int64 arrays, in the order given. ValueError
    for a run that is empty, negative or past `npages`."""
    arr = np.asarray(runs if isinstance(runs, (list, tuple)) else list(runs), dtype=np.int64).reshape(-1, 2)
    first, count = arr[:, 0], arr[:, 1]
    bad = (first < 0) | (count < 1) | (first > npages - count)
    if bad.any():
        f, c = arr[np.argmax(bad)].tolist()
        raise ValueError(f"dirty run ({f}, {c}) is empty or outside {npages} pages")
    return first, count


def page_mask(runs: Iterable[Run], npages: int) -> np.ndarray:
    """Bool mask over `npages` pages of the pages in `runs` (first_page, page_count), which
    may overlap and come in any order. ValueError for a run that is empty, negative or past
    `npages`."""
    first, count = _run_array(runs, npages)
    total = int(count.sum())
    if total > npages:  # overlapping runs: how many runs cover each page (+1 at a start, -1 past an end)
        depth = np.cumsum(np.bincount(first, minlength=npages + 1) - np.bincount(first + count, minlength=npages + 1))
        return depth[:-1] > 0
    mask = np.zeros(npages, dtype=bool)  # every page of every run set directly: O(pages + runs), not O(npages) work
    mask[np.arange(total) + np.repeat(first - (np.cumsum(count) - count), count)] = True
    return mask


def canonical_runs(runs: Iterable[Run], npages: int) -> tuple[Run, ...]:
    """`runs` sorted with overlapping and adjacent runs merged. ValueError for a run that is
    empty, negative or past `npages`. Runs already in that form (a dirty bitmap's) are
    returned as they are, in time proportional to their number, not to `npages`."""
    first, count = _run_array(runs, npages)
    if np.all(first[1:] > first[:-1] + count[:-1]):  # ascending, with a clean page between runs
        return tuple(zip(first.tolist(), count.tolist()))
    return _runs_of(page_mask(zip(first.tolist(), count.tolist()), npages))


def _run_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a per-page bool mask, as int64 page numbers."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(edges == 1).astype(np.int64), np.flatnonzero(edges == -1).astype(np.int64)


def _runs_of(mask: np.ndarray, min_gap: int = 1) -> tuple[Run, ...]:
    """Runs of True in a per-page bool mask, as (first_page, page_count); runs separated by
    fewer than `min_gap` False pages are merged."""
    starts, ends = _run_edges(mask)
    if len(starts) > 1 and min_gap > 1:
        keep = np.concatenate(([True], starts[1:] - ends[:-1] >= min_gap))
        starts = starts[keep]
        ends = ends[np.concatenate((keep[1:], [True]))]
    return tuple(zip(starts.tolist(), (ends - starts).tolist()))


def nonzero_pages(view: np.ndarray | memoryview, page_size: int) -> np.ndarray:
    """Per page of `view` (bytes of whole pages), True if any byte is non-zero (checked over
    8-byte words: page sizes are multiples of 8)."""
    words = np.frombuffer(view, dtype=np.uint64)
    return np.bitwise_or.reduce(words.reshape(-1, page_size // 8), axis=1) != 0  # 2x faster than any(axis=1)


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
    pack = _RUN_HEADER.pack
    for first, count in runs:
        yield first * page_size, count * page_size, pack(first, count)


def digest_hasher(info: MemFileInfo) -> xxhash.xxh3_128:
    """A hasher primed for the digest of `info` (diff: with its domain prefix); feed it
    `digest_regions(info)` in order: each prefix, then the RAM bytes of that region."""
    return _new_hasher(info.kind, info.length, info.page_size, info.parent_digest)


def digest_regions(info: MemFileInfo) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, byte count, digest prefix) of each extent `info` records, in order."""
    return _regions(info.kind, info.length, info.page_size, info.iter_runs())


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


def extent_bytes(info: MemFileInfo) -> int:
    """Bytes of the extents `info` records (what reading or verifying the file goes through):
    the whole length for a full file, the pages of the runs for a diff."""
    return info.length if info.kind == FULL else info.pages_written * info.page_size


# --- checks -----------------------------------------------------------------------------------
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
