"""snapshot.chain: rebase (merge a chain into one full snapshot) and verify (check a chain end
to end), for raw and lz4 memory files, moved chains, and damaged or mismatched links."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from snapshot import chain as chain_module
from snapshot import frames
from snapshot.commit import open_pair
from snapshot.chain import rebase, verify
from snapshot.errors import BrokenLinkError, InvalidPathError, MemoryFileMismatchError
from snapshot.describe import describe
from snapshot import fileio, memfile
from snapshot.meminfo import TRAILER_SIZE
from vmm.persist import MACHINE
from vmm import MicroVM, VmConfig
from vmm.layout import MIB, RAM_BASE

Q = 2_000
CONFIG = VmConfig(guest="memwalk", mem_size=32 * MIB, quantum=Q, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 200, "region_mib": 4})
STEPS = [50, 30, 30, 30]  # rounds of Q between snapshots s0 (full), s1..s3 (diffs)
TAIL = 60 * Q


def make_chain(directory: Path, compress: str | None = None) -> MicroVM:
    """A full snapshot s0 and diffs s1..s3 of one memwalk run in `directory`; returns the VM."""
    vm = MicroVM(CONFIG)
    for i, n in enumerate(STEPS):
        vm.run(n * Q)
        vm.save_snapshot(directory / f"s{i}", "full" if i == 0 else "diff", compress=compress)
    return vm


def names(directory: Path, *stems: str) -> list[Path]:
    return [directory / f"{s}.snap" for s in stems]


def continuation(vm: MicroVM) -> tuple[str, bytes]:
    vm.run(TAIL)
    return vm.state_digest(), vm.console_output


@pytest.mark.parametrize("inputs, output", [(None, None), (None, "lz4"), ("lz4", None), ("lz4", "lz4")])
def test_rebase_restores_to_the_same_state_as_the_chain(tmp_path: Path, inputs: str | None, output: str | None) -> None:
    vm = make_chain(tmp_path, inputs)
    base, *diffs = names(tmp_path, "s0", "s1", "s2", "s3")
    report = rebase(base, diffs, tmp_path / "merged", compress=output, frame_size=512 * 1024)
    assert report.merged == 4 and report.memory.kind == "full" and report.memory.format == (output or "raw")
    merged = describe(tmp_path / "merged", verify=True, schema=MACHINE)
    assert merged["kind"] == "full" and merged["parent"] is None and merged["pair_ok"] is True
    assert merged["virtual_time_ns"] == vm.clock
    from_chain = MicroVM.load_snapshot(tmp_path / "s3")
    for backend in ("copy", "mmap"):
        restored = MicroVM.load_snapshot(tmp_path / "merged", backend)
        assert restored.state_digest() == from_chain.state_digest() == vm.state_digest()
        assert np.array_equal(restored.memory.view(), vm.memory.view())
    assert continuation(MicroVM.load_snapshot(tmp_path / "merged")) == continuation(from_chain)
    # The merged file is a full memory file like a save's: its zero gaps stay holes.
    if output is None:
        assert os.stat(tmp_path / "merged.mem").st_blocks * 512 < CONFIG.mem_size // 2
    # A diff taken after a load of the merged snapshot chains onto it.
    resumed = MicroVM.load_snapshot(tmp_path / "merged")
    resumed.run(10 * Q)
    resumed.save_snapshot(tmp_path / "after", "diff")
    assert MicroVM.load_snapshot(tmp_path / "after").state_digest() == resumed.state_digest()


def test_rebase_of_part_of_a_chain(tmp_path: Path) -> None:
    make_chain(tmp_path)
    rebase(tmp_path / "s0", [tmp_path / "s1"], tmp_path / "m1")
    # s2 links to s1 by s1's (diff) digest; the merged m1 is another file with a full digest,
    # so s2 does not link to it: merge s2 from the original chain instead.
    with pytest.raises(BrokenLinkError, match=r"s2\.snap'.*not a diff of m1\.snap"):
        rebase(tmp_path / "m1", [tmp_path / "s2"], tmp_path / "m2")
    rebase(tmp_path / "s0", [tmp_path / "s1", tmp_path / "s2"], tmp_path / "m2")
    assert MicroVM.load_snapshot(tmp_path / "m2").state_digest() == MicroVM.load_snapshot(tmp_path / "s2").state_digest()


def test_every_link_is_checked_before_anything_is_read_or_written(tmp_path: Path) -> None:
    make_chain(tmp_path)
    other = MicroVM(CONFIG)
    other.run(10 * Q)
    other.save_snapshot(tmp_path / "other")
    cases = [
        (["s0", "s2"], r"broken chain link '.*s2\.snap': not a diff of s0\.snap"),  # s1 left out
        (["s0", "s2", "s1"], r"'.*s2\.snap': not a diff of s0\.snap"),
        (["other", "s1"], r"'.*s1\.snap': not a diff of other\.snap"),
        (["s1", "s2"], r"'.*s1\.snap': the base of a rebase must be a full snapshot"),
        (["s0", "other"], r"'.*other\.snap': a full snapshot cannot be laid over"),
    ]
    for stems, message in cases:
        base, *diffs = names(tmp_path, *stems)
        with pytest.raises(BrokenLinkError, match=message):
            rebase(base, diffs, tmp_path / "out")
        assert not list(tmp_path.glob("*out*"))
    with pytest.raises(InvalidPathError, match="one of the snapshots being merged"):
        rebase(tmp_path / "s0", [tmp_path / "s1"], tmp_path / "s1")
    with pytest.raises(InvalidPathError, match="nope"):
        rebase(tmp_path / "s0", [tmp_path / "nope"], tmp_path / "out")


def test_a_damaged_memory_file_fails_the_rebase_and_keeps_the_previous_output(tmp_path: Path) -> None:
    make_chain(tmp_path)
    rebase(tmp_path / "s0", [tmp_path / "s1"], tmp_path / "out")
    before = (tmp_path / "out.snap").read_bytes(), (tmp_path / "out.mem").read_bytes()
    s2 = describe(tmp_path / "s2", schema=MACHINE)
    assert s2["pages_written"] > 0
    with open(tmp_path / "s2.mem", "r+b") as f:  # corrupt a dirty page of the diff
        first_page = load_runs(tmp_path / "s2.snap")[0][0]
        f.seek(first_page * 4096 + 5)
        byte = f.read(1)
        f.seek(first_page * 4096 + 5)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(MemoryFileMismatchError, match=r"s2\.mem.*digest"):
        rebase(tmp_path / "s0", [tmp_path / "s1", tmp_path / "s2"], tmp_path / "out")
    assert ((tmp_path / "out.snap").read_bytes(), (tmp_path / "out.mem").read_bytes()) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp files left


def load_runs(state: Path) -> tuple[tuple[int, int], ...]:
    with open_pair(state) as pair:
        return pair.memory.runs


def frame_entries(name: Path) -> list[tuple[int, int, int]]:
    """(frame number, offset, stored size) of each frame of an lz4 snapshot's memory file."""
    with open_pair(name.with_suffix(".snap")) as pair:
        index = frames._read_index(pair.memory_fd, pair.memory_path, pair.memory)
    return [(int(e["frame"]), int(e["offset"]), int(e["stored"])) for e in index.entries]


