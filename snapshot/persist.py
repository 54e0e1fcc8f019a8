"""Save and restore a running MicroVM: the one module that orchestrates snapshots.

- `save_snapshot(vm, path, kind)` captures every device's plain state at a pause point (the
  VM is between scheduling rounds whenever `run()` has returned), writes the memory file
  (full, or the dirty pages as a diff over the VM's previous snapshot) and commits the pair
  crash-safely (snapshot.commit). The dirty bitmap is read without clearing and cleared only
  after the commit, so a failed save can be retried.
- `load_snapshot(path, mem_backend, base)` reads and validates the state file, resolves a diff's
  chain back to its full base (recorded parent names, or `base` given explicitly), checks
  every link by digest, builds RAM (`copy`: read into anonymous memory; `mmap`: MAP_PRIVATE of
  the base, copy-on-write) with the diffs laid over it, and restores every device.
- `describe(path)` reports a snapshot's metadata without restoring it.

Memory files are raw (snapshot.memfile) or, with `compress="lz4"`, LZ4 frames (snapshot.frames);
`write_memory` / `read_memory` / `memory_digest` are the one place that picks the module, and
a chain may mix formats. An lz4 base is decoded into anonymous RAM by both backends (the mmap
backend decodes it from a mapping of the file): lazy copy-on-write RAM needs a raw base.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from snapshot.commit import STATE_SUFFIX, OpenedPair, commit_pair, open_pair
from snapshot.envelope import CRC_SIZE
from snapshot.errors import (
    EncodingError,
    IncompatibleError,
    InvalidPathError,
    MissingParentError,
    ParentMismatchError,
    SnapshotError,
    resolve_path,
)
from snapshot import frames
from snapshot.memfile import DIFF, FULL, LZ4, RAW, MemFileInfo, Run, compute_digest, extent_bytes, map_private, read_into, write_diff, write_full
from snapshot.plain import from_plain, to_plain
from snapshot.progress import Progress, ProgressBars, progress_bars
from snapshot.state import Devices, MicrovmState, ParentLink, SavedConfig, VmInfo
from vmm.config import VmConfig
from vmm.errors import ConfigError, VmmError
from vmm.layout import MAX_VCPUS, RAM_BASE
from vmm.machine import MicroVM
from vmm.scheduler import StopReason
from vmm.tlb import DIRTY_PAGE_SIZE

_STOP_REASONS = frozenset(r.value for r in StopReason)
MAX_CHAIN = 64  # longest diff chain followed when loading
_NO_BARS = progress_bars(enabled=False)


@dataclass
class Lineage:
    """The snapshot a VM was last saved to or restored from: the base of its next diff."""

    state_path: Path
    state_crc: int
    memory: MemFileInfo


@dataclass
class SaveReport:
    """What a save did. Sizes in bytes, durations in seconds."""

    state_path: Path
    memory_path: Path
    kind: str
    pages_written: int
    memory_bytes_written: int
    state_bytes: int
    seconds: float


def snapshot_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(`<name>.snap`, `<name>.mem`) for `path` given with or without the .snap suffix."""
    p = Path(path)
    if p.suffix == STATE_SUFFIX:
        p = p.with_suffix("")
    if not p.name or p.name in (".", ".."):
        raise InvalidPathError(str(path), "is not a snapshot name")
    return p.with_name(p.name + STATE_SUFFIX), p.with_name(p.name + ".mem")


def _state_crc(state_path: Path) -> int:
    with open(state_path, "rb") as f:
        f.seek(-CRC_SIZE, os.SEEK_END)
        return int.from_bytes(f.read(CRC_SIZE), "little")


