"""Dirty-page tracking for diff snapshots: the page bitmap and the adaptive-granule controller.

`DirtyBitmap` holds one flag per RAM page (offsets and lengths in bytes from the start of
RAM, indices in pages). It is the only thing a diff save reads: `peek()` copies it without
clearing so a failed save can be retried, and `clear()` runs only after the commit.

`AdaptiveController` decides how guest stores dirty that bitmap. In this VM a guest store is
seen through Unicorn's TLB-fill hook: a fill with write access is a *write fault*, and
`write_allowed()` tells read/exec fills whether they may grant write up front. The unit
that a write fault dirties and unlocks is the *granule*:

- coarse (2 MiB block): the first write fault in a block marks all of its pages dirty, and
  every later fill of any page of that block is granted write at once. Few write faults, but
  the diff carries the whole block even if the guest touched one page of it.
- fine (one page): each write fault marks exactly one page and only that page is writable.
  The diff is exact, but every page that is read before it is written costs a second fill.

Tracking starts coarse. A block that takes more than `threshold` write faults within
`window_ns` nanoseconds of *virtual* time (a tumbling window opened by its first write fault)
steps down to fine. squib (the Firecracker-style monitor whose snapshot design we follow) steps every block down at once (`StepDownMode.GLOBAL`); this
controller can also step down only the hot block (`StepDownMode.PER_BLOCK`). The step-down
is one-way until `new_epoch()` (the next clean checkpoint) puts every block back to coarse.

- Coarse marks go into the page bitmap the moment they happen (the fold is eager), so a
  step-down never loses or revokes anything and needs no TLB flush; `write_allowed(p)` is
  simply "page p is dirty".
- The fault that crosses the threshold is handled at the new, fine granule.
- A block that got hot within an epoch was already dirtied whole while coarse, so stepping it
  down shrinks nothing in that epoch; only blocks still clean when they step down benefit.
  That is why the fault-rate windows survive `new_epoch()` (they count virtual time, not
  checkpoints; `keep_windows=False` restores the literal reset): a block that stays hot
  across fast resets steps down at its first write fault of the new epoch, before it can
  dirty its whole block. A window whose start lies in the future (virtual time went back
  after a restore) is restarted.

Which mode wins depends on the rest of the trace (see tests/test_dirty.py): per-block keeps
cold blocks coarse, so blocks written densely elsewhere cost one fault instead of one per
page, at the same diff size; global makes cold blocks exact, so blocks written sparsely
elsewhere give a smaller diff, at the same fault count.

Invariant (tested): the bitmap is a superset of the pages the guest and the VMM wrote, as
long as the VMM grants write only on a write fill or when `write_allowed()` says so, and
flushes every vCPU's TLB at `new_epoch()`; with all blocks fine it is exact.
"""
from __future__ import annotations

import enum
import struct
from array import array
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAGE_SIZE = 4096  # Bytes: the AArch64 4 KiB translation granule and memory-file page.
BLOCK_SIZE = 2 * 1024 * 1024  # Bytes: squib's coarse granule (an L2 block with 4 KiB pages).
DEFAULT_STEP_DOWN_THRESHOLD = 32  # Write faults per block per window (squib).
ADAPTIVE_WINDOW_NS = 100_000_000  # 100 ms of virtual time (squib).
MAX_PAGES = 1 << 22  # 16 GiB (vmm.layout.RAM_MAX_SIZE) of 4 KiB pages: bounds to/from_bytes.

_MAGIC = b"MVDB"
_VERSION = 1
_HEADER = struct.Struct("<4sHHIQ")  # magic, version, reserved (0), page_size, num_pages
# Dirty pages found one by one (memchr, ~0.5 us each) before one numpy scan of the rest (~0.3 ns
# a page) is cheaper: about one per 2,048 pages of RAM (128 at 1 GiB), and at least this many.
SPARSE_SCAN_LIMIT = 32
SPARSE_SCAN_PAGES_PER_FIND = 2048


def runs_of_pages(pages: np.ndarray) -> list[tuple[int, int]]:
    """Ascending page indices as maximal (first_page, page_count) runs."""
    if len(pages) > 64:  # vectorised: Python per run, not per page
        breaks = np.flatnonzero(np.diff(pages) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(pages)]))
        return list(zip(pages[starts].tolist(), (ends - starts).tolist()))
    runs: list[tuple[int, int]] = []
    first = last = -2
    for p in pages.tolist():
        if p != last + 1:
            if last >= 0:
                runs.append((first, last - first + 1))
            first = p
        last = p
    if last >= 0:
        runs.append((first, last - first + 1))
    return runs


