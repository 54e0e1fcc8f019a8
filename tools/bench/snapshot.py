"""`snapshot`: save and restore speed on a 1 GiB guest, against plain file I/O of the same bytes.

Figures (side by side in one process run, same directory; every pair interleaved round by
round after a warm-up, best of REPEATS, with the per-round spread in `<figure>_spread`):
- full save vs a plain sequential write of the same 1 GiB to a new file, fsynced with its
  directory (`full_save_vs_write`, >= 0.9 wanted: the ratio of throughputs), and vs the same
  write starting each 64 MiB chunk's writeback as it goes, as the save does
  (`full_save_vs_streamed_write`: the save's own overhead, with the I/O pattern equal);
- a diff save at exactly 1% of pages dirty vs the full save (`diff_vs_full`, <= 0.012 wanted),
  and vs the least I/O such a diff needs with the same durability: as many random pages
  pwritten in ascending order into a new sparse file, the file and its directory fsynced
  (`diff_vs_scattered_write`; scattered pages cost the disk several times what the same bytes
  cost written sequentially, so this floor, not the full save, bounds the diff: `floor_vs_full`
  is the least `diff_vs_full` can be on this disk). A diff sample is DIFFS_PER_SAMPLE saves in
  a chain over one fresh base (a floor sample as many writes), averaged;
- mmap restore of 1 GiB vs 64 MiB (`restore_1g_vs_64m`, <= 2 wanted);
- copy restore throughput vs a plain read of the memory file (`copy_restore_vs_read`);
- an encrypted full save (key=, AES-256-GCM sealed frames, sealed on the frame workers) vs the
  plain full save of the same VM (`encrypted_save_vs_plain`, >= 0.8 wanted: the ratio of
  throughputs), from `measure_encrypted_save`, which tools/bench/fanout.py reports too.
RAM is filled with non-zero data first, so a full save has no holes to skip. Every timed
write goes to a new file; the files it replaces are deleted, durably, before the clock starts.
"""
from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vmm import MicroVM, VmConfig
from tools.bench.measure import add_ratio, interleave, machine_load
from snapshot.memfile import start_writeback
from vmm.layout import GIB, MIB, RAM_BASE

PAGE = 4096
REPEATS = 3  # timed rounds per figure after one warm-up round; the best counts
DIFFS_PER_SAMPLE = 4  # diff saves (and floor writes) averaged in one sample: ~0.1 s each alone is too short to outlast a burst of other work