def test_holes_inside_recorded_pages_and_filesystems_without_seek_data(tmp_path: Path, monkeypatch) -> None:
    """A dirty page that is zero may be a hole in the diff (some filesystems drop zero
    writes): the merge must still lay zeros over the base there, and give the same image when
    SEEK_DATA is not supported at all."""
    vm = MicroVM(CONFIG)
    vm.run(20 * Q)
    page = RAM_BASE + 20 * MIB
    vm.memory.write(page, b"\xab" * 4096)
    vm.save_snapshot(tmp_path / "base")
    vm.memory.write(page, bytes(4096))  # dirty, now zero
    vm.memory.write(page + 8192, b"\xcd" * 4096)
    vm.save_snapshot(tmp_path / "diff", "diff")
    # Re-create diff.mem with the zero page as a hole: same contents, same digest.
    data = (tmp_path / "diff.mem").read_bytes()
    os.unlink(tmp_path / "diff.mem")
    offset = page - RAM_BASE
    with open(tmp_path / "diff.mem", "wb") as f:
        f.truncate(len(data))
        for first, count in load_runs(tmp_path / "diff.snap"):
            for p in range(first, first + count):
                chunk = data[p * 4096 : (p + 1) * 4096]
                if p * 4096 != offset:
                    f.seek(p * 4096)
                    f.write(chunk)
        f.seek(len(data) - TRAILER_SIZE)
        f.write(data[-TRAILER_SIZE:])  # the identity trailer
    fd = os.open(tmp_path / "diff.mem", os.O_RDONLY)
    try:  # a hole where the filesystem reports holes
        assert list(fileio.data_extents(fd, offset, offset + 4096)) in ([], [(offset, 4096)])
    finally:
        os.close(fd)
    rebase(tmp_path / "base", [tmp_path / "diff"], tmp_path / "m1")
    merged = MicroVM.load_snapshot(tmp_path / "m1")
    assert np.array_equal(merged.memory.view(), vm.memory.view())

    real_lseek = os.lseek

    def no_seek_data(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(chain_module.os, "lseek", no_seek_data)
    rebase(tmp_path / "base", [tmp_path / "diff"], tmp_path / "m2")
    assert (tmp_path / "m2.mem").read_bytes() == (tmp_path / "m1.mem").read_bytes()


def test_data_extents_follow_the_files_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(8 * MIB)
        f.write(b"x" * MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(fileio.data_extents(fd, 0, 64 * MIB))
        inside = list(fileio.data_extents(fd, 8 * MIB + 100, 8 * MIB + 200))
    finally:
        os.close(fd)
    # Either the filesystem reports the hole (then exactly the written MiB is data) or it
    # does not support SEEK_DATA (then everything is).
    assert extents in ([(8 * MIB, MIB)], [(0, 64 * MIB)])
    assert inside == [(8 * MIB + 100, 100)]


# --- verify -----------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [None, "lz4"])
def test_verify_walks_the_whole_chain(tmp_path: Path, compress: str | None) -> None:
    make_chain(tmp_path, compress)
    report = verify(tmp_path / "s3")
    assert report.ok and report.broken is None
    assert [c.state_path.name for c in report.checked] == ["s3.snap", "s2.snap", "s1.snap", "s0.snap"]
    assert [c.kind for c in report.checked] == ["diff", "diff", "diff", "full"]
    assert {c.memory_format for c in report.checked} == {compress or "raw"}


def test_verify_names_the_first_broken_link(tmp_path: Path) -> None:
    make_chain(tmp_path)
    # s1's memory file replaced by another snapshot's: its pair digest fails.
    os.replace(tmp_path / "s1.mem", tmp_path / "s1.mem.orig")
    shutil.copy(tmp_path / "s2.mem", tmp_path / "s1.mem")
    report = verify(tmp_path / "s3")
    assert not report.ok and report.broken is not None
    assert [c.state_path.name for c in report.checked] == ["s3.snap", "s2.snap"]
    assert report.broken.path.endswith("s1.snap")
    message = str(report.broken)
    assert "\n" not in message and "as the parent of s2.snap" in message and "digest" in message
    os.replace(tmp_path / "s1.mem.orig", tmp_path / "s1.mem")
    # A flipped byte in s0's state file: its CRC.
    blob = bytearray((tmp_path / "s0.snap").read_bytes())
    blob[50] ^= 1
    (tmp_path / "s0.snap").write_bytes(blob)
    report = verify(tmp_path / "s2")
    assert report.broken is not None and report.broken.path.endswith("s0.snap") and "CRC64" in str(report.broken)
    # A missing parent: the child that names it is the broken link.
    os.unlink(tmp_path / "s0.snap")
    report = verify(tmp_path / "s1")
    assert report.broken is not None and report.broken.path.endswith("s1.snap") and "'s0.snap' was not found" in str(report.broken)
    with pytest.raises(InvalidPathError):
        verify(tmp_path / "nothing-here")


def test_verify_reports_a_corrupt_frame(tmp_path: Path) -> None:
    make_chain(tmp_path, "lz4")
    entries = frame_entries(tmp_path / "s0")
    number, offset = next((n, o) for n, o, stored in entries if stored)
    with open(tmp_path / "s0.mem", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    report = verify(tmp_path / "s2")
    assert report.broken is not None and report.broken.path.endswith("s0.snap")
    assert f"s0.mem' is corrupt: frame {number}:" in str(report.broken)


def test_a_moved_chain_still_loads_verifies_and_rebases(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    vm = make_chain(tmp_path / "a", "lz4")
    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    os.rename(tmp_path / "a", moved)
    assert MicroVM.load_snapshot(moved / "s3").state_digest() == vm.state_digest()
    assert verify(moved / "s3").ok
    rebase(moved / "s0", [moved / f"s{i}" for i in (1, 2, 3)], tmp_path / "merged")
    assert MicroVM.load_snapshot(tmp_path / "merged").state_digest() == vm.state_digest()


def test_rebase_output_that_is_a_symlink_loop_is_an_invalid_path(tmp_path: Path) -> None:
    os.symlink("loop.snap", tmp_path / "loop.snap")  # points at itself
    with pytest.raises(InvalidPathError, match="cannot resolve"):
        rebase(tmp_path / "base", [tmp_path / "diff"], tmp_path / "loop")