class DirtyBitmapError(ValueError):
    """A bitmap geometry is invalid, two bitmaps differ in geometry, or a blob is malformed."""


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class DirtyBitmap:
    """One dirty flag per page of RAM. Satisfies `vmm.memory.WriteSink`.

    Storage is a bytearray of 0/1 (cheap single-page marks from Python) with a zero-copy numpy
    bool view for the vectorised bulk operations.
    """

    __slots__ = ("_page_size", "_num_pages", "_buf", "_bits", "_scan_limit")

    def __init__(self, ram_size: int, page_size: int = PAGE_SIZE) -> None:
        """`ram_size` bytes of RAM, a whole number of `page_size`-byte pages (a power of two)."""
        if not _is_pow2(page_size):
            raise DirtyBitmapError(f"page size {page_size} is not a power of two")
        if ram_size <= 0 or ram_size % page_size:
            raise DirtyBitmapError(f"RAM size {ram_size} is not a positive multiple of {page_size}")
        num_pages = ram_size // page_size
        if num_pages > MAX_PAGES:
            raise DirtyBitmapError(f"{num_pages} pages exceed the limit of {MAX_PAGES}")
        self._page_size = page_size
        self._num_pages = num_pages
        self._buf = bytearray(num_pages)
        self._bits = np.frombuffer(self._buf, dtype=np.bool_)
        self._scan_limit = max(SPARSE_SCAN_LIMIT, num_pages // SPARSE_SCAN_PAGES_PER_FIND)

    # --- geometry ---------------------------------------------------------------------------
    @property
    def page_size(self) -> int:
        """Bytes per page."""
        return self._page_size

    @property
    def num_pages(self) -> int:
        return self._num_pages

    @property
    def ram_size(self) -> int:
        """Bytes of RAM covered."""
        return self._num_pages * self._page_size

    def _check_page(self, index: int) -> None:
        if not 0 <= index < self._num_pages:
            raise IndexError(f"page {index} is outside [0, {self._num_pages})")

    def _check_same_geometry(self, other: DirtyBitmap) -> None:
        if (other._page_size, other._num_pages) != (self._page_size, self._num_pages):
            raise DirtyBitmapError(
                f"bitmap geometry differs: {other._num_pages} x {other._page_size} B "
                f"vs {self._num_pages} x {self._page_size} B"
            )

    # --- marking and queries ----------------------------------------------------------------
    def mark_page(self, index: int) -> None:
        """Mark page `index` dirty."""
        self._check_page(index)
        self._buf[index] = 1

    def mark_range(self, offset: int, length: int) -> None:
        """Mark every page overlapping bytes [offset, offset + length) of RAM; length 0 marks none."""
        if length < 0 or offset < 0 or offset + length > self.ram_size:
            raise IndexError(f"byte range [{offset}, {offset + length}) is outside RAM of {self.ram_size}")
        if length == 0:
            return
        first = offset // self._page_size
        last = (offset + length - 1) // self._page_size
        if first == last:
            self._buf[first] = 1
        else:
            self._bits[first : last + 1] = True

    def storage(self) -> bytearray:
        """The live byte-per-page buffer (1 = dirty), never reallocated: for native code that
        marks pages in place (vmm/native_fill.py). Python callers use the methods above."""
        return self._buf

    def is_dirty(self, index: int) -> bool:
        self._check_page(index)
        return self._buf[index] != 0

    def count(self) -> int:
        """Number of dirty pages."""
        return int(np.count_nonzero(self._bits))

    def pages(self) -> np.ndarray:
        """Indices of the dirty pages, ascending (int64 array), in time proportional to their
        number while they are few (memchr over the byte-per-page buffer; a fast reset needs
        this) and one numpy pass over the rest once they are many."""
        found: list[int] = []
        i = self._buf.find(1)
        while i >= 0:
            found.append(i)
            if len(found) > self._scan_limit:  # dense: let numpy scan the rest
                rest = np.flatnonzero(self._bits[i + 1 :]) + (i + 1)
                return np.concatenate((np.array(found, dtype=np.int64), rest))
            i = self._buf.find(1, i + 1)
        return np.array(found, dtype=np.int64)

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of dirty pages as (first_page, page_count), ascending."""
        return runs_of_pages(self.pages())

    # --- whole-bitmap operations ------------------------------------------------------------
    def peek(self) -> DirtyBitmap:
        """An independent copy of the bitmap; this one is left as is (a save can be retried)."""
        copy = DirtyBitmap(self.ram_size, self._page_size)
        copy._buf[:] = self._buf
        return copy

    def clear(self) -> None:
        """Mark every page clean (after a committed save, or at a new epoch)."""
        self._bits[:] = False

    def clear_pages(self, pages: np.ndarray) -> None:
        """Mark the pages `pages` (indices) clean, in time proportional to their number: with
        every dirty page among them (just listed by `pages()`), the same as `clear()`."""
        self._bits[pages] = False

    def merge(self, other: DirtyBitmap) -> None:
        """OR `other` (same geometry) into this bitmap."""
        self._check_same_geometry(other)
        np.logical_or(self._bits, other._bits, out=self._bits)

    # --- persistence ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Header (magic, version, page size, page count) then the bits packed LSB-first."""
        header = _HEADER.pack(_MAGIC, _VERSION, 0, self._page_size, self._num_pages)
        return header + np.packbits(self._bits, bitorder="little").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, max_pages: int = MAX_PAGES) -> DirtyBitmap:
        """Parse `to_bytes()` output. Everything is checked before any allocation: magic,
        version, geometry, `num_pages <= max_pages`, exact length, zero padding bits."""
        data = memoryview(data).cast("B")
        if len(data) < _HEADER.size:
            raise DirtyBitmapError(f"dirty bitmap blob too short: {len(data)} bytes")
        magic, version, reserved, page_size, num_pages = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise DirtyBitmapError(f"dirty bitmap magic mismatch: {bytes(magic)!r}")
        if version != _VERSION or reserved != 0:
            raise DirtyBitmapError(f"unsupported dirty bitmap version {version}.{reserved}")
        if not 0 < num_pages <= min(max_pages, MAX_PAGES):
            raise DirtyBitmapError(f"dirty bitmap page count {num_pages} out of range")
        payload = data[_HEADER.size :]
        if len(payload) != (num_pages + 7) // 8:
            raise DirtyBitmapError(
                f"dirty bitmap payload is {len(payload)} bytes, expected {(num_pages + 7) // 8}"
            )
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
        if bits[num_pages:].any():
            raise DirtyBitmapError("dirty bitmap padding bits are set")
        bitmap = cls(num_pages * page_size, page_size)
        bitmap._bits[:] = bits[:num_pages].view(np.bool_)
        return bitmap