def _vm(mem: int) -> MicroVM:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=mem, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 64, "region_mib": 8}))
    fill = np.random.default_rng(7).integers(1, 255, size=64 * MIB, dtype=np.uint8)
    for off in range(32 * MIB, mem - 2 * MIB, 64 * MIB):
        n = min(64 * MIB, mem - 2 * MIB - off)
        vm.memory.write(RAM_BASE + off, fill[:n])
    vm.run(200_000)
    return vm


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    """Seconds `fn()` takes, its result freed before the clock stops; earlier cyclic garbage
    (a restored VM and its RAM) is collected first, so its munmap never lands in a sample."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _plain_write(path: Path, data: np.ndarray, streamed: bool = False) -> None:
    """`data` written to a new file in 64 MiB pwrites, fsynced with its directory; `streamed`:
    each chunk's writeback started as it is written, as a raw full save does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        for off in range(0, len(view), 64 * MIB):
            os.pwrite(fd, view[off : off + 64 * MIB], off)
            if streamed:
                start_writeback(fd, off, 64 * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scattered_write(path: Path, data: np.ndarray, pages: np.ndarray) -> None:
    """The least a durable diff must do: a new sparse file of RAM size with each page pwritten
    at its offset (ascending), the file fsynced, then its directory (a new file's name is
    durable only then: the save's commit fsyncs its directory too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, len(data))
        view = memoryview(data)
        for p in pages.tolist():
            os.pwrite(fd, view[p * PAGE : (p + 1) * PAGE], p * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _remove(directory: Path, *patterns: str) -> None:
    """Delete the files matching `patterns`, durably: freeing a 1 GiB file's extents (and, on
    a filesystem mounted with online discard, discarding them) happens at the journal commit
    that follows, so it is done here, before a sample, not inside the next one's first fsync.
    Every case writes a new file; none replaces one."""
    for pattern in patterns:
        for old in directory.glob(pattern):
            old.unlink()
    _fsync_dir(directory)


def _plain_read(path: Path, size: int) -> None:
    buf = np.empty(size, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        view = memoryview(buf)
        off = 0
        while off < size:
            off += f.readinto(view[off : off + 64 * MIB])


def _dirty_pages(vm: MicroVM, count: int, rng: np.random.Generator) -> np.ndarray:
    """Mark exactly `count` random pages dirty with host writes (tracked like guest stores) in a
    VM whose bitmap is empty; returns them."""
    pages = np.sort(rng.choice(vm.memory.size // PAGE, count, replace=False))
    for p in pages.tolist():
        vm.memory.write(RAM_BASE + p * PAGE, b"\x01")
    if vm.dirty.count() != count:
        raise RuntimeError(f"expected {count} dirty pages, found {vm.dirty.count()}")
    return pages


def measure_encrypted_save(folder: Path, size: int, repeats: int = REPEATS, vm: MicroVM | None = None) -> dict[str, object]:
    """Figures of an encrypted full save of a `size`-byte guest (or `vm`) against a plain one,
    interleaved round by round, best of `repeats` after a warm-up: `encrypted_save_vs_plain`
    (plain seconds / encrypted seconds, with its spread) and both times in ms."""
    vm = vm if vm is not None else _vm(size)
    key = os.urandom(32)
    samples = interleave(
        {
            "plain_full_save": lambda: _timed(lambda: vm.save_snapshot(folder / "plain-full")),
            "encrypted_full_save": lambda: _timed(lambda: vm.save_snapshot(folder / "encrypted-full", key=key)),
        },
        repeats=repeats,
    )
    plain, enc = samples["plain_full_save"], samples["encrypted_full_save"]
    figures: dict[str, object] = {}
    add_ratio(figures, "encrypted_save_vs_plain", enc, plain, 3)
    figures["plain_full_save_ms"] = round(plain.best * 1000, 2)
    figures["encrypted_full_save_ms"] = round(enc.best * 1000, 2)
    print(
        f"encrypted full save {enc.best * 1000:8.1f} ms   plain {plain.best * 1000:8.1f} ms   "
        f"encrypted_save_vs_plain {figures['encrypted_save_vs_plain']} (goal >= 0.8; {vm.memory.size // MIB} MiB)"
    )
    return figures


def run(quick: bool = False, size: int | None = None, repeats: int | None = None) -> dict[str, object]:
    """Every figure's two sides are interleaved rounds (tools.bench.measure), best of REPEATS.
    `size` (bytes of RAM) and `repeats` override the defaults (tests run it small)."""
    size = size or (256 * MIB if quick else 1 * GIB)
    repeats = repeats or (1 if quick else REPEATS)
    target = size // PAGE // 100  # exactly 1% of the pages
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="microvm-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        d = Path(tmp)
        vm = _vm(size)
        ram = vm.memory.view()
        diffs = iter(range(1_000_000))

        def diff_save() -> float:
            """DIFFS_PER_SAMPLE diff saves in a chain over one fresh base, each after exactly 1%
            of pages were dirtied: the seconds of the saves alone."""
            n = next(diffs)
            _remove(d, "diff-*", "base-*")  # untimed: the previous round's chain
            vm.save_snapshot(d / f"base-{n}")  # untimed: a fresh base (a new name: the VM's chain holds the old one)
            spent = 0.0
            for k in range(DIFFS_PER_SAMPLE):
                _dirty_pages(vm, target, rng)
                spent += _timed(lambda: vm.save_snapshot(d / f"diff-{n}-{k}", "diff"))
            return spent / DIFFS_PER_SAMPLE

        def full_save() -> float:
            _remove(d, "full.*")  # untimed, as plain_write's: both write a new file
            return _timed(lambda: vm.save_snapshot(d / "full"))

        def plain_write() -> float:
            _remove(d, "plain.bin")
            return _timed(lambda: _plain_write(d / "plain.bin", ram))

        def streamed_write() -> float:
            _remove(d, "plain.bin")
            return _timed(lambda: _plain_write(d / "plain.bin", ram, streamed=True))

        def floor() -> float:
            spent = 0.0
            for _ in range(DIFFS_PER_SAMPLE):
                pages = np.sort(rng.choice(size // PAGE, target, replace=False))
                _remove(d, "floor.bin")  # a new file each time, as a diff save makes
                spent += _timed(lambda: _scattered_write(d / "floor.bin", ram, pages))
            return spent / DIFFS_PER_SAMPLE

        saves = interleave(
            {
                "plain_write": plain_write,
                "streamed_write": streamed_write,
                "full_save": full_save,
                "diff_save": diff_save,
                "floor": floor,
            },
            repeats=repeats,
        )
        small = _vm(64 * MIB)
        small.save_snapshot(d / "small")
        loads = interleave(
            {
                "plain_read": lambda: _timed(lambda: _plain_read(d / "full.mem", size)),
                "copy_restore": lambda: _timed(lambda: MicroVM.load_snapshot(d / "full", "copy")),
                "mmap_1g": lambda: _timed(lambda: MicroVM.load_snapshot(d / "full", "mmap")),
                "mmap_64m": lambda: _timed(lambda: MicroVM.load_snapshot(d / "small", "mmap")),
            },
            repeats=repeats,
        )
        encrypted = measure_encrypted_save(d, size, repeats, vm)
    full, write, diff, scattered = saves["full_save"], saves["plain_write"], saves["diff_save"], saves["floor"]
    figures: dict[str, object] = {"ram_bytes": size, "diff_pages": target, "repeats": repeats, "load_avg": machine_load()}
    add_ratio(figures, "full_save_vs_write", full, write, 3)
    add_ratio(figures, "full_save_vs_streamed_write", full, saves["streamed_write"], 3)
    add_ratio(figures, "diff_vs_full", full, diff)  # diff time / full time: smaller is better
    add_ratio(figures, "diff_vs_scattered_write", scattered, diff, 3)
    add_ratio(figures, "floor_vs_full", full, scattered)  # the least diff_vs_full can be on this disk
    add_ratio(figures, "restore_1g_vs_64m", loads["mmap_64m"], loads["mmap_1g"], 3)
    add_ratio(figures, "copy_restore_vs_read", loads["copy_restore"], loads["plain_read"], 3)
    for name, samples in (*saves.items(), *loads.items()):
        figures[f"{name}_ms"] = round(samples.best * 1000, 2)
    figures.update(encrypted)
    print(f"RAM {size // MIB} MiB, best of {repeats} interleaved rounds (after a warm-up), load {figures['load_avg']}")
    print(f"full save      {full.best * 1000:8.1f} ms   plain write+fsync {write.best * 1000:8.1f} ms   ratio {figures['full_save_vs_write']}")
    print(f"  the same write, each chunk's writeback started as it is written (as the save does): {saves['streamed_write'].best * 1000:.1f} ms   ratio {figures['full_save_vs_streamed_write']}")
    print(f"diff save      {diff.best * 1000:8.1f} ms   ({target} pages dirty)            diff/full {figures['diff_vs_full']}")
    print(f"  the same number of pages pwritten to a new sparse file + fsyncs: {scattered.best * 1000:.1f} ms   diff/that {figures['diff_vs_scattered_write']}   that/full {figures['floor_vs_full']}")
    print(f"mmap restore   {loads['mmap_1g'].best * 1000:8.1f} ms   64 MiB: {loads['mmap_64m'].best * 1000:.1f} ms   ratio {figures['restore_1g_vs_64m']}")
    print(f"copy restore   {loads['copy_restore'].best * 1000:8.1f} ms   plain read {loads['plain_read'].best * 1000:8.1f} ms   ratio {figures['copy_restore_vs_read']}")
    return figures