# --- capture --------------------------------------------------------------------------------
def capture(vm: MicroVM, memory: MemFileInfo, parent: ParentLink | None = None) -> MicrovmState:
    """The VM's state as plain dataclasses (at a pause point)."""
    cfg = vm.config
    return MicrovmState(
        vm=VmInfo(
            ram_base=vm.memory.base,
            ram_size=vm.memory.size,
            page_size=DIRTY_PAGE_SIZE,
            vcpu_count=len(vm.vcpus),
            config=SavedConfig(**cfg.to_plain()),  # type: ignore[arg-type]
        ),
        vcpus=[v.save_state() for v in vm.vcpus],
        interrupts=vm.interrupts.save_state(),
        devices=Devices(uart0=vm.uart.save_state(), mmds=vm.mmds_device.save_state()),
        scheduler=vm.scheduler.save_state(),
        memory=memory,
        parent=parent,
    )


# --- memory files, either format ------------------------------------------------------------
def check_compression(compress: str | None, frame_size: int = frames.DEFAULT_FRAME_SIZE) -> None:
    """ValueError unless `compress` is None (raw) or "lz4" with a usable `frame_size` (bytes)."""
    if compress not in (None, LZ4):
        raise ValueError(f"compress must be None or 'lz4', got {compress!r}")
    if compress == LZ4:
        frames.check_frame_size(frame_size, DIRTY_PAGE_SIZE)


def write_memory(
    fd: int,
    ram: np.ndarray,
    kind: Literal["full", "diff"],
    *,
    runs: tuple[Run, ...] = (),
    parent_digest: str | None = None,
    compress: str | None = None,
    frame_size: int = frames.DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress: Progress | None = None,
) -> MemFileInfo:
    """Write `ram` to the empty file `fd` as a memory file of `kind` (a diff records `runs`
    over the image `parent_digest`): raw, or LZ4 frames with compress="lz4"."""
    check_compression(compress, frame_size)
    if compress == LZ4:
        if kind == FULL:
            return frames.write_full(fd, ram, DIRTY_PAGE_SIZE, frame_size=frame_size, threads=threads, progress=progress)
        assert parent_digest is not None
        return frames.write_diff(
            fd, ram, runs, DIRTY_PAGE_SIZE, parent_digest=parent_digest, frame_size=frame_size, threads=threads, progress=progress
        )
    if kind == FULL:
        return write_full(fd, ram, DIRTY_PAGE_SIZE, progress=progress)
    assert parent_digest is not None
    return write_diff(fd, ram, runs, DIRTY_PAGE_SIZE, parent_digest=parent_digest, progress=progress)


def read_memory(
    pair: OpenedPair,
    ram: np.ndarray,
    verify: bool,
    *,
    parent: MemFileInfo | None = None,
    source: frames.Source = "stream",
    zeroed: bool = False,
    progress: Progress | None = None,
) -> None:
    """Read the pair's memory file into `ram` (over `parent` for a diff), raw or lz4;
    `source` and `zeroed` only matter for lz4 (see frames.read_into)."""
    fd, info = pair.memory_fd, pair.memory
    if info.format == LZ4:
        frames.read_into(
            fd, ram, info, verify, parent=parent, source=source, zeroed=zeroed, progress=progress, name=pair.memory_path
        )
    else:
        read_into(fd, ram, info, verify, parent=parent, progress=progress)


def memory_digest(pair: OpenedPair, *, progress: Progress | None = None) -> str:
    """The digest of what the pair's memory file records, recomputed (either format; an lz4
    file's frame checksums are checked on the way)."""
    if pair.memory.format == LZ4:
        return frames.compute_digest(pair.memory_fd, pair.memory, progress=progress, name=pair.memory_path)
    return compute_digest(pair.memory_fd, pair.memory, progress=progress)