class StepDownMode(str, enum.Enum):
    """What a hot block steps down to fine tracking."""

    GLOBAL = "global"  # squib: every block.
    PER_BLOCK = "per-block"  # only the hot block.


@dataclass(frozen=True)
class TrackingConfig:
    """Adaptive-granule parameters. `threshold=0` makes every block fine at its first write
    fault, i.e. exact page tracking."""

    mode: StepDownMode = StepDownMode.PER_BLOCK
    threshold: int = DEFAULT_STEP_DOWN_THRESHOLD  # write faults per block per window
    window_ns: int = ADAPTIVE_WINDOW_NS  # virtual nanoseconds
    block_size: int = BLOCK_SIZE  # bytes, the coarse granule
    keep_windows: bool = True  # fault-rate windows survive new_epoch(); False = squib-literal reset

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", StepDownMode(self.mode))
        if self.threshold < 0 or self.window_ns <= 0:
            raise ValueError(f"threshold must be >= 0 and window_ns > 0 (got {self.threshold}, {self.window_ns})")
        if not _is_pow2(self.block_size):
            raise ValueError(f"block size {self.block_size} is not a power of two")


@dataclass(frozen=True)
class TrackerBuffers:
    """An `AdaptiveController`'s live state, for a native TLB fill that does `on_write_fill`'s
    work in place (vmm/native_fill.py). Each buffer is allocated once and only ever changed
    in place, so an address taken of it stays valid for the controller's life."""

    dirty: bytearray  # one byte per page, 1 = dirty (the bitmap's own storage)
    fine: bytearray  # one byte per block, 1 = fine granule
    window_start: array  # int64 per block: virtual ns its fault window began
    window_faults: array  # int64 per block: write faults in that window
    counts: array  # int64: [faults, step-downs] of this epoch


