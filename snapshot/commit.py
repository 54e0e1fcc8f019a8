"""Crash-safe commit of a snapshot pair, the state file `<name>.snap` and its memory file, as
one unit. The memory file is `<name>.mem` by default; it may have any name, in the state file's
directory or another one (Firecracker names the two independently), and the state file records
which (MEMORY_FILE_FIELD: absent for the default `<name>.mem`, as in 1.0 files; a bare name
for another name beside it; an absolute path otherwise). Below, M is the memory file's name;
its directory holds M's temp and staged names, the state file's directory the rest. One memory
file belongs to one state file: two state files naming the same memory file overwrite each
other's image, which the digest check then reports (never restores silently).

squib (the Firecracker-style monitor whose format we follow; docs/snapshot-format.md) renames the two files one after the other and never checks that they belong together,
so a crash between the renames leaves a mismatched pair that loads. Here the state file is the
single commit point, and it records its memory file's identity (`MemFileInfo`, under the
plain-data key MEMORY_FIELD), digest included.

Names, for name N and memory file M (U = "<pid>-<16 hex>", unique per commit; D = the new
memory file's digest):
    N.snap, M                  the snapshot, as users see and copy it (M = N.mem by default)
    .M.tmp-U, .N.snap.tmp-U    files being written (garbage after a crash)
    .M.staged-D                the new memory file, complete and fsynced, waiting for its final
                               name; it exists only between steps 5 and 7 below

Loader rule (`resolve_memory_file`): if `.M.staged-D` exists for the digest D that N.snap
records (and N.snap names M), that is the memory file; otherwise M is. Either way the loader
then verifies the digest (`memfile.read_into`, or `memfile.compute_digest` before `map_private`), so a pair that
does not belong together is reported (MemoryFileMismatchError), never silently restored.

`commit_pair` steps, with what the destination loads as if the process dies after each one
(and, as fsyncs come before every rename that depends on them, after a power cut too):

 1. Lock the directory, and M's if it is another (flock, exclusive, in a fixed order;
    released by the kernel if we die), and refuse a destination on another filesystem than
    its own directory (AtomicCommitCrossFsError) or that is not a regular file.
    -> previous snapshot.
 2. Recover from an earlier crash (`recover`): delete stale `.N.snap.tmp-U` and `.M.tmp-U`
    files; for a staged file, rename it to M if N.snap records M and its digest (finish that
    commit: roll forward), else delete it (that commit never reached its commit point). If
    N.snap exists but cannot be read, staged files are kept (no guessing). fsync the
    directories.  -> previous snapshot (now without leftovers).
 3. Write the memory file to .M.tmp-U (callback), check its length, fsync.
    -> previous snapshot (+ a temp, deleted by step 2 of the next commit).
 4. Build the state (callback; M's name is added here), encode it, check it decodes and
    records exactly this memory file, write it to .N.snap.tmp-U, fsync.
    -> previous snapshot (+ temps).
 5. Rename .M.tmp-U -> .M.staged-D; fsync M's directory.
    -> previous snapshot: N.snap records its own digest (or another memory file), not D, so
       the staged file is ignored (and deleted by the next recovery). If the previous digest
       happens to equal D, the staged file has identical contents, so either choice is the
       previous snapshot.
 6. COMMIT POINT: rename .N.snap.tmp-U -> N.snap (atomic); fsync the directory.
    -> new snapshot: N.snap records M and D, .M.staged-D exists, so it is the memory file
       (M still holds the previous image, if any; the next recovery rolls forward).
 7. Rename .M.staged-D -> M (atomic, replaces the previous image); fsync M's directory.
    -> new snapshot, in its final two-file form.

At no instant is the previous memory image gone before the new state file is in place, nor is
the new state file in place before its memory file is complete on disk: the destination always
loads as the previous complete snapshot or the new one. Failures before step 6 delete this
commit's files and raise AtomicCommitFailedError (cause chained, errno named); the previous
snapshot is untouched. A failure after step 6 also raises it, with `committed=True`: the new
snapshot is in place (loadable through the loader rule) but its last step is not confirmed.

Concurrency: commits are serialised by an exclusive lock on the state file's directory and,
if it is another one, the memory file's (taken in a fixed order, so two commits cannot
deadlock). Readers (`open_pair`: load, describe, verify) take no lock and so never wait for a
writer: they read the state file, open the memory file it names by the loader rule, and check
that the state file was not replaced in between (else they start again). Renames are atomic
and files are never rewritten in place, so what they open is one committed pair, the previous
or the new one; a memory file that is opened or mmapped stays valid after it is replaced.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from snapshot.envelope import Header, decode_state, encode_state, read_state_file
from snapshot.errors import (
    AtomicCommitCrossFsError,
    AtomicCommitFailedError,
    EncodingError,
    IncompatibleError,
    InvalidPathError,
    MemoryIoError,
    SnapshotError,
    SnapshotIoError,
    errno_text,
    from_os_error,
    open_regular_readonly,
    show_path,
)
from snapshot.fileio import FILE_MODE, pwrite_all
from snapshot.meminfo import DIFF, MemFileInfo
from snapshot.plain import from_plain
from snapshot.sealedstate import is_sealed_state, open_state, seal_state

STATE_SUFFIX = ".snap"  # squib: state file `<id>.snap`
MEMORY_SUFFIX = ".mem"  # squib: memory file `<id>.mem`
MEMORY_FIELD = "memory"  # ours: key of the MemFileInfo in the state's plain data
# ours (format 1.1): key of the memory file's name: a bare name = beside the state file, an
# absolute path = elsewhere. Absent (as in 1.0 files) = `<name>.mem` beside it.
MEMORY_FILE_FIELD = "memory_file"
MAX_MEMORY_FILE_CHARS = 4096  # PATH_MAX on Linux
TEMP_MARK = ".tmp-"  # squib: TEMP_SUFFIX; ours adds a unique "<pid>-<16 hex>" after it
STAGED_MARK = ".staged-"  # ours: `.<memory file>.staged-<digest>`, see the module docstring
OPEN_ATTEMPTS = 8  # ours: times open_pair starts again when a commit replaces the state file

_TOKEN_PATTERN = r"\d+-[0-9a-f]{16}"


@dataclass(frozen=True)
class SnapshotPaths:
    """The names of snapshot `name` in `directory`: `<name>.snap`, its memory file and the
    protocol's temporary and staged names.

    `memory_file` is the memory file's name as the state file records it (MEMORY_FILE_FIELD):
    None or a bare name = in `directory` (None: `<name>.mem`), an absolute path = elsewhere.
    The memory file's temporary and staged names live in the memory file's own directory.
    A state file records `memory_file` only when it is not None, so a copy of `N.snap` and
    `N.mem` under a new name N2 is still a pair."""

    directory: Path
    name: str
    memory_file: str | None = None

    def __post_init__(self) -> None:
        n = self.name
        if not n or n in (".", "..") or "/" in n or "\0" in n:
            raise InvalidPathError(self.directory / (n or "?"), "not a usable snapshot name")
        m = self.memory_file
        if m is not None:
            bare = "/" not in m and m not in ("", ".", "..")
            if "\0" in m or len(m) > MAX_MEMORY_FILE_CHARS or not (bare or os.path.isabs(m)):
                raise InvalidPathError(
                    self.directory / self.state_name,
                    f"memory file name {m[:60]!r} must be a bare file name or an absolute path",
                )
            if self.memory == self.state:
                raise InvalidPathError(self.state, "the memory file cannot be the state file")

    @classmethod
    def for_state(cls, state_path: str | os.PathLike[str], memory_file: str | None = None) -> SnapshotPaths:
        """Paths of the snapshot whose state file is `state_path` (must end in .snap) and whose
        memory file is `memory_file` as recorded (see the class docstring)."""
        path = Path(state_path)
        if not path.name.endswith(STATE_SUFFIX) or path.name == STATE_SUFFIX:
            raise InvalidPathError(path, f"a snapshot state file name must be <name>{STATE_SUFFIX}")
        return cls(path.parent, path.name[: -len(STATE_SUFFIX)], memory_file)

    @classmethod
    def for_pair(
        cls, state_path: str | os.PathLike[str], memory_path: str | os.PathLike[str]
    ) -> SnapshotPaths:
        """Paths of the pair (state_path, memory_path): the memory file is recorded by nothing
        when it is the default `<name>.mem` beside the state file, by its bare name when it is
        another name in the state file's directory, by its absolute path otherwise."""
        state = Path(state_path)
        memory = Path(memory_path)
        if not memory.name or memory.name in (".", ".."):
            raise InvalidPathError(memory, "not a usable memory file name")
        paths = cls.for_state(state)
        if os.path.abspath(memory.parent) != os.path.abspath(state.parent):
            return cls.for_state(state, os.path.abspath(memory))
        return paths if memory.name == paths.memory_name else cls.for_state(state, memory.name)

    @property
    def state_name(self) -> str:
        return self.name + STATE_SUFFIX

    @property
    def memory_name(self) -> str:
        return Path(self.memory_file).name if self.memory_file else self.name + MEMORY_SUFFIX

    @property
    def state(self) -> Path:
        return self.directory / self.state_name

    @property
    def memory_directory(self) -> Path:
        return self.memory.parent

    @property
    def memory(self) -> Path:
        return self.directory / (self.memory_file or self.memory_name)

    def temp_name(self, final_name: str, token: str) -> str:
        return f".{final_name}{TEMP_MARK}{token}"

    def staged_name(self, digest: str) -> str:
        return f".{self.memory_name}{STAGED_MARK}{digest}"

    def temp_pattern(self, final_name: str) -> re.Pattern[str]:
        """Matches exactly the temp names of `final_name` (never another file's)."""
        return re.compile(rf"\.{re.escape(final_name)}{re.escape(TEMP_MARK)}{_TOKEN_PATTERN}")

    @property
    def staged_pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(f".{self.memory_name}{STAGED_MARK}") + r"([0-9a-f]{32})")


