"""Every SnapshotError a user can meet when loading, describing or verifying a snapshot, each
from a crafted bad file: the right type, a message naming the problem, and no other exception.

The mutation campaign (test_reliability_files.py) throws random damage at the loaders; this
file pins down each error path on purpose, through the public entry points: `load_snapshot`
(both memory backends), `describe` (with and without `verify`) and the CLI.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from snapshot import errors
from snapshot.envelope import MAGIC_AARCH64, SNAPSHOT_VERSION, encode_state, read_state_file
from snapshot.describe import describe
from vmm.persist import MACHINE
from vmm import MicroVM, VmConfig
from vmm.cli import main
from vmm.layout import MIB

CONFIG = VmConfig(guest="memwalk", mem_size=32 * MIB, track_dirty_pages=True, params={"rounds": 0, "region_mib": 4})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `base` (full) and `top` (a diff over base), plus `other` (a full
    snapshot of another run), pristine: tests copy it before damaging anything."""
    d = tmp_path_factory.mktemp("chain")
    vm = MicroVM(CONFIG)
    vm.run(200_000)
    vm.save_snapshot(d / "base")
    vm.run(200_000)
    assert vm.dirty.count() > 0
    vm.save_snapshot(d / "top", "diff")
    other = MicroVM(VmConfig(**{**CONFIG.__dict__, "params": {"rounds": 0, "region_mib": 4, "pattern": 1}}))
    other.run(300_000)
    other.save_snapshot(d / "other")
    return d


@pytest.fixture()
def snaps(chain: Path, tmp_path: Path) -> Path:
    d = tmp_path / "snaps"
    shutil.copytree(chain, d)
    return d


