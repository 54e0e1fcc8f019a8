"""snapshot.memfile: full and diff memory files, their digest, eager and lazy restore."""
from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot import fileio, meminfo, memfile
from snapshot.errors import (
    CorruptMemoryFileError,
    EncodingError,
    IncompatibleError,
    InvalidPathError,
    MemoryFileMismatchError,
    MemoryIoError,
    MissingParentError,
    ParentMismatchError,
)
from snapshot.memfile import compute_digest, map_private, read_into, trailer_bytes, write_diff, write_full
from snapshot.meminfo import DIFF_DIGEST_DOMAIN, TRAILER_SIZE, MemFileInfo, canonical_runs
from snapshot.plain import from_plain, to_plain
from tools.faults.mutate import punch_hole

PAGE = 4096
RAM_SIZE = 64 * PAGE


def make_ram(seed: int, nonzero_pages: list[int], size: int = RAM_SIZE) -> np.ndarray:
    """Read-only RAM that is zero except for random bytes in `nonzero_pages`."""
    rng = np.random.default_rng(seed)
    ram = np.zeros(size, dtype=np.uint8)
    for p in nonzero_pages:
        ram[p * PAGE : (p + 1) * PAGE] = rng.integers(1, 256, PAGE, dtype=np.uint8)
    ram.flags.writeable = False
    return ram


def diff_digest_by_definition(ram: np.ndarray, runs: list[tuple[int, int]], parent: str) -> str:
    """The module docstring's diff digest, computed independently from RAM."""
    h = xxhash.xxh3_128(
        DIFF_DIGEST_DOMAIN + len(ram).to_bytes(8, "little") + PAGE.to_bytes(8, "little") + bytes.fromhex(parent)
    )
    for first, count in runs:
        h.update(first.to_bytes(8, "little") + count.to_bytes(8, "little"))
        h.update(ram[first * PAGE : (first + count) * PAGE].tobytes())
    return h.hexdigest()


def test_full_file_is_the_raw_image_with_holes(tmp_path: Path) -> None:
    size = 4 * memfile.MIN_HOLE
    ram = make_ram(1, [0, 1, 2, 5, 900], size)
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    assert path.read_bytes() == ram.tobytes() + trailer_bytes(info)
    # Pages 0-5 are one run (the 2-page zero gap is written), page 900 another; pages_written
    # counts the 5 non-zero pages (the same as an lz4 file of this RAM would).
    runs = struct.pack("<4Q", 0, 6, 900, 1)  # the data written: pages 0-5 and page 900
    assert info == MemFileInfo("full", size, PAGE, xxhash.xxh3_128(ram.tobytes()).hexdigest(), 5, trailer=True, data_runs=runs)
    assert compute_digest(path, info) == info.digest
    assert os.stat(path).st_blocks * 512 < size // 4  # the long zero gaps were left as holes
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_full_rewrites_an_existing_file_and_accepts_an_fd(tmp_path: Path) -> None:
    path = tmp_path / "vm.mem"
    path.write_bytes(b"\xaa" * (2 * RAM_SIZE))
    ram = make_ram(2, [5])
    fd = os.open(path, os.O_RDWR)
    try:
        info = write_full(fd, ram, PAGE)
    finally:
        os.close(fd)
    assert path.read_bytes() == ram.tobytes() + trailer_bytes(info)  # old junk is gone from the zero pages too
    assert info.pages_written == 1


def test_all_zero_and_all_nonzero_ram(tmp_path: Path) -> None:
    zero = np.zeros(RAM_SIZE, np.uint8)
    info = write_full(tmp_path / "z.mem", zero, PAGE)
    assert info.pages_written == 0 and (tmp_path / "z.mem").read_bytes() == bytes(RAM_SIZE) + trailer_bytes(info)
    full = make_ram(3, list(range(64)))
    info = write_full(tmp_path / "f.mem", full, PAGE)
    assert info.pages_written == 64 and (tmp_path / "f.mem").read_bytes() == full.tobytes() + trailer_bytes(info)