def save_snapshot(
    vm: MicroVM,
    path: str | os.PathLike[str],
    kind: Literal["full", "diff"] = "full",
    *,
    compress: str | None = None,
    frame_size: int = frames.DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress_bars: ProgressBars | None = None,
) -> SaveReport:
    """Save `vm` to `<path>.snap` + `<path>.mem` (crash-safe: the previous snapshot at that name
    survives any failure). A diff needs dirty tracking and an earlier save or load of this VM.
    `compress="lz4"` writes the memory file as LZ4 frames of `frame_size` bytes of RAM,
    compressed on `threads` workers (default: the CPUs, at most frames.MAX_DEFAULT_THREADS).
    `progress_bars` (snapshot.progress) shows the memory write; default: none."""
    if kind not in (FULL, DIFF):
        raise ValueError(f"kind must be 'full' or 'diff', got {kind!r}")
    check_compression(compress, frame_size)
    snap, mem = snapshot_paths(path)
    lineage: Lineage | None = vm.lineage  # type: ignore[assignment]
    t0 = time.perf_counter()
    ram = vm.memory.view()
    parent: ParentLink | None = None
    if kind == DIFF:
        if vm.dirty_tracker is None:
            raise IncompatibleError("a diff snapshot needs dirty-page tracking (track_dirty_pages=True)")
        if lineage is None:
            raise IncompatibleError("a diff snapshot needs an earlier snapshot of this VM to be its base")
        runs = vm.dirty.runs()  # read, not cleared: a failed save can be retried
        parent = ParentLink(
            state_name=os.path.relpath(lineage.state_path, snap.parent),
            state_crc=lineage.state_crc,
            memory_digest=lineage.memory.digest,
        )
        base_digest = lineage.memory.digest
        work = sum(count for _, count in runs) * DIRTY_PAGE_SIZE

        def write_mem(fd: int) -> MemFileInfo:
            return write_memory(
                fd, ram, DIFF, runs=runs, parent_digest=base_digest, compress=compress, frame_size=frame_size, threads=threads, progress=advance
            )

    else:
        work = len(ram)

        def write_mem(fd: int) -> MemFileInfo:
            return write_memory(fd, ram, FULL, compress=compress, frame_size=frame_size, threads=threads, progress=advance)

    with (progress_bars or _NO_BARS)(work, f"saving {snap.name}") as advance:
        info = commit_pair(snap, mem, write_mem, lambda info: to_plain(capture(vm, info, parent)))
    if vm.dirty_tracker is not None:
        vm.start_dirty_epoch()  # only after the commit
    vm.lineage = Lineage(snap, _state_crc(snap), info)
    return SaveReport(
        state_path=snap,
        memory_path=mem,
        kind=kind,
        pages_written=info.pages_written,
        memory_bytes_written=info.file_length if info.format == LZ4 else info.pages_written * info.page_size,
        state_bytes=snap.stat().st_size,
        seconds=time.perf_counter() - t0,
    )


# --- validation and chains ------------------------------------------------------------------
def decode(pair: OpenedPair) -> MicrovmState:
    """The pair's state, structurally validated (EncodingError / IncompatibleError)."""
    state: MicrovmState = from_plain(MicrovmState, pair.data, path="data")
    info = state.vm
    try:
        config = config_of(state)
    except ConfigError as e:
        raise EncodingError(f"vm.config: {e}") from None
    if not 1 <= info.vcpu_count <= MAX_VCPUS or info.vcpu_count != len(state.vcpus) or config.vcpus != info.vcpu_count:
        raise EncodingError(f"vCPU count {info.vcpu_count} does not match {len(state.vcpus)} vCPU states")
    if info.ram_base != RAM_BASE or info.ram_size != config.mem_size or info.page_size != DIRTY_PAGE_SIZE:
        raise IncompatibleError(
            f"snapshot RAM layout ({info.ram_base:#x}, {info.ram_size} bytes, {info.page_size}-byte pages) "
            f"does not match this machine ({RAM_BASE:#x}, {config.mem_size} bytes, {DIRTY_PAGE_SIZE}-byte pages)"
        )
    if state.memory.length != info.ram_size:
        raise EncodingError(f"memory file length {state.memory.length} is not the RAM size {info.ram_size}")
    for i, v in enumerate(state.vcpus):
        if v.index != i:
            raise EncodingError(f"vcpus[{i}] has index {v.index}")
    if (state.memory.kind == DIFF) != (state.parent is not None):
        raise EncodingError("a diff must name its parent and a full snapshot must not")
    if len(state.interrupts.timers) != info.vcpu_count:
        raise EncodingError("timer state count does not match the vCPU count")
    sched = state.scheduler
    if sched.quantum != config.quantum or sched.clock < 0:
        raise EncodingError(f"scheduler: quantum {sched.quantum} or clock {sched.clock} is not valid for vm.config (quantum {config.quantum})")
    if sched.stopped is not None and sched.stopped not in _STOP_REASONS:
        raise EncodingError(f"scheduler.stopped: {sched.stopped[:40]!r} is not a stop reason")
    return state


