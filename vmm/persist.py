"""Save and restore a running MicroVM: the VM <-> state mapping (Firecracker's persist.rs).

snapshot/ knows the files (envelope, memory files, commit, chains); this module knows the
machine. Use it through `MicroVM.save_snapshot` and `MicroVM.load_snapshot`.

- `save_snapshot(vm, path, kind)` captures every device's plain state at a pause point (the
  VM is between scheduling rounds whenever `run()` has returned), writes the memory file
  (full, or the dirty pages as a diff over the VM's previous snapshot) and commits the pair
  crash-safely (snapshot.commit). The dirty bitmap is read without clearing and cleared only
  after the commit, so a failed save can be retried.
- `open_snapshot(path, mem_backend, base)` resolves a diff's chain back to its full base
  (snapshot.links), builds RAM (`copy`: read into anonymous memory; `mmap`: MAP_PRIVATE of the
  base, copy-on-write) with the diffs laid over it, and decodes the top state;
  `restore_devices(vm, state)` loads it into a VM built on that RAM.
- `MACHINE` is the MachineSchema that lets snapshot.describe / snapshot.chain.verify check and
  summarise this machine's state.

An lz4 or encrypted base is decoded into anonymous RAM by both backends (the mmap backend
decodes it from a read-only mapping of the file): lazy copy-on-write RAM needs a raw base, so
an encrypted snapshot restored with mem_backend="mmap" is decrypted into private memory, never
mapped, and no plaintext reaches a file.

Encryption at rest (`key=`, 32 bytes; snapshot.crypto, snapshot.sealedstate): the machine state
is sealed in the state file and every memory frame is sealed; loading needs the same key for
every encrypted link of the chain.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from snapshot import frames
from snapshot.commit import commit_pair, resolve_memory_file
from snapshot.crypto import check_key
from snapshot.envelope import CRC_SIZE
from snapshot.errors import EncodingError, IncompatibleError, InvalidPathError, resolve_path
from snapshot.links import MAX_CHAIN, Link, ParentLink, close_chain, dependants, open_chain, snapshot_paths
from snapshot.memfile import map_private, read_into
from snapshot.meminfo import DIFF, FULL, RAW, MemFileInfo, extent_bytes
from snapshot.memory import check_compression, check_memory_file, read_memory, write_memory
from snapshot.plain import from_plain, to_plain
from snapshot.progress import ProgressBars, progress_bars
from vmm.config import VmConfig
from vmm.devices.mmds.tokens import fresh_secret, secret_for_seed
from vmm.errors import ConfigError, VmmError
from vmm.layout import MAX_VCPUS, RAM_BASE
from vmm.scheduler import StopReason
from vmm.state import Devices, MicrovmState, SavedConfig, VmInfo
from vmm.tlb import DIRTY_PAGE_SIZE

if TYPE_CHECKING:
    from vmm.machine import MicroVM

_STOP_REASONS = frozenset(r.value for r in StopReason)
_NO_BARS = progress_bars(enabled=False)


@dataclass
class Lineage:
    """The snapshot a VM was last saved to or restored from: the base of its next diff.
    `chain`: the resolved state paths of that snapshot's chain, full base first, this snapshot
    last (what a diff saved now would depend on)."""

    state_path: Path
    state_crc: int
    memory: MemFileInfo
    memory_path: Path | None = None  # where its memory file was (None: unknown)
    chain: tuple[Path, ...] = ()  # its chain's state files, base first (resolved)

    def links(self) -> tuple[Path, ...]:
        """`chain`, or this snapshot alone if the chain was not recorded."""
        return self.chain or (resolve_path(self.state_path),)


def _check_destination(snap: Path, kind: str, lineage: Lineage | None) -> None:
    """Refuse, before anything is written, a save that would make a snapshot unrestorable: a
    diff to the name of any link of this VM's chain (it would replace a base it depends on:
    the chain loops or breaks), any save over a snapshot that a diff in its directory or in
    this VM's chain is taken over (that diff's parent digest would no longer match), or a diff
    past MAX_CHAIN links (it could not be restored)."""
    if os.path.lexists(snap):
        found = dependants(snap)
        if found:
            raise InvalidPathError(
                snap, f"is the base of the diff {found[0].name} ({len(found)} in all): replacing it would make "
                "that diff unrestorable; save under another name, or remove the diff first"
            )
    if lineage is None:
        return
    target = resolve_path(snap)
    chain = lineage.links()
    if kind == DIFF and target in chain:
        raise InvalidPathError(
            snap, f"is a link of this VM's snapshot chain ({len(chain)} snapshots, ending at {chain[-1].name}): "
            "a diff saved there would replace a snapshot it depends on; save it under another name or as a full snapshot"
        )
    if kind == FULL and target in chain[:-1]:
        raise InvalidPathError(
            snap, f"is a base of {chain[-1].name} in this VM's snapshot chain: overwriting it would break that diff; "
            "save under another name"
        )
    if kind == DIFF and len(chain) >= MAX_CHAIN:
        raise IncompatibleError(f"a diff chain holds at most {MAX_CHAIN} snapshots; save a full snapshot")


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
            config=SavedConfig(**cfg.to_plain(), initrd_digest=vm.initrd_digest),  # type: ignore[arg-type]
        ),
        vcpus=[v.save_state() for v in vm.vcpus],
        interrupts=vm.interrupts.save_state(),
        devices=Devices(uart0=vm.uart.save_state(), mmds=vm.mmds_device.save_state()),
        scheduler=vm.scheduler.save_state(),
        memory=memory,
        parent=parent,
    )


def save_snapshot(
    vm: MicroVM,
    path: str | os.PathLike[str],
    kind: Literal["full", "diff"] = "full",
    *,
    compress: str | None = None,
    frame_size: int = frames.DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress_bars: ProgressBars | None = None,
    mem_path: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
) -> SaveReport:
    """Save `vm` to `<path>.snap` + `<path>.mem`, or + `mem_path` if given (any name, in any
    directory of the same filesystem as its own temp files; the state file records it).
    Crash-safe: the previous snapshot at that name survives any failure. A diff needs dirty tracking and an earlier save or load of this VM.
    `compress="lz4"` writes the memory file as LZ4 frames of `frame_size` bytes of RAM,
    compressed on `threads` workers (default: the CPUs, at most frames.MAX_DEFAULT_THREADS).
    `progress_bars` (snapshot.progress) shows the memory write; default: none.
    `key` (32 bytes): encrypt the snapshot (module docstring); a diff over an encrypted
    snapshot must be encrypted too (IncompatibleError), so no dirty page is written in clear."""
    if kind not in (FULL, DIFF):
        raise ValueError(f"kind must be 'full' or 'diff', got {kind!r}")
    if key is not None:
        key = check_key(key)
    check_compression(compress, DIRTY_PAGE_SIZE, frame_size)
    snap, mem = snapshot_paths(path)
    if mem_path is not None:
        mem = Path(mem_path)
    lineage: Lineage | None = vm.lineage  # type: ignore[assignment]
    _check_destination(snap, kind, lineage)
    t0 = time.perf_counter()
    ram = vm.memory.view()
    parent: ParentLink | None = None
    if kind == DIFF:
        if vm.dirty_tracker is None:
            raise IncompatibleError("a diff snapshot needs dirty-page tracking (track_dirty_pages=True)")
        if lineage is None:
            raise IncompatibleError("a diff snapshot needs an earlier snapshot of this VM to be its base")
        _check_not_base(lineage, snap, mem)
        if key is None and lineage.memory.encrypted:
            raise IncompatibleError("the base of this diff is encrypted: give its key to save the diff (encrypted)")
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
                fd, ram, DIFF, DIRTY_PAGE_SIZE, runs=runs, parent_digest=base_digest, compress=compress, frame_size=frame_size,
                threads=threads, progress=advance, key=key,
            )

    else:
        work = len(ram)

        def write_mem(fd: int) -> MemFileInfo:
            return write_memory(
                fd, ram, FULL, DIRTY_PAGE_SIZE, compress=compress, frame_size=frame_size, threads=threads, progress=advance, key=key
            )

    with (progress_bars or _NO_BARS)(work, f"saving {snap.name}") as advance:
        info = commit_pair(snap, mem, write_mem, lambda info: to_plain(capture(vm, info, parent)), key=key)
    if vm.dirty_tracker is not None:
        vm.start_dirty_epoch()  # only after the commit
    base = lineage.links() if kind == DIFF and lineage is not None else ()
    vm.lineage = Lineage(snap, _state_crc(snap), info, memory_path=mem, chain=base + (resolve_path(snap),))
    return SaveReport(
        state_path=snap,
        memory_path=mem,
        kind=kind,
        pages_written=info.pages_written,
        memory_bytes_written=info.file_length if info.framed else info.pages_written * info.page_size,
        state_bytes=snap.stat().st_size,
        seconds=time.perf_counter() - t0,
    )


def _check_not_base(lineage: Lineage, snap: Path, mem: Path) -> None:
    """IncompatibleError if a diff over `lineage` would overwrite that base's own files (the
    chain would lose its base: Firecracker's docs reuse one name for both, which cannot work
    with a diff that records its parent)."""
    for new, old, what in ((snap, lineage.state_path, "state"), (mem, lineage.memory_path, "memory")):
        if old is not None and os.path.abspath(new) == os.path.abspath(old):
            raise IncompatibleError(f"refusing to write a diff over its own base's {what} file {new}")


# --- validation -------------------------------------------------------------------------------
def decode_state(data: dict[str, Any]) -> MicrovmState:
    """A state tree as this machine's MicrovmState, structurally validated against what the
    machine can be (EncodingError / IncompatibleError). The generic checks (memory length,
    diff <-> parent) are snapshot.links.decode_core's."""
    state: MicrovmState = from_plain(MicrovmState, data, path="data")
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
    for i, v in enumerate(state.vcpus):
        if v.index != i:
            raise EncodingError(f"vcpus[{i}] has index {v.index}")
    if len(state.interrupts.timers) != info.vcpu_count:
        raise EncodingError("timer state count does not match the vCPU count")
    sched = state.scheduler
    if sched.quantum != config.quantum or sched.clock < 0:
        raise EncodingError(f"scheduler: quantum {sched.quantum} or clock {sched.clock} is not valid for vm.config (quantum {config.quantum})")
    if sched.stopped is not None and sched.stopped not in _STOP_REASONS:
        raise EncodingError(f"scheduler.stopped: {sched.stopped[:40]!r} is not a stop reason")
    return state


