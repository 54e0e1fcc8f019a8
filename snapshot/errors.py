"""Snapshot errors, and the translation of OS failures at the snapshot file boundary.

Every error is a `SnapshotError` whose `str()` is one stable line a CLI can print as is. The
variants follow the error set of squib (a Firecracker-style microVM monitor for Apple Silicon, whose snapshot format this project follows: docs/snapshot-format.md): (QuiesceTimeout, MagicMismatch, VersionMismatch, CrcMismatch,
TooShort, Incompatible, AtomicCommitFailed, AtomicCommitCrossFs, InvalidPath, Encoding,
SizeLimitExceeded, MemoryIo, Io) plus the pair/diff checks this project adds
(MemoryFileMismatch, ParentMismatch, MissingParent, CorruptMemoryFile, BrokenLink). Errors
caused by an `OSError` carry its errno in `.errno` and its symbolic name (e.g. ENOSPC) in the
message.

`open_regular_readonly` lives here because it is the one place untrusted snapshot files are
opened, and its only job is to turn what can go wrong there into these errors.
"""
from __future__ import annotations

import errno as _errno
import os
import stat
from pathlib import Path
from typing import Sequence

# Messages quote at most this many characters of an untrusted value.
_MAX_QUOTED_CHARS = 200

# Errnos that mean "this path is wrong", as opposed to "the I/O failed".
_PATH_ERRNOS = frozenset(
    {_errno.ENOENT, _errno.ENOTDIR, _errno.EISDIR, _errno.ENAMETOOLONG, _errno.ELOOP}
)


def _one_line(text: str) -> str:
    """`text` with line breaks escaped and its length bounded, so a message stays one line."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > 4 * _MAX_QUOTED_CHARS:
        text = text[: 4 * _MAX_QUOTED_CHARS - 3] + "..."
    return text


def show_path(path: str | os.PathLike[str] | int) -> str:
    """A path (or fd) as it appears in messages: quoted, escaped, one line."""
    if isinstance(path, int):
        return f"fd {path}"
    return repr(os.fsdecode(path))


def errno_text(err: int | None, strerror: str | None = None) -> str:
    """'ENOSPC (No space left on device)' for an errno; 'unknown error' for None."""
    if err is None:
        return strerror or "unknown error"
    name = _errno.errorcode.get(err, f"errno {err}")
    return f"{name} ({strerror or os.strerror(err)})"


def _version_text(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


class SnapshotError(Exception):
    """Base class: a snapshot could not be saved or loaded. `errno` is set when an OSError
    caused it."""

    errno: int | None = None

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(_one_line(message))
        self.errno = errno


class QuiesceTimeoutError(SnapshotError):
    """The vCPUs did not stop within the allowed time, so no consistent snapshot exists."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"vCPUs did not quiesce within {timeout_ms} ms")
        self.timeout_ms = timeout_ms


class MagicMismatchError(SnapshotError):
    """The state file's magic is not this architecture's (wrong arch or not a snapshot)."""

    def __init__(self, found: int, expected: int) -> None:
        super().__init__(
            f"snapshot magic mismatch (file: {found:#018x}, expected: {expected:#018x})"
        )
        self.found = found
        self.expected = expected


class VersionMismatchError(SnapshotError):
    """The state file's format version cannot be read: other major, or newer minor."""

    def __init__(self, found: Sequence[int], supported: Sequence[int]) -> None:
        super().__init__(
            f"snapshot version mismatch (file: {_version_text(found)}, "
            f"supported: {_version_text(supported)})"
        )
        self.found = tuple(found)
        self.supported = tuple(supported)


class CrcMismatchError(SnapshotError):
    """The state file's CRC-64 trailer does not match its contents (corrupt or truncated)."""

    def __init__(self, stored: int, computed: int) -> None:
        super().__init__("snapshot CRC64 mismatch")
        self.stored = stored
        self.computed = computed


class TooShortError(SnapshotError):
    """The state file is shorter than its fixed trailer."""

    def __init__(self, length: int, minimum: int) -> None:
        super().__init__(f"snapshot too short ({length} bytes, need at least {minimum})")
        self.length = length
        self.minimum = minimum


class IncompatibleError(SnapshotError):
    """The snapshot is well formed but cannot be used here (e.g. RAM size, memory file kind)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"snapshot incompatible: {reason}")
        self.reason = reason


class AtomicCommitFailedError(SnapshotError):
    """Saving a snapshot failed. Unless `committed` is True, the destination still holds the
    previous snapshot (if any) and every temporary file was removed. `committed` True means the
    new snapshot is in place but the final step or its durability could not be confirmed."""

    def __init__(
        self,
        dest: str | os.PathLike[str],
        reason: str,
        *,
        errno: int | None = None,
        committed: bool = False,
    ) -> None:
        tail = " (the new snapshot is in place but not confirmed durable)" if committed else ""
        super().__init__(f"atomic commit of {show_path(dest)} failed: {reason}{tail}", errno=errno)
        self.dest = os.fspath(dest)
        self.committed = committed


class AtomicCommitCrossFsError(SnapshotError):
    """A temporary file and its destination are on different filesystems, so the final rename
    could not be atomic; refused before anything was written."""

    def __init__(self, temp_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
        super().__init__(
            f"atomic commit refused: {show_path(dest)} is not on the same filesystem "
            f"as its temporary directory {show_path(temp_dir)}"
        )
        self.temp_dir = os.fspath(temp_dir)
        self.dest = os.fspath(dest)


class InvalidPathError(SnapshotError):
    """A snapshot path is unusable: missing, not a regular file, badly named, ..."""

    def __init__(
        self, path: str | os.PathLike[str] | int, reason: str, *, errno: int | None = None
    ) -> None:
        super().__init__(f"invalid snapshot path {show_path(path)}: {reason}", errno=errno)
        self.path = path if isinstance(path, int) else os.fspath(path)
        self.reason = reason


class EncodingError(SnapshotError):
    """The state could not be decoded or is structurally invalid; `detail` names the field."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid snapshot: {detail}")
        self.detail = detail


