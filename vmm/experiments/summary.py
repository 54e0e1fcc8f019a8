"""`Summary`: what a fan-out's results add up to, printed at the end of `microvm fanout`.

Counts by stop reason, distinct state digests (a digest is kept as 16 bytes, so a million
results hold about 50 MB here), inputs that were retried, and the slowest inputs.
"""
from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field

from vmm.experiments.worker import Result

SLOWEST = 5  # inputs listed as slowest


@dataclass
class Summary:
    count: int = 0
    wall_seconds: float = 0.0  # the fan-out's own host time (set by the caller)
    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    digests: set[bytes] = field(default_factory=set)
    retried: int = 0
    slowest: list[tuple[float, int, str]] = field(default_factory=list)  # min-heap of SLOWEST

    def add(self, r: Result) -> None:
        self.count += 1
        self.by_reason[r.stop_reason] += 1
        if r.state_digest:
            self.digests.add(bytes.fromhex(r.state_digest))
        if r.attempts > 1:
            self.retried += 1
        item = (r.wall_seconds, -r.index, r.id)
        if len(self.slowest) < SLOWEST:
            heapq.heappush(self.slowest, item)
        else:
            heapq.heappushpop(self.slowest, item)

    def lines(self) -> list[str]:
        rate = f", {self.count / self.wall_seconds:,.1f} inputs/s" if self.wall_seconds > 0 else ""
        out = [f"{self.count:,} inputs in {self.wall_seconds:.2f} s{rate}"]
        out.append("stop reasons: " + (", ".join(f"{k} {v:,}" for k, v in sorted(self.by_reason.items())) or "none"))
        out.append(f"distinct state digests: {len(self.digests):,}")
        if self.retried:
            out.append(f"retried after a worker died: {self.retried:,}")
        if self.slowest:
            out.append("slowest: " + ", ".join(f"{ident} ({wall * 1000:.1f} ms)" for wall, _, ident in sorted(self.slowest, reverse=True)))
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "inputs": self.count,
            "seconds": round(self.wall_seconds, 6),
            "stop_reasons": dict(sorted(self.by_reason.items())),
            "distinct_digests": len(self.digests),
            "retried": self.retried,
            "slowest": [{"id": ident, "wall_seconds": round(wall, 6)} for wall, _, ident in sorted(self.slowest, reverse=True)],
        }
