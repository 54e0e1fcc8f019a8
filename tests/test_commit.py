"""snapshot.commit: the crash-safe pair commit, recovery and the loader rule."""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

from snapshot import commit
from snapshot.commit import (
    OpenedPair,
    SnapshotPaths,
    check_same_filesystem,
    cleanup_stale_temps,
    commit_pair,
    open_pair,
    recover,
)
from snapshot.envelope import MAX_STATE_FILE_SIZE, read_state_file
from snapshot.errors import (
    AtomicCommitCrossFsError,
    AtomicCommitFailedError,
    InvalidPathError,
    MemoryFileMismatchError,
)
from snapshot.memfile import read_into, write_diff, write_full
from snapshot.meminfo import MemFileInfo
from snapshot.plain import U64, from_plain, to_plain

PAGE = 4096
RAM_SIZE = 16 * PAGE


@dataclass
class State:
    """A stand-in MicrovmState: what matters is that it records its memory file."""

    generation: U64
    blob: bytes = b""
    memory: Optional[MemFileInfo] = None
    memory_file: Optional[str] = None  # written by commit_pair for a memory file not named <name>.mem


def ram_for(generation: int) -> np.ndarray:
    ram = np.zeros(RAM_SIZE, np.uint8)
    ram[generation % 16 * PAGE : (generation % 16 + 1) * PAGE] = generation + 1
    ram[-1] = generation
    ram.flags.writeable = False
    return ram


def save(d: Path, generation: int, name: str = "vm") -> MemFileInfo:
    ram = ram_for(generation)
    return commit_pair(
        d / f"{name}.snap",
        d / f"{name}.mem",
        lambda fd: write_full(fd, ram, PAGE),
        lambda info: to_plain(State(generation, memory=info)),
    )


def load(d: Path, name: str = "vm") -> int | None:
    """The generation the snapshot loads as (state and memory verified to agree), or None if
    there is no snapshot."""
    try:
        pair = open_pair(d / f"{name}.snap")
    except InvalidPathError:
        return None
    with pair:
        state = from_plain(State, pair.data)
        ram = np.zeros(RAM_SIZE, np.uint8)
        read_into(pair.memory_fd, ram, pair.memory)
    assert state.memory == pair.memory
    assert np.array_equal(ram, ram_for(state.generation))
    return state.generation


def listing(d: Path) -> set[str]:
    return set(os.listdir(d))


def test_commit_and_load(tmp_path: Path) -> None:
    info = save(tmp_path, 1)
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}
    assert load(tmp_path) == 1
    assert save(tmp_path, 2) != info
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}
    assert load(tmp_path) == 2
    assert stat.S_IMODE(os.stat(tmp_path / "vm.snap").st_mode) == 0o600


def test_a_mismatched_pair_is_detected(tmp_path: Path) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2, name="other")
    os.replace(tmp_path / "other.mem", tmp_path / "vm.mem")  # what squib's crash window leaves
    with pytest.raises(MemoryFileMismatchError, match="digest"):
        load(tmp_path)


def assert_previous_intact(d: Path, before: dict[str, bytes]) -> None:
    assert {n: (d / n).read_bytes() for n in listing(d)} == before  # same files, same bytes
    assert load(d) == 1


def snapshot_of(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in listing(d)}


def enospc(*_: object) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("write_mem", "state_for", "message", "err"),
    [
        (enospc, None, r"writing the memory file: ENOSPC \(No space left on device\)$", errno.ENOSPC),
        (None, enospc, r"building the state file: ENOSPC", errno.ENOSPC),
        (None, lambda info: to_plain(State(2)), r"does not record its memory file", None),
        (
            None,
            lambda info: to_plain(State(2, memory=replace(info, pages_written=0))),
            r"'memory' field is not the memory file written",
            None,
        ),
        (None, lambda info: {"generation": 2}, r"does not record its memory file", None),
        (
            None,
            lambda info: to_plain(State(2, b"\x00" * MAX_STATE_FILE_SIZE, info)),
            r"state file too large",
            None,
        ),
        (lambda fd: "not info", None, r"write_mem returned str", None),
    ],
)
def test_failed_save_leaves_previous_snapshot_intact(
    tmp_path: Path,
    write_mem: Callable[[int], Any] | None,
    state_for: Callable[[MemFileInfo], Any] | None,
    message: str,
    err: int | None,
) -> None:
    save(tmp_path, 1)
    before = snapshot_of(tmp_path)
    ram = ram_for(2)
    with pytest.raises(AtomicCommitFailedError, match=message) as exc:
        commit_pair(
            tmp_path / "vm.snap",
            tmp_path / "vm.mem",
            write_mem or (lambda fd: write_full(fd, ram, PAGE)),
            state_for or (lambda info: to_plain(State(2, memory=info))),
        )
    assert exc.value.errno == err and not exc.value.committed
    assert exc.value.__cause__ is not None
    assert "\n" not in str(exc.value)
    assert_previous_intact(tmp_path, before)