def config_of(state: MicrovmState) -> VmConfig:
    saved = asdict(state.vm.config)
    saved.pop("initrd_digest")  # a fact about the boot, not an input (MicroVM.initrd_digest)
    return VmConfig(**saved)


class MachineStateSchema:
    """This machine's MachineSchema (snapshot.links): full validation and describe's summary."""

    def check(self, data: dict[str, Any]) -> None:
        decode_state(data)

    def summary(self, data: dict[str, Any]) -> dict[str, Any]:
        state = decode_state(data)
        return {
            "vcpus": state.vm.vcpu_count,
            "devices": ["uart0", "mmds", "gicv3"],
            "mmds_present": True,
            "guest": state.vm.config.guest or state.vm.config.image,
            "virtual_time_ns": state.scheduler.clock,
        }


MACHINE = MachineStateSchema()


# --- restore ----------------------------------------------------------------------------------
@dataclass
class OpenedSnapshot:
    """A snapshot read for restore: the VM's config, its RAM (the chain laid together), the top
    state to load into the devices, and the lineage a restored VM continues from."""

    config: VmConfig
    ram: np.ndarray
    state: MicrovmState
    lineage: Lineage


def open_snapshot(
    path: str | os.PathLike[str],
    mem_backend: Literal["copy", "mmap"] = "copy",
    base: str | os.PathLike[str] | None = None,
    *,
    verify_memory: bool | None = None,
    progress_bars: ProgressBars | None = None,
    mem_path: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
) -> OpenedSnapshot:
    """Read the snapshot at `path` (and its chain) for `MicroVM.load_snapshot`, which documents
    the arguments."""
    if mem_backend not in ("copy", "mmap"):
        raise ValueError(f"mem_backend must be 'copy' or 'mmap', got {mem_backend!r}")
    verify = (mem_backend == "copy") if verify_memory is None else verify_memory
    snap, _ = snapshot_paths(path)
    chain = open_chain(snap, Path(base) if base is not None else None, memory_path=mem_path, key=key)
    try:
        top = decode_state(chain[-1].pair.data)
        config = config_of(top)
        top_pair = chain[-1].pair
        recorded = resolve_memory_file(top_pair.paths, top.memory)
        if mem_path is not None and os.path.realpath(top_pair.memory_path) != os.path.realpath(recorded):
            verify = True  # not the file the state records: only its digest ties it to the state
        ram = _lay_chain(chain, config.mem_size, mem_backend, verify, progress_bars, snap.name)
        links = tuple(resolve_path(link.pair.paths.state) for link in chain)
        lineage = Lineage(top_pair.paths.state, _state_crc(top_pair.paths.state), top.memory, top_pair.memory_path, links)
        return OpenedSnapshot(config, ram, top, lineage)
    finally:
        close_chain(chain)


