"""Disk faults during save: no space, I/O errors, a read-only or size-limited destination.

Two ways to make a save's I/O fail, each trial in a forked child (the VM and the calling
process stay as they were):

- injected (`Fault`): the n-th call of one os function (open, write, pwrite, ftruncate,
  fsync, replace, ...) fails with an errno (ENOSPC, EIO, EROFS, EDQUOT, EFBIG, ...).
- real (`real_trials`): the save runs in a private mount namespace on a small tmpfs, sized
  so the previous snapshot fits but the new one does not (the kernel's own ENOSPC, hit at
  different points as the size varies), or remounted read-only (EROFS); or under
  RLIMIT_FSIZE (EFBIG). The mounts need CAP_SYS_ADMIN: `real_filesystems_available()`.

What must hold (`judge`): the save raises a SnapshotError whose one-line message names the
errno; no temporary file is left; the previous snapshot is intact (the very same files, and
it loads as before) - unless the error says the new snapshot was committed, when it loads as
new and `recover` tidies the directory; and once the fault is gone the same save succeeds.
"""
from __future__ import annotations

import ctypes
import errno
import os
import random
import resource
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from snapshot.commit import recover
from snapshot.errors import SnapshotError
from tools.faults.child import call_in_child
from tools.faults.corpus import listing
from tools.faults.outcome import Stopwatch, Trial, Verdict, describe_exception, failed
from tools.faults.scenarios import SUFFIXES, Scenario

INJECTABLE_CALLS = ("open", "write", "pwrite", "ftruncate", "fsync", "replace", "rename", "unlink")
ERRNOS = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES)
CHILD_TIME_LIMIT = 60.0  # seconds

# Linux mount(2) / unshare(2) flags (include/uapi/linux/mount.h, sched.h).
CLONE_NEWNS = 0x0002_0000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 0x4_0000
TMPFS_ROOM = 64 << 20  # bytes: a tmpfs size with room for any save here


@dataclass(frozen=True)
class Fault:
    """Call number `nth` (from 1) of os.`call` fails with `code`."""

    call: str
    nth: int
    code: int

    def __str__(self) -> str:
        return f"{self.call} #{self.nth} fails with {errno.errorcode[self.code]}"