_FAULTS, _STEP_DOWNS = 0, 1  # indices into TrackerBuffers.counts


@dataclass(frozen=True)
class TrackingStats:
    """Counters for the current epoch (reset by `new_epoch()`)."""

    faults: int  # first-write faults: write fills of pages not yet dirty at page granule
    step_downs: int  # step-down events (a global one counts once)
    pages_dirty: int
    blocks_fine: int
    blocks_coarse: int


class AdaptiveController:
    """Adaptive coarse/fine dirty tracking driven by the TLB-fill hook (see module docstring).

    Hook contract for the VMM, per TLB fill in guest RAM page `p` (a page index; Unicorn's TLB
    page is 1 KiB, so one page may take up to four fills, and each write fill counts toward
    the threshold):
    - write-access fill: call `on_write_fill(p, now_ns)`, then grant read+write.
    - read or exec fill: grant write as well only if `write_allowed(p)`.
    - at each clean checkpoint: `new_epoch()`, then flush every vCPU's TLB.
    Register the controller with `GuestMemory.add_write_sink` so VMM-side writes mark pages.
    """

    def __init__(self, ram_size: int, page_size: int = PAGE_SIZE, config: TrackingConfig | None = None) -> None:
        self.config = config if config is not None else TrackingConfig()
        if self.config.block_size < page_size:
            raise ValueError(f"block size {self.config.block_size} is smaller than page size {page_size}")
        self._bitmap = DirtyBitmap(ram_size, page_size)
        self._dirty = self._bitmap.storage()  # read per fill: skip the bitmap's checks
        self._block_shift = (self.config.block_size // page_size).bit_length() - 1  # pages -> block
        self._pages_per_block = 1 << self._block_shift
        num_blocks = -(-self._bitmap.num_pages // self._pages_per_block)
        self._fine = bytearray(num_blocks)
        self._window_start = array("q", bytes(8 * num_blocks))  # virtual ns
        self._window_faults = array("q", bytes(8 * num_blocks))
        self._counts = array("q", [0, 0])  # faults, step-downs

    @property
    def bitmap(self) -> DirtyBitmap:
        """The fine-granule output; coarse blocks appear as all their pages."""
        return self._bitmap

    @property
    def num_blocks(self) -> int:
        return len(self._fine)

    def is_fine(self, block: int) -> bool:
        return self._fine[block] != 0

    def buffers(self) -> TrackerBuffers:
        """The live state, shared with a native TLB fill (see `TrackerBuffers`)."""
        return TrackerBuffers(
            self._bitmap.storage(), self._fine, self._window_start, self._window_faults, self._counts
        )

    # --- the TLB-fill hook --------------------------------------------------------------------
    def write_allowed(self, page_index: int) -> bool:
        """May a read/exec fill of this page grant write now? True if the page is already
        dirty (its coarse block was dirtied, or the page itself was)."""
        return self._bitmap.is_dirty(page_index)

    def already_tracked(self, page_index: int) -> bool:
        """Is `page_index` dirty at page granule already? Then a write fill of it is a TLB
        refill, not a first write: a hypervisor's write-protect fault happens once per page
        per epoch, so callers skip `on_write_fill` (and its fault count) for it."""
        return bool(self._fine[page_index >> self._block_shift] and self._dirty[page_index])

    def on_write_fill(self, page_index: int, now_ns: int) -> None:
        """Record a write-access fill of `page_index` at virtual time `now_ns` (nanoseconds)."""
        if not 0 <= page_index < self._bitmap.num_pages:
            raise IndexError(f"page {page_index} is outside [0, {self._bitmap.num_pages})")
        block = page_index >> self._block_shift
        self._counts[_FAULTS] += 1
        start = self._window_start[block]
        faults = self._window_faults[block]
        if faults == 0 or now_ns < start or now_ns - start >= self.config.window_ns:
            self._window_start[block] = now_ns
            faults = 0
        faults += 1
        self._window_faults[block] = faults
        if faults > self.config.threshold and not self._fine[block]:
            self._step_down(block)
        if self._fine[block]:
            self._bitmap.mark_page(page_index)
        elif not self._bitmap.is_dirty(page_index):
            page_size = self._bitmap.page_size
            first = (block << self._block_shift) * page_size
            self._bitmap.mark_range(first, min(self.config.block_size, self._bitmap.ram_size - first))

    def _step_down(self, block: int) -> None:
        self._counts[_STEP_DOWNS] += 1
        if self.config.mode is StepDownMode.GLOBAL:
            self._fine[:] = b"\x01" * len(self._fine)
        else:
            self._fine[block] = 1

    # --- VMM-side writes (vmm.memory.WriteSink) ------------------------------------------------
    def mark_range(self, offset: int, length: int) -> None:
        """A VMM-side write of `length` bytes at RAM `offset`: marks exactly those pages."""
        self._bitmap.mark_range(offset, length)

    # --- epochs and stats ---------------------------------------------------------------------
    def new_epoch(self, dirty: np.ndarray | None = None) -> None:
        """Start a clean epoch: clear the bitmap, every block back to coarse. Fault-rate windows
        are kept unless `config.keep_windows` is False. The caller must flush every vCPU's TLB.
        `dirty`: the indices of every page dirty now, if the caller has them (a reset lists
        them to restore them): only those are cleared, not the whole bitmap."""
        if dirty is None:
            self._bitmap.clear()
        else:
            self._bitmap.clear_pages(dirty)
        if not self.config.keep_windows:
            self._window_faults[:] = array("q", bytes(8 * len(self._fine)))
        self._fine[:] = bytes(len(self._fine))
        self._counts[:] = array("q", [0, 0])

    def stats(self) -> TrackingStats:
        fine = self._fine.count(1)
        return TrackingStats(
            faults=self._counts[_FAULTS],
            step_downs=self._counts[_STEP_DOWNS],
            pages_dirty=self._bitmap.count(),
            blocks_fine=fine,
            blocks_coarse=len(self._fine) - fine,
        )


# --- deterministic simulation -------------------------------------------------------------------
Access = tuple[int, int] | tuple[int, int, bool]  # (page, virtual ns[, is_write]); 2-tuple = write


@dataclass(frozen=True)
class SimResult:
    """What `simulate` measured."""

    faults: int  # write-access fills, summed over epochs
    diff_pages: int  # dirty pages at each epoch's end, summed (what diff saves would write)
    step_downs: int
    dirty: DirtyBitmap  # the last epoch's bitmap


def simulate(
    trace: Sequence[Access],
    mode: StepDownMode | str,
    *,
    ram_size: int,
    page_size: int = PAGE_SIZE,
    epoch_ns: int | None = None,
    **config: int | bool,
) -> SimResult:
    """Run a guest access trace through one vCPU's TLB and an `AdaptiveController`.

    The TLB is modelled as unbounded (no evictions) and is flushed at each epoch; a new epoch
    starts whenever `time // epoch_ns` changes (never if `epoch_ns` is None). A store to a page
    whose TLB entry is writable costs nothing and is invisible to the controller, as in the VM.
    `config` holds the other `TrackingConfig` fields (threshold, window_ns, ...).
    """
    ctl = AdaptiveController(ram_size, page_size, TrackingConfig(mode=mode, **config))  # type: ignore[arg-type]
    tlb: dict[int, bool] = {}  # page -> writable
    faults = diff_pages = step_downs = 0
    epoch = None

    def close_epoch() -> None:
        nonlocal faults, diff_pages, step_downs
        stats = ctl.stats()
        faults += stats.faults
        diff_pages += stats.pages_dirty
        step_downs += stats.step_downs

    for page, now_ns, *kind in trace:
        if epoch_ns is not None and now_ns // epoch_ns != epoch:
            if epoch is not None:
                close_epoch()
                ctl.new_epoch()
                tlb.clear()
            epoch = now_ns // epoch_ns
        is_write = kind[0] if kind else True
        if is_write:
            if not tlb.get(page, False):
                ctl.on_write_fill(page, now_ns)
                tlb[page] = True
        elif page not in tlb:
            tlb[page] = ctl.write_allowed(page)
    close_epoch()
    return SimResult(faults=faults, diff_pages=diff_pages, step_downs=step_downs, dirty=ctl.bitmap.peek())
