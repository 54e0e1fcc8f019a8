"""`dirty`: the cost of dirty-page tracking, side by side in one process run.

Each workload runs five ways, interleaved round by round after a warm-up (tools.bench.measure)
in two groups: off, on and cpu-tlb for 2 x REPEATS rounds (the tracking figures, whose ratios
sit near 1), then off, on and the slow references for REPEATS rounds; best of each, the
per-round spread of each ratio in `<figure>_spread`. Times are this process's CPU seconds (time
given to other processes on the machine does not count); an mmu sample is MMU_RUNS runs:
1. tracking off: the harness as shipped (virtual TLB; RAM data fills with the MMU off are
   served by the native fill, vmm/native_fill.py, the rest by the Python fill);
2. tracking on: the TLB-fill scheme, exact pages (dirty_granule="page");
3. `on-python`: tracking on with the native fill switched off (every TLB miss is a Python
   fill), what an install without a C compiler runs;
4. a reference tracker that installs a per-store UC_HOOK_MEM_WRITE Python callback (what
   unicorn-notes.md rules out);
5. `cpu-tlb`, a reference for the fastest untracked mode: tracking off with Unicorn's own
   TLB and MMU walk (UC_TLB_CPU), so no TLB miss reaches Python. The harness does not run this
   way because its fill hook also watches WFI/DAIFClr, records code pages, reserves the stub VA
   and makes aborts exact; memwalk and compute need none of that (same output is checked).
Workloads: `memwalk` (random 8-byte stores over 32 MiB: nearly every access misses Unicorn's
256-entry, 1 KiB-page TLB), `compute` (CPU-bound, few misses) and `mmu` (MMU on: each fill
walks the guest's tables in Python; no cpu-tlb run, which would bypass that walk).
Also reports fills per dirty page and the diff size of each granule mode on memwalk.
"""
from __future__ import annotations

import gc
import os
import time
from typing import Callable

from unicorn import UC_HOOK_MEM_WRITE, UC_TLB_CPU

from tools.bench.measure import add_ratio, interleave, machine_load
from vmm import MicroVM, StopReason, VmConfig, native_fill

MEMWALK = {"pattern": 2, "rounds": 24, "writes": 40_000, "region_mib": 32}  # ~0.6 s a run: long enough that a burst of other work on the machine does not decide a round
COMPUTE = {"iterations": 10_000_000}  # ~0.35 s a run: 3,000,000 (~0.1 s) gave per-round spreads of 30-40%
MMU = {"pages": 256, "words": 512}
REPEATS = 5  # interleaved rounds per mode after a warm-up; the best counts (1 with --quick)
TRACKING_ROUNDS_FACTOR = 2  # the off/on/cpu-tlb series gets this many times REPEATS rounds
MODES = ("off", "on", "on-python", "hook", "cpu-tlb")
FAST_MODES = ("off", "on", "cpu-tlb")
MMU_RUNS = 16  # runs of the mmu guest per sample: one is ~20 ms, too short to outlast a burst of other work


def _timed(guest: str, params: dict[str, int], mode: str, granule: str = "page") -> tuple[float, MicroVM]:
    """Seconds of `vm.run()` to power-off in `mode` (see MODES), and the VM."""
    config = VmConfig(guest=guest, params=params, track_dirty_pages=mode.startswith("on"), dirty_granule=granule)
    switch = os.environ.pop(native_fill.ENV_SWITCH, None)
    if mode == "on-python":
        os.environ[native_fill.ENV_SWITCH] = "0"
    try:
        vm = MicroVM(config)
    finally:
        os.environ.pop(native_fill.ENV_SWITCH, None)
        if switch is not None:
            os.environ[native_fill.ENV_SWITCH] = switch
    if mode.startswith("on"):
        vm.start_dirty_epoch()
    if mode == "hook":
        pages: set[int] = set()
        for v in vm.vcpus:
            v.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, addr, size, value, ud: pages.add(addr >> 12))
    if mode == "cpu-tlb":
        for v in vm.vcpus:
            v.uc.ctl_set_tlb_mode(UC_TLB_CPU)
            v.flush_tlb()
    gc.collect()  # the previous run's VM (cycles: Unicorn, RAM) is freed here, not inside this run's timing
    t0 = time.process_time()
    result = vm.run()
    seconds = time.process_time() - t0
    assert result.reason is StopReason.POWER_OFF, result
    return seconds, vm


