"""Writing a fan-out's results: one JSON object per line, in input order, with a progress bar
on a terminal (tqdm on stderr, as snapshot.progress decides) and a `Summary` of what was
written. Each line is written whole and flushed, so an interrupted fan-out leaves a file of
complete results for a prefix of the inputs."""
from __future__ import annotations

import json
import sys
import time
from typing import IO, Iterable

from snapshot.progress import wants_bar
from vmm.experiments.summary import Summary
from vmm.experiments.worker import Result


def write_results(results: Iterable[Result], out: IO[str], *, total: int | None = None, bar: bool | None = None) -> Summary:
    """Write `results` to `out` as JSON Lines and sum them up. `bar`: draw a progress bar of
    `total` inputs on stderr (None: only if stderr is a terminal)."""
    summary = Summary()
    t0 = time.perf_counter()
    progress = None
    if wants_bar(bar, sys.stderr):
        from tqdm import tqdm

        progress = tqdm(total=total, unit="input", desc="fanout", file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        for r in results:
            out.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")
            out.flush()
            summary.add(r)
            if progress is not None:
                progress.update(1)
    finally:
        summary.wall_seconds = time.perf_counter() - t0
        if progress is not None:
            progress.close()
    return summary