def test_diff_file_holds_only_its_runs(tmp_path: Path) -> None:
    base = make_ram(4, list(range(0, 64, 3)))
    base_info = write_full(tmp_path / "base.mem", base, PAGE)
    new = base.copy()
    new[10 * PAGE + 7] ^= 0xFF
    new[11 * PAGE : 13 * PAGE] = 9
    new[63 * PAGE] = 1
    new.flags.writeable = False
    info = write_diff(tmp_path / "d.mem", new, [(12, 1), (10, 2), (63, 1)], PAGE, parent_digest=base_info.digest)
    assert info.runs == ((10, 3), (63, 1))  # sorted and merged
    assert info.pages_written == 4 and info.parent_digest == base_info.digest
    assert info.digest == diff_digest_by_definition(new, [(10, 3), (63, 1)], base_info.digest)
    data = (tmp_path / "d.mem").read_bytes()
    assert len(data) == RAM_SIZE + TRAILER_SIZE and data[RAM_SIZE:] == trailer_bytes(info)
    data = data[:RAM_SIZE]
    expected = np.zeros(RAM_SIZE, np.uint8)
    for first, count in info.runs:
        expected[first * PAGE : (first + count) * PAGE] = new[first * PAGE : (first + count) * PAGE]
    assert data == expected.tobytes()
    assert compute_digest(tmp_path / "d.mem", info) == info.digest

    restored = np.zeros(RAM_SIZE, np.uint8)
    read_into(tmp_path / "base.mem", restored, base_info)
    read_into(tmp_path / "d.mem", restored, info, parent=base_info)
    assert np.array_equal(restored, new)


def test_diff_chain_and_parent_checks(tmp_path: Path) -> None:
    a = make_ram(5, [1, 2, 3])
    a_info = write_full(tmp_path / "a.mem", a, PAGE)
    b = a.copy()
    b[2 * PAGE] = 0x55
    b_info = write_diff(tmp_path / "b.mem", b, [(2, 1)], PAGE, parent_digest=a_info.digest)
    c = b.copy()
    c[30 * PAGE] = 0x66
    c_info = write_diff(tmp_path / "c.mem", c, [(30, 1)], PAGE, parent_digest=b_info.digest)

    ram = np.zeros(RAM_SIZE, np.uint8)
    read_into(tmp_path / "a.mem", ram, a_info)
    before = ram.copy()
    with pytest.raises(MissingParentError, match=a_info.digest):
        read_into(tmp_path / "b.mem", ram, b_info)
    with pytest.raises(ParentMismatchError, match=f"applies to a base with digest {b_info.digest}"):
        read_into(tmp_path / "c.mem", ram, c_info, parent=a_info)  # skipped a link of the chain
    assert np.array_equal(ram, before)  # refused before anything was copied
    read_into(tmp_path / "b.mem", ram, b_info, parent=a_info)
    read_into(tmp_path / "c.mem", ram, c_info, parent=b_info)
    assert np.array_equal(ram, c)


def test_restore_never_reads_past_the_recorded_runs(tmp_path: Path) -> None:
    base = make_ram(6, [0])
    base_info = write_full(tmp_path / "base.mem", base, PAGE)
    new = base.copy()
    new[5 * PAGE] = 1
    info = write_diff(tmp_path / "d.mem", new, [(5, 1)], PAGE, parent_digest=base_info.digest)
    with open(tmp_path / "d.mem", "r+b") as f:  # junk outside the runs: not recorded, not read
        f.seek(20 * PAGE)
        f.write(b"\xee" * PAGE)
    assert compute_digest(tmp_path / "d.mem", info) == info.digest
    ram = base.copy()
    read_into(tmp_path / "d.mem", ram, info, parent=base_info)
    assert np.array_equal(ram, new)