def rewrite_state(path: Path, change: Callable[[dict[str, Any]], None], **envelope: Any) -> None:
    """Decode the state file, let `change` edit its plain data, re-encode it with a valid CRC."""
    _, data = read_state_file(path)
    change(data)
    path.write_bytes(encode_state(data, **envelope))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def set_field(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[keys[-1]] = value

    return change


def _truncate_state(d: Path) -> None:
    (d / "top.snap").write_bytes(b"\x01\x02\x03")


def _grow_state(d: Path) -> None:
    with open(d / "top.snap", "r+b") as f:
        f.truncate(10_000_001)


def _flip_state(d: Path) -> None:
    flip_byte(d / "top.snap", 40)


def _garbage_with_crc(d: Path) -> None:
    from snapshot.envelope import crc64

    payload = b"\xc1" * 64  # 0xc1 is never valid msgpack
    (d / "top.snap").write_bytes(payload + crc64(payload).to_bytes(8, "little"))


def _unknown_envelope_field(d: Path) -> None:
    import msgpack

    from snapshot.envelope import crc64

    payload = msgpack.packb({"header": {"magic": MAGIC_AARCH64, "version": [1, 0, 0]}, "data": {}, "x": 1})
    (d / "top.snap").write_bytes(payload + crc64(payload).to_bytes(8, "little"))


def _wrong_magic(d: Path) -> None:
    rewrite_state(d / "top.snap", lambda data: None, magic=0x0710_1984_BBBB_0000)


def _newer_major(d: Path) -> None:
    rewrite_state(d / "top.snap", lambda data: None, version=(SNAPSHOT_VERSION[0] + 1, 0, 0))


def _newer_minor(d: Path) -> None:
    rewrite_state(d / "top.snap", lambda data: None, version=(SNAPSHOT_VERSION[0], SNAPSHOT_VERSION[1] + 1, 0))


def _no_vcpus(d: Path) -> None:
    rewrite_state(d / "top.snap", set_field("vcpus", value=[]))


def _register_too_wide(d: Path) -> None:
    rewrite_state(d / "top.snap", set_field("vcpus", "0", "pc", value=-1))


def _page_size_changed(d: Path) -> None:
    rewrite_state(d / "top.snap", set_field("vm", "page_size", value=8192))


def _ram_base_changed(d: Path) -> None:
    rewrite_state(d / "top.snap", set_field("vm", "ram_base", value=0x4000_0000))


def _memory_truncated(d: Path) -> None:
    with open(d / "top.mem", "r+b") as f:
        f.truncate(4096)


def _memory_changed(d: Path) -> None:
    # A byte inside a page the diff holds: only a digest check notices.
    from snapshot.meminfo import MemFileInfo
    from snapshot.plain import from_plain

    info: MemFileInfo = from_plain(MemFileInfo, read_state_file(d / "top.snap")[1]["memory"])
    flip_byte(d / "top.mem", info.runs[0][0] * info.page_size + 7)


def _memory_swapped(d: Path) -> None:
    shutil.copyfile(d / "other.mem", d / "base.mem")


def _memory_missing(d: Path) -> None:
    (d / "top.mem").unlink()


def _memory_is_a_directory(d: Path) -> None:
    (d / "top.mem").unlink()
    (d / "top.mem").mkdir()


def _parent_missing(d: Path) -> None:
    (d / "base.snap").unlink()


def _parent_replaced(d: Path) -> None:
    for suffix in (".snap", ".mem"):
        shutil.copyfile(d / f"other{suffix}", d / f"base{suffix}")


def _state_missing(d: Path) -> None:
    (d / "top.snap").unlink()


def _state_is_a_directory(d: Path) -> None:
    (d / "top.snap").unlink()
    (d / "top.snap").mkdir()


# (damage, expected error, words the message must contain, also caught by describe without verify)
CASES: list[tuple[Callable[[Path], None], type[errors.SnapshotError], str, bool]] = [
    (_truncate_state, errors.TooShortError, "too short", True),
    (_grow_state, errors.SizeLimitExceededError, "10000000", True),
    (_flip_state, errors.CrcMismatchError, "CRC", True),
    (_garbage_with_crc, errors.EncodingError, "msgpack", True),
    (_unknown_envelope_field, errors.EncodingError, "unknown field 'x'", True),
    (_wrong_magic, errors.MagicMismatchError, "magic", True),
    (_newer_major, errors.VersionMismatchError, "version", True),
    (_newer_minor, errors.VersionMismatchError, "version", True),
    (_no_vcpus, errors.EncodingError, "vCPU", True),
    (_register_too_wide, errors.EncodingError, "vcpus[0].pc", True),
    (_page_size_changed, errors.IncompatibleError, "page size", True),
    (_ram_base_changed, errors.IncompatibleError, "RAM layout", True),
    (_memory_truncated, errors.MemoryFileMismatchError, "length", False),
    (_memory_changed, errors.MemoryFileMismatchError, "digest", False),
    (_memory_missing, errors.InvalidPathError, "top.mem", True),
    (_memory_is_a_directory, errors.InvalidPathError, "top.mem", True),
    (_parent_missing, errors.MissingParentError, "base.snap", False),
    (_parent_replaced, errors.ParentMismatchError, "", False),
    (_state_missing, errors.InvalidPathError, "top.snap", True),
    (_state_is_a_directory, errors.InvalidPathError, "top.snap", True),
]
IDS = [c[0].__name__.strip("_") for c in CASES]


def _error_of(fn: Callable[[], Any]) -> errors.SnapshotError:
    with pytest.raises(errors.SnapshotError) as info:
        fn()
    return info.value


@pytest.mark.parametrize(("damage", "expected", "words", "_"), CASES, ids=IDS)
def test_load_refuses_with_the_typed_error(snaps: Path, damage, expected, words, _) -> None:  # type: ignore[no-untyped-def]
    damage(snaps)
    for backend in ("copy", "mmap"):
        if damage is _memory_changed and backend == "mmap":
            continue  # mmap does not read the file, so it cannot see a changed byte (documented)
        err = _error_of(lambda: MicroVM.load_snapshot(snaps / "top", backend, verify_memory=True))
        assert type(err) is expected, (backend, err)
        assert words in str(err) and "\n" not in str(err)


def test_a_changed_memory_byte_is_caught_by_mmap_only_with_verify(snaps: Path) -> None:
    _memory_changed(snaps)
    MicroVM.load_snapshot(snaps / "top", "mmap").scheduler  # documented opt-out: not read, not checked
    err = _error_of(lambda: MicroVM.load_snapshot(snaps / "top", "mmap", verify_memory=True))
    assert type(err) is errors.MemoryFileMismatchError


@pytest.mark.parametrize(("damage", "expected", "words", "without_verify"), CASES, ids=IDS)
def test_describe_reports_bad_files(snaps: Path, damage, expected, words, without_verify) -> None:  # type: ignore[no-untyped-def]
    """describe raises the typed error for a bad state file; for a bad memory file it reports
    pair_ok False with --verify (and may succeed without it: it reads no memory)."""
    damage(snaps)
    if without_verify:
        err = _error_of(lambda: describe(snaps / "top", schema=MACHINE))
        assert type(err) is expected
        return
    if damage in (_parent_missing, _parent_replaced, _memory_swapped):
        assert describe(snaps / "top", verify=True, schema=MACHINE)["pair_ok"] is True  # describe checks one pair
        return
    try:
        info = describe(snaps / "top", verify=True, schema=MACHINE)
    except errors.SnapshotError as err:
        assert type(err) is expected
    else:
        assert info["pair_ok"] is False


def test_a_base_memory_file_from_another_snapshot_is_refused(snaps: Path) -> None:
    _memory_swapped(snaps)
    err = _error_of(lambda: MicroVM.load_snapshot(snaps / "top", "copy"))
    assert type(err) is errors.MemoryFileMismatchError
    err = _error_of(lambda: MicroVM.load_snapshot(snaps / "top", "mmap", verify_memory=True))
    assert type(err) is errors.MemoryFileMismatchError


@pytest.mark.parametrize(("damage", "expected", "words", "_"), CASES[:4] + CASES[12:14] + CASES[16:17], ids=IDS[:4] + IDS[12:14] + IDS[16:17])
def test_cli_prints_one_line_and_exits_2(snaps: Path, capsys: pytest.CaptureFixture[str], damage, expected, words, _) -> None:  # type: ignore[no-untyped-def]
    damage(snaps)
    code = main(["restore", str(snaps / "top.snap"), "--max-instructions", "1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("microvm: error: ") and words in err[0]


def test_damage_never_touches_the_other_snapshots(snaps: Path) -> None:
    """Loading a damaged diff does not alter its base (refusal is read-only)."""
    before = {p.name: p.read_bytes() for p in snaps.iterdir()}
    _flip_state(snaps)
    _error_of(lambda: MicroVM.load_snapshot(snaps / "top", "copy"))
    after = {p.name: p.read_bytes() for p in snaps.iterdir()}
    assert {k: v for k, v in after.items() if k != "top.snap"} == {k: v for k, v in before.items() if k != "top.snap"}
    assert MicroVM.load_snapshot(snaps / "base", "copy").clock > 0
    assert os.path.exists(snaps / "other.snap")


# --- mmap restore: the O(1) pair check (issue 15 item 3) ---------------------------------------
def _base_from_another_vm(d: Path) -> None:
    shutil.copyfile(d / "other.mem", d / "base.mem")


def _base_is_an_unfinished_temp(d: Path) -> None:
    """The image written, the trailer not yet: what a `.base.mem.tmp-*` holds mid-save."""
    from snapshot.meminfo import TRAILER_SIZE

    data = (d / "base.mem").read_bytes()
    (d / "base.mem").write_bytes(data[:-TRAILER_SIZE] + bytes(TRAILER_SIZE))


def _base_is_holes(d: Path) -> None:
    size = (d / "base.mem").stat().st_size
    (d / "base.mem").unlink()
    with open(d / "base.mem", "wb") as f:
        f.truncate(size)


def _base_staged_from_another_save(d: Path) -> None:
    """A staged file left by another save of `base`, named for the digest base.snap records
    (the loader prefers it): it holds another VM's image."""
    from snapshot.commit import recorded_memory

    info = recorded_memory(read_state_file(d / "base.snap")[1])
    shutil.copyfile(d / "other.mem", d / f".base.mem.staged-{info.digest}")


@pytest.mark.parametrize(
    "damage", [_base_from_another_vm, _base_is_an_unfinished_temp, _base_is_holes, _base_staged_from_another_save]
)
def test_mmap_without_a_digest_pass_refuses_a_memory_file_that_is_not_the_recorded_one(snaps: Path, damage) -> None:  # type: ignore[no-untyped-def]
    damage(snaps)
    err = _error_of(lambda: MicroVM.load_snapshot(snaps / "top", "mmap"))  # verify_memory defaults to off
    assert type(err) is errors.MemoryFileMismatchError, err
    assert "base.mem" in str(err)


def _memory_page_size(d: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["memory"]["page_size"] = 512
        data["vm"]["page_size"] = 512

    rewrite_state(d / "base.snap", change)


def test_a_memory_file_with_another_page_size_is_refused(snaps: Path) -> None:
    """512-byte pages recorded beside a 4096-byte-page VM: refused by decode, by describe,
    and by the memory file's own trailer."""
    rewrite_state(d := snaps / "base.snap", set_field("memory", "page_size", value=512))
    for backend in ("copy", "mmap"):
        err = _error_of(lambda: MicroVM.load_snapshot(snaps / "base", backend))
        assert type(err) is errors.IncompatibleError and "page size 512" in str(err)
    assert type(_error_of(lambda: describe(d, schema=MACHINE))) is errors.IncompatibleError
    _memory_page_size(snaps)  # state consistent with itself: the machine and the trailer refuse it
    assert type(_error_of(lambda: MicroVM.load_snapshot(snaps / "base", "mmap"))) is errors.IncompatibleError
    from snapshot.chain import verify

    assert not verify(snaps / "base").ok


def test_a_16_gib_claim_beside_a_small_file_is_refused_before_allocating(snaps: Path) -> None:
    import tracemalloc

    size = 16 << 30

    def claim(data: dict[str, Any]) -> None:
        data["vm"]["ram_size"] = data["vm"]["config"]["mem_size"] = data["memory"]["length"] = size

    rewrite_state(snaps / "base.snap", claim)
    tracemalloc.start()
    try:
        for backend in ("copy", "mmap"):
            err = _error_of(lambda: MicroVM.load_snapshot(snaps / "base", backend))
            assert type(err) is errors.MemoryFileMismatchError and "length" in str(err)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # RAM was never allocated


def test_describe_of_an_lz4_snapshot_recording_file_size_0_is_an_encoding_error(tmp_path: Path) -> None:
    vm = MicroVM(CONFIG)
    vm.run(10_000)
    vm.save_snapshot(tmp_path / "z", compress="lz4")
    rewrite_state(tmp_path / "z.snap", set_field("memory", "file_size", value=0))
    err = _error_of(lambda: describe(tmp_path / "z", schema=MACHINE))
    assert type(err) is errors.EncodingError and "data.memory" in str(err)
    assert main(["describe", str(tmp_path / "z.snap")]) == 2


@pytest.mark.parametrize(("damage", "expected", "words", "_"), CASES, ids=IDS)
def test_messages_name_files_never_fds(snaps: Path, damage, expected, words, _) -> None:  # type: ignore[no-untyped-def]
    import re

    damage(snaps)
    for call in (
        lambda: MicroVM.load_snapshot(snaps / "top", "copy"),
        lambda: MicroVM.load_snapshot(snaps / "top", "mmap", verify_memory=True),
    ):
        try:
            call()
        except errors.SnapshotError as err:
            assert not re.search(r"\bfd \d", str(err)), err


def test_describe_escapes_what_the_state_file_says(snaps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crafted parent name cannot send terminal escapes or add rows to describe's table."""
    evil = "base.snap\x1b[2J\x1b]0;owned\x07\nkind             full\u202e\x7f"
    rewrite_state(snaps / "top.snap", set_field("parent", "state_name", value=evil))
    assert main(["describe", str(snaps / "top.snap")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\x7f" not in out
    assert sum(line.startswith("kind") for line in out.splitlines()) == 1
    row = next(line for line in out.splitlines() if line.startswith("parent.state_name"))
    assert r"base.snap\x1b[2J\x1b]0;owned\x07\nkind             full\u202e\x7f" in row


def test_cli_restore_mmap_checks_contents_only_with_verify_memory(snaps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _memory_changed(snaps)  # a flipped byte inside the image: the O(1) check cannot see it
    assert main(["restore", str(snaps / "top.snap"), "--mem-backend", "mmap", "--max-instructions", "1000"]) != 2
    capsys.readouterr()
    code = main(["restore", str(snaps / "top.snap"), "--mem-backend", "mmap", "--verify-memory", "--max-instructions", "1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "digest" in err[0] and "top.mem" in err[0]
