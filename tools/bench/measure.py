"""Side-by-side timing that gives the same verdict run after run on a noisy, shared machine.

`interleave(cases, repeats, warmup)` runs every case once per round, `repeats` rounds, after
`warmup` untimed rounds, rotating the order each round so no case always runs first (cold
caches) or last (after the others warmed the machine). A case is a callable that does its own
untimed setup and returns the seconds of the part it measures. The garbage collector runs
before each case: a dropped VM (Unicorn instances, RAM) otherwise gets freed by a collection
inside the next case's timing, which made single rounds 2-4x slower.

Noise on these machines only ever slows a run down, so the best (fastest) sample is the
estimate; the spread says how much to trust it. `ratio(a, b)` is best(b) / best(a) - how many
times faster `a` is than `b` (a throughput ratio) - and `ratio_spread(a, b)` the range of
the same ratio over rounds, each round's two samples taken seconds apart. `ratio_median` is
the median of those per-round ratios: where the fast state of the machine is rare (the exec
bench: a run is 2-2.7x faster in it, and 1 run in 20 may get it), the best of each side may
come from different states, and the median says what the two compare at in the usual one.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

Case = Callable[[], float]


@dataclass
class Samples:
    """Seconds per round, in round order."""

    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / fastest: 0.05 means the rounds agree within 5%."""
        return (max(self.seconds) - self.best) / self.best


def best_of(fn: Callable[[], object], rounds: int) -> float:
    """Wall seconds of the fastest of `rounds` calls of `fn` (the garbage collector runs before
    each, as in `interleave`)."""
    times = []
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleave(cases: Mapping[str, Case], *, repeats: int = 3, warmup: int = 1) -> dict[str, Samples]:
    """Samples of every case, interleaved round by round (module docstring)."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            gc.collect()
            cases[name]()
    out: dict[str, Samples] = {name: Samples([]) for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()  # the previous case's garbage (a whole VM) is freed here, not while timing
            out[name].seconds.append(cases[name]())
    return out


def ratio(a: Samples, b: Samples) -> float:
    """best(b) / best(a): above 1 when `a` is faster."""
    return b.best / a.best


def ratio_spread(a: Samples, b: Samples) -> list[float]:
    """[lowest, highest] of b / a over rounds (each round's pair measured side by side)."""
    per_round = [tb / ta for ta, tb in zip(a.seconds, b.seconds)]
    return [round(min(per_round), 4), round(max(per_round), 4)]


def ratio_median(a: Samples, b: Samples) -> float:
    """The median over rounds of b / a (each round's pair measured side by side)."""
    per_round = sorted(tb / ta for ta, tb in zip(a.seconds, b.seconds))
    mid = len(per_round) // 2
    return per_round[mid] if len(per_round) % 2 else (per_round[mid - 1] + per_round[mid]) / 2


def add_ratio(figures: dict[str, object], name: str, a: Samples, b: Samples, digits: int = 4) -> float:
    """figures[name] = ratio(a, b), figures[name + "_spread"] = ratio_spread(a, b) and
    figures[name + "_median"] = ratio_median(a, b)."""
    value = round(ratio(a, b), digits)
    figures[name] = value
    figures[f"{name}_spread"] = ratio_spread(a, b)
    figures[f"{name}_median"] = round(ratio_median(a, b), digits)
    return value


def machine_load() -> float:
    """The 1-minute load average (recorded with the figures: above the core count, expect noise)."""
    return round(os.getloadavg()[0], 2)
