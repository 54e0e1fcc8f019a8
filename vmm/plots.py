"""Dirty pages per epoch of virtual time, and their heatmap (`microvm dirty-map`).

`dirty_epochs(vm, n)` runs a VM in epochs of `n` instructions of virtual time and yields the
pages each epoch wrote. `build_map` bins them into a matrix (rows = epochs in order, columns =
equal runs of guest pages over the span any epoch dirtied) of the fraction of each column's
pages an epoch dirtied, and `plot_dirty_map` draws that matrix as a PNG heatmap of a fixed
size: FIG_WIDTH_PX x FIG_HEIGHT_PX pixels whatever the data.

Plotting needs matplotlib (the optional extra `plot`); everything else does not.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason
from vmm.tlb import DIRTY_PAGE_SIZE

FIG_WIDTH_IN, FIG_HEIGHT_IN = 10, 6  # inches
FIG_DPI = 100  # pixels per inch: the PNG is FIG_WIDTH_PX x FIG_HEIGHT_PX
FIG_WIDTH_PX, FIG_HEIGHT_PX = FIG_WIDTH_IN * FIG_DPI, FIG_HEIGHT_IN * FIG_DPI
MAX_COLUMNS = 512  # page bins across the map (the axes are ~800 px wide)
X_TICKS = 5  # at most X_TICKS + 1 address ticks, at least half as many
COLORMAP = "magma"  # perceptually uniform; black = clean, bright = every page written
INSTALL_HINT = "pip install -e '.[plot]' in the microvm-harness checkout (the package is not on PyPI)"


class PlotUnavailableError(ImportError):
    """matplotlib is not installed; the message says how to install it."""


@dataclass(frozen=True)
class DirtyEpoch:
    """One epoch: virtual time [start, end) in ns, the indices of the pages of RAM it wrote
    (ascending; DIRTY_PAGE_SIZE bytes each) and how the run of that epoch ended."""

    index: int
    start: int
    end: int
    pages: np.ndarray
    result: RunResult

    @property
    def runs(self) -> int:
        """Number of maximal runs of consecutive dirty pages."""
        return int(np.count_nonzero(np.diff(self.pages) != 1)) + 1 if self.pages.size else 0


def dirty_epochs(
    vm: MicroVM,
    epoch_instructions: int,
    *,
    max_epochs: int | None = None,
    max_instructions: int | None = None,
) -> Iterator[DirtyEpoch]:
    """Run `vm` (created with track_dirty_pages) in epochs of `epoch_instructions` of virtual
    time, starting a new dirty epoch first, and yield each epoch as it ends. Stops after an
    epoch in which the guest stopped (powered off, faulted, ...), after `max_epochs` epochs, or
    once the clock reaches `max_instructions` (the last epoch is shortened to end there)."""
    if epoch_instructions < 1:
        raise ValueError(f"an epoch must be at least 1 instruction, got {epoch_instructions}")
    vm.start_dirty_epoch()
    index = 0
    while max_epochs is None or index < max_epochs:
        start = vm.clock
        budget = epoch_instructions
        if max_instructions is not None:
            budget = min(budget, max(max_instructions - vm.clock, 0))
        result = vm.run(budget)
        pages = vm.dirty.pages()
        vm.start_dirty_epoch()
        yield DirtyEpoch(index, start, vm.clock, pages, result)
        index += 1
        if result.reason is not StopReason.BUDGET:
            return
        if max_instructions is not None and vm.clock >= max_instructions:
            return


@dataclass(frozen=True)
class DirtyMap:
    """fractions[e, c]: the fraction of the pages of column c that epoch e wrote (0..1).
    Column c covers pages [first_page + c * pages_per_column, ... + pages_per_column) of RAM,
    the last column possibly fewer; `bounds[e]` is epoch e's virtual time [start, end) in ns."""

    fractions: np.ndarray
    first_page: int
    pages_per_column: int
    num_pages: int  # pages covered by the columns, from first_page
    ram_base: int
    page_size: int
    bounds: tuple[tuple[int, int], ...]

    @property
    def epochs(self) -> int:
        return int(self.fractions.shape[0])

    @property
    def columns(self) -> int:
        return int(self.fractions.shape[1])


def build_map(
    epochs: Sequence[DirtyEpoch],
    ram_pages: int,
    *,
    ram_base: int,
    page_size: int = DIRTY_PAGE_SIZE,
    max_columns: int = MAX_COLUMNS,
) -> DirtyMap:
    """The matrix of `epochs` over the span of pages any of them dirtied (all `ram_pages`
    pages of RAM if none did), in at most `max_columns` columns of equally many pages."""
    if not epochs:
        raise ValueError("no epochs to map")
    dirty = [e.pages for e in epochs if e.pages.size]
    lo = min(int(p[0]) for p in dirty) if dirty else 0
    hi = max(int(p[-1]) for p in dirty) + 1 if dirty else ram_pages
    per_column = -(-(hi - lo) // max_columns)
    columns = -(-(hi - lo) // per_column)
    sizes = np.full(columns, per_column, dtype=np.float64)
    sizes[-1] = (hi - lo) - per_column * (columns - 1)
    fractions = np.zeros((len(epochs), columns), dtype=np.float64)
    for row, epoch in enumerate(epochs):
        fractions[row] = np.bincount((epoch.pages - lo) // per_column, minlength=columns) / sizes
    return DirtyMap(
        fractions, lo, per_column, hi - lo, ram_base, page_size, tuple((e.start, e.end) for e in epochs)
    )


def require_matplotlib() -> None:
    """PlotUnavailableError (with the install command) unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(f"plotting needs matplotlib: {INSTALL_HINT}") from None


def plot_dirty_map(dmap: DirtyMap, path: str | os.PathLike[str], *, title: str) -> None:
    """Write `dmap` as a FIG_WIDTH_PX x FIG_HEIGHT_PX PNG heatmap to `path`: epochs top to
    bottom, guest physical addresses left to right. OSError if the file cannot be written."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

    fig = Figure(figsize=(FIG_WIDTH_IN, FIG_HEIGHT_IN), dpi=FIG_DPI)
    ax = fig.add_subplot()
    lo = dmap.ram_base + dmap.first_page * dmap.page_size
    hi = lo + dmap.num_pages * dmap.page_size
    image = ax.imshow(
        dmap.fractions,
        aspect="auto",
        interpolation="nearest",
        cmap=COLORMAP,
        vmin=0.0,
        vmax=1.0,
        extent=(lo, hi, dmap.epochs - 0.5, -0.5),
    )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{int(x):#x}"))
    # Address ticks at a power-of-two step, so they read as round hex numbers.
    ax.xaxis.set_major_locator(MultipleLocator(1 << max(0, ((hi - lo) // X_TICKS - 1).bit_length())))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"guest physical address ({dmap.pages_per_column} x {dmap.page_size // 1024} KiB pages per column)")
    start, end = dmap.bounds[0][0], dmap.bounds[-1][1]
    ax.set_ylabel(f"epoch (virtual time {start:,} to {end:,} ns)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of pages written")
    fig.savefig(os.fspath(path), format="png", dpi=FIG_DPI)
