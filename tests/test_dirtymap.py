"""Dirty pages per epoch and their heatmap (vmm/plots.py, `microvm dirty-map`)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from vmm.plots import (
    FIG_HEIGHT_PX,
    FIG_WIDTH_PX,
    INSTALL_HINT,
    DirtyEpoch,
    build_map,
    dirty_epochs,
    plot_dirty_map,
)
from vmm import MicroVM, RunResult, StopReason, VmConfig
from vmm.cli import main
from vmm.layout import RAM_BASE

image = pytest.importorskip("matplotlib.image")

MIB = 1 << 20
REGION = RAM_BASE + 16 * MIB  # memwalk's region (guests/src/memwalk.S)
# Sequential pattern: 4096 8-byte writes per round = 8 pages, the window moving along.
SEQUENTIAL = {"pattern": 0, "rounds": 0, "writes": 4096, "region_mib": 4}


def _epoch(index: int, pages: list[int]) -> DirtyEpoch:
    return DirtyEpoch(index, index * 10, index * 10 + 10, np.array(pages, dtype=np.int64), RunResult(StopReason.BUDGET, 10))


def test_epochs_follow_a_sequential_walk() -> None:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, quantum=10_000, track_dirty_pages=True, params=SEQUENTIAL))
    epochs = list(dirty_epochs(vm, 100_000, max_epochs=6))
    assert [e.index for e in epochs] == list(range(6))
    assert [(e.start, e.end) for e in epochs] == [(i * 100_000, (i + 1) * 100_000) for i in range(6)]
    region_first = (REGION - RAM_BASE) // 4096
    walked = [e.pages[e.pages >= region_first] - region_first for e in epochs]
    assert all(w.size and np.all(np.diff(w) == 1) for w in walked)  # one run per epoch
    assert all(later[0] >= earlier[-1] for earlier, later in zip(walked, walked[1:]))  # moving up
    assert epochs[0].runs >= 2  # the walk plus the stack and the console's page


def test_epochs_stop_with_the_guest_or_at_the_instruction_limit() -> None:
    vm = MicroVM(VmConfig(guest="hello", track_dirty_pages=True))
    epochs = list(dirty_epochs(vm, 1_000_000, max_epochs=5))
    assert len(epochs) == 1 and epochs[0].result.reason is StopReason.POWER_OFF
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, quantum=1_000, track_dirty_pages=True, params=SEQUENTIAL))
    epochs = list(dirty_epochs(vm, 4_000, max_instructions=10_000))
    assert [(e.start, e.end) for e in epochs] == [(0, 4_000), (4_000, 8_000), (8_000, 10_000)]
    with pytest.raises(ValueError, match="at least 1 instruction"):
        next(dirty_epochs(vm, 0))


def test_build_map_bins_the_dirtied_span() -> None:
    epochs = [_epoch(0, [10, 11, 12]), _epoch(1, []), _epoch(2, [19])]
    dmap = build_map(epochs, 100, ram_base=RAM_BASE, page_size=4096, max_columns=4)
    # span = pages 10..19 (10 pages), 3 pages per column, columns of 3, 3, 3, 1 pages
    assert (dmap.first_page, dmap.pages_per_column, dmap.num_pages, dmap.epochs, dmap.columns) == (10, 3, 10, 3, 4)
    np.testing.assert_allclose(dmap.fractions, [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert dmap.bounds == ((0, 10), (10, 20), (20, 30))
    clean = build_map([_epoch(0, [])], 100, ram_base=RAM_BASE, max_columns=1000)
    assert (clean.first_page, clean.num_pages, clean.columns) == (0, 100, 100)
    assert not clean.fractions.any()
    with pytest.raises(ValueError, match="no epochs"):
        build_map([], 100, ram_base=RAM_BASE)


def _bright_runs(column: np.ndarray) -> list[int]:
    """Lengths of the runs of pixels drawn in the colormap's top colour (magma(1.0) is pale
    yellow: not white, which is the background)."""
    bright = (column[:, 0] > 0.9) & (column[:, 1] > 0.9) & (column[:, 2] > 0.6) & (column[:, 2] < 0.85)
    edges = np.diff(np.concatenate(([0], bright.astype(np.int8), [0])))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def test_png_has_the_fixed_size_and_one_band_per_epoch(tmp_path) -> None:
    # Epochs 0, 2 and 3 write every page of the span, 1 and 4 none: down any column of the
    # heatmap, two bright bands, one and two epochs tall.
    pages = list(range(40, 80))
    dmap = build_map([_epoch(0, pages), _epoch(1, []), _epoch(2, pages), _epoch(3, pages), _epoch(4, [])], 1000, ram_base=RAM_BASE)
    out = tmp_path / "map.png"
    plot_dirty_map(dmap, out, title="test")
    png = image.imread(out)
    assert png.shape == (FIG_HEIGHT_PX, FIG_WIDTH_PX, 4)
    runs = _bright_runs(png[:, FIG_WIDTH_PX * 2 // 5])
    assert len(runs) == 2 and abs(runs[1] - 2 * runs[0]) <= 4  # edge pixels blend


def test_cli_writes_the_map_and_a_json_summary(tmp_path, capsys) -> None:
    out = tmp_path / "map.png"
    argv = ["dirty-map", "memwalk", "--mem-mib", "32", "--quantum", "10000"]
    argv += [f"--param={k}={v}" for k, v in SEQUENTIAL.items()]
    assert main([*argv, "--epoch", "50000", "--epochs", "7", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 7 and len(summary["dirty_pages"]) == 7 and summary["stop"] == "budget"
    assert summary["virtual_time_ns"] == 350_000 and summary["first_address"] >= RAM_BASE
    assert image.imread(out).shape == (FIG_HEIGHT_PX, FIG_WIDTH_PX, 4)
    assert main(["dirty-map", "hello", "--epochs", "3", "-o", str(tmp_path / "hello.png")]) == 0
    assert "dirty map of 1 epochs" in capsys.readouterr().err  # hello powers off in the first


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epoch", "0"], "--epoch and --epochs must be at least 1"),
        (["--epochs", "0"], "--epoch and --epochs must be at least 1"),
        (["-o", "/no/such/dir/map.png"], "cannot write /no/such/dir/map.png"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, extra: list[str], message: str) -> None:
    argv = ["dirty-map", "hello", "-o", str(tmp_path / "m.png"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"microvm: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "m.png").exists()


def test_without_matplotlib_the_cli_says_how_to_install_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["dirty-map", "hello", "-o", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"microvm: error: plotting needs matplotlib: {INSTALL_HINT}\n" and "pip install -e" in err
    assert not (tmp_path / "m.png").exists()