def config_of(state: MicrovmState) -> VmConfig:
    return VmConfig(**asdict(state.vm.config))


@dataclass
class _Link:
    pair: OpenedPair
    state: MicrovmState


def parent_state_path(child_state: Path, link: ParentLink) -> Path:
    """Where the parent a diff's state file `child_state` records is: its recorded name,
    relative to the child's directory (so a chain moved as a whole still resolves)."""
    return resolve_path(child_state.parent / link.state_name, "the parent's name")


def check_parent_link(older: MicrovmState, newer: MicrovmState) -> None:
    """ParentMismatchError / IncompatibleError unless `newer` is a diff taken over `older`'s
    memory image, with the same RAM size."""
    if newer.memory.parent_digest != older.memory.digest:
        raise ParentMismatchError(str(newer.memory.parent_digest), older.memory.digest)
    if newer.vm.ram_size != older.vm.ram_size:
        raise IncompatibleError("a diff and its base have different RAM sizes")


def _open_chain(path: Path, base: Path | None) -> list[_Link]:
    """[full, diff1, ..., diffN] ending at `path`, every link checked by digest."""
    chain: list[_Link] = []
    try:
        current = path
        while True:
            if len(chain) >= MAX_CHAIN:
                raise IncompatibleError(f"diff chain longer than {MAX_CHAIN} snapshots")
            pair = open_pair(current)
            chain.append(_Link(pair, decode(pair)))
            link = chain[-1].state.parent
            if link is None:
                break
            if base is not None and len(chain) == 1:
                parent_path = snapshot_paths(base)[0]
            else:
                parent_path = parent_state_path(current, link)
            if not parent_path.exists():
                raise MissingParentError(f"{current}: parent snapshot {parent_path} not found")
            current = parent_path
        chain.reverse()
        for older, newer in zip(chain, chain[1:]):
            check_parent_link(older.state, newer.state)
        return chain
    except BaseException:
        for link in chain:
            link.pair.close()
        raise


# --- restore ----------------------------------------------------------------------------------
def load_snapshot(
    path: str | os.PathLike[str],
    mem_backend: Literal["copy", "mmap"] = "copy",
    base: str | os.PathLike[str] | None = None,
    *,
    verify_memory: bool | None = None,
    on_console: Any = None,
    progress_bars: ProgressBars | None = None,
) -> MicroVM:
    """A new MicroVM restored from the snapshot at `path`, paused, ready to `run()`.

    `mem_backend`: "copy" reads the memory files into anonymous RAM; "mmap" maps the full base
    MAP_PRIVATE (lazy, copy-on-write) and lays diffs over it (an lz4 file is decoded from a
    read-only mapping instead of pread; an lz4 base still becomes anonymous RAM). `base`: the diff's base snapshot,
    instead of the recorded parent. `verify_memory`: check memory-file digests (default: yes
    for copy, where it costs one pass that is done anyway; no for mmap, whose point is not to
    read the file; length and chain digests are always checked). `progress_bars`
    (snapshot.progress) shows the memory reads; default: none.
    """
    if mem_backend not in ("copy", "mmap"):
        raise ValueError(f"mem_backend must be 'copy' or 'mmap', got {mem_backend!r}")
    verify = (mem_backend == "copy") if verify_memory is None else verify_memory
    snap, _ = snapshot_paths(path)
    chain = _open_chain(snap, Path(base) if base is not None else None)
    try:
        top = chain[-1].state
        config = config_of(top)
        size = config.mem_size
        first = chain[0]
        if first.state.memory.kind != FULL:
            raise MissingParentError(f"{first.pair.paths.state}: the chain does not start with a full snapshot")
        work = sum(extent_bytes(link.state.memory) for link in chain)
        lazy = mem_backend == "mmap" and first.state.memory.format == RAW
        if lazy and not verify:
            work -= extent_bytes(first.state.memory)  # mapped, not read
        source: frames.Source = "mmap" if mem_backend == "mmap" else "stream"
        with (progress_bars or _NO_BARS)(work, f"restoring {snap.name}") as advance:
            if lazy:
                ram = map_private(first.pair.memory_fd, size, info=first.state.memory, verify_digest=verify, progress=advance)
            elif first.state.memory.format == LZ4:
                ram = np.zeros(size, dtype=np.uint8)  # ZERO frames stay untouched pages
                read_memory(first.pair, ram, verify, source=source, zeroed=True, progress=advance)
            else:
                ram = np.empty(size, dtype=np.uint8)
                read_into(first.pair.memory_fd, ram, first.state.memory, verify, progress=advance)
            for older, newer in zip(chain, chain[1:]):
                read_memory(newer.pair, ram, verify, parent=older.state.memory, source=source, progress=advance)
        vm = MicroVM(config, on_console=on_console, ram=ram, boot=False)
        restore_devices(vm, top)
        top_pair = chain[-1].pair
        vm.lineage = Lineage(top_pair.paths.state, _state_crc(top_pair.paths.state), top.memory)
        return vm
    finally:
        for link in chain:
            link.pair.close()


