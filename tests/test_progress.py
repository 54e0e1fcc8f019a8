"""Progress bars: silent when not a terminal or disabled, a byte bar on a terminal."""
from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator

import pytest

from snapshot import progress as progress_mod
from snapshot.describe import describe
from vmm.persist import MACHINE
from snapshot.progress import Progress, no_progress, progress_bar, wants_bar
from vmm import MicroVM, VmConfig
from vmm.layout import MIB


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_is_silent_and_callback_is_a_no_op() -> None:
    out = io.StringIO()
    with progress_bar(1 << 20, "saving", file=out) as advance:
        assert advance is no_progress
        advance(4096)
    assert out.getvalue() == ""


def test_disabled_is_silent_even_on_a_terminal() -> None:
    tty = FakeTty()
    with progress_bar(1 << 20, "saving", enabled=False, file=tty) as advance:
        assert advance is no_progress
        advance(1 << 20)
    assert tty.getvalue() == ""


def test_auto_follows_isatty() -> None:
    assert wants_bar(None, FakeTty()) is True
    assert wants_bar(None, io.StringIO()) is False
    closed = io.StringIO()
    closed.close()  # isatty() raises ValueError
    assert wants_bar(None, closed) is False
    assert wants_bar(True, io.StringIO()) is True
    assert wants_bar(False, FakeTty()) is False


def test_terminal_draws_a_byte_bar_after_the_delay(monkeypatch) -> None:
    monkeypatch.setattr(progress_mod, "SHOW_AFTER", 0)
    monkeypatch.setattr(progress_mod, "REFRESH_INTERVAL", 0)
    tty = FakeTty()
    with progress_bar(2 << 20, "restoring", file=tty) as advance:
        assert advance is not no_progress
        advance(1 << 20)
        advance(1 << 20)
    text = tty.getvalue()
    assert "restoring" in text and "2.00M" in text and "100%" in text


def test_quick_work_prints_nothing_on_a_terminal() -> None:
    tty = FakeTty()  # SHOW_AFTER (0.5 s) never elapses here
    with progress_bar(1 << 20, "saving", file=tty) as advance:
        advance(1 << 20)
    assert "saving" not in tty.getvalue()


def test_negative_total_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        with progress_bar(-1, "x"):
            pass


class RecordingBars:
    """A ProgressBars that records each bar's total and the bytes its callback was given."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int, int]] = []  # (label, total, advanced)

    @contextmanager
    def __call__(self, total_bytes: int, label: str) -> Iterator[Progress]:
        done = [0]

        def advance(n: int) -> None:
            assert n >= 0
            done[0] += n

        yield advance
        self.bars.append((label, total_bytes, done[0]))


def test_save_load_and_verify_advance_exactly_their_totals(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, track_dirty_pages=True, params={"rounds": 0, "writes": 50, "region_mib": 4}))
    bars = RecordingBars()
    vm.run(50_000)
    vm.save_snapshot(tmp_path / "a", "full", progress_bars=bars)
    vm.run(50_000)
    diff = vm.save_snapshot(tmp_path / "b", "diff", progress_bars=bars)
    MicroVM.load_snapshot(tmp_path / "b", "copy", progress_bars=bars)
    MicroVM.load_snapshot(tmp_path / "b", "mmap", progress_bars=bars)
    describe(tmp_path / "b", verify=True, progress_bars=bars, schema=MACHINE)
    diff_bytes = diff.pages_written * 4096
    assert diff_bytes > 0
    assert bars.bars == [
        ("saving a.snap", 32 * MIB, 32 * MIB),
        ("saving b.snap", diff_bytes, diff_bytes),
        ("restoring b.snap", 32 * MIB + diff_bytes, 32 * MIB + diff_bytes),
        ("restoring b.snap", diff_bytes, diff_bytes),  # the mmap'd base is not read
        ("verifying b.snap", diff_bytes, diff_bytes),
    ]