def failing_at(name: str, nth: int, code: int) -> Callable[..., Any]:
    """os.<name> that fails with `code` on its nth call (counting from 1)."""
    real = getattr(os, name)
    calls = [0]

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize(
    ("name", "nth", "code", "stage"),
    [
        ("fsync", 1, errno.EIO, "syncing the memory file: EIO"),
        ("fsync", 2, errno.EIO, "syncing the state file: EIO"),
        ("replace", 1, errno.EROFS, "staging the memory file: EROFS"),
        ("replace", 2, errno.EACCES, "renaming the state file into place: EACCES"),
        ("fsync", 3, errno.EIO, "staging the memory file: EIO"),
    ],
)
def test_os_failures_before_the_commit_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, nth: int, code: int, stage: str
) -> None:
    save(tmp_path, 1)
    before = snapshot_of(tmp_path)
    monkeypatch.setattr(os, name, failing_at(name, nth, code))
    with pytest.raises(AtomicCommitFailedError, match=stage) as exc:
        save(tmp_path, 2)
    monkeypatch.undo()
    assert exc.value.errno == code and not exc.value.committed
    assert_previous_intact(tmp_path, before)


def test_read_only_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, 1)
    before = snapshot_of(tmp_path)
    if os.geteuid() == 0:  # root ignores directory permissions: inject the errno instead
        real_open = os.open

        def refuse_create(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse_create)
    else:
        tmp_path.chmod(0o500)
    try:
        with pytest.raises(AtomicCommitFailedError, match=r"creating the memory temp file: EACCES") as exc:
            save(tmp_path, 2)
    finally:
        tmp_path.chmod(0o700)
        monkeypatch.undo()
    assert exc.value.errno == errno.EACCES
    assert_previous_intact(tmp_path, before)


def test_failure_after_the_commit_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, 1)
    monkeypatch.setattr(os, "replace", failing_at("replace", 3, errno.EIO))
    with pytest.raises(AtomicCommitFailedError, match="renaming the memory file into place: EIO") as exc:
        save(tmp_path, 2)
    monkeypatch.undo()
    assert exc.value.committed and "not confirmed durable" in str(exc.value)
    staged = [n for n in listing(tmp_path) if ".staged-" in n]
    assert len(staged) == 1
    assert load(tmp_path) == 2  # the loader finds the staged memory file
    assert recover(tmp_path / "vm.snap") == [f"renamed {staged[0]} to vm.mem"]
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}
    assert load(tmp_path) == 2


def test_diff_snapshots(tmp_path: Path) -> None:
    base = save(tmp_path, 1, name="base")
    ram = np.array(ram_for(1))
    ram[3 * PAGE] = 0x77
    ram.flags.writeable = False
    info = commit_pair(
        tmp_path / "d1.snap",
        tmp_path / "d1.mem",
        lambda fd: write_diff(fd, ram, [(3, 1)], PAGE, parent_digest=base.digest),
        lambda i: to_plain(State(7, memory=i)),
    )
    restored = np.zeros(RAM_SIZE, np.uint8)
    with open_pair(tmp_path / "base.snap") as b, open_pair(tmp_path / "d1.snap") as d:
        read_into(b.memory_fd, restored, b.memory)
        read_into(d.memory_fd, restored, d.memory, parent=b.memory)
    assert d.memory == info and np.array_equal(restored, ram)

    # Saving a diff over the very snapshot it is based on would destroy its base.
    before = snapshot_of(tmp_path)
    with pytest.raises(AtomicCommitFailedError, match="a diff whose base it is"):
        commit_pair(
            tmp_path / "base.snap",
            tmp_path / "base.mem",
            lambda fd: write_diff(fd, ram, [(3, 1)], PAGE, parent_digest=base.digest),
            lambda i: to_plain(State(8, memory=i)),
        )
    assert snapshot_of(tmp_path) == before