def recorded_memory_file(data: dict[str, Any]) -> str | None:
    """The memory file name a state's plain `data` records (None in a 1.0 file: `<name>.mem`);
    EncodingError if it is not a string. SnapshotPaths checks its form."""
    value = data.get(MEMORY_FILE_FIELD)
    if value is not None and type(value) is not str:
        raise EncodingError(f"data.{MEMORY_FILE_FIELD}: expected a string, got {type(value).__name__}")
    return value


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
    staged = paths.memory_directory / paths.staged_name(info.digest)
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
def _locked_directory(directory: Path) -> Iterator[int]:
    """An fd of `directory`, flock'ed exclusively for the duration (writers only: readers take
    no lock, see open_pair)."""
    try:
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, "opening directory", directory) from exc
    try:
        try:
            fcntl.flock(dirfd, fcntl.LOCK_EX)
        except OSError as exc:
            raise from_os_error(exc, "locking directory", directory) from exc
        yield dirfd
    finally:
        os.close(dirfd)  # also releases the lock


@contextmanager
def _locked_pair(paths: SnapshotPaths) -> Iterator[tuple[int, int]]:
    """(state dir fd, memory dir fd), both flock'ed exclusively; one fd if they are the same
    directory. Locked in a fixed order (by resolved path) so two commits cannot deadlock."""
    state_dir, memory_dir = paths.directory, paths.memory_directory
    if os.path.abspath(state_dir) == os.path.abspath(memory_dir):
        with _locked_directory(state_dir) as fd:
            yield fd, fd
        return
    first, second = sorted((state_dir, memory_dir), key=lambda d: os.path.realpath(d))
    with _locked_directory(first) as fd1, _locked_directory(second) as fd2:
        yield (fd1, fd2) if first == state_dir else (fd2, fd1)