def _workload(
    guest: str,
    params: dict[str, int],
    modes: tuple[str, ...],
    figures: dict[str, object],
    repeats: int,
    runs: int = 1,
) -> MicroVM:
    """Time `guest` in every mode, in two interleaved groups: the modes the tracking figures
    compare (FAST_MODES: off, on, cpu-tlb; `repeats` * TRACKING_ROUNDS_FACTOR rounds: their
    ratios sit near 1, so a few percent of noise would flip a verdict) and the slow references
    with off and on beside them (`repeats` rounds). A sample is `runs` runs to power-off."""
    vms: dict[str, MicroVM] = {}

    def case(mode: str) -> Callable[[], float]:
        def timed() -> float:
            total = 0.0
            for _ in range(runs):
                seconds, vms[mode] = _timed(guest, params, mode)
                total += seconds
            return total / runs

        return timed

    fast = tuple(m for m in modes if m in FAST_MODES)
    slow = tuple(m for m in modes if m not in FAST_MODES)
    tracking = interleave({mode: case(mode) for mode in fast}, repeats=repeats * TRACKING_ROUNDS_FACTOR)
    references = interleave({mode: case(mode) for mode in ("off", "on", *slow)}, repeats=repeats)
    samples = {**references, **tracking}  # off and on from the longer series
    instr = vms["off"].clock
    outputs = {vm.console_output for vm in vms.values()}
    assert len(outputs) == 1, f"{guest}: the modes printed different output"
    print(f"{guest}: {instr:,} instructions, best of {len(tracking['off'].seconds)} ({', '.join(fast)}) "
          f"and {repeats} ({', '.join(slow)}) interleaved rounds after a warm-up, {runs} run(s) a sample")
    for mode in modes:
        mips = instr / samples[mode].best / 1e6
        print(f"  {mode:8} {samples[mode].best:7.3f} s  {mips:7.1f} M instr/s  spread {samples[mode].spread:.1%}")
        figures[f"{guest}_{mode.replace('-', '_')}_mips"] = round(mips, 2)
    add_ratio(figures, f"{guest}_tracking_vs_off", tracking["on"], tracking["off"], 3)
    add_ratio(figures, f"{guest}_write_hook_vs_off", references["hook"], references["off"], 3)
    if "on-python" in references:
        add_ratio(figures, f"{guest}_native_vs_python", references["on"], references["on-python"], 3)
    if "cpu-tlb" in tracking:
        add_ratio(figures, f"{guest}_tracking_vs_cpu_tlb", tracking["on"], tracking["cpu-tlb"], 3)
        add_ratio(figures, f"{guest}_off_vs_cpu_tlb", tracking["off"], tracking["cpu-tlb"], 3)
    return vms["on"]


def run(quick: bool = False) -> dict[str, object]:
    memwalk = dict(MEMWALK, rounds=2) if quick else MEMWALK
    repeats = 1 if quick else REPEATS
    figures: dict[str, object] = {}
    vm_on = _workload("memwalk", memwalk, MODES, figures, repeats)
    dirty_pages = vm_on.dirty.count()
    figures["tracking_vs_off"] = figures["memwalk_tracking_vs_off"]
    figures["tracking_vs_off_spread"] = figures["memwalk_tracking_vs_off_spread"]
    figures["write_hook_vs_off"] = figures["memwalk_write_hook_vs_off"]
    figures["native_vs_python"] = figures["memwalk_native_vs_python"]
    figures["native_fill"] = native_fill.available()
    figures["fills_per_dirty_page"] = round(vm_on.tlb.write_fills / max(dirty_pages, 1), 3)
    figures["memwalk_fills_per_kinstr"] = round(vm_on.tlb.fills / vm_on.clock * 1000, 2)
    print(f"  dirty pages {dirty_pages:,}, fills {vm_on.tlb.fills:,} (write fills {vm_on.tlb.write_fills:,})")
    _workload("compute", COMPUTE, MODES, figures, repeats)
    _workload("mmu", MMU, ("off", "on", "on-python", "hook"), figures, repeats, runs=1 if quick else MMU_RUNS)
    granules = {}
    for granule in ("page", "per-block", "global"):
        _, vm = _timed("memwalk", dict(memwalk, pattern=3, hot_pages=64), "on", granule=granule)
        stats = vm.dirty_stats()
        granules[granule] = {"faults": stats.faults, "diff_pages": stats.pages_dirty, "blocks_fine": stats.blocks_fine}
        print(f"  granule {granule:9}  faults {stats.faults:6}  diff pages {stats.pages_dirty:7}")
    figures["granule_stats"] = granules
    figures["load_avg"] = machine_load()
    return figures