def test_corruption_and_length_mismatch_are_detected(tmp_path: Path) -> None:
    ram = make_ram(7, [3, 4])
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    with open(path, "r+b") as f:
        f.seek(4 * PAGE + 10)
        f.write(b"\x00")
    target = np.zeros(RAM_SIZE, np.uint8)
    with pytest.raises(MemoryFileMismatchError, match=f"digest is [0-9a-f]{{32}}, state file records {info.digest}"):
        read_into(path, target, info)
    read_into(path, target, info, verify_digest=False)  # trusted fast path: no check
    assert target[4 * PAGE + 10] == 0

    os.truncate(path, RAM_SIZE - PAGE)  # the trailer and a page gone
    untouched = np.full(RAM_SIZE, 0x11, np.uint8)
    with pytest.raises(MemoryFileMismatchError, match=f"length is {RAM_SIZE - PAGE} bytes, state file records {RAM_SIZE + TRAILER_SIZE} bytes"):
        read_into(path, untouched, info)
    assert (untouched == 0x11).all()  # checked before anything was read
    with pytest.raises(MemoryFileMismatchError, match="length"):
        compute_digest(path, info)
    with pytest.raises(IncompatibleError, match="the VM has"):
        read_into(path, np.zeros(2 * RAM_SIZE, np.uint8), info)


def test_map_private_is_lazy_copy_on_write(tmp_path: Path) -> None:
    ram = make_ram(8, [0, 9])
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    mapped = map_private(path, RAM_SIZE, info=info, verify_digest=True)
    assert mapped.flags.writeable and mapped.dtype == np.uint8 and mapped.size == RAM_SIZE
    assert np.array_equal(mapped, ram)
    mapped[9 * PAGE : 10 * PAGE] = 0
    assert path.read_bytes()[:RAM_SIZE] == ram.tobytes()  # writes never reach the file

    with pytest.raises(MemoryFileMismatchError, match="length"):
        map_private(path, 2 * RAM_SIZE)
    with pytest.raises(IncompatibleError, match="the VM has"):
        map_private(path, 2 * RAM_SIZE, info=info)
    diff = write_diff(tmp_path / "d.mem", ram, [(0, 1)], PAGE, parent_digest=info.digest)
    with pytest.raises(IncompatibleError, match="cannot be mapped"):
        map_private(tmp_path / "d.mem", RAM_SIZE, info=diff)
    with open(path, "r+b") as f:
        f.write(b"\x01")
    with pytest.raises(MemoryFileMismatchError, match="digest"):
        map_private(path, RAM_SIZE, info=info, verify_digest=True)
    with pytest.raises(InvalidPathError, match="ENOENT"):
        map_private(tmp_path / "missing.mem", RAM_SIZE)


def test_write_errors_name_the_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ram = make_ram(9, [1])
    path = tmp_path / "ro.mem"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(MemoryIoError) as exc:
            write_full(fd, ram, PAGE)
    finally:
        os.close(fd)
    assert exc.value.errno in (errno.EBADF, errno.EINVAL) and "fd " in str(exc.value)

    def no_space(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(MemoryIoError, match=r"ENOSPC \(No space left on device\)") as exc:
        write_diff(tmp_path / "d.mem", ram, [(1, 1)], PAGE, parent_digest="0" * 32)
    assert exc.value.errno == errno.ENOSPC
    with pytest.raises(MemoryIoError, match="ENOSPC"):
        write_full(tmp_path / "f.mem", ram, PAGE)


def test_bad_arguments_are_programming_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_full(tmp_path / "x.mem", np.zeros(PAGE + 1, np.uint8), PAGE)
    with pytest.raises(ValueError):
        write_full(tmp_path / "x.mem", np.zeros(RAM_SIZE, np.uint8), 3000)
    with pytest.raises(TypeError):
        write_full(tmp_path / "x.mem", np.zeros(RAM_SIZE, np.uint16), PAGE)
    with pytest.raises(ValueError):
        canonical_runs([(63, 2)], 64)
    with pytest.raises(ValueError):
        canonical_runs([(1, 0)], 64)
    with pytest.raises(ValueError):
        write_diff(tmp_path / "x.mem", np.zeros(RAM_SIZE, np.uint8), [], PAGE, parent_digest="nothex")


def test_canonical_runs_merge() -> None:
    assert canonical_runs([(5, 1), (0, 2), (2, 1), (4, 3), (10, 1)], 64) == ((0, 3), (4, 3), (10, 1))
    assert canonical_runs(((0, 3), (4, 3), (10, 1)), 64) == ((0, 3), (4, 3), (10, 1))  # already canonical
    assert canonical_runs(((0, 3), (3, 1)), 64) == ((0, 4),)  # adjacent: not canonical, merged
    assert canonical_runs([(60, 4), (0, 64), (0, 64)], 64) == ((0, 64),)  # more pages than RAM in all


_runs_strategy = st.integers(1, 80).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.integers(0, n - 1).flatmap(lambda f: st.tuples(st.just(f), st.integers(1, n - f))), max_size=12),
    )
)


