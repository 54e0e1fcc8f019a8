"""Progress bars for long byte-moving work (saves, restores, rebase, verify, compression).

Long operations take an optional `progress: Progress | None` callback and call it with the
number of bytes they have just processed (increments, not totals). The caller that owns the
terminal wraps the operation in `progress_bar`, which yields such a callback:

    with progress_bar(total_bytes, "saving") as progress:
        save_snapshot(vm, path, progress=progress)

An orchestrating function that knows the total only once it has started (a restore learns it
from the chain it opens) takes a `ProgressBars` instead: a factory with the same signature as
`progress_bar`, whose display settings the caller binds with `progress_bars(enabled)`.

The bar is a tqdm bar on stderr, shown only when it is wanted (`enabled`: None = only if
stderr is a terminal, False = never, e.g. `--quiet`, True = always) and only once the work has
taken longer than SHOW_AFTER seconds, so quick operations print nothing. Otherwise the callback
is a no-op and nothing is written anywhere.
"""
from __future__ import annotations

import sys
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Callable, Iterator, Protocol, TextIO

Progress = Callable[[int], None]  # advance by this many bytes

SHOW_AFTER = 0.5  # seconds of work before a bar appears (ours: shorter work prints nothing)
REFRESH_INTERVAL = 0.1  # seconds between redraws at most (tqdm's mininterval)


class ProgressBars(Protocol):
    """Opens a bar for `total_bytes` of work named `label` (see `progress_bars`)."""

    def __call__(self, total_bytes: int, label: str) -> AbstractContextManager[Progress]: ...


def no_progress(_nbytes: int) -> None:
    """A Progress callback that does nothing."""


def wants_bar(enabled: bool | None, stream: TextIO) -> bool:
    """Whether a bar should be drawn on `stream`: `enabled` if given, else whether `stream` is
    a terminal."""
    if enabled is not None:
        return enabled
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


@contextmanager
def progress_bar(
    total_bytes: int,
    label: str,
    *,
    enabled: bool | None = None,
    file: TextIO | None = None,
) -> Iterator[Progress]:
    """A Progress callback for `total_bytes` of work named `label`, drawn on `file` (default
    stderr) as a byte-scaled bar when `wants_bar(enabled, file)`; a no-op otherwise. The bar is
    removed when the block ends (also on error)."""
    if total_bytes < 0:
        raise ValueError(f"total_bytes must not be negative, got {total_bytes}")
    stream = sys.stderr if file is None else file
    if not wants_bar(enabled, stream):
        yield no_progress
        return
    from tqdm import tqdm  # only paid for when a bar is drawn

    bar = tqdm(
        total=total_bytes,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=stream,
        leave=False,
        delay=SHOW_AFTER,
        mininterval=REFRESH_INTERVAL,
        dynamic_ncols=True,
    )
    try:
        yield bar.update
    finally:
        bar.close()


def progress_bars(enabled: bool | None = None, file: TextIO | None = None) -> ProgressBars:
    """A ProgressBars factory: `progress_bar` with `enabled` and `file` bound."""
    return partial(progress_bar, enabled=enabled, file=file)
