"""`fanout`: experiments per second of `run_experiments` on one snapshot, local and Ray.

A small guest (memwalk's hot-set pattern, 32 MiB of RAM) is snapshotted; every input runs it
for 20,000 instructions, in which it dirties exactly 16 pages (checked in every result), so
each experiment is: reset 16 pages, run, digest the state. Figures, side by side in one run:

- experiments/s with 1 and 2 local workers and with 2 Ray actors (a local Ray instance of
  2 CPUs, started once). A rate counts the steady state: from the first result to the last,
  so that starting the workers (a fresh interpreter each, loading the snapshot) is left out.
  Best of 3 rounds.
- `fanout_scaling_2` = local rate(2) / rate(1) (2 at most on this 2-core machine; goal 1.8);
  `ray_vs_local` = Ray rate(2) / local rate(2) (goal 0.8).

- `encrypted_save_vs_plain`: an encrypted full save of a 1 GiB guest vs a plain one (goal
  0.8), measured by tools.bench.snapshot.measure_encrypted_save (the same figure as there).

The machine is shared: the load average (os.getloadavg) before and after is printed with the
figures, and a loaded machine lowers the scaling ratio first. What bounds the scaling here:
about half of an experiment (3 ms) is the state digest, XXH3 over the 32 MiB of RAM, which
is memory-bandwidth bound; two processes hashing 32 MiB each on this 2-core machine reach
1.6-1.7x the rate of one (measured side by side), and `fanout_scaling_2` lands there too.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.bench.snapshot import measure_encrypted_save
from vmm import MicroVM, VmConfig
from vmm.experiments import Input, iter_experiments
from vmm.layout import MIB

ROUNDS = 3
BUDGET = 20_000  # instructions per experiment
DIRTY = 16  # pages each experiment dirties (memwalk's 15 hot pages + its stack page)
PARAMS = {"rounds": 0, "pattern": 3, "hot_pages": DIRTY - 1, "writes": 256}


def _snapshot(folder: Path) -> Path:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, quantum=10_000, params=PARAMS))
    vm.run(50_000)
    vm.save_snapshot(folder / "base")
    return folder / "base.snap"


def _rate(snap: Path, n: int, engine: str, workers: int) -> float:
    """Best of ROUNDS: experiments/s from the first result to the last."""
    best = 0.0
    for _ in range(ROUNDS):
        inputs = (Input(id=f"e{i}", budget=BUDGET) for i in range(n))
        first = last = 0.0
        count = 0
        for r in iter_experiments(snap, inputs, engine=engine, workers=workers):  # type: ignore[arg-type]
            if r.dirty_pages != DIRTY:
                raise RuntimeError(f"{r.id}: {r.dirty_pages} dirty pages, expected {DIRTY}")
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        best = max(best, (count - 1) / (last - first))
    return best


def run(quick: bool = False) -> dict[str, Any]:
    import ray

    n = 120 if quick else 600
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="microvm-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        snap = _snapshot(Path(tmp))
        encrypted = measure_encrypted_save(Path(tmp), (256 if quick else 1024) * MIB, ROUNDS)
        local_1 = _rate(snap, n, "local", 1)
        local_2 = _rate(snap, n, "local", 2)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            ray_2 = _rate(snap, n, "ray", 2)
        finally:
            ray.shutdown()
    load_after = os.getloadavg()
    figures: dict[str, Any] = {
        "experiments": n,
        "dirty_pages_per_experiment": DIRTY,
        "local_1_per_s": round(local_1, 1),
        "local_2_per_s": round(local_2, 1),
        "ray_2_per_s": round(ray_2, 1),
        "fanout_scaling_2": round(local_2 / local_1, 3),
        "ray_vs_local": round(ray_2 / local_2, 3),
        **encrypted,
        "loadavg_1min_before": round(load_before[0], 2),
        "loadavg_1min_after": round(load_after[0], 2),
        "cpus": os.cpu_count(),
    }
    print(f"memwalk, 32 MiB, {BUDGET:,} instructions and {DIRTY} dirty pages per experiment, {n} experiments, best of {ROUNDS}")
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs")
    print(f"local, 1 worker    {local_1:8.1f} experiments/s")
    print(f"local, 2 workers   {local_2:8.1f} experiments/s   fanout_scaling_2 {figures['fanout_scaling_2']} (goal >= 1.8)")
    print(f"ray, 2 actors      {ray_2:8.1f} experiments/s   ray_vs_local {figures['ray_vs_local']} (goal >= 0.8)")
    return figures