class SizeLimitExceededError(SnapshotError):
    """A state file is larger than the deserialization limit (bytes)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"snapshot state file too large ({shown}, limit {limit} bytes)")
        self.limit = limit
        self.size = size


class MemoryIoError(SnapshotError):
    """Reading, writing or mapping a memory file failed."""

    def __init__(self, detail: str, *, errno: int | None = None) -> None:
        super().__init__(f"snapshot memory file I/O error: {detail}", errno=errno)


class SnapshotIoError(SnapshotError):
    """Reading or writing a state file or snapshot directory failed (squib's `Io`)."""

    def __init__(self, detail: str, *, errno: int | None = None) -> None:
        super().__init__(f"snapshot I/O error: {detail}", errno=errno)


class MemoryFileMismatchError(SnapshotError):
    """The memory file is not the one its state file records (length, kind or digest differ):
    the pair does not belong together."""

    def __init__(
        self, path: str | os.PathLike[str] | int, what: str, found: object, expected: object
    ) -> None:
        super().__init__(
            f"memory file {show_path(path)} does not match its state file: "
            f"{what} is {found}, state file records {expected}"
        )
        self.what = what
        self.found = found
        self.expected = expected


class CorruptMemoryFileError(SnapshotError):
    """A compressed memory file is damaged: its footer, its index, or frame `frame` fails its
    checks (checksum, size, decoding). `frame` is None for the footer and index."""

    def __init__(
        self, path: str | os.PathLike[str] | int, detail: str, *, frame: int | None = None
    ) -> None:
        where = "" if frame is None else f"frame {frame}: "
        super().__init__(f"memory file {show_path(path)} is corrupt: {where}{detail}")
        self.frame = frame
        self.detail = detail


class BrokenLinkError(SnapshotError):
    """A snapshot chain is broken at the snapshot `path`: `reason` is what was found there
    (the error raised while checking it, or its link to its parent)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"broken chain link {show_path(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class ParentMismatchError(SnapshotError):
    """A diff memory file was applied to a base other than the one it was taken against."""

    def __init__(self, expected_parent: str, base_digest: str) -> None:
        super().__init__(
            f"diff memory file applies to a base with digest {expected_parent}, "
            f"but the base given has digest {base_digest}"
        )
        self.expected_parent = expected_parent
        self.base_digest = base_digest


class MissingParentError(SnapshotError):
    """A diff cannot be restored because the base it must be laid over is missing: none was
    given (`path` None), or the diff's state file `path` names a parent `parent_path` that does
    not exist."""

    def __init__(
        self,
        expected_parent: str,
        *,
        path: str | os.PathLike[str] | None = None,
        parent_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if path is None:
            message = f"diff memory file needs its base image (digest {expected_parent}) and none was given"
        else:
            message = (
                f"diff {show_path(path)} needs its parent snapshot {show_path(parent_path or '?')} "
                f"(memory digest {expected_parent}), which was not found"
            )
        super().__init__(message)
        self.expected_parent = expected_parent
        self.path = None if path is None else os.fspath(path)
        self.parent_path = None if parent_path is None else os.fspath(parent_path)


class ChainLoopError(IncompatibleError):
    """A snapshot's chain of parents leads back to a snapshot already in it."""

    def __init__(self, path: str | os.PathLike[str], repeated: str | os.PathLike[str]) -> None:
        super().__init__(f"the diff chain of {show_path(path)} loops: {show_path(repeated)} is its own ancestor")
        self.path = os.fspath(path)
        self.repeated = os.fspath(repeated)


def from_os_error(
    exc: OSError,
    action: str,
    path: str | os.PathLike[str] | int,
    io_class: type[SnapshotIoError] | type[MemoryIoError] = SnapshotIoError,
) -> SnapshotError:
    """The SnapshotError for `exc`, raised while `action` (e.g. 'reading') on `path`:
    InvalidPathError for path errnos (ENOENT, ENOTDIR, EISDIR, ENAMETOOLONG, ELOOP), otherwise
    `io_class`. The message names the errno (e.g. 'EACCES (Permission denied)')."""
    text = errno_text(exc.errno, exc.strerror)
    if exc.errno in _PATH_ERRNOS:
        return InvalidPathError(path, f"{action}: {text}", errno=exc.errno)
    return io_class(f"{action} {show_path(path)}: {text}", errno=exc.errno)


def resolve_path(path: str | os.PathLike[str], what: str = "the name") -> Path:
    """`path` made absolute with symlinks resolved; InvalidPathError (naming `what`) if it
    cannot be, e.g. a symlink loop (RuntimeError before Python 3.13, OSError after)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: an embedded NUL byte
        raise InvalidPathError(path, f"cannot resolve {what}: {exc}") from None


def open_regular_readonly(
    path: str | os.PathLike[str],
    io_class: type[SnapshotIoError] | type[MemoryIoError] = SnapshotIoError,
) -> int:
    """Open an untrusted snapshot file read-only and return its fd (caller closes it).

    Opens with O_NONBLOCK so a FIFO or device path cannot block, then refuses anything that
    is not a regular file (InvalidPathError). OSErrors become SnapshotErrors (`from_os_error`).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, "opening", path, io_class) from exc
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise from_os_error(exc, "inspecting", path, io_class) from exc
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InvalidPathError(path, "not a regular file")
    return fd
