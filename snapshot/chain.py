"""Snapshot chains as a whole: merge one into a single full snapshot, or check it end to end.

- `rebase(base, diffs, out)` is Firecracker's rebase-snap, chain-aware and verified: every
  parent link is checked before any memory is read; the base and each diff are laid into one
  image, reading only what each file records (a raw file's data extents, found with
  SEEK_DATA/SEEK_HOLE where the filesystem supports them, within its recorded extents; an lz4
  file's frames), every memory file's digest is checked, and OUT is committed with the same
  crash-safe protocol as a save (snapshot.commit). OUT holds the last diff's device state and
  the merged memory, so it restores to the same state as the chain.
- `verify(path)` checks the state file (CRC, structure), the pair digest (the memory file is
  the one recorded; for lz4 also the footer, index and every frame checksum) and the link to
  the parent, for `path` and every snapshot back to its base, found as loading finds them
  (recorded names relative to the child, checked by digest). It reports the first broken
  link, from `path` towards the base.

The recorded extents stay authoritative for raw files: SEEK_DATA only skips reading holes
(which read as zeros), because a filesystem may report more data than was written (blocks
larger than a page, or no hole support at all), and copying that would lay zeros over the base.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from snapshot.commit import MEMORY_FIELD, OpenedPair, commit_pair, open_pair
from snapshot.crypto import KeyFileError, MissingKeyError, WrongKeyError
from snapshot.errors import (
    BrokenLinkError,
    IncompatibleError,
    InvalidPathError,
    MemoryFileMismatchError,
    MemoryIoError,
    ParentMismatchError,
    SnapshotError,
    from_os_error,
    resolve_path,
)
from snapshot.fileio import data_extents, io_chunks, pread_exact
from snapshot.framelayout import DEFAULT_FRAME_SIZE
from snapshot.memfile import check_identity
from snapshot.meminfo import DIFF, FULL, RAW, MemFileInfo, extent_bytes, extents_digest
from snapshot.links import (
    MAX_CHAIN,
    PARENT_FIELD,
    MachineSchema,
    StateCore,
    check_parent_link,
    decode_core,
    parent_state_path,
    snapshot_paths,
)
from snapshot.memory import check_compression, memory_digest, read_memory, write_memory
from snapshot.plain import to_plain
from snapshot.progress import Progress, ProgressBars, progress_bars

_NO_BARS = progress_bars(enabled=False)


@dataclass
class RebaseReport:
    """What a rebase wrote. Sizes in bytes, durations in seconds."""

    state_path: Path
    memory_path: Path
    merged: int  # snapshots merged (the base and its diffs)
    memory: MemFileInfo
    seconds: float


@dataclass
class CheckedLink:
    """One snapshot of a chain that passed every check."""

    state_path: Path
    kind: str
    memory_format: str
    memory_digest: str


@dataclass
class VerifyReport:
    """The outcome of `verify`: the sound snapshots from PATH towards its base, and the first
    broken link (None if the whole chain holds)."""

    path: Path
    checked: list[CheckedLink]
    broken: BrokenLinkError | None

    @property
    def ok(self) -> bool:
        return self.broken is None


# --- rebase -----------------------------------------------------------------------------------
def _copy_raw(pair: OpenedPair, ram: np.ndarray, info: MemFileInfo, zeroed: bool, advance: Progress) -> None:
    """Lay the raw memory file of `pair` into `ram`: the data extents within its recorded
    extents are read, the holes there zero-filled (skipped if `zeroed`); then its digest is
    checked (MemoryFileMismatchError)."""
    fd, where = pair.memory_fd, pair.memory_path
    view = memoryview(ram)
    try:
        check_identity(fd, where, info)
        extents = [(0, info.length)] if info.kind == FULL else ((f * info.page_size, n * info.page_size) for f, n in info.iter_runs())
        for start, count in extents:
            pos = start
            for offset, n in data_extents(fd, start, start + count):
                if not zeroed:
                    ram[pos:offset].fill(0)
                for off, m in io_chunks(offset, n):
                    pread_exact(fd, view[off : off + m], off, where)
                pos = offset + n
            if not zeroed:
                ram[pos : start + count].fill(0)
            advance(count)
    except OSError as exc:
        raise from_os_error(exc, "reading", where, MemoryIoError) from exc
    found = extents_digest(ram, info.kind, info.page_size, info.iter_runs(), info.parent_digest)
    if found != info.digest:
        raise MemoryFileMismatchError(where, "digest", found, info.digest)


_KEY_ERRORS = (MissingKeyError, WrongKeyError, KeyFileError)  # the caller's key, not a broken link


def _open_inputs(stack: ExitStack, paths: Sequence[Path], key: bytes | None) -> list[tuple[OpenedPair, StateCore]]:
    """Each snapshot opened and decoded (held open by `stack`), every link checked first."""
    links: list[tuple[OpenedPair, StateCore]] = []
    for path in paths:
        try:
            pair = stack.enter_context(open_pair(path, key=key))
            links.append((pair, decode_core(pair)))
        except (InvalidPathError, *_KEY_ERRORS):
            raise  # names the path already
        except SnapshotError as exc:
            raise BrokenLinkError(path, str(exc)) from exc
    base_path, (_, base_state) = paths[0], links[0]
    if base_state.memory.kind != FULL:
        raise BrokenLinkError(base_path, "the base of a rebase must be a full snapshot")
    for (older_path, (_, older)), (newer_path, (_, newer)) in zip(zip(paths, links), zip(paths[1:], links[1:])):
        if newer.memory.kind != DIFF:
            raise BrokenLinkError(newer_path, "a full snapshot cannot be laid over another; give diffs after BASE")
        try:
            check_parent_link(older, newer)
        except (ParentMismatchError, IncompatibleError) as exc:
            raise BrokenLinkError(newer_path, f"not a diff of {older_path.name}: {exc}") from exc
    return links


def rebase(
    base: str | os.PathLike[str],
    diffs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    compress: str | None = None,
    frame_size: int = DEFAULT_FRAME_SIZE,
    threads: int | None = None,
    progress_bars: ProgressBars | None = None,
    key: bytes | None = None,
) -> RebaseReport:
    """Merge the chain `base` <- diffs[0] <- ... <- diffs[-1] into the full snapshot `out`
    (`<out>.snap` + `<out>.mem`, raw or compress="lz4"), which restores to the same state as
    the chain. Each diff must have been taken over the one before it (BrokenLinkError naming
    it otherwise, before any memory is read); every memory file's digest is checked
    (MemoryFileMismatchError / CorruptMemoryFileError). `out` must not be one of the inputs
    (InvalidPathError). The commit is crash-safe: a failure leaves any previous `out` intact.
    `progress_bars` shows the bytes read and written. `key`: opens encrypted inputs, and
    encrypts `out` with it (MissingKeyError / WrongKeyError naming an input it does not open)."""
    inputs = [snapshot_paths(p)[0] for p in (base, *diffs)]
    out_snap, out_mem = snapshot_paths(out)
    if any(resolve_path(out_snap) == resolve_path(p) for p in inputs):
        raise InvalidPathError(out_snap, "is one of the snapshots being merged")
    if len(inputs) > MAX_CHAIN:
        raise IncompatibleError(f"diff chain longer than {MAX_CHAIN} snapshots")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        links = _open_inputs(stack, inputs, key)
        top = links[-1][1]
        check_compression(compress, top.ram.page_size, frame_size)
        length = top.ram.ram_size
        work = sum(extent_bytes(state.memory) for _, state in links) + length
        with (progress_bars or _NO_BARS)(work, f"rebasing into {out_snap.name}") as advance:
            ram = np.zeros(length, np.uint8)  # pages never written stay unallocated
            parent: MemFileInfo | None = None
            for i, (pair, state) in enumerate(links):
                info = state.memory
                if info.format == RAW:
                    _copy_raw(pair, ram, info, i == 0, advance)
                else:
                    read_memory(pair, ram, True, parent=parent, zeroed=i == 0, progress=advance)
                parent = info

            def write_mem(fd: int) -> MemFileInfo:
                return write_memory(
                    fd, ram, FULL, top.ram.page_size, compress=compress, frame_size=frame_size, threads=threads, progress=advance, key=key
                )

            def state_for(info: MemFileInfo) -> dict[str, object]:
                return {**top.data, MEMORY_FIELD: to_plain(info), PARENT_FIELD: None}

            memory = commit_pair(out_snap, out_mem, write_mem, state_for, key=key)
    return RebaseReport(out_snap, out_mem, len(links), memory, time.perf_counter() - t0)


# --- verify -----------------------------------------------------------------------------------
def _check_link(
    path: Path, child: tuple[Path, StateCore] | None, schema: MachineSchema | None, bars: ProgressBars, key: bytes | None
) -> StateCore:
    """Check the snapshot at `path` (state file, its machine state if `schema` is given, pair
    digest) and, if `child` is given, that `child` is a diff over it. Raises the SnapshotError
    found."""
    with open_pair(path, key=key) as pair:
        state = decode_core(pair)
        if schema is not None:
            schema.check(pair.data)
        if child is not None:
            child_path, child_state = child
            assert child_state.parent is not None
            check_parent_link(state, child_state)
            if child_state.parent.memory_digest != state.memory.digest:
                raise ParentMismatchError(child_state.parent.memory_digest, state.memory.digest)
        info = state.memory
        with bars(extent_bytes(info), f"verifying {path.name}") as advance:
            found = memory_digest(pair, progress=advance)
        if found != info.digest:
            raise MemoryFileMismatchError(pair.memory_path, "digest", found, info.digest)
    return state


def verify(
    path: str | os.PathLike[str],
    *,
    schema: MachineSchema | None = None,
    progress_bars: ProgressBars | None = None,
    key: bytes | None = None,
) -> VerifyReport:
    """Check the snapshot at `path` and its chain back to the full base (module docstring);
    with a `schema`, also that each state is one that machine can restore.
    InvalidPathError if `path` itself does not exist; MissingKeyError / WrongKeyError if an
    encrypted link cannot be opened with `key` (a full check needs it; tampering found with it
    is a broken link); every other problem is reported as the report's `broken` link (the
    first one found, walking from `path` towards the base)."""
    current = snapshot_paths(path)[0]
    if not current.exists():
        raise InvalidPathError(current, "no such snapshot")
    bars = progress_bars or _NO_BARS
    checked: list[CheckedLink] = []
    child: tuple[Path, StateCore] | None = None
    seen = {resolve_path(current)}
    while True:
        if len(checked) >= MAX_CHAIN:
            broken = BrokenLinkError(current, f"diff chain longer than {MAX_CHAIN} snapshots")
            return VerifyReport(Path(path), checked, broken)
        try:
            state = _check_link(current, child, schema, bars, key)
        except _KEY_ERRORS:
            raise
        except SnapshotError as exc:
            reason = str(exc) if child is None else f"as the parent of {child[0].name}: {exc}"
            return VerifyReport(Path(path), checked, BrokenLinkError(current, reason))
        checked.append(CheckedLink(current, state.memory.kind, state.memory.format, state.memory.digest))
        if state.parent is None:
            return VerifyReport(Path(path), checked, None)
        try:
            parent = parent_state_path(current, state.parent)
        except InvalidPathError as exc:
            return VerifyReport(Path(path), checked, BrokenLinkError(current, str(exc)))
        if not parent.exists():
            reason = f"its parent {state.parent.state_name!r} was not found (looked for {parent})"
            return VerifyReport(Path(path), checked, BrokenLinkError(current, reason))
        if parent in seen:
            reason = f"the chain loops: its parent {state.parent.state_name!r} is already in it"
            return VerifyReport(Path(path), checked, BrokenLinkError(current, reason))
        seen.add(parent)
        child, current = (current, state), parent
