"""Benchmarks: `python -m tools.bench NAME [options]`.

Each benchmark prints human-readable lines, then one final JSON line with its figures (ratios
compare things run side by side in the same process run).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHMARKS = {
    "exec": "execution speed: harness vs a bare Unicorn loop on the compute guest",
    "snapshot": "save/restore speed on a 1 GiB guest vs plain file I/O; diff vs full; mmap restore scaling",
    "dirty": "dirty-tracking cost: off vs TLB-fill tracking vs a per-store write hook; granule modes",
    "compress": "raw vs lz4 memory files on a 1 GiB guest: save and restore time, size, 1 vs 2 threads",
    "reset": "in-process reset to a point at 16 and 1,024 dirty pages on a 1 GiB guest vs load_snapshot",
    "api": "API server: guest rounds in the background vs direct, pause latency vs one round, GET / while running",
    "fanout": "experiments/s of a fan-out: 1 and 2 local workers, 2 Ray actors; encrypted vs plain 1 GiB save",
    "faults": "reliability campaign: kills during save/rebase, mutated files, disk faults, hostile guests; counts per category",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"tools.bench.{args.name}")
    figures = module.run(quick=args.quick)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