def _fsync_dirs(*fds: int) -> None:
    for fd in dict.fromkeys(fds):  # once per directory
        os.fsync(fd)


def _remove_quietly(owned: list[tuple[int, str]]) -> None:
    """Best effort: anything left behind is removed by the next commit's recovery."""
    for dirfd, name in owned:
        with suppress(OSError):
            os.unlink(name, dir_fd=dirfd)
    for dirfd in dict.fromkeys(fd for fd, _ in owned):
        with suppress(OSError):
            os.fsync(dirfd)


def _cleanup_temps(state_fd: int, memory_fd: int, paths: SnapshotPaths) -> list[str]:
    removed = []
    for dirfd, final in ((state_fd, paths.state_name), (memory_fd, paths.memory_name)):
        pattern = paths.temp_pattern(final)
        for name in os.listdir(dirfd):
            if pattern.fullmatch(name):
                os.unlink(name, dir_fd=dirfd)
                removed.append(name)
    return removed


def _current_memory(paths: SnapshotPaths) -> tuple[bool, MemFileInfo | None]:
    """(known, info): what the current state file records if its memory file is `paths`'s;
    (True, None) if there is no state file or it records another memory file; (False, None)
    if it cannot be read or decoded (recovery must not guess then)."""
    if not os.path.lexists(paths.state):
        return True, None
    try:
        _, data = read_state_file(paths.state)
        current = SnapshotPaths(paths.directory, paths.name, recorded_memory_file(data))
        info = recorded_memory(data)
    except SnapshotError:
        return False, None
    return True, (info if current.memory == paths.memory else None)


