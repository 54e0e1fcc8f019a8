"""`snapshot`: save and restore speed on a 1 GiB guest, against plain file I/O of the same bytes.

Figures (side by side in one process run, same directory):
- full save vs a plain sequential write + fsync of the same 1 GiB (`full_save_vs_write`,
  >= 0.8 wanted: the ratio of throughputs);
- a diff save at 1% of pages dirty vs the full save (`diff_vs_full`, <= 0.03 wanted), and vs
  the least I/O such a diff needs: the same pages pwritten into a sparse file, then fsync
  (`diff_vs_scattered_write`; scattered pages cost the disk several times what the same bytes
  cost written sequentially, so this floor, not the full save, bounds the diff);
- mmap restore of 1 GiB vs 64 MiB (`restore_1g_vs_64m`, <= 2 wanted);
- copy restore throughput vs a plain read of the memory file (`copy_restore_vs_read`).
RAM is filled with non-zero data first, so a full save has no holes to skip.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vmm import MicroVM, VmConfig
from vmm.layout import GIB, MIB, RAM_BASE

PAGE = 4096


def _vm(mem: int) -> MicroVM:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=mem, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 64, "region_mib": 8}))
    fill = np.random.default_rng(7).integers(1, 255, size=64 * MIB, dtype=np.uint8)
    for off in range(32 * MIB, mem - 2 * MIB, 64 * MIB):
        n = min(64 * MIB, mem - 2 * MIB - off)
        vm.memory.write(RAM_BASE + off, fill[:n])
    vm.run(200_000)
    return vm


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _plain_write(path: Path, data: np.ndarray) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        for off in range(0, len(view), 64 * MIB):
            os.pwrite(fd, view[off : off + 64 * MIB], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def _scattered_write(path: Path, data: np.ndarray, pages: np.ndarray) -> None:
    """The least a durable diff must do: each page pwritten at its offset of a sparse file of
    RAM size, then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, len(data))
        view = memoryview(data)
        for p in pages.tolist():
            os.pwrite(fd, view[p * PAGE : (p + 1) * PAGE], p * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_read(path: Path, size: int) -> None:
    buf = np.empty(size, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        view = memoryview(buf)
        off = 0
        while off < size:
            off += f.readinto(view[off : off + 64 * MIB])


def run(quick: bool = False) -> dict[str, float]:
    size = 256 * MIB if quick else 1 * GIB
    with tempfile.TemporaryDirectory(prefix="microvm-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        d = Path(tmp)
        vm = _vm(size)
        ram = vm.memory.view()
        write_s = _timed(lambda: _plain_write(d / "plain.bin", ram))
        full_s = _timed(lambda: vm.save_snapshot(d / "full"))
        # Dirty exactly 1% of the pages: the guest's own stores, then host writes (tracked
        # like guest stores) to random clean pages; then a diff.
        vm.run(100_000)
        target = size // PAGE // 100
        clean = np.flatnonzero(~np.isin(np.arange(size // PAGE), vm.dirty.pages()))
        extra = np.random.default_rng(1).choice(clean, max(target - vm.dirty.count(), 0), replace=False)
        for p in extra:
            vm.memory.write(RAM_BASE + int(p) * PAGE, b"\x01")
        dirty = vm.dirty.count()
        floor_s = _timed(lambda: _scattered_write(d / "floor.bin", ram, vm.dirty.pages()))
        diff_s = _timed(lambda: vm.save_snapshot(d / "diff", "diff"))
        read_s = _timed(lambda: _plain_read(d / "full.mem", size))
        copy_s = _timed(lambda: MicroVM.load_snapshot(d / "full", "copy"))
        mmap_big_s = min(_timed(lambda: MicroVM.load_snapshot(d / "full", "mmap")) for _ in range(3))
        small = _vm(64 * MIB)
        small.save_snapshot(d / "small")
        mmap_small_s = min(_timed(lambda: MicroVM.load_snapshot(d / "small", "mmap")) for _ in range(3))
    figures = {
        "ram_bytes": size,
        "full_save_ms": round(full_s * 1000, 1),
        "plain_write_ms": round(write_s * 1000, 1),
        "full_save_vs_write": round(write_s / full_s, 3),
        "diff_pages": dirty,
        "diff_save_ms": round(diff_s * 1000, 1),
        "diff_vs_full": round(diff_s / full_s, 4),
        "scattered_write_ms": round(floor_s * 1000, 1),
        "diff_vs_scattered_write": round(diff_s / floor_s, 3),
        "mmap_restore_ms": round(mmap_big_s * 1000, 1),
        "mmap_restore_64m_ms": round(mmap_small_s * 1000, 1),
        "restore_1g_vs_64m": round(mmap_big_s / mmap_small_s, 3),
        "copy_restore_ms": round(copy_s * 1000, 1),
        "plain_read_ms": round(read_s * 1000, 1),
        "copy_restore_vs_read": round(read_s / copy_s, 3),
    }
    print(f"RAM {size // MIB} MiB")
    print(f"full save      {full_s * 1000:8.1f} ms   plain write+fsync {write_s * 1000:8.1f} ms   ratio {figures['full_save_vs_write']}")
    print(f"diff save      {diff_s * 1000:8.1f} ms   ({dirty} pages dirty)            diff/full {figures['diff_vs_full']}")
    print(f"  the same pages pwritten to a sparse file + fsync: {floor_s * 1000:.1f} ms   diff/that {figures['diff_vs_scattered_write']}")
    print(f"mmap restore   {mmap_big_s * 1000:8.1f} ms   64 MiB: {mmap_small_s * 1000:.1f} ms   ratio {figures['restore_1g_vs_64m']}")
    print(f"copy restore   {copy_s * 1000:8.1f} ms   plain read {read_s * 1000:8.1f} ms   ratio {figures['copy_restore_vs_read']}")
    return figures
