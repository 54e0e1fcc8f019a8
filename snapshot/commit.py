"""Crash-safe commit of a snapshot pair `<name>.snap` + `<name>.mem` as one unit.

squib (the Firecracker-style monitor whose format we follow; docs/snapshot-format.md) renames the two files one after the other and never checks that they belong together,
so a crash between the renames leaves a mismatched pair that loads. Here the state file is the
single commit point, and it records its memory file's identity (`MemFileInfo`, under the
plain-data key MEMORY_FIELD), digest included.

Names in the snapshot directory, for name N (U = "<pid>-<16 hex>", unique per commit; D = the
new memory file's digest):
    N.snap, N.mem              the snapshot, as users see and copy it
    .N.mem.tmp-U, .N.snap.tmp-U  files being written (garbage after a crash)
    .N.mem.staged-D            the new memory file, complete and fsynced, waiting for its final
                               name; it exists only between steps 5 and 7 below

Loader rule (`resolve_memory_file`): if `.N.mem.staged-D` exists for the digest D that N.snap
records, that is the memory file; otherwise N.mem is. Either way the loader then verifies the
digest (`memfile.read_into`, or `memfile.compute_digest` before `map_private`), so a pair that
does not belong together is reported (MemoryFileMismatchError), never silently restored.

`commit_pair` steps, with what the destination loads as if the process dies after each one
(and, as fsyncs come before every rename that depends on them, after a power cut too):

 1. Lock the directory (flock, exclusive; released by the kernel if we die) and refuse a
    destination on another filesystem (AtomicCommitCrossFsError) or that is not a regular file.
    -> previous snapshot.
 2. Recover from an earlier crash (`recover`): delete stale `.N.*.tmp-U` files; for a staged
    file, rename it to N.mem if N.snap records its digest (finish that commit: roll forward),
    else delete it (that commit never reached its commit point). If N.snap exists but cannot
    be read, staged files are kept (no guessing). fsync the directory.
    -> previous snapshot (now without leftovers).
 3. Write the memory file to .N.mem.tmp-U (callback), check its length, fsync.
    -> previous snapshot (+ a temp, deleted by step 2 of the next commit).
 4. Build the state (callback), encode it, check it decodes and records exactly this memory
    file, write it to .N.snap.tmp-U, fsync.  -> previous snapshot (+ temps).
 5. Rename .N.mem.tmp-U -> .N.mem.staged-D; fsync the directory.
    -> previous snapshot: N.snap records its own digest, not D, so the staged file is ignored
       (and deleted by the next recovery). If the previous digest happens to equal D, the
       staged file has identical contents, so either choice is the previous snapshot.
 6. COMMIT POINT: rename .N.snap.tmp-U -> N.snap (atomic); fsync the directory.
    -> new snapshot: N.snap records D, .N.mem.staged-D exists, so it is the memory file
       (N.mem still holds the previous image; the next recovery rolls forward).
 7. Rename .N.mem.staged-D -> N.mem (atomic, replaces the previous image); fsync the directory.
    -> new snapshot, in its final two-file form.

At no instant is the previous memory image gone before the new state file is in place, nor is
the new state file in place before its memory file is complete on disk: the destination always
loads as the previous complete snapshot or the new one. Failures before step 6 delete this
commit's files and raise AtomicCommitFailedError (cause chained, errno named); the previous
snapshot is untouched. A failure after step 6 also raises it, with `committed=True`: the new
snapshot is in place (loadable through the loader rule) but its last step is not confirmed.

Concurrency: commits to one directory are serialised by the lock; `open_pair` takes it shared,
so a loader never observes a commit in progress (only, after a crash, its leftovers, which the
loader rule handles). A memory file that is mmapped stays valid after
it is replaced, because files are only ever renamed over, never rewritten in place.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from snapshot.envelope import Header, decode_state, encode_state, read_state_file
from snapshot.errors import (
    AtomicCommitCrossFsError,
    AtomicCommitFailedError,
    IncompatibleError,
    InvalidPathError,
    MemoryIoError,
    SnapshotError,
    errno_text,
    from_os_error,
    open_regular_readonly,
)
from snapshot.memfile import DIFF, FILE_MODE, MemFileInfo, pwrite_all
from snapshot.plain import from_plain

STATE_SUFFIX = ".snap"  # squib: state file `<id>.snap`
MEMORY_SUFFIX = ".mem"  # squib: memory file `<id>.mem`
MEMORY_FIELD = "memory"  # ours: key of the MemFileInfo in the state's plain data
TEMP_MARK = ".tmp-"  # squib: TEMP_SUFFIX; ours adds a unique "<pid>-<16 hex>" after it
STAGED_MARK = ".staged-"  # ours: `.<name>.mem.staged-<digest>`, see the module docstring

_TOKEN_PATTERN = r"\d+-[0-9a-f]{16}"


@dataclass(frozen=True)
class SnapshotPaths:
    """The names of snapshot `name` in `directory`: `<name>.snap`, `<name>.mem` and the
    protocol's temporary and staged names."""

    directory: Path
    name: str

    def __post_init__(self) -> None:
        n = self.name
        if not n or n in (".", "..") or "/" in n or "\0" in n:
            raise InvalidPathError(self.directory / (n or "?"), "not a usable snapshot name")

    @classmethod
    def for_state(cls, state_path: str | os.PathLike[str]) -> SnapshotPaths:
        """Paths of the snapshot whose state file is `state_path` (must end in .snap)."""
        path = Path(state_path)
        if not path.name.endswith(STATE_SUFFIX) or path.name == STATE_SUFFIX:
            raise InvalidPathError(path, f"a snapshot state file name must be <name>{STATE_SUFFIX}")
        return cls(path.parent, path.name[: -len(STATE_SUFFIX)])

    @classmethod
    def for_pair(
        cls, state_path: str | os.PathLike[str], memory_path: str | os.PathLike[str]
    ) -> SnapshotPaths:
        """Paths of the pair (state_path, memory_path), which must be `<name>.snap` and
        `<name>.mem` in the same directory."""
        paths = cls.for_state(state_path)
        if Path(memory_path) != paths.memory:
            raise InvalidPathError(
                memory_path, f"the memory file of {paths.state_name} must be {paths.memory}"
            )
        return paths

    @property
    def state_name(self) -> str:
        return self.name + STATE_SUFFIX

    @property
    def memory_name(self) -> str:
        return self.name + MEMORY_SUFFIX

    @property
    def state(self) -> Path:
        return self.directory / self.state_name

    @property
    def memory(self) -> Path:
        return self.directory / self.memory_name

    def temp_name(self, final_name: str, token: str) -> str:
        return f".{final_name}{TEMP_MARK}{token}"

    def staged_name(self, digest: str) -> str:
        return f".{self.memory_name}{STAGED_MARK}{digest}"

    @property
    def temp_pattern(self) -> re.Pattern[str]:
        """Matches exactly this snapshot's temp names (never another snapshot's)."""
        finals = "|".join(re.escape(f) for f in (self.state_name, self.memory_name))
        return re.compile(rf"\.(?:{finals}){re.escape(TEMP_MARK)}{_TOKEN_PATTERN}")

    @property
    def staged_pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(f".{self.memory_name}{STAGED_MARK}") + r"([0-9a-f]{32})")