@settings(max_examples=300, deadline=None)
@given(_runs_strategy)
def test_page_mask_and_canonical_runs_match_a_page_by_page_reference(case: tuple[int, list[tuple[int, int]]]) -> None:
    """Both ways page_mask builds a mask (pages set directly; a coverage count when the runs
    hold more pages than RAM) and canonical_runs' pass-through of canonical input agree with
    marking the pages one by one."""
    npages, runs = case
    want = np.zeros(npages, dtype=bool)
    for first, count in runs:
        want[first : first + count] = True
    assert meminfo.page_mask(runs, npages).tolist() == want.tolist()
    canon = canonical_runs(runs, npages)
    got = np.zeros(npages, dtype=bool)
    for first, count in canon:
        got[first : first + count] = True
    assert got.tolist() == want.tolist()
    assert all(b[0] > a[0] + a[1] for a, b in zip(canon, canon[1:]))  # sorted, a clean page between runs
    assert canonical_runs(canon, npages) == canon


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"page_map": b"\x00" * 7}, "page_map is 7 bytes, expected 8"),
        ({"page_map": b"\x00" * 9}, "page_map is 9 bytes"),
        ({"page_map": b"\x08" + b"\x00" * 7}, "pages_written"),  # one page, 2 recorded
        ({"page_map": "x" * 8}, "page_map"),
        ({"pages_written": 5}, "pages_written"),
        ({"digest": "ABC"}, "digest must be 32 lowercase hex"),
        ({"parent_digest": None}, "parent_digest"),
        ({"kind": "partial"}, "kind: expected one of 'full', 'diff'"),
        ({"length": RAM_SIZE + 1}, "multiple of the page size"),
        ({"page_size": 4095}, "power of two"),
    ],
)
def test_recorded_info_is_validated(change: dict[str, object], message: str) -> None:
    info = MemFileInfo.diff(RAM_SIZE, PAGE, "a" * 32, ((3, 1), (7, 1)), "b" * 32)
    assert info.runs == ((3, 1), (7, 1)) and info.page_map == b"\x88" + b"\x00" * 7
    plain = to_plain(info)
    assert from_plain(MemFileInfo, plain) == info
    plain.update(change)
    with pytest.raises(EncodingError, match=message):
        from_plain(MemFileInfo, plain, path="data.memory")