def _recover(state_fd: int, memory_fd: int, paths: SnapshotPaths) -> tuple[MemFileInfo | None, list[str]]:
    """Step 2 of the protocol, under the exclusive locks. Returns (what the current state
    file records for this memory file, actions taken). Staged files are left alone while the
    state file is unreadable: it may be from a newer version, and its memory file could be
    the staged one."""
    actions = [f"removed {n}" for n in _cleanup_temps(state_fd, memory_fd, paths)]
    known, current = _current_memory(paths)
    pattern = paths.staged_pattern
    for name in os.listdir(memory_fd):
        match = pattern.fullmatch(name)
        if match is None or not known:
            continue
        if current is not None and match.group(1) == current.digest:
            os.replace(name, paths.memory_name, src_dir_fd=memory_fd, dst_dir_fd=memory_fd)
            actions.append(f"renamed {name} to {paths.memory_name}")
        else:
            os.unlink(name, dir_fd=memory_fd)
            actions.append(f"removed {name}")
    if actions:
        _fsync_dirs(state_fd, memory_fd)
    return current, actions


def cleanup_stale_temps(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Delete the temp files a crashed save of snapshot `name` left in `directory` (exactly
    `.<name>.snap.tmp-U` and `.<name>.mem.tmp-U`; nothing else). Returns what was removed."""
    paths = SnapshotPaths(Path(directory), name)
    with _locked_directory(paths.directory) as dirfd:
        try:
            removed = _cleanup_temps(dirfd, dirfd, paths)
            if removed:
                os.fsync(dirfd)
        except OSError as exc:
            raise from_os_error(exc, "cleaning up", paths.directory) from exc
    return [paths.directory / n for n in removed]


def recover(state_path: str | os.PathLike[str]) -> list[str]:
    """Finish or roll back whatever a crashed commit left for this snapshot (step 2 in the
    module docstring), so its state and memory files alone are the snapshot again. Returns a
    description of each action; [] if there was nothing to do."""
    paths = SnapshotPaths.for_state(state_path)
    with suppress(SnapshotError):  # unreadable: recovery below guesses nothing
        paths = SnapshotPaths.for_state(state_path, recorded_memory_file(read_state_file(paths.state)[1]))
    with _locked_pair(paths) as (state_fd, memory_fd):
        try:
            return _recover(state_fd, memory_fd, paths)[1]
        except OSError as exc:
            raise from_os_error(exc, "recovering", paths.directory) from exc


def _preflight(paths: SnapshotPaths) -> None:
    for dest in (paths.state, paths.memory):
        check_same_filesystem(dest.parent, dest)
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
    *,
    key: bytes | None = None,
) -> MemFileInfo:
    """Save a snapshot pair crash-safely (protocol in the module docstring) and return the
    memory file's info. With `key` the state is sealed (snapshot.sealedstate), and `write_mem`
    must write an encrypted memory file (IncompatibleError otherwise).

    `write_mem(fd)` writes the memory file to an empty, writable fd (e.g. memfile.write_full)
    and returns its MemFileInfo. `state_for(info)` returns the state's plain data, recording
    `info` under MEMORY_FIELD (e.g. `to_plain(replace(state, memory=info))`); the memory
    file's name is recorded here, under MEMORY_FILE_FIELD. `dest_snap` must be
    `<name>.snap`; `dest_mem` is any file name, beside it or elsewhere.

    Raises InvalidPathError / AtomicCommitCrossFsError before writing anything, and
    AtomicCommitFailedError (cause chained, errno named) for any failure after that.
    """
    paths = SnapshotPaths.for_pair(dest_snap, dest_mem)
    with _locked_pair(paths) as (state_fd, memory_fd):
        _preflight(paths)
        try:
            previous, _ = _recover(state_fd, memory_fd, paths)
        except (OSError, SnapshotError) as exc:
            reason = f"recovering an earlier commit: {_describe(exc)}"
            raise AtomicCommitFailedError(paths.state, reason, errno=_errno_of(exc)) from exc
        return _commit(state_fd, memory_fd, paths, previous, write_mem, state_for, key)


def _commit(
    state_fd: int,
    memory_fd: int,
    paths: SnapshotPaths,
    previous: MemFileInfo | None,
    write_mem: Callable[[int], MemFileInfo],
    state_for: Callable[[MemFileInfo], dict[str, Any]],
    key: bytes | None,
) -> MemFileInfo:
    """Steps 3-7 of the protocol, under the exclusive locks. The memory file's temp and
    staged names are in its own directory (`memory_fd`), the state file's in `state_fd`'s."""
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    mem_tmp = paths.temp_name(paths.memory_name, token)
    state_tmp = paths.temp_name(paths.state_name, token)
    owned: list[tuple[int, str]] = []  # (dir, name) this commit created and must remove if it fails
    committed = False
    stage = "creating the memory temp file"
    try:
        fd = _create(memory_fd, mem_tmp)
        owned.append((memory_fd, mem_tmp))
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
        data = {k: v for k, v in state_for(info).items() if k != MEMORY_FILE_FIELD}
        if paths.memory_file is not None:
            data[MEMORY_FILE_FIELD] = paths.memory_file
        if key is not None:
            if not info.encrypted:
                raise IncompatibleError("an encrypted snapshot needs an encrypted memory file")
            data = seal_state(data, key, show_path(paths.state))
        blob = encode_state(data)
        if recorded_memory(decode_state(blob)[1]) != info:
            raise IncompatibleError(
                f"the state's {MEMORY_FIELD!r} field is not the memory file written"
            )
        if info.kind == DIFF and previous is not None and info.parent_digest == previous.digest:
            raise IncompatibleError(
                f"refusing to replace {paths.memory_name} with a diff whose base it is"
            )
        stage = "writing the state file"
        fd = _create(state_fd, state_tmp)
        owned.append((state_fd, state_tmp))
        try:
            pwrite_all(fd, blob, 0)
            stage = "syncing the state file"
            os.fsync(fd)
        finally:
            os.close(fd)

        stage = "staging the memory file"
        staged = paths.staged_name(info.digest)
        os.replace(mem_tmp, staged, src_dir_fd=memory_fd, dst_dir_fd=memory_fd)
        owned[0] = (memory_fd, staged)
        os.fsync(memory_fd)

        stage = "renaming the state file into place"
        os.replace(state_tmp, paths.state_name, src_dir_fd=state_fd, dst_dir_fd=state_fd)
        owned.remove((state_fd, state_tmp))
        committed = True
        stage = "syncing the directory after the commit point"
        os.fsync(state_fd)

        stage = "renaming the memory file into place"
        os.replace(staged, paths.memory_name, src_dir_fd=memory_fd, dst_dir_fd=memory_fd)
        os.fsync(memory_fd)
        return info
    except BaseException as exc:
        if not committed:
            _remove_quietly(owned)
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
    key: bytes | None = field(default=None, repr=False)  # an encrypted snapshot's, to read its memory file
    encrypted: bool = False  # the state is sealed (snapshot.sealedstate)
    sealed: bool = False  # ... and was not opened: `data` holds only its clear fields

    def close(self) -> None:
        if self.memory_fd >= 0:
            os.close(self.memory_fd)
            self.memory_fd = -1

    def __enter__(self) -> OpenedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a commit renames a new state file over `path`: (device, inode,
    size, mtime in ns); None if it cannot be inspected (the read that follows reports why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _open_memory(paths: SnapshotPaths, info: MemFileInfo) -> tuple[Path, int]:
    """(path, fd) of the memory file the loader rule gives for `info`; if the staged file is
    renamed to its final name between the check and the open (commit step 7), the final one."""
    memory_path = resolve_memory_file(paths, info)
    try:
        return memory_path, open_regular_readonly(memory_path, MemoryIoError)
    except InvalidPathError:
        if memory_path == paths.memory:
            raise
    return paths.memory, open_regular_readonly(paths.memory, MemoryIoError)


def open_pair(
    state_path: str | os.PathLike[str],
    memory_path: str | os.PathLike[str] | None = None,
    *,
    key: bytes | None = None,
    sealed_ok: bool = False,
) -> OpenedPair:
    """Open the snapshot whose state file is `state_path`: read and check the state file, find
    its memory file (the name it records, by the loader rule in the module docstring; or
    `memory_path` if given, e.g. a memory file moved elsewhere: the caller must then verify
    its digest) and open it. Restore with
    `memfile.read_into(pair.memory_fd, ram, pair.memory)` (verifies the digest) or
    `map_private(pair.memory_fd, size, info=pair.memory, verify_digest=True)`.

    Takes no lock, so it never waits for a save in progress: the state file is the commit
    point, and the memory file is opened while that state file is still in place (checked by
    its identity before and after; a commit that renamed a new one over it in between makes
    the open start again, at most OPEN_ATTEMPTS times, then SnapshotIoError). The pair opened
    is one committed snapshot, the previous or the new one.

    An encrypted snapshot's state is opened with `key` (snapshot.sealedstate: MissingKeyError,
    WrongKeyError, TamperedError naming the state file); with `sealed_ok` and no key it is left
    sealed (`pair.sealed`: `data` holds only the clear fields, for describe). The key is kept
    in the pair (not shown by its repr) to read the memory file."""
    paths = SnapshotPaths.for_state(state_path)
    for _ in range(OPEN_ATTEMPTS):
        before = _state_identity(paths.state)
        header, data = read_state_file(paths.state)
        encrypted = is_sealed_state(data)
        if encrypted and not (key is None and sealed_ok):
            data = open_state(data, key, show_path(paths.state))
        info = recorded_memory(data)
        paths = SnapshotPaths.for_state(paths.state, recorded_memory_file(data))
        if memory_path is not None:
            found, fd = Path(memory_path), open_regular_readonly(memory_path, MemoryIoError)
        else:
            found, fd = _open_memory(paths, info)
        if before is not None and _state_identity(paths.state) == before:
            return OpenedPair(paths, header, data, info, found, fd, key, encrypted, encrypted and key is None and sealed_ok)
        os.close(fd)
    raise SnapshotIoError(f"{show_path(paths.state)} kept being replaced while it was opened ({OPEN_ATTEMPTS} attempts)")

