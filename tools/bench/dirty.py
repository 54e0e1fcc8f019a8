"""`dirty`: the cost of dirty-page tracking, side by side in one process run.

Runs `memwalk` (write-heavy, random pattern) and `compute` three ways: tracking off, tracking
on (the TLB-fill scheme, exact pages), and a reference tracker that installs a per-store
UC_HOOK_MEM_WRITE Python callback (what unicorn-notes.md rules out). Also reports fills per
dirty page and the diff size of each granule mode on the same workload.
"""
from __future__ import annotations

import time

from unicorn import UC_HOOK_MEM_WRITE

from vmm import MicroVM, StopReason, VmConfig

MEMWALK = {"pattern": 2, "rounds": 6, "writes": 40_000, "region_mib": 32}
COMPUTE = {"iterations": 3_000_000}


def _timed(guest: str, params: dict[str, int], *, tracking: bool, hook: bool = False, granule: str = "page") -> tuple[float, MicroVM]:
    vm = MicroVM(VmConfig(guest=guest, params=params, track_dirty_pages=tracking, dirty_granule=granule))
    if tracking:
        vm.start_dirty_epoch()
    if hook:
        pages: set[int] = set()
        for v in vm.vcpus:
            v.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, addr, size, value, ud: pages.add(addr >> 12))
    t0 = time.perf_counter()
    result = vm.run()
    seconds = time.perf_counter() - t0
    assert result.reason is StopReason.POWER_OFF, result
    return seconds, vm


def run(quick: bool = False) -> dict[str, object]:
    memwalk = dict(MEMWALK, rounds=2) if quick else MEMWALK
    figures: dict[str, object] = {}
    for guest, params in (("memwalk", memwalk), ("compute", COMPUTE)):
        off_s, vm = _timed(guest, params, tracking=False)
        on_s, vm_on = _timed(guest, params, tracking=True)
        hook_s, _ = _timed(guest, params, tracking=False, hook=True)
        off2_s, _ = _timed(guest, params, tracking=False)  # again, to bracket the noise
        off_s = min(off_s, off2_s)
        instr = vm.clock
        print(f"{guest}: {instr:,} instructions")
        print(f"  tracking off     {off_s:7.3f} s  {instr / off_s / 1e6:7.1f} M instr/s")
        print(f"  tracking on      {on_s:7.3f} s  {instr / on_s / 1e6:7.1f} M instr/s")
        print(f"  per-store hook   {hook_s:7.3f} s  {instr / hook_s / 1e6:7.1f} M instr/s")
        figures[f"{guest}_tracking_vs_off"] = round(off_s / on_s, 3)
        figures[f"{guest}_write_hook_vs_off"] = round(off_s / hook_s, 3)
        if guest == "memwalk":
            dirty_pages = vm_on.dirty.count()
            figures["tracking_vs_off"] = figures["memwalk_tracking_vs_off"]
            figures["write_hook_vs_off"] = figures["memwalk_write_hook_vs_off"]
            figures["fills_per_dirty_page"] = round(vm_on.tlb.write_fills / max(dirty_pages, 1), 3)
            print(f"  dirty pages {dirty_pages:,}, write fills {vm_on.tlb.write_fills:,}")
    granules = {}
    for granule in ("page", "per-block", "global"):
        _, vm = _timed("memwalk", dict(memwalk, pattern=3, hot_pages=64), tracking=True, granule=granule)
        stats = vm.dirty_stats()
        granules[granule] = {"faults": stats.faults, "diff_pages": stats.pages_dirty, "blocks_fine": stats.blocks_fine}
        print(f"  granule {granule:9}  faults {stats.faults:6}  diff pages {stats.pages_dirty:7}")
    figures["granule_stats"] = granules
    return figures