@settings(max_examples=40, deadline=None)
@given(
    dirty=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 8)), max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_diff_laid_over_its_base_reproduces_ram(
    tmp_path_factory: pytest.TempPathFactory, dirty: list[tuple[int, int]], seed: int
) -> None:
    d = tmp_path_factory.mktemp("prop")
    base = make_ram(seed, list(range(0, 64, 5)))
    base_info = write_full(d / "base.mem", base, PAGE)
    runs = [(first, min(count, 64 - first)) for first, count in dirty]
    new = base.copy()
    rng = np.random.default_rng(seed + 1)
    for first, count in runs:
        new[first * PAGE : (first + count) * PAGE] = rng.integers(0, 256, count * PAGE, dtype=np.uint8)
    info = write_diff(d / "d.mem", new, runs, PAGE, parent_digest=base_info.digest)
    assert info.digest == diff_digest_by_definition(new, list(info.runs), base_info.digest)
    assert info == from_plain(MemFileInfo, to_plain(info))
    ram = np.zeros(RAM_SIZE, np.uint8)
    read_into(d / "base.mem", ram, base_info)
    read_into(d / "d.mem", ram, info, parent=base_info)
    assert np.array_equal(ram, new)
    assert memfile.compute_digest(d / "d.mem", info) == info.digest


def test_page_map_padding_bits_must_be_zero() -> None:
    length = 60 * PAGE  # 60 pages: the map's last byte has 4 padding bits
    ok = MemFileInfo.diff(length, PAGE, "a" * 32, ((56, 4),), "b" * 32)
    assert ok.page_map[-1] == 0x0F and ok.runs == ((56, 4),)
    with pytest.raises(ValueError, match="past the last page"):
        MemFileInfo("diff", length, PAGE, "a" * 32, 5, ok.page_map[:-1] + b"\x1f", "b" * 32)


# --- the identity trailer: the O(1) pair check (mmap restore reads nothing else) ------------
def _mapped(path: Path, info: MemFileInfo) -> np.ndarray:
    return map_private(path, RAM_SIZE, info=info)  # verify_digest=False: the lazy path


@pytest.mark.parametrize(
    "damage",
    ["another VM's file", "same size, no trailer", "all holes", "unfinished temp", "trailer byte flipped", "page size"],
)
def test_mapping_without_a_digest_pass_still_refuses_a_file_that_is_not_the_recorded_one(
    tmp_path: Path, damage: str
) -> None:
    ram = make_ram(20, [1, 2, 40])
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    assert np.array_equal(_mapped(path, info), ram)  # the recorded file maps
    if damage == "another VM's file":
        write_full(path, make_ram(21, [1, 2, 40]), PAGE)
    elif damage == "same size, no trailer":
        path.write_bytes(ram.tobytes() + bytes(TRAILER_SIZE))
    elif damage == "all holes":
        path.unlink()
        os.truncate(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600), info.file_length)
    elif damage == "unfinished temp":  # the image written, the trailer not yet
        data = path.read_bytes()
        path.write_bytes(data[:RAM_SIZE] + bytes(TRAILER_SIZE))
    elif damage == "trailer byte flipped":
        data = bytearray(path.read_bytes())
        data[RAM_SIZE + 20] ^= 1
        path.write_bytes(bytes(data))
    else:
        small = MemFileInfo("full", RAM_SIZE, 512, info.digest, info.pages_written, trailer=True)
        with pytest.raises(MemoryFileMismatchError, match="page size is 4096, state file records 512"):
            map_private(path, RAM_SIZE, info=small)
        return
    expected = CorruptMemoryFileError if damage == "trailer byte flipped" else MemoryFileMismatchError
    with pytest.raises(expected, match=repr(str(path)).replace("[", r"\[")):
        _mapped(path, info)
    with pytest.raises(expected):
        read_into(path, np.zeros(RAM_SIZE, np.uint8), info, verify_digest=False)


def test_files_without_a_trailer_still_load(tmp_path: Path) -> None:
    """State format 1.0 recorded no trailer (`trailer` absent: False); their files are the bare
    image, checked by length (and by digest when read)."""
    ram = make_ram(22, [3])
    path = tmp_path / "old.mem"
    new = write_full(path, ram, PAGE)
    path.write_bytes(ram.tobytes())
    plain = to_plain(new)
    del plain["trailer"], plain["data_runs"]
    old = from_plain(MemFileInfo, plain)
    assert not old.trailer and not old.data_runs and old.file_length == RAM_SIZE
    assert np.array_equal(_mapped(path, old), ram)
    out = np.zeros(RAM_SIZE, np.uint8)
    read_into(path, out, old)
    assert np.array_equal(out, ram) and compute_digest(path, old) == old.digest
    with pytest.raises(MemoryFileMismatchError, match="length"):
        _mapped(path, new)  # a bare image is not a file that records a trailer