def test_stale_temps_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    token = "123-0123456789abcdef"
    ours = [f".vm.snap.tmp-{token}", f".vm.mem.tmp-{token}"]
    others = [
        f".vm.x.snap.tmp-{token}",  # snapshot "vm.x"
        f".vmx.mem.tmp-{token}",
        f"vm.snap.tmp-{token}",  # no leading dot: not ours
        ".vm.snap.tmp-notatoken",
        f".vm.snap.tmp-{token}.keep",
        "notes.txt",
    ]
    for n in ours + others:
        (tmp_path / n).write_bytes(b"x")
    assert sorted(p.name for p in cleanup_stale_temps(tmp_path, "vm")) == sorted(ours)
    assert listing(tmp_path) == set(others)
    (tmp_path / ours[0]).write_bytes(b"x")
    save(tmp_path, 1)  # the next commit to the name cleans too
    assert listing(tmp_path) == set(others) | {"vm.snap", "vm.mem"}


def test_recovery_removes_an_orphaned_staged_file(tmp_path: Path) -> None:
    save(tmp_path, 1)
    orphan = tmp_path / f".vm.mem.staged-{'c' * 32}"  # a commit that died before its commit point
    orphan.write_bytes(b"x")
    assert load(tmp_path) == 1
    assert recover(tmp_path / "vm.snap") == [f"removed {orphan.name}"]
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}
    assert recover(tmp_path / "vm.snap") == []


def test_an_unreadable_state_file_keeps_staged_files_but_can_be_overwritten(tmp_path: Path) -> None:
    (tmp_path / "vm.snap").write_bytes(b"corrupt")
    staged = tmp_path / f".vm.mem.staged-{'d' * 32}"
    staged.write_bytes(b"x")
    assert recover(tmp_path / "vm.snap") == []  # unreadable: nothing is guessed
    save(tmp_path, 1)
    assert load(tmp_path) == 1 and staged.exists()
    assert recover(tmp_path / "vm.snap") == [f"removed {staged.name}"]


def test_paths_are_validated_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidPathError, match="cannot be the state file"):
        commit_pair(tmp_path / "vm.snap", tmp_path / "vm.snap", enospc, enospc)
    with pytest.raises(InvalidPathError, match=r"<name>\.snap"):
        commit_pair(tmp_path / "vm.state", tmp_path / "vm.mem", enospc, enospc)
    with pytest.raises(InvalidPathError, match="ENOENT"):
        commit_pair(tmp_path / "no" / "vm.snap", tmp_path / "no" / "vm.mem", enospc, enospc)
    (tmp_path / "vm.mem").mkdir()
    with pytest.raises(InvalidPathError, match="not a regular file"):
        commit_pair(tmp_path / "vm.snap", tmp_path / "vm.mem", enospc, enospc)
    assert listing(tmp_path) == {"vm.mem"}


def test_cross_filesystem_destination_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other_fs = Path("/proc")
    assert os.stat(other_fs).st_dev != os.stat(tmp_path).st_dev
    with pytest.raises(AtomicCommitCrossFsError, match="not on the same filesystem"):
        check_same_filesystem(other_fs, tmp_path / "vm.snap")
    check_same_filesystem(tmp_path, tmp_path / "vm.snap")

    save(tmp_path, 1)
    before = snapshot_of(tmp_path)
    real_lstat = os.lstat

    def mounted_elsewhere(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        st = real_lstat(path, *args, **kwargs)
        if str(path).endswith("vm.mem"):  # as if vm.mem were a bind mount
            fields = list(st)
            fields[stat.ST_DEV] += 1
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "lstat", mounted_elsewhere)
    with pytest.raises(AtomicCommitCrossFsError):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert_previous_intact(tmp_path, before)


