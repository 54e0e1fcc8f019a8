"""`compress`: raw vs lz4 memory files on a 1 GiB memwalk guest with realistic memory content.

RAM (outside the guest's own pages) is filled page by page: half zero pages, scattered, and
half mixed data: text-like pages (words from a small vocabulary), structured pages (small
integers and pointers) and random pages (incompressible, like encrypted or compressed data).

Figures (side by side in one process run, same directory; best of REPEATS, interleaved):
- `lz4_save_vs_raw`: lz4 save time / raw save time (full snapshots, commit and fsync included);
- `lz4_size_ratio`: lz4 file bytes / raw file bytes on disk (the raw file's holes excluded);
- `lz4_restore_vs_raw`: lz4 copy-restore time / raw copy-restore time (digests verified);
- `thread_speedup_2`: frames.write_full time on 1 thread / on 2 threads (no fsync: the
  codec's own scaling, which shows lz4.block releases the GIL); `restore_thread_speedup_2`
  the same for frames.read_into. `encode_2t_cpu_per_wall` is the process's CPU seconds per
  wall second during the 2-thread encode: near 2 only if the threads really run at once (a
  check that does not depend on the machine being otherwise idle). The outputs of 1 and 2
  threads are checked bit-identical.
Restores read files the page cache holds (both formats alike).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import xxhash

from snapshot import frames
from vmm import MicroVM, VmConfig
from vmm.layout import GIB, MIB, RAM_BASE

PAGE = 4096
REPEATS = 3
FILL_START = 32 * MIB  # below: the guest's code, stack and walked region
FILL_END_GAP = 2 * MIB  # at the end: the device tree window


def _page_pools(rng: np.random.Generator, pages: int) -> dict[str, np.ndarray]:
    """`pages` pages of each kind of non-zero content, as (pages, PAGE) uint8 arrays."""
    vocabulary = [bytes(rng.integers(97, 123, rng.integers(2, 10), dtype=np.uint8)) + b" " for _ in range(2000)]
    zipf = np.minimum(rng.zipf(1.3, pages * PAGE // 4), len(vocabulary)) - 1
    text = np.frombuffer(b"".join(vocabulary[i] for i in zipf)[: pages * PAGE], np.uint8)
    base = np.uint64(0xFFFF_0000_4000_0000)
    words = rng.integers(0, 1 << 12, pages * PAGE // 8, dtype=np.uint64)
    pointers = rng.random(pages * PAGE // 8) < 0.3
    structured = np.where(pointers, base + (words << np.uint64(4)), words)
    return {
        "text": text.reshape(pages, PAGE),
        "structured": structured.view(np.uint8).reshape(pages, PAGE),
        "random": rng.integers(0, 256, (pages, PAGE), dtype=np.uint8),
    }


def _fill(vm: MicroVM, seed: int = 7) -> dict[str, int]:
    """Fill the VM's RAM as the module docstring says; returns pages of each kind."""
    rng = np.random.default_rng(seed)
    first, end = FILL_START // PAGE, (vm.memory.size - FILL_END_GAP) // PAGE
    kinds = rng.choice(4, end - first, p=[0.5, 0.2, 0.15, 0.15])  # zero, text, structured, random
    pools = _page_pools(rng, 4096)
    fill = np.zeros((end - first, PAGE), np.uint8)
    counts = {"zero": int(np.count_nonzero(kinds == 0))}
    for code, (name, pool) in enumerate(pools.items(), start=1):
        where = np.flatnonzero(kinds == code)
        counts[name] = len(where)
        fill[where] = pool[rng.integers(0, len(pool), len(where))]
    vm.memory.write(RAM_BASE + first * PAGE, fill.reshape(-1))
    return counts