def _wrap_calls(on_call: Callable[[str, int], None]) -> None:
    """In a child: call `on_call(name, n)` before the n-th call of each INJECTABLE_CALLS."""
    counts: Counter[str] = Counter()

    def wrapped(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            on_call(name, counts[name])
            return real(*args, **kwargs)

        return call

    for name in INJECTABLE_CALLS:
        setattr(os, name, wrapped(name, getattr(os, name)))


def count_calls(scenario: Scenario) -> dict[str, int]:
    """How many times a fault-free run of the scenario's action calls each injectable call."""
    scenario.prepare()

    def counted() -> dict[str, int]:
        seen: Counter[str] = Counter()
        _wrap_calls(lambda name, n: seen.update((name,)))
        scenario.action()
        return dict(seen)

    end = call_in_child(counted, CHILD_TIME_LIMIT)
    if end.ending != "done":
        raise RuntimeError(f"{scenario.name}: a fault-free run failed: {end.ending} {end.error}")
    return dict(end.result)


def faults_for(counts: dict[str, int], rng: random.Random, per_call: int) -> Iterator[Fault]:
    """For every call the action makes: its first and last occurrence and `per_call` - 2
    random ones, each with a random errno."""
    for call, total in sorted(counts.items()):
        picks = {1, total} | {rng.randint(1, total) for _ in range(max(0, per_call - 2))}
        for nth in sorted(picks):
            yield Fault(call, nth, rng.choice(ERRNOS))


def _save_outcome(action: Callable[[], object]) -> dict[str, Any]:
    """Run `action`; describe how it ended as plain data."""
    try:
        action()
    except SnapshotError as exc:
        return {
            "raised": "SnapshotError",
            "type": type(exc).__name__,
            "message": str(exc),
            "errno": exc.errno,
            "committed": bool(getattr(exc, "committed", False)),
        }
    except Exception as exc:
        return {"raised": "other", "message": describe_exception(exc)}
    return {"raised": None}


def _inodes(d: Path) -> dict[str, int]:
    return {n: os.lstat(d / n).st_ino for n in os.listdir(d)}


def judge(scenario: Scenario, before: dict[str, int], outcome: dict[str, Any], code: int | None) -> tuple[Verdict, str, str]:
    """(verdict, detail, tag) for a save that met an I/O fault with errno `code` (None: any)."""
    d = scenario.directory
    if outcome["raised"] is None:
        return Verdict.SURVIVED, "", "fit"  # the fault did not stop it (e.g. the fs had room)
    if outcome["raised"] != "SnapshotError":
        return Verdict.WRONG_EXCEPTION, outcome["message"], "error"
    message = outcome["message"]
    if "\n" in message or (code is not None and errno.errorcode[code] not in message):
        return Verdict.VIOLATION, f"unclear message: {message!r}", "error"
    temps = sorted(n for n in listing(d) if ".tmp-" in n)
    if temps:
        return Verdict.VIOLATION, f"temporary files left: {temps} ({message})", "error"
    if outcome["committed"]:
        verdict, detail, _ = scenario.check_loads((scenario.after,))
        if verdict is Verdict.SURVIVED:
            recover(d / f"{scenario.dest}.snap")
            verdict, detail = scenario.check_final()
        return verdict, detail, "committed"
    if _inodes(d) != before:
        return Verdict.VIOLATION, f"the previous files changed: {sorted(before)} -> {sorted(listing(d))} ({message})", "refused"
    verdict, detail, _ = scenario.check_loads((scenario.before,))
    return verdict, detail, "refused"


def _retry(scenario: Scenario) -> tuple[Verdict, str]:
    """With the fault gone, the action must succeed and leave exactly the final files."""
    outcome = _save_outcome(scenario.action)
    if outcome["raised"] is not None:
        return Verdict.VIOLATION, f"the retry failed: {outcome['message']}"
    return scenario.check_final()


def run_injected(scenario: Scenario, fault: Fault) -> Trial:
    """The scenario's action with `fault` injected, then the checks and a fault-free retry."""
    case = f"{scenario.name}: {fault}"
    clock = Stopwatch()
    scenario.prepare()
    before = _inodes(scenario.directory)

    def faulty() -> dict[str, Any]:
        def maybe_fail(name: str, n: int) -> None:
            if name == fault.call and n == fault.nth:
                raise OSError(fault.code, os.strerror(fault.code))

        _wrap_calls(maybe_fail)
        return _save_outcome(scenario.action)

    end = call_in_child(faulty, CHILD_TIME_LIMIT)
    tags = (f"errno:{errno.errorcode[fault.code]}", f"call:{fault.call}")
    if end.ending != "done":
        verdict = Verdict.HANG if end.ending == "hang" else Verdict.WRONG_EXCEPTION
        return failed(case, verdict, f"child {end.ending}: {end.error}", tags=tags)
    verdict, detail, tag = judge(scenario, before, end.result, fault.code)
    if verdict is Verdict.SURVIVED:
        retry = call_in_child(lambda: list(_retry(scenario)), CHILD_TIME_LIMIT)
        if retry.ending != "done":
            verdict, detail = Verdict.WRONG_EXCEPTION, f"retry child {retry.ending}: {retry.error}"
        else:
            verdict, detail = Verdict(retry.result[0]), retry.result[1]
    return Trial(case, verdict, detail, clock.seconds, tags + (f"outcome:{tag}",))


# --- real filesystems -------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount_tmpfs(target: Path, size: int, flags: int = 0) -> None:
    """In a child: a private mount namespace with a `size`-byte tmpfs on `target`."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, f"size={size},mode=0700".encode()), "mount tmpfs")


def _remount(target: Path, size: int, read_only: bool) -> None:
    flags = MS_REMOUNT | (MS_RDONLY if read_only else 0)
    _check(_libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, f"size={size}".encode()), "remount")


_available: bool | None = None


def real_filesystems_available() -> bool:
    """True if a child may create a mount namespace and mount a tmpfs (CAP_SYS_ADMIN)."""
    global _available
    if _available is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            end = call_in_child(lambda: _mount_tmpfs(Path(d), 1 << 20), CHILD_TIME_LIMIT)
        _available = end.ending == "done"
    return _available


def allocated(paths: list[Path]) -> int:
    """Bytes of disk the files use (holes excluded)."""
    return sum(os.stat(p).st_blocks * 512 for p in paths)


@dataclass(frozen=True)
class RealFault:
    """`kind`: 'enospc' (a tmpfs of `size` bytes), 'erofs' (a tmpfs remounted read-only) or
    'efbig' (RLIMIT_FSIZE of `size` bytes)."""

    kind: str
    size: int = 0

    def __str__(self) -> str:
        return f"{self.kind} ({self.size} bytes)" if self.size else self.kind


def real_faults(scenario: Scenario, steps: int) -> list[RealFault]:
    """ENOSPC at `steps` tmpfs sizes from 'the previous snapshot just fits' up to 'the new one
    almost fits too' (measured by a fault-free run), one read-only destination and one
    file-size limit."""
    d = scenario.directory
    scenario.prepare()
    old = allocated([d / n for n in listing(d)])
    done = call_in_child(scenario.action, CHILD_TIME_LIMIT)
    if done.ending != "done":
        raise RuntimeError(f"{scenario.name}: a fault-free run failed: {done.ending} {done.error}")
    new = allocated([d / f"{scenario.dest}{suffix}" for suffix in SUFFIXES])
    sizes = sorted({old + 4096 + (new * i) // steps // 4096 * 4096 for i in range(steps)})
    return [RealFault("enospc", s) for s in sizes] + [RealFault("erofs"), RealFault("efbig", 1 << 20)]


def run_real(scenario: Scenario, fault: RealFault) -> Trial:
    """The scenario's action against a really full, read-only or size-limited destination."""
    case = f"{scenario.name}: {fault}"
    clock = Stopwatch()
    scenario.prepare()  # the mount point (the child mounts over it)
    expected = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "efbig": errno.EFBIG}[fault.kind]

    def in_child() -> list[str]:
        d = scenario.directory
        if fault.kind == "efbig":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG, not death
            resource.setrlimit(resource.RLIMIT_FSIZE, (fault.size, resource.RLIM_INFINITY))
        else:
            _mount_tmpfs(d, fault.size if fault.kind == "enospc" else TMPFS_ROOM)
            try:
                scenario.prepare(copy=True)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return [Verdict.SURVIVED.value, "", "too-small"]  # not even the old one fits
                raise
            if fault.kind == "erofs":
                _remount(d, TMPFS_ROOM, read_only=True)
        before = _inodes(d)
        verdict, detail, tag = judge(scenario, before, _save_outcome(scenario.action), expected)
        if verdict is Verdict.SURVIVED and tag != "fit":
            if fault.kind == "efbig":
                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            else:
                _remount(d, TMPFS_ROOM, read_only=False)
            verdict, detail = _retry(scenario)
        return [verdict.value, detail, tag]

    end = call_in_child(in_child, CHILD_TIME_LIMIT)
    tags = (f"real:{fault.kind}",)
    if end.ending != "done":
        verdict = Verdict.HANG if end.ending == "hang" else Verdict.WRONG_EXCEPTION
        return failed(case, verdict, f"child {end.ending}: {end.error}", tags=tags)
    verdict_text, detail, tag = end.result
    return Trial(case, Verdict(verdict_text), detail, clock.seconds, tags + (f"outcome:{tag}",))