def restore_devices(vm: MicroVM, state: MicrovmState) -> None:
    """Load every device's state into `vm` (whose RAM already holds the snapshot's memory)."""
    try:
        for vcpu, vs in zip(vm.vcpus, state.vcpus):
            vcpu.restore_state(vs)
        vm.interrupts.restore_state(state.interrupts)
        vm.uart.restore_state(state.devices.uart0)
        vm.mmds_device.restore_state(state.devices.mmds)
    except (ValueError, TypeError, VmmError) as e:  # a device refused its state (e.g. MmdsStateError)
        raise EncodingError(str(e)) from None
    vm.scheduler.restore_state(state.scheduler)
    if vm.dirty_tracker is not None:
        vm.start_dirty_epoch()


# --- describe ---------------------------------------------------------------------------------
def describe(
    path: str | os.PathLike[str], *, verify: bool = False, progress_bars: ProgressBars | None = None
) -> dict[str, Any]:
    """A snapshot's metadata without restoring it (squib's fields plus kind, chain and pair
    check). Reads the memory file only with `verify` (shown by `progress_bars`). Raises
    SnapshotError for a bad file."""
    snap, _ = snapshot_paths(path)
    with open_pair(snap) as pair:
        state = decode(pair)
        info = state.memory
        out: dict[str, Any] = {
            "path": str(snap),
            "magic": f"{pair.header.magic:#018x}",
            "version": ".".join(map(str, pair.header.version)),
            "crc_ok": True,
            "kind": info.kind,
            "vcpus": state.vm.vcpu_count,
            "memory_size": state.vm.ram_size,
            "devices": ["uart0", "mmds", "gicv3"],
            "mmds_present": True,
            "guest": state.vm.config.guest or state.vm.config.image,
            "virtual_time_ns": state.scheduler.clock,
            "memory_file": str(pair.memory_path),
            "memory_file_size": os.fstat(pair.memory_fd).st_size,
            "memory_digest": info.digest,
            "pages_written": info.pages_written,
            "memory_format": info.format,
            "frame_size": info.frame_size or None,
            # RAM bytes the file records per byte of file (lz4 only)
            "compression_ratio": round(extent_bytes(info) / info.file_length, 3) if info.format == LZ4 else None,
            "parent": asdict(state.parent) if state.parent else None,
            "pair_ok": None,
        }
        if verify:
            try:
                with (progress_bars or _NO_BARS)(extent_bytes(info), f"verifying {snap.name}") as advance:
                    out["pair_ok"] = memory_digest(pair, progress=advance) == info.digest
            except SnapshotError:
                out["pair_ok"] = False
    return out