def recorded_memory(data: dict[str, Any]) -> MemFileInfo:
    """The MemFileInfo a state's plain `data` records under MEMORY_FIELD (EncodingError if it
    is invalid, IncompatibleError if absent or None)."""
    if data.get(MEMORY_FIELD) is None:
        raise IncompatibleError(
            f"state does not record its memory file (no {MEMORY_FIELD!r} field)"
        )
    info: MemFileInfo = from_plain(MemFileInfo, data[MEMORY_FIELD], path=f"data.{MEMORY_FIELD}")
    return info


def resolve_memory_file(paths: SnapshotPaths, info: MemFileInfo) -> Path:
    """The memory file that belongs with a state file recording `info` (loader rule in the
    module docstring). The caller still verifies its digest."""
    staged = paths.directory / paths.staged_name(info.digest)
    return staged if os.path.lexists(staged) else paths.memory


def check_same_filesystem(temp_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """AtomicCommitCrossFsError unless a temp file in `temp_dir` can be renamed onto `dest`
    atomically: same st_dev as `dest` if it exists, else as its directory."""
    try:
        temp_dev = os.stat(temp_dir).st_dev
        try:
            dest_dev = os.lstat(dest).st_dev
        except FileNotFoundError:
            dest_dev = os.stat(Path(dest).parent).st_dev
    except OSError as exc:
        raise from_os_error(exc, "inspecting", dest) from exc
    if temp_dev != dest_dev:
        raise AtomicCommitCrossFsError(temp_dir, dest)


@contextmanager
def _locked_directory(directory: Path, *, exclusive: bool) -> Iterator[int]:
    """An fd of `directory`, flock'ed for the duration. A shared lock the filesystem refuses
    is skipped (readers still verify digests); an exclusive one is an error."""
    try:
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, "opening directory", directory) from exc
    try:
        try:
            fcntl.flock(dirfd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as exc:
            if exclusive:
                raise from_os_error(exc, "locking directory", directory) from exc
        yield dirfd
    finally:
        os.close(dirfd)  # also releases the lock


def _remove_quietly(dirfd: int, names: list[str]) -> None:
    """Best effort: anything left behind is removed by the next commit's recovery."""
    for name in names:
        with suppress(OSError):
            os.unlink(name, dir_fd=dirfd)
    with suppress(OSError):
        os.fsync(dirfd)


def _cleanup_temps(dirfd: int, paths: SnapshotPaths) -> list[str]:
    pattern = paths.temp_pattern
    removed = [n for n in os.listdir(dirfd) if pattern.fullmatch(n)]
    for name in removed:
        os.unlink(name, dir_fd=dirfd)
    return removed


def _current_memory(paths: SnapshotPaths) -> tuple[bool, MemFileInfo | None]:
    """(known, info): what the current state file records; (True, None) if there is no state
    file; (False, None) if it cannot be read or decoded (recovery must not guess then)."""
    if not os.path.lexists(paths.state):
        return True, None
    try:
        _, data = read_state_file(paths.state)
        return True, recorded_memory(data)
    except SnapshotError:
        return False, None


def _recover(dirfd: int, paths: SnapshotPaths) -> tuple[MemFileInfo | None, list[str]]:
    """Step 2 of the protocol, under the exclusive lock. Returns (what the current state file
    records, actions taken). Staged files are left alone while the state file is unreadable:
    it may be from a newer version, and its memory file could be the staged one."""
    actions = [f"removed {n}" for n in _cleanup_temps(dirfd, paths)]
    known, current = _current_memory(paths)
    pattern = paths.staged_pattern
    for name in os.listdir(dirfd):
        match = pattern.fullmatch(name)
        if match is None or not known:
            continue
        if current is not None and match.group(1) == current.digest:
            os.replace(name, paths.memory_name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            actions.append(f"renamed {name} to {paths.memory_name}")
        else:
            os.unlink(name, dir_fd=dirfd)
            actions.append(f"removed {name}")
    if actions:
        os.fsync(dirfd)
    return current, actions


def cleanup_stale_temps(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Delete the temp files a crashed save of snapshot `name` left in `directory` (exactly
    `.<name>.snap.tmp-U` and `.<name>.mem.tmp-U`; nothing else). Returns what was removed."""
    paths = SnapshotPaths(Path(directory), name)
    with _locked_directory(paths.directory, exclusive=True) as dirfd:
        try:
            removed = _cleanup_temps(dirfd, paths)
            if removed:
                os.fsync(dirfd)
        except OSError as exc:
            raise from_os_error(exc, "cleaning up", paths.directory) from exc
    return [paths.directory / n for n in removed]


def recover(state_path: str | os.PathLike[str]) -> list[str]:
    """Finish or roll back whatever a crashed commit left for this snapshot (step 2 in the
    module docstring), so `<name>.snap` + `<name>.mem` alone are the snapshot again. Returns a
    description of each action; [] if there was nothing to do."""
    paths = SnapshotPaths.for_state(state_path)
    with _locked_directory(paths.directory, exclusive=True) as dirfd:
        try:
            return _recover(dirfd, paths)[1]
        except OSError as exc:
            raise from_os_error(exc, "recovering", paths.directory) from exc


def _preflight(paths: SnapshotPaths) -> None:
    for dest in (paths.state, paths.memory):
        check_same_filesystem(paths.directory, dest)
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise from_os_error(exc, "inspecting", dest) from exc
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise InvalidPathError(dest, "exists and is not a regular file")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return errno_text(exc.errno, exc.strerror)
    if isinstance(exc, SnapshotError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _errno_of(exc: BaseException) -> int | None:
    return exc.errno if isinstance(exc, (OSError, SnapshotError)) else None


def _create(dirfd: int, name: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return os.open(name, flags, FILE_MODE, dir_fd=dirfd)


def commit_pair(
    dest_snap: str | os.PathLike[str],
    dest_mem: str | os.PathLike[str],
    write_mem: Callable[[int], MemFileInfo],
    state_for: Callable[[MemFileInfo], dict[str, Any]],
) -> MemFileInfo:
    """Save a snapshot pair crash-safely (protocol in the module docstring) and return the
    memory file's info.

    `write_mem(fd)` writes the memory file to an empty, writable fd (e.g. memfile.write_full)
    and returns its MemFileInfo. `state_for(info)` returns the state's plain data, recording
    `info` under MEMORY_FIELD (e.g. `to_plain(replace(state, memory=info))`).
    `dest_snap`/`dest_mem` must be `<name>.snap`/`<name>.mem` in one directory.

    Raises InvalidPathError / AtomicCommitCrossFsError before writing anything, and
    AtomicCommitFailedError (cause chained, errno named) for any failure after that.
    """
    paths = SnapshotPaths.for_pair(dest_snap, dest_mem)
    with _locked_directory(paths.directory, exclusive=True) as dirfd:
        _preflight(paths)
        try:
            previous, _ = _recover(dirfd, paths)
        except (OSError, SnapshotError) as exc:
            reason = f"recovering an earlier commit: {_describe(exc)}"
            raise AtomicCommitFailedError(paths.state, reason, errno=_errno_of(exc)) from exc
        return _commit(dirfd, paths, previous, write_mem, state_for)


def _commit(
    dirfd: int,
    paths: SnapshotPaths,
    previous: MemFileInfo | None,
    write_mem: Callable[[int], MemFileInfo],
    state_for: Callable[[MemFileInfo], dict[str, Any]],
) -> MemFileInfo:
    """Steps 3-7 of the protocol, under the exclusive lock."""
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    mem_tmp = paths.temp_name(paths.memory_name, token)
    state_tmp = paths.temp_name(paths.state_name, token)
    owned: list[str] = []  # names this commit created and must remove if it fails
    committed = False
    stage = "creating the memory temp file"
    try:
        fd = _create(dirfd, mem_tmp)
        owned.append(mem_tmp)
        try:
            stage = "writing the memory file"
            info = write_mem(fd)
            if not isinstance(info, MemFileInfo):
                raise TypeError(f"write_mem returned {type(info).__name__}, not MemFileInfo")
            size = os.fstat(fd).st_size
            if size != info.file_length:
                raise MemoryIoError(f"memory file is {size} bytes but its info says {info.file_length}")
            stage = "syncing the memory file"
            os.fsync(fd)
        finally:
            os.close(fd)

        stage = "building the state file"
        blob = encode_state(state_for(info))
        if recorded_memory(decode_state(blob)[1]) != info:
            raise IncompatibleError(
                f"the state's {MEMORY_FIELD!r} field is not the memory file written"
            )
        if info.kind == DIFF and previous is not None and info.parent_digest == previous.digest:
            raise IncompatibleError(
                f"refusing to replace {paths.memory_name} with a diff whose base it is"
            )
        stage = "writing the state file"
        fd = _create(dirfd, state_tmp)
        owned.append(state_tmp)
        try:
            pwrite_all(fd, blob, 0)
            stage = "syncing the state file"
            os.fsync(fd)
        finally:
            os.close(fd)

        stage = "staging the memory file"
        staged = paths.staged_name(info.digest)
        os.replace(mem_tmp, staged, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        owned[0] = staged
        os.fsync(dirfd)

        stage = "renaming the state file into place"
        os.replace(state_tmp, paths.state_name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        owned.remove(state_tmp)
        committed = True
        stage = "syncing the directory after the commit point"
        os.fsync(dirfd)

        stage = "renaming the memory file into place"
        os.replace(staged, paths.memory_name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        os.fsync(dirfd)
        return info
    except BaseException as exc:
        if not committed:
            _remove_quietly(dirfd, owned)
        if not isinstance(exc, Exception):
            raise
        raise AtomicCommitFailedError(
            paths.state, f"{stage}: {_describe(exc)}", errno=_errno_of(exc), committed=committed
        ) from exc


@dataclass
class OpenedPair:
    """A snapshot opened for restore: its decoded state and its memory file, held open so a
    later commit cannot swap it. Close it (or use `with`) when done."""

    paths: SnapshotPaths
    header: Header
    data: dict[str, Any]
    memory: MemFileInfo
    memory_path: Path
    memory_fd: int

    def close(self) -> None:
        if self.memory_fd >= 0:
            os.close(self.memory_fd)
            self.memory_fd = -1

    def __enter__(self) -> OpenedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pair(state_path: str | os.PathLike[str]) -> OpenedPair:
    """Open the snapshot whose state file is `state_path`: read and check the state file, find
    its memory file (loader rule in the module docstring) and open it. Restore with
    `memfile.read_into(pair.memory_fd, ram, pair.memory)` (verifies the digest) or
    `map_private(pair.memory_fd, size, info=pair.memory, verify_digest=True)`."""
    paths = SnapshotPaths.for_state(state_path)
    with _locked_directory(paths.directory, exclusive=False):
        header, data = read_state_file(paths.state)
        info = recorded_memory(data)
        memory_path = resolve_memory_file(paths, info)
        fd = open_regular_readonly(memory_path, MemoryIoError)
    return OpenedPair(paths, header, data, info, memory_path, fd)

