"""Tests for snapshot.dirty: the page bitmap, the adaptive controller and its simulation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot.dirty import (
    MAX_PAGES,
    PAGE_SIZE,
    AdaptiveController,
    DirtyBitmap,
    DirtyBitmapError,
    StepDownMode,
    TrackingConfig,
    simulate,
)
from vmm.memory import GuestMemory

MIB = 1024 * 1024
MS = 1_000_000  # virtual nanoseconds
PAGE = 4096
PAGES_PER_BLOCK = 512  # 2 MiB / 4 KiB


# --- DirtyBitmap ------------------------------------------------------------------------------
def test_geometry_and_validation() -> None:
    b = DirtyBitmap(8 * MIB)
    assert (b.page_size, b.num_pages, b.ram_size) == (PAGE, 2048, 8 * MIB)
    for ram, page in ((8 * MIB, 3000), (8 * MIB + 1, PAGE), (0, PAGE), ((MAX_PAGES + 1) * PAGE, PAGE)):
        with pytest.raises(DirtyBitmapError):
            DirtyBitmap(ram, page)


def test_mark_page_and_range_in_bytes() -> None:
    b = DirtyBitmap(1 * MIB)
    b.mark_page(3)
    b.mark_range(PAGE * 10 - 1, 2)  # straddles pages 9 and 10
    b.mark_range(PAGE * 20, PAGE)  # exactly page 20
    b.mark_range(PAGE * 30, 0)  # empty: nothing
    assert b.pages().tolist() == [3, 9, 10, 20]
    assert b.is_dirty(9) and not b.is_dirty(11)
    assert b.count() == 4


@pytest.mark.parametrize("call", [
    lambda b: b.mark_page(-1),
    lambda b: b.mark_page(256),
    lambda b: b.is_dirty(256),
    lambda b: b.mark_range(-1, 2),
    lambda b: b.mark_range(MIB - 1, 2),
    lambda b: b.mark_range(0, -1),
])
def test_out_of_range_is_refused(call) -> None:
    b = DirtyBitmap(1 * MIB)
    with pytest.raises(IndexError):
        call(b)
    assert b.count() == 0


def test_runs_coalesce_and_reach_the_ends() -> None:
    b = DirtyBitmap(1 * MIB)  # 256 pages
    for p in (0, 1, 2, 5, 7, 8, 255):
        b.mark_page(p)
    assert b.runs() == [(0, 3), (5, 1), (7, 2), (255, 1)]
    b.clear()
    assert b.runs() == [] and b.count() == 0
    b.mark_range(0, MIB)
    assert b.runs() == [(0, 256)]


def test_runs_on_a_1_gib_bitmap() -> None:
    b = DirtyBitmap(1024 * MIB)  # 262,144 pages
    pages = np.random.default_rng(7).choice(b.num_pages, size=2621, replace=False)
    for p in pages.tolist():
        b.mark_page(p)
    expanded = [p for first, n in b.runs() for p in range(first, first + n)]
    assert expanded == sorted(pages.tolist())


def test_peek_is_an_independent_copy() -> None:
    b = DirtyBitmap(1 * MIB)
    b.mark_page(4)
    snap = b.peek()
    b.mark_page(5)
    snap.mark_page(6)
    assert snap.pages().tolist() == [4, 6]
    assert b.pages().tolist() == [4, 5]


def test_merge_ors_and_checks_geometry() -> None:
    a, b = DirtyBitmap(1 * MIB), DirtyBitmap(1 * MIB)
    a.mark_page(1)
    b.mark_page(2)
    a.merge(b)
    assert a.pages().tolist() == [1, 2] and b.pages().tolist() == [2]
    with pytest.raises(DirtyBitmapError):
        a.merge(DirtyBitmap(2 * MIB))
    with pytest.raises(DirtyBitmapError):
        a.merge(DirtyBitmap(1 * MIB, 16384))


def test_is_a_write_sink_for_guest_memory() -> None:
    mem = GuestMemory(0x8000_0000, 4 * MIB)
    b = DirtyBitmap(mem.size)
    mem.add_write_sink(b)
    mem.write(0x8000_0000 + 3 * PAGE + 4090, b"0123456789")  # pages 3 and 4
    mem.write_u64(0x8000_0000 + 100 * PAGE, 1)
    assert b.runs() == [(3, 2), (100, 1)]


def test_to_bytes_round_trip_and_size() -> None:
    b = DirtyBitmap(1 * MIB + 3 * PAGE)  # 259 pages: padding bits in the last byte
    for p in (0, 100, 258):
        b.mark_page(p)
    blob = b.to_bytes()
    assert len(blob) == 20 + 33
    c = DirtyBitmap.from_bytes(blob)
    assert (c.page_size, c.num_pages) == (b.page_size, b.num_pages)
    assert c.pages().tolist() == [0, 100, 258]


def test_from_bytes_rejects_malformed_blobs() -> None:
    blob = bytearray(DirtyBitmap(1 * MIB + 3 * PAGE).to_bytes())
    bad = {
        "short": blob[:10],
        "magic": b"XXXX" + blob[4:],
        "version": blob[:4] + b"\x02\x00" + blob[6:],
        "page size": blob[:8] + (3000).to_bytes(4, "little") + blob[12:],
        "truncated": blob[:-1],
        "trailing": blob + b"\x00",
        "padding": blob[:-1] + b"\x80",
        "huge": blob[:12] + (1 << 40).to_bytes(8, "little") + blob[20:],
    }
    for name, data in bad.items():
        with pytest.raises(DirtyBitmapError):
            DirtyBitmap.from_bytes(bytes(data))
    with pytest.raises(DirtyBitmapError):
        DirtyBitmap.from_bytes(bytes(blob), max_pages=100)


@given(st.sets(st.integers(0, 999)))
def test_runs_round_trip_with_the_page_set(pages: set[int]) -> None:
    b = DirtyBitmap(1000 * PAGE)
    for p in pages:
        b.mark_page(p)
    runs = b.runs()
    assert [p for first, n in runs for p in range(first, first + n)] == sorted(pages)
    # maximal: runs never touch each other
    assert all(f1 + n1 < f2 for (f1, n1), (f2, _) in zip(runs, runs[1:]))
    assert DirtyBitmap.from_bytes(b.to_bytes()).runs() == runs


# --- AdaptiveController -----------------------------------------------------------------------
def _controller(mode: str = "per-block", threshold: int = 4, **kw) -> AdaptiveController:
    return AdaptiveController(16 * MIB, config=TrackingConfig(mode=mode, threshold=threshold, **kw))


def test_coarse_write_fault_dirties_and_unlocks_the_whole_block() -> None:
    c = _controller()
    assert not c.write_allowed(PAGES_PER_BLOCK + 7)
    c.on_write_fill(PAGES_PER_BLOCK + 7, 0)
    assert c.bitmap.runs() == [(PAGES_PER_BLOCK, PAGES_PER_BLOCK)]
    assert c.write_allowed(PAGES_PER_BLOCK) and c.write_allowed(2 * PAGES_PER_BLOCK - 1)
    assert not c.write_allowed(2 * PAGES_PER_BLOCK)
    assert c.stats().faults == 1 and c.stats().blocks_fine == 0


def test_hot_block_steps_down_only_past_threshold_within_window() -> None:
    c = _controller(threshold=4)
    for i in range(4):  # 4 faults within 100 ms: not more than the threshold
        c.on_write_fill(i, i * MS)
    assert not c.is_fine(0)
    c.on_write_fill(4, 4 * MS)  # 5th fault within 100 ms: > threshold
    assert c.is_fine(0) and c.stats().step_downs == 1
    # Block 1 gets 5 faults but 30 ms apart: two windows, never more than 4 in one.
    for i in range(5):
        c.on_write_fill(PAGES_PER_BLOCK + i, 200 * MS + i * 30 * MS)
    assert not c.is_fine(1)


def test_crossing_fault_is_handled_fine_and_fine_pages_are_exact() -> None:
    c = _controller(threshold=0)  # every block fine at its first fault
    c.on_write_fill(10, 0)
    c.on_write_fill(600, 0)
    assert c.bitmap.pages().tolist() == [10, 600]
    assert c.write_allowed(10) and not c.write_allowed(11)


@pytest.mark.parametrize("mode, fine_blocks", [("per-block", [0]), ("global", list(range(8)))])
def test_step_down_scope(mode: str, fine_blocks: list[int]) -> None:
    c = _controller(mode=mode, threshold=2)
    c.on_write_fill(2 * PAGES_PER_BLOCK, 0)  # block 2 coarse-dirty before the step-down
    for i in range(3):
        c.on_write_fill(i, i)
    assert [b for b in range(c.num_blocks) if c.is_fine(b)] == fine_blocks
    assert c.stats().step_downs == 1
    # Nothing is lost by folding: block 0 and block 2 stay wholly dirty.
    assert c.bitmap.runs() == [(0, PAGES_PER_BLOCK), (2 * PAGES_PER_BLOCK, PAGES_PER_BLOCK)]
    c.on_write_fill(3 * PAGES_PER_BLOCK + 1, 10)  # a cold block: exact only after a global step-down
    block3 = c.bitmap.pages()[c.bitmap.pages() >= 3 * PAGES_PER_BLOCK]
    assert len(block3) == (1 if mode == "global" else PAGES_PER_BLOCK)


def test_new_epoch_resets_to_coarse_and_keeps_the_rate_window() -> None:
    c = _controller(threshold=2)
    for i in range(3):
        c.on_write_fill(i, i)
    assert c.is_fine(0)
    c.new_epoch()
    assert c.bitmap.count() == 0 and not c.is_fine(0) and c.stats().faults == 0
    c.on_write_fill(9, 5)  # 4th fault in the same 100 ms window: fine at once, exact
    assert c.bitmap.pages().tolist() == [9]
    c.new_epoch()
    c.on_write_fill(9, 10**12)  # window long expired: coarse again
    assert c.bitmap.count() == PAGES_PER_BLOCK


def test_literal_reset_forgets_the_window() -> None:
    c = _controller(threshold=2, keep_windows=False)
    for i in range(3):
        c.on_write_fill(i, i)
    c.new_epoch()
    c.on_write_fill(9, 5)
    assert c.bitmap.count() == PAGES_PER_BLOCK


def test_virtual_time_going_back_restarts_the_window() -> None:
    c = _controller(threshold=2)
    c.on_write_fill(0, 50 * MS)
    c.on_write_fill(1, 51 * MS)
    c.on_write_fill(2, 1 * MS)  # restored to an earlier time: new window, count 1
    assert not c.is_fine(0)


def test_partial_last_block_and_bounds() -> None:
    c = AdaptiveController(3 * MIB)  # blocks: 2 MiB + 1 MiB
    c.on_write_fill(600, 0)
    assert c.bitmap.runs() == [(512, 256)]
    with pytest.raises(IndexError):
        c.on_write_fill(768, 0)
    with pytest.raises(IndexError):
        c.write_allowed(-1)


def test_vmm_side_writes_mark_exact_pages_and_unlock_them() -> None:
    mem = GuestMemory(0x8000_0000, 16 * MIB)
    c = _controller()
    mem.add_write_sink(c)
    mem.write(0x8000_0000 + 5 * PAGE, b"x")
    assert c.bitmap.pages().tolist() == [5]
    assert c.write_allowed(5) and not c.write_allowed(6)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TrackingConfig(mode="sometimes")
    with pytest.raises(ValueError):
        TrackingConfig(threshold=-1)
    with pytest.raises(ValueError):
        TrackingConfig(block_size=3 * MIB)
    with pytest.raises(ValueError):
        AdaptiveController(16 * MIB, page_size=4 * MIB, config=TrackingConfig())
    assert TrackingConfig(mode="global").mode is StepDownMode.GLOBAL


# --- simulation: the modes compared -----------------------------------------------------------
RAM = 64 * MIB


def _hot_block(block: int, t0: int, pages: int = 64) -> list:
    """`pages` stores to fresh pages of one block, 1 us apart: > 32 faults in 100 ms."""
    return [(block * PAGES_PER_BLOCK + i, t0 + i * 1000) for i in range(pages)]


def _read_then_write_block(block: int, t0: int) -> list:
    """Every page of a block loaded, then stored (e.g. a copy loop), 400 ns per access."""
    first = block * PAGES_PER_BLOCK
    return [(first + i, t0 + (2 * i + w) * 400, bool(w)) for i in range(PAGES_PER_BLOCK) for w in (0, 1)]


def _compare(trace: list, **kw) -> dict[str, tuple[int, int]]:
    runs = {m: simulate(trace, m, ram_size=RAM, **kw) for m in ("per-block", "global")}
    runs["coarse-only"] = simulate(trace, "per-block", ram_size=RAM, threshold=10**9, **kw)
    return {m: (r.faults, r.diff_pages) for m, r in runs.items()}


def test_per_block_beats_global_when_cold_blocks_are_written_densely() -> None:
    trace = _hot_block(0, 0) + [a for b in range(1, 9) for a in _read_then_write_block(b, 10 * MS + b * 2 * MS)]
    r = _compare(trace)
    # Same diff (every page of 9 blocks), but global pays one fault per page of blocks 1-8.
    assert r["per-block"] == (64 + 8, 9 * PAGES_PER_BLOCK)
    assert r["global"] == (64 + 8 * PAGES_PER_BLOCK, 9 * PAGES_PER_BLOCK)


def test_global_wins_when_cold_blocks_are_written_sparsely() -> None:
    """The other side of the trade-off: after a global step-down, cold blocks are exact."""
    trace = _hot_block(0, 0) + [(b * PAGES_PER_BLOCK + 7, 10 * MS + b * MS) for b in range(1, 9)]
    r = _compare(trace)
    assert r["per-block"] == (72, 9 * PAGES_PER_BLOCK)
    assert r["global"] == (72, PAGES_PER_BLOCK + 8)


def test_fast_reset_per_block_gets_global_diff_at_coarse_fault_count() -> None:
    """100 epochs of 1 ms: a stack-like block takes 2 stores per epoch, and each epoch one other
    block is copied whole. The stack block goes hot across epochs and becomes exact."""
    trace = []
    for e in range(100):
        trace += [(0, e * MS + 1000), (1, e * MS + 2000)]
        trace += _read_then_write_block(1 + e % 30, e * MS + 10_000)
    r = _compare(trace, epoch_ns=MS)
    faults, diff = r["per-block"]
    assert faults == r["coarse-only"][0] == 300
    assert diff == r["global"][1] < r["coarse-only"][1]
    assert r["global"][0] > 80 * PAGES_PER_BLOCK  # fine everywhere once the stack block is hot
    literal = simulate(trace, "per-block", ram_size=RAM, epoch_ns=MS, keep_windows=False)
    assert (literal.faults, literal.diff_pages) == r["coarse-only"]


# --- properties -------------------------------------------------------------------------------
SMALL_RAM = 1 * MIB  # 256 pages, 16 blocks of 16 pages with a 64 KiB block
traces = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 2 * MS), st.booleans()), max_size=200
).map(lambda t: sorted(t, key=lambda a: a[1]))


@settings(max_examples=150, deadline=None)
@given(traces, st.sampled_from(["per-block", "global"]), st.integers(0, 6))
def test_bitmap_is_a_superset_of_written_pages(trace, mode: str, threshold: int) -> None:
    r = simulate(trace, mode, ram_size=SMALL_RAM, threshold=threshold, window_ns=MS, block_size=64 * 1024)
    written = {p for p, _, w in trace if w}
    dirty = set(r.dirty.pages().tolist())
    assert written <= dirty
    # Each written page is write-filled at most once per epoch (exactly once when all fine).
    assert r.faults <= len(written)
    if threshold == 0:
        assert dirty == written and r.faults == len(written)


@settings(max_examples=50, deadline=None)
@given(traces)
def test_fine_from_the_start_is_exact_in_global_mode_too(trace) -> None:
    r = simulate(trace, "global", ram_size=SMALL_RAM, threshold=0, block_size=64 * 1024)
    assert r.dirty.pages().tolist() == sorted({p for p, _, w in trace if w})


def test_pages_sparse_and_dense_scans_agree() -> None:
    b = DirtyBitmap(64 * 1024 * 1024)
    assert b.pages().tolist() == []
    for p in (0, 7, 8, 16383):
        b.mark_page(p)
    assert b.pages().tolist() == [0, 7, 8, 16383]
    b.mark_range(0, 64 * 1024 * 1024)  # dense: past SPARSE_SCAN_LIMIT, the numpy tail
    assert b.pages().tolist() == list(range(16384))


@pytest.mark.parametrize("ram_mib", [64, 1024])
def test_pages_switch_from_finds_to_one_scan_without_losing_or_repeating_a_page(ram_mib: int) -> None:
    """Around the point where pages() stops finding pages one by one (a limit that grows with
    RAM) and scans the rest at once, every dirty page is listed once, in order."""
    b = DirtyBitmap(ram_mib * 1024 * 1024)
    want = sorted({(i * 7919) % b.num_pages for i in range(400)})  # scattered, more than any limit here
    for p in want:
        b.mark_page(p)
    for n in range(len(want), 0, -37):  # below, at and past the limit
        b.clear()
        for p in want[:n]:
            b.mark_page(p)
        assert b.pages().tolist() == want[:n]


def test_a_new_epoch_given_the_dirty_pages_clears_exactly_those() -> None:
    ctl = AdaptiveController(64 * PAGE_SIZE, PAGE_SIZE, TrackingConfig(threshold=0, block_size=4 * PAGE_SIZE))
    for page in (1, 9, 40):
        ctl.on_write_fill(page, now_ns=0)
    listed = ctl.bitmap.pages()
    assert listed.tolist() == [1, 9, 40]
    ctl.new_epoch(listed)
    assert ctl.bitmap.count() == 0 and ctl.stats().blocks_fine == 0 and ctl.stats().faults == 0
    for page in (2, 3):
        ctl.on_write_fill(page, now_ns=0)
    ctl.new_epoch(np.array([2]))  # a page left out stays dirty: the caller must list them all
    assert ctl.bitmap.pages().tolist() == [3]
