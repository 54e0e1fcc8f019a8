"""`pages_written` means one thing for raw and lz4 saves of the same VM (issue 15): the pages of
RAM the file carries as data (full: non-zero pages; diff: dirty pages)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vmm.config import VmConfig
from vmm.machine import MicroVM


def test_raw_and_lz4_saves_of_one_vm_report_the_same_pages(tmp_path: Path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", quantum=10_000, track_dirty_pages=True, params={"rounds": 0, "pattern": 1, "stride": 12_288}))
    vm.run(300_000)
    ram = np.asarray(vm.memory.view())
    nonzero = int(np.count_nonzero(ram.reshape(-1, 4096).any(axis=1)))
    raw = vm.save_snapshot(tmp_path / "raw", "full")
    lz4 = vm.save_snapshot(tmp_path / "lz4", "full", compress="lz4")
    assert raw.pages_written == lz4.pages_written == nonzero
    vm.run(100_000)
    dirty = int(vm.dirty.pages().size)
    raw_diff = vm.save_snapshot(tmp_path / "raw_d", "diff")
    # a second diff over the same parent state is not possible after a save (the epoch restarts):
    # compare the lz4 diff of the next epoch against that epoch's dirty count instead.
    vm.run(100_000)
    dirty2 = int(vm.dirty.pages().size)
    lz4_diff = vm.save_snapshot(tmp_path / "lz4_d", "diff", compress="lz4")
    assert (raw_diff.pages_written, lz4_diff.pages_written) == (dirty, dirty2)