def test_concurrent_commits_serialise(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def worker(generation: int) -> None:
        try:
            for _ in range(3):
                save(tmp_path, generation)
                assert load(tmp_path) in range(1, 5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(g,)) for g in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}
    assert load(tmp_path) in range(1, 5)


# --- crash consistency: kill the saving process at every file-system call --------------------
_MUTATING_CALLS = ("open", "write", "pwrite", "ftruncate", "fsync", "replace", "unlink")
_DONE, _CRASHED, _BROKEN = 10, 11, 12


def run_until_crash(k: int, action: Callable[[], None]) -> int:
    """Run `action` in a child process that dies (os._exit: no cleanup, no finally) just
    before its k-th file-system call. Returns _DONE if it finished first, else _CRASHED."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            calls = [0]

            def die_at_k(real: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    calls[0] += 1
                    if calls[0] == k:
                        os._exit(_CRASHED)
                    return real(*args, **kwargs)

                return call

            for name in _MUTATING_CALLS:
                setattr(os, name, die_at_k(getattr(os, name)))
            action()
            os._exit(_DONE)
        except BaseException:
            os._exit(_BROKEN)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (_DONE, _CRASHED), f"child failed at crash point {k} (exit {code})"
    return code


def crash_everywhere(d: Path, old: int | None, new: int) -> list[int]:
    """Crash a save of `new` over `old` at every call; after each crash the snapshot must load
    as `old` or `new`, recovery must leave exactly the two files, and a later save must work.
    Returns the crash points that left a staged memory file behind."""
    outcomes: set[int | None] = set()
    staged_points = []
    for k in range(1, 200):
        for n in listing(d):
            os.unlink(d / n)
        if old is not None:
            save(d, old)
        code = run_until_crash(k, lambda: save(d, new) and None)
        outcome = load(d)
        assert outcome in (old, new), f"crash point {k}: loads as {outcome}"
        outcomes.add(outcome)
        if any(".staged-" in n for n in listing(d)):
            staged_points.append(k)
        if outcome is not None:
            recover(d / "vm.snap")
            assert listing(d) == {"vm.snap", "vm.mem"}, f"crash point {k}"
            assert load(d) == outcome
        save(d, 99)
        assert load(d) == 99 and listing(d) == {"vm.snap", "vm.mem"}
        if code == _DONE:
            break
    else:
        pytest.fail("the save never completed")
    assert outcomes == {old, new}  # crashes happened on both sides of the commit point
    return staged_points


def test_crash_at_every_step_loads_old_or_new(tmp_path: Path) -> None:
    assert crash_everywhere(tmp_path, old=1, new=2)


def test_crash_of_a_first_save_loads_nothing_or_new(tmp_path: Path) -> None:
    crash_everywhere(tmp_path, old=None, new=2)


@pytest.mark.parametrize("left_as", [1, 2], ids=["staged-orphan", "after-commit-point"])
def test_crash_while_recovering_a_crashed_save(tmp_path: Path, left_as: int) -> None:
    """A save crashes leaving a staged memory file (before or after its commit point); then a
    second save, which must first recover, crashes anywhere: still old-or-new at every instant."""
    for k in range(1, 200):
        for n in listing(tmp_path):
            os.unlink(tmp_path / n)
        save(tmp_path, 1)
        run_until_crash(k, lambda: save(tmp_path, 2) and None)
        if any(".staged-" in n for n in listing(tmp_path)) and load(tmp_path) == left_as:
            break
    else:
        pytest.fail("no crash point left a staged file")
    before = snapshot_of(tmp_path)
    outcomes = set()
    for j in range(1, 200):
        for n in listing(tmp_path):
            os.unlink(tmp_path / n)
        for n, data in before.items():
            (tmp_path / n).write_bytes(data)
        code = run_until_crash(j, lambda: save(tmp_path, 3) and None)
        outcome = load(tmp_path)
        assert outcome in (left_as, 3), f"second crash point {j}: loads as {outcome}"
        outcomes.add(outcome)
        if code == _DONE:
            break
    assert outcomes == {left_as, 3}
    assert listing(tmp_path) == {"vm.snap", "vm.mem"}


def test_opened_pair_survives_a_later_commit(tmp_path: Path) -> None:
    save(tmp_path, 1)
    pair: OpenedPair = open_pair(tmp_path / "vm.snap")
    try:
        save(tmp_path, 2)  # renames over vm.mem; the open fd keeps the old image
        ram = np.zeros(RAM_SIZE, np.uint8)
        read_into(pair.memory_fd, ram, pair.memory)
        assert np.array_equal(ram, ram_for(1))
    finally:
        pair.close()


def test_snapshot_paths() -> None:
    paths = SnapshotPaths.for_state("/d/vm.1.snap")
    assert (paths.directory, paths.name, paths.memory) == (Path("/d"), "vm.1", Path("/d/vm.1.mem"))
    assert paths.staged_name("a" * 32) == f".vm.1.mem{commit.STAGED_MARK}{'a' * 32}"
    for bad in ("/d/.snap", "/d/vm.mem", "/d/vm.snap.tmp"):
        with pytest.raises(InvalidPathError):
            SnapshotPaths.for_state(bad)


# --- a memory file named apart from its state file (format 1.1) ------------------------------
def save_apart(d: Path, m: Path, generation: int) -> MemFileInfo:
    ram = ram_for(generation)
    return commit_pair(
        d / "vm.snap", m / "guest-memory", lambda fd: write_full(fd, ram, PAGE), lambda info: to_plain(State(generation, memory=info))
    )


def test_a_memory_file_in_another_directory_is_recorded_and_found(tmp_path: Path) -> None:
    d, m = tmp_path / "state", tmp_path / "memory"
    d.mkdir()
    m.mkdir()
    save_apart(d, m, 1)
    assert listing(d) == {"vm.snap"} and listing(m) == {"guest-memory"}
    assert read_state_file(d / "vm.snap")[1][commit.MEMORY_FILE_FIELD] == str(m / "guest-memory")
    assert load(d) == 1
    commit_pair(d / "vm.snap", d / "beside", lambda fd: write_full(fd, ram_for(2), PAGE), lambda info: to_plain(State(2, memory=info)))
    assert read_state_file(d / "vm.snap")[1][commit.MEMORY_FILE_FIELD] == "beside"  # a bare name
    assert load(d) == 2
    save(d, 3)
    assert commit.MEMORY_FILE_FIELD not in read_state_file(d / "vm.snap")[1]  # the default: nothing recorded
    assert load(d) == 3


def test_crash_at_every_step_with_the_memory_file_in_another_directory(tmp_path: Path) -> None:
    """The commit protocol with the memory file's temp and staged names in its own directory:
    a crash anywhere loads as old or new, and recovery leaves exactly the two files."""
    d, m = tmp_path / "state", tmp_path / "memory"
    d.mkdir()
    m.mkdir()
    outcomes: set[int | None] = set()
    staged = False
    for k in range(1, 200):
        for directory in (d, m):
            for n in listing(directory):
                os.unlink(directory / n)
        save_apart(d, m, 1)
        code = run_until_crash(k, lambda: save_apart(d, m, 2) and None)
        outcome = load(d)
        assert outcome in (1, 2), f"crash point {k}: loads as {outcome}"
        outcomes.add(outcome)
        staged |= any(".staged-" in n for n in listing(m))
        assert not any(".staged-" in n for n in listing(d))
        recover(d / "vm.snap")  # finds the memory directory from the state file
        assert (listing(d), listing(m)) == ({"vm.snap"}, {"guest-memory"}), f"crash point {k}"
        assert load(d) == outcome
        save_apart(d, m, 3)  # the next commit recovers whatever is left
        assert (listing(d), listing(m), load(d)) == ({"vm.snap"}, {"guest-memory"}, 3)
        if code == _DONE:
            break
    else:
        pytest.fail("the save never completed")
    assert outcomes == {1, 2} and staged


def test_bad_recorded_memory_file_names_are_refused(tmp_path: Path) -> None:
    for bad in ("../vm.mem", "sub/vm.mem", "", ".", "vm.snap"):
        with pytest.raises(InvalidPathError):
            SnapshotPaths.for_state(tmp_path / "vm.snap", bad)