def _lay_chain(
    chain: list[Link], size: int, mem_backend: str, verify: bool, bars: ProgressBars | None, name: str
) -> np.ndarray:
    """RAM of `size` bytes holding the chain's base with every diff laid over it. Every memory
    file's size and identity are checked before RAM is allocated (a 16 GiB claim beside a small
    file allocates nothing)."""
    for link in chain:
        check_memory_file(link.pair)
    first = chain[0]
    base_info = first.core.memory
    work = sum(extent_bytes(link.core.memory) for link in chain)
    lazy = mem_backend == "mmap" and base_info.format == RAW
    if lazy and not verify:
        work -= extent_bytes(base_info)  # mapped, not read
    source: frames.Source = "mmap" if mem_backend == "mmap" else "stream"
    with (bars or _NO_BARS)(work, f"restoring {name}") as advance:
        if lazy:
            ram = map_private(
                first.pair.memory_fd, size, info=base_info, verify_digest=verify, progress=advance, name=first.pair.memory_path
            )
        elif base_info.framed:
            ram = np.zeros(size, dtype=np.uint8)  # ZERO frames stay untouched pages
            read_memory(first.pair, ram, verify, source=source, zeroed=True, progress=advance)
        else:
            ram = np.empty(size, dtype=np.uint8)
            read_into(first.pair.memory_fd, ram, base_info, verify, progress=advance, name=first.pair.memory_path)
        for older, newer in zip(chain, chain[1:]):
            read_memory(newer.pair, ram, verify, parent=older.core.memory, source=source, progress=advance)
    return ram