def _best(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_per_wall(fn: Callable[[], object]) -> float:
    """CPU seconds of this process (all threads) per wall second while `fn` runs."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def _file_digest(path: Path) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(64 * MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


def run(quick: bool = False) -> dict[str, float]:
    size = 256 * MIB if quick else 1 * GIB
    with tempfile.TemporaryDirectory(prefix="microvm-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        d = Path(tmp)
        vm = MicroVM(VmConfig(guest="memwalk", mem_size=size, params={"rounds": 0, "pattern": 2, "writes": 64, "region_mib": 8}))
        vm.run(200_000)
        counts = _fill(vm)
        ram = vm.memory.view()
        threads = frames.default_threads()
        save_raw, save_lz4, restore_raw, restore_lz4 = [], [], [], []
        for _ in range(REPEATS):
            save_raw.append(_best(lambda: vm.save_snapshot(d / "raw")))
            save_lz4.append(_best(lambda: vm.save_snapshot(d / "lz4", compress="lz4")))
        for _ in range(REPEATS):
            restore_raw.append(_best(lambda: MicroVM.load_snapshot(d / "raw", "copy")))
            restore_lz4.append(_best(lambda: MicroVM.load_snapshot(d / "lz4", "copy")))
        raw_disk = os.stat(d / "raw.mem").st_blocks * 512
        lz4_bytes = os.stat(d / "lz4.mem").st_size
        info = MicroVM.load_snapshot(d / "lz4").lineage.memory  # type: ignore[attr-defined]
        styles = frames.frame_styles(d / "lz4.mem", info)

        # The codec alone, 1 vs 2 threads, interleaved.
        enc = {1: [], 2: []}  # type: dict[int, list[float]]
        dec = {1: [], 2: []}  # type: dict[int, list[float]]
        into = np.zeros(size, np.uint8)
        for _ in range(REPEATS):
            for t in (1, 2):
                enc[t].append(_best(lambda: frames.write_full(d / f"t{t}.mem", ram, PAGE, threads=t)))
            for t in (1, 2):
                dec[t].append(_best(lambda: frames.read_into(d / "t1.mem", into, info, threads=t)))
        parallelism = max(_cpu_per_wall(lambda: frames.write_full(d / "t2.mem", ram, PAGE, threads=2)) for _ in range(REPEATS))
        identical = _file_digest(d / "t1.mem") == _file_digest(d / "t2.mem") == _file_digest(d / "lz4.mem")
        assert identical, "lz4 output differs between thread counts"
        assert np.array_equal(into, ram)

    best = {name: min(v) for name, v in (("save_raw", save_raw), ("save_lz4", save_lz4), ("restore_raw", restore_raw), ("restore_lz4", restore_lz4))}
    figures = {
        "ram_bytes": size,
        "threads": threads,
        "raw_save_ms": round(best["save_raw"] * 1000, 1),
        "lz4_save_ms": round(best["save_lz4"] * 1000, 1),
        "lz4_save_vs_raw": round(best["save_lz4"] / best["save_raw"], 3),
        "raw_file_disk_bytes": raw_disk,
        "lz4_file_bytes": lz4_bytes,
        "lz4_size_ratio": round(lz4_bytes / raw_disk, 3),
        "raw_restore_ms": round(best["restore_raw"] * 1000, 1),
        "lz4_restore_ms": round(best["restore_lz4"] * 1000, 1),
        "lz4_restore_vs_raw": round(best["restore_lz4"] / best["restore_raw"], 3),
        "encode_1t_ms": round(min(enc[1]) * 1000, 1),
        "encode_2t_ms": round(min(enc[2]) * 1000, 1),
        "thread_speedup_2": round(min(enc[1]) / min(enc[2]), 3),
        "encode_2t_cpu_per_wall": round(parallelism, 2),
        "decode_1t_ms": round(min(dec[1]) * 1000, 1),
        "decode_2t_ms": round(min(dec[2]) * 1000, 1),
        "restore_thread_speedup_2": round(min(dec[1]) / min(dec[2]), 3),
        "bit_identical_1t_2t": identical,
    }
    print(f"RAM {size // MIB} MiB; pages: {counts}; frames: {styles}; {threads} threads by default")
    print(f"save     raw {figures['raw_save_ms']:8.1f} ms   lz4 {figures['lz4_save_ms']:8.1f} ms   lz4/raw {figures['lz4_save_vs_raw']}")
    print(f"size     raw {raw_disk / MIB:8.1f} MiB on disk   lz4 {lz4_bytes / MIB:8.1f} MiB   lz4/raw {figures['lz4_size_ratio']}")
    print(f"restore  raw {figures['raw_restore_ms']:8.1f} ms   lz4 {figures['lz4_restore_ms']:8.1f} ms   lz4/raw {figures['lz4_restore_vs_raw']}")
    print(f"encode   1 thread {figures['encode_1t_ms']:8.1f} ms   2 threads {figures['encode_2t_ms']:8.1f} ms   speed-up {figures['thread_speedup_2']} (outputs identical: {identical}); 2 threads use {parallelism:.2f} CPU-s per s")
    print(f"decode   1 thread {figures['decode_1t_ms']:8.1f} ms   2 threads {figures['decode_2t_ms']:8.1f} ms   speed-up {figures['restore_thread_speedup_2']}")
    return figures
