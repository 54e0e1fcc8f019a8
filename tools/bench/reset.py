"""`reset`: in-process reset (`vm.reset_to(point)`) on a 1 GiB guest, against `load_snapshot`.

Figures (side by side in one process run):
- resets per second with exactly 16 and exactly 1,024 pages dirtied between resets (host
  writes through GuestMemory, random pages, a new set each time; only `reset_to` is timed, in
  CPU seconds of this process, as the dirty bench times runs: other processes on the
  machine's two cores otherwise decide the figure (7,100 and 14,251 on the same code);
  `resets_per_s_16_wall` is the wall-clock figure; best of 5 rounds after a warm-up round;
  the range over rounds in `<figure>_spread`);
- `load_snapshot` of the same point saved as a full snapshot, copy and mmap backends (best of
  3); `reset_vs_load` = reset time at 16 dirty pages / mmap load time (the faster load), so
  smaller is better; `reset_vs_load_1024` the same at 1,024 pages;
- the dirty-epoch start alone (`epoch_start_us`: bitmap clear + TLB flush, part of every
  reset; measured before the point exists, so without its bookkeeping), taking the point
  (`capture_ms`: one copy of RAM), and a fuzzing loop (`loop_per_s`: reset, then run the
  guest one 10,000-instruction quantum, which refills the TLB and re-dirties pages).
After the timed loops the VM's digest is checked against the point's.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tools.bench.measure import Samples, best_of, machine_load
from vmm import MicroVM, VmConfig
from vmm.reset import ResetPoint
from vmm.layout import GIB, MIB, RAM_BASE
from vmm.tlb import DIRTY_PAGE_SIZE

QUANTUM = 10_000  # instructions per round: one fuzzing-loop step
ROUNDS = 3  # timed rounds per figure; the best counts
RESET_ROUNDS = 5  # the same for the reset loops (short, and the most exposed to other processes)


def _vm(mem: int) -> MicroVM:
    """memwalk with RAM filled with non-zero data (as tools/bench/snapshot.py), so the point
    holds a full image and no page is first touched inside the timed loops."""
    params = {"rounds": 0, "pattern": 2, "writes": 64, "region_mib": 8}
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=mem, quantum=QUANTUM, track_dirty_pages=True, params=params))
    fill = np.random.default_rng(7).integers(1, 255, size=64 * MIB, dtype=np.uint8)
    for off in range(32 * MIB, mem - 2 * MIB, 64 * MIB):
        n = min(64 * MIB, mem - 2 * MIB - off)
        vm.memory.write(RAM_BASE + off, fill[:n])
    vm.run(20 * QUANTUM)
    return vm


def _reset_seconds(
    vm: MicroVM, point: ResetPoint, dirty: int, iterations: int, rng: np.random.Generator
) -> tuple[Samples, Samples]:
    """(CPU, wall) seconds per reset_to, one sample per round (a warm-up round first, untimed),
    with `dirty` distinct random pages written before each reset (outside the timing). CPU
    seconds are this process's (time.process_time): a reset never waits for I/O, so what other
    processes take of the machine's two cores shows only in the wall figure."""
    pages = vm.memory.size // DIRTY_PAGE_SIZE
    samples, wall = Samples([]), Samples([])
    for round_ in range(RESET_ROUNDS + 1):
        order = rng.permutation(pages)  # consecutive slices: fresh distinct pages each time
        spent = spent_wall = 0.0
        for i in range(iterations):
            start = i * dirty % (pages - dirty)
            for page in order[start : start + dirty].tolist():
                vm.memory.write(RAM_BASE + page * DIRTY_PAGE_SIZE, b"\xa5")
            if i == 0 and vm.dirty.count() != dirty:
                raise RuntimeError(f"expected {dirty} dirty pages, found {vm.dirty.count()}")
            t0, c0 = time.perf_counter(), time.process_time()
            vm.reset_to(point)
            spent += time.process_time() - c0
            spent_wall += time.perf_counter() - t0
        if round_:
            samples.seconds.append(spent / iterations)
            wall.seconds.append(spent_wall / iterations)
    return samples, wall


def _best(fn: Callable[[], object]) -> float:
    return best_of(fn, ROUNDS)


def run(quick: bool = False) -> dict[str, float]:
    size = 256 * MIB if quick else 1 * GIB
    n16, n1024, nloop = (300, 20, 100) if quick else (2000, 100, 500)
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory(prefix="microvm-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        vm = _vm(size)
        vm.save_snapshot(Path(tmp) / "point")
        epoch_s = _best(lambda: [vm.start_dirty_epoch() for _ in range(1000)]) / 1000
        t0 = time.perf_counter()
        point = vm.snapshot_point()
        capture_s = time.perf_counter() - t0
        want = vm.state_digest()
        reset_16, wall_16 = _reset_seconds(vm, point, 16, n16, rng)
        reset_1024, _ = _reset_seconds(vm, point, 1024, n1024, rng)
        per_s_16, per_s_1024 = 1 / reset_16.best, 1 / reset_1024.best
        loop_s = _best(lambda: [(vm.reset_to(point), vm.run(QUANTUM)) for _ in range(nloop)])
        vm.reset_to(point)
        if vm.state_digest() != want:
            raise RuntimeError("the VM does not equal the point after the timed resets")
        copy_s = _best(lambda: MicroVM.load_snapshot(Path(tmp) / "point", "copy"))
        mmap_s = _best(lambda: MicroVM.load_snapshot(Path(tmp) / "point", "mmap"))
    figures = {
        "ram_bytes": size,
        "resets_per_s_16": round(per_s_16),
        "resets_per_s_16_spread": [round(1 / max(reset_16.seconds)), round(per_s_16)],
        "reset_us_16": round(1e6 / per_s_16, 1),
        "resets_per_s_16_wall": round(1 / wall_16.best),
        "resets_per_s_1024": round(per_s_1024),
        "resets_per_s_1024_spread": [round(1 / max(reset_1024.seconds)), round(per_s_1024)],
        "load_avg": machine_load(),
        "reset_us_1024": round(1e6 / per_s_1024, 1),
        "load_copy_ms": round(copy_s * 1000, 1),
        "load_mmap_ms": round(mmap_s * 1000, 2),
        "reset_vs_load": round(1 / per_s_16 / mmap_s, 4),
        "reset_vs_load_1024": round(1 / per_s_1024 / mmap_s, 4),
        "epoch_start_us": round(epoch_s * 1e6, 1),
        "capture_ms": round(capture_s * 1000, 1),
        "loop_per_s": round(nloop / loop_s),
    }
    print(f"RAM {size // MIB} MiB, memwalk guest, point captured in {figures['capture_ms']} ms")
    print(f"reset, 16 dirty pages     {figures['reset_us_16']:8.1f} us   {figures['resets_per_s_16']:6d} resets/s (CPU)   {figures['resets_per_s_16_wall']} (wall)")
    print(f"reset, 1024 dirty pages   {figures['reset_us_1024']:8.1f} us   {figures['resets_per_s_1024']:6d} resets/s")
    print(f"load_snapshot             copy {figures['load_copy_ms']} ms   mmap {figures['load_mmap_ms']} ms")
    print(f"reset / mmap load         {figures['reset_vs_load']} (16 pages)   {figures['reset_vs_load_1024']} (1024 pages)")
    print(f"dirty-epoch start alone   {figures['epoch_start_us']:8.1f} us")
    print(f"reset + {QUANTUM} instructions  {figures['loop_per_s']} per s")
    return figures