MMDS_POLICIES = ("keep", "drop")


def clone_of(
    config: VmConfig,
    state: MicrovmState,
    *,
    mmds: str = "keep",
    reseed: int | None = None,
    track_dirty_pages: bool | None = None,
) -> tuple[VmConfig, MicrovmState]:
    """The config and state a restored VM starts from (MicroVM.load_snapshot's clone options):
    - mmds "keep": the MMDS data store, token key and counter as saved; "drop": an empty store,
      a token key from the host's CSPRNG (tokens.fresh_secret) and the counter at 0, so no
      token issued before the snapshot, nor by a sibling clone, is valid;
    - reseed N: config seed N, and the token key derived from it (counter at 0);
    - track_dirty_pages: overrides the saved setting (not guest-visible).
    ValueError for an unknown policy; ConfigError for a bad seed."""
    if mmds not in MMDS_POLICIES:
        raise ValueError(f"mmds must be 'keep' or 'drop', got {mmds!r}")
    changes: dict[str, Any] = {}
    if reseed is not None:
        changes["seed"] = reseed
    if track_dirty_pages is not None:
        changes["track_dirty_pages"] = track_dirty_pages
    if changes:
        config = replace(config, **changes)
    device = state.devices.mmds
    if mmds == "drop":
        device = replace(device, data_json="{}", token_secret=fresh_secret(), token_counter=0)
    if reseed is not None:
        device = replace(device, token_secret=secret_for_seed(config.seed), token_counter=0)
    if device is not state.devices.mmds:
        state = replace(state, devices=replace(state.devices, mmds=device))
    return config, state


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