def test_errors_name_the_file_when_given_an_fd(tmp_path: Path) -> None:
    ram = make_ram(23, [3])
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    os.truncate(path, PAGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        for call in (
            lambda: read_into(fd, np.zeros(RAM_SIZE, np.uint8), info, name=path),
            lambda: compute_digest(fd, info, name=path),
            lambda: map_private(fd, RAM_SIZE, info=info, name=path),
        ):
            with pytest.raises(MemoryFileMismatchError) as caught:
                call()
            assert str(path) in str(caught.value) and "fd " not in str(caught.value)
    finally:
        os.close(fd)


def test_a_hole_punched_into_data_is_found_without_a_digest_pass_being_asked_for(tmp_path: Path) -> None:
    ram = make_ram(24, [3, 4, 5, 40])
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    assert list(memfile.written_regions(info)) == [(3 * PAGE, 38 * PAGE)]  # gaps under MIN_HOLE are data
    if not punch_hole(path, 4 * PAGE, PAGE):  # non-zero data turned into zeros
        pytest.skip("this filesystem cannot punch holes")
    fd = os.open(path, os.O_RDONLY)
    try:
        if list(fileio.data_extents(fd, 4 * PAGE, 5 * PAGE)):
            pytest.skip("this filesystem does not report holes")
        assert memfile.has_extra_holes(fd, path, info)
    finally:
        os.close(fd)
    with pytest.raises(MemoryFileMismatchError, match="digest"):
        _mapped(path, info)
    with pytest.raises(MemoryFileMismatchError, match="digest"):
        read_into(path, np.zeros(RAM_SIZE, np.uint8), info, verify_digest=False)


def test_a_copy_that_drops_zero_blocks_still_maps_after_a_digest_pass(tmp_path: Path) -> None:
    """A filesystem or `cp --sparse=always` may turn written zero pages into holes: more holes
    than recorded, same contents. The digest pass that triggers says so, and it loads."""
    ram = make_ram(25, [3, 5])  # page 4 is a zero page written as data (a short gap)
    path = tmp_path / "vm.mem"
    info = write_full(path, ram, PAGE)
    if not punch_hole(path, 4 * PAGE, PAGE):
        pytest.skip("this filesystem cannot punch holes")
    assert np.array_equal(_mapped(path, info), ram)
    out = np.zeros(RAM_SIZE, np.uint8)
    read_into(path, out, info, verify_digest=False)
    assert np.array_equal(out, ram)


def test_nonzero_pages_sees_a_single_byte_anywhere_in_a_page() -> None:
    ram = np.zeros(8 * PAGE, dtype=np.uint8)
    for page, offset in ((1, 0), (3, PAGE - 1), (4, 7), (6, PAGE // 2 + 3)):
        ram[page * PAGE + offset] = 0x80
    assert np.flatnonzero(meminfo.nonzero_pages(memoryview(ram), PAGE)).tolist() == [1, 3, 4, 6]


def test_start_writeback_changes_nothing_and_never_raises(tmp_path: Path) -> None:
    """A full save starts each chunk's writeback as it writes (fileio.start_writeback): the
    file reads back the same, and an fd that cannot take the advice (a pipe) is ignored."""
    path = tmp_path / "f.bin"
    data = np.random.default_rng(3).integers(0, 256, 3 * PAGE, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        fileio.start_writeback(fd, 0, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    r, w = os.pipe()
    try:
        fileio.start_writeback(w, 0, PAGE)  # ESPIPE: suppressed
    finally:
        os.close(r)
        os.close(w)
