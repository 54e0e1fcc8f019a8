"""snapshot.frames: LZ4-framed memory files: layout, determinism across threads, stream vs mmap
restore, diffs, bounded and checked decoding of damaged files; and their use by save/load."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import lz4.block
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot import frames, memfile
from snapshot.errors import (
    CorruptMemoryFileError,
    IncompatibleError,
    MemoryFileMismatchError,
    ParentMismatchError,
)
from snapshot.frames import ENTRY_SIZE, FOOTER_SIZE, STYLE_LZ4, STYLE_RAW, STYLE_ZERO
from snapshot.meminfo import MemFileInfo
from snapshot.describe import describe
from vmm.persist import MACHINE
from snapshot.plain import from_plain, to_plain
from vmm import MicroVM, VmConfig
from vmm.layout import MIB

PAGE = 4096
FRAME = 16 * PAGE  # 64 KiB frames keep test files small
ENTRY = struct.Struct("<QQIIB7xQ")  # the index entry, as the module docstring lays it out


def mixed_ram(seed: int, frames_: int = 12) -> np.ndarray:
    """RAM whose frames are, in turn: zero, compressible (few distinct bytes), random
    (incompressible), and half-zero/half-compressible."""
    rng = np.random.default_rng(seed)
    ram = np.zeros(frames_ * FRAME, np.uint8)
    for i in range(frames_):
        f = ram[i * FRAME : (i + 1) * FRAME]
        if i % 4 == 1:
            f[:] = rng.integers(0, 4, FRAME, dtype=np.uint8)
        elif i % 4 == 2:
            f[:] = rng.integers(0, 256, FRAME, dtype=np.uint8)
        elif i % 4 == 3:
            f[: FRAME // 2] = rng.integers(0, 4, FRAME // 2, dtype=np.uint8)
    return ram


def read_index(path: Path) -> tuple[list[tuple[int, ...]], int]:
    """(entries, index offset) decoded independently of the module."""
    blob = path.read_bytes()
    count, index_offset = struct.unpack_from("<QQ", blob, len(blob) - FOOTER_SIZE + 32)
    entries = [ENTRY.unpack_from(blob, index_offset + i * ENTRY_SIZE) for i in range(count)]
    return entries, index_offset


def rewrite_index(path: Path, entries: list[tuple[int, ...]]) -> None:
    """Replace the index with `entries`, fixing the index and footer checksums (so only the
    entry checks can catch what is wrong)."""
    blob = bytearray(path.read_bytes())
    _, index_offset = read_index(path)
    index = b"".join(ENTRY.pack(*e) for e in entries)
    blob[index_offset : index_offset + len(index)] = index
    foot = len(blob) - FOOTER_SIZE
    struct.pack_into("<Q", blob, foot + 48, xxhash.xxh3_64_intdigest(index))
    struct.pack_into("<Q", blob, foot + FOOTER_SIZE - 8, xxhash.xxh3_64_intdigest(bytes(blob[foot : foot + FOOTER_SIZE - 8])))
    path.write_bytes(blob)


def flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x40
    path.write_bytes(blob)


# --- the format -------------------------------------------------------------------------------
def test_full_file_layout_styles_and_digest(tmp_path: Path) -> None:
    ram = mixed_ram(1)
    path = tmp_path / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=FRAME, threads=2)
    raw = memfile.write_full(tmp_path / "raw.mem", ram, PAGE)
    # Same digest as the raw file: it covers what is recorded, not how it is stored.
    assert info.digest == raw.digest == xxhash.xxh3_128(ram.tobytes()).hexdigest()
    assert (info.format, info.frame_size, info.file_size) == ("lz4", FRAME, path.stat().st_size)
    entries, index_offset = read_index(path)
    styles = [e[4] for e in entries]
    assert styles == [STYLE_ZERO, STYLE_LZ4, STYLE_RAW, STYLE_LZ4] * 3
    data = path.read_bytes()
    offset = 0
    for i, (number, off, stored, payload, style, checksum) in enumerate(entries):
        assert (number, off, payload) == (i, offset, FRAME)
        frame = ram[i * FRAME : (i + 1) * FRAME].tobytes()
        if style == STYLE_ZERO:
            assert stored == checksum == 0
        else:
            body = data[off : off + stored]
            assert (lz4.block.decompress(body, uncompressed_size=FRAME) if style == STYLE_LZ4 else body) == frame
            assert checksum == xxhash.xxh3_64_intdigest(frame)
        offset += stored
    assert offset == index_offset
    # The non-zero pages of RAM, as for the raw file (not the pages of non-ZERO frames).
    assert info.pages_written == raw.pages_written == int(ram.reshape(-1, PAGE).any(axis=1).sum())
    assert frames.frame_styles(path, info) == {"RAW": 3, "LZ4": 6, "ZERO": 3}
    assert from_plain(MemFileInfo, to_plain(info)) == info


def test_output_is_bit_identical_whatever_the_thread_count(tmp_path: Path) -> None:
    ram = mixed_ram(2, 40)
    outputs = set()
    for threads in (1, 2, 3, 8):
        path = tmp_path / f"t{threads}.mem"
        frames.write_full(path, ram, PAGE, frame_size=FRAME, threads=threads)
        outputs.add(path.read_bytes())
    assert len(outputs) == 1
    runs = [(3, 5), (40, 1), (100, 60), (600, 30)]
    diffs = set()
    for threads in (1, 2, 5):
        path = tmp_path / f"d{threads}.mem"
        frames.write_diff(path, ram, runs, PAGE, parent_digest="0" * 32, frame_size=FRAME, threads=threads)
        diffs.add(path.read_bytes())
    assert len(diffs) == 1


@pytest.mark.parametrize("threads", [1, 3])
def test_stream_and_mmap_restores_are_identical(tmp_path: Path, threads: int) -> None:
    ram = mixed_ram(3, 20)
    path = tmp_path / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=FRAME)
    restored = []
    for source in ("stream", "mmap"):
        for zeroed in (False, True):
            into = np.zeros(len(ram), np.uint8) if zeroed else np.full(len(ram), 0xEE, np.uint8)
            done: list[int] = []
            frames.read_into(path, into, info, source=source, zeroed=zeroed, threads=threads, progress=done.append)
            assert sum(done) == len(ram)
            restored.append(into)
    for into in restored:
        assert np.array_equal(into, ram)
    assert frames.compute_digest(path, info) == info.digest


def test_diff_holds_only_dirty_pages_of_dirty_frames(tmp_path: Path) -> None:
    base = mixed_ram(4)
    base_info = frames.write_full(tmp_path / "base.mem", base, PAGE, frame_size=FRAME)
    ram = base.copy()
    runs = [(14, 4), (20, 1), (100, 30)]  # frame 0 (pages 14-15), frame 1 (16-17, 20), frames 6-8
    rng = np.random.default_rng(9)
    for first, count in runs:
        ram[first * PAGE : (first + count) * PAGE] = rng.integers(0, 3, count * PAGE, dtype=np.uint8)
    ram[110 * PAGE : 112 * PAGE] = 0  # dirty pages may be zero
    path = tmp_path / "diff.mem"
    info = frames.write_diff(path, ram, runs, PAGE, parent_digest=base_info.digest, frame_size=FRAME)
    raw = memfile.write_diff(tmp_path / "raw.mem", ram, runs, PAGE, parent_digest=base_info.digest)
    assert (info.digest, info.page_map, info.pages_written) == (raw.digest, raw.page_map, raw.pages_written)
    entries, _ = read_index(path)
    assert [(e[0], e[3]) for e in entries] == [(0, 2 * PAGE), (1, 3 * PAGE), (6, 12 * PAGE), (7, 16 * PAGE), (8, 2 * PAGE)]
    assert frames.read_frame(path, info, 1) == ram[16 * PAGE : 18 * PAGE].tobytes() + ram[20 * PAGE : 21 * PAGE].tobytes()
    with pytest.raises(ValueError, match="none is frame 2"):
        frames.read_frame(path, info, 2)
    for source in ("stream", "mmap"):
        over = base.copy()
        frames.read_into(path, over, info, parent=base_info, source=source)
        assert np.array_equal(over, ram)
    with pytest.raises(ParentMismatchError):
        frames.read_into(path, base.copy(), info, parent=raw)
    assert frames.compute_digest(path, info) == info.digest


def test_empty_diff_is_a_footer_and_nothing_else(tmp_path: Path) -> None:
    ram = mixed_ram(5, 4)
    path = tmp_path / "empty.mem"
    info = frames.write_diff(path, ram, [], PAGE, parent_digest="1" * 32, frame_size=FRAME)
    assert path.stat().st_size == FOOTER_SIZE and info.pages_written == 0
    over = ram.copy()
    frames.read_into(path, over, info, parent=replace_digest(info, "1" * 32))
    assert np.array_equal(over, ram)


def replace_digest(info: MemFileInfo, digest: str) -> MemFileInfo:
    return MemFileInfo("full", info.length, info.page_size, digest, 0)


@settings(max_examples=20, deadline=None)
@given(
    frame_pages=st.sampled_from([1, 3, 16, 64]),
    pages=st.integers(1, 200),
    fill=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 2)), max_size=30),
    threads=st.integers(1, 4),
)
def test_round_trip_for_any_ram_and_frame_size(tmp_path_factory, frame_pages: int, pages: int, fill: list[tuple[int, int]], threads: int) -> None:
    rng = np.random.default_rng(pages)
    ram = np.zeros(pages * PAGE, np.uint8)
    for page, kind in fill:
        if page < pages:
            ram[page * PAGE : (page + 1) * PAGE] = rng.integers(0, 3 if kind else 256, PAGE, dtype=np.uint8)
    path = tmp_path_factory.mktemp("rt") / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=frame_pages * PAGE, threads=threads)
    single = path.with_suffix(".one")
    frames.write_full(single, ram, PAGE, frame_size=frame_pages * PAGE, threads=1)
    assert path.read_bytes() == single.read_bytes()
    for source in ("stream", "mmap"):
        out = np.full(len(ram), 7, np.uint8)
        frames.read_into(path, out, info, source=source, threads=threads)
        assert np.array_equal(out, ram)


# --- damaged and hostile files --------------------------------------------------------------
@pytest.mark.parametrize("source", ["stream", "mmap"])
def test_a_corrupt_frame_is_named_and_other_frames_still_read(tmp_path: Path, source: str) -> None:
    ram = mixed_ram(6)
    path = tmp_path / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=FRAME)
    entries, _ = read_index(path)
    lz4_frame = entries[5]  # frame 5: LZ4
    flip(path, lz4_frame[1] + lz4_frame[2] // 2)
    with pytest.raises(CorruptMemoryFileError, match=r"vm\.mem' is corrupt: frame 5: ") as err:
        frames.read_into(path, np.zeros(len(ram), np.uint8), info, source=source)
    assert err.value.frame == 5
    assert frames.read_frame(path, info, 6) == ram[6 * FRAME : 7 * FRAME].tobytes()  # located alone
    with pytest.raises(CorruptMemoryFileError, match="frame 5"):
        frames.read_frame(path, info, 5)
    raw_frame = entries[10]  # frame 10: RAW
    flip(path, raw_frame[1] + 17)
    with pytest.raises(CorruptMemoryFileError, match="frame 10: checksum mismatch"):
        frames.read_frame(path, info, 10)


def test_damaged_footer_index_or_length_is_refused_before_frames_are_read(tmp_path: Path) -> None:
    ram = mixed_ram(7)
    good = tmp_path / "good.mem"
    info = frames.write_full(good, ram, PAGE, frame_size=FRAME)
    size = good.stat().st_size
    cases = {
        "footer checksum mismatch": size - 20,  # inside the footer's fields
        "index checksum mismatch": read_index(good)[1] + 3,
        "no lz4 frame-format footer": size - FOOTER_SIZE,  # the magic
    }
    for message, offset in cases.items():
        bad = tmp_path / "bad.mem"
        bad.write_bytes(good.read_bytes())
        flip(bad, offset)
        with pytest.raises(CorruptMemoryFileError, match=message) as err:
            frames.read_into(bad, np.zeros(len(ram), np.uint8), info)
        assert err.value.frame is None
    truncated = tmp_path / "short.mem"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(MemoryFileMismatchError, match="length"):
        frames.read_into(truncated, np.zeros(len(ram), np.uint8), info)
    # Another file's footer: the digest binds the file to its state file.
    other = frames.write_full(tmp_path / "other.mem", mixed_ram(8), PAGE, frame_size=FRAME)
    with pytest.raises(MemoryFileMismatchError, match="digest"):
        frames.read_into(tmp_path / "other.mem", np.zeros(len(ram), np.uint8), replace_size(info, other.file_length))
    with pytest.raises(IncompatibleError, match="lz4"):
        memfile.read_into(good, np.zeros(len(ram), np.uint8), info)
    with pytest.raises(IncompatibleError, match="raw"):
        frames.read_into(tmp_path / "other.mem", np.zeros(len(ram), np.uint8), memfile.write_full(tmp_path / "r.mem", ram, PAGE))


def replace_size(info: MemFileInfo, file_size: int) -> MemFileInfo:
    return MemFileInfo(info.kind, info.length, info.page_size, info.digest, info.pages_written, format="lz4", frame_size=info.frame_size, file_size=file_size)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda e: e[:2] + (1 << 31,) + e[3:], "index entry 3"),  # stored size far past the file
        (lambda e: (e[0], e[1] + 8) + e[2:], "index entry 3"),  # offset not back to back
        (lambda e: e[:3] + (e[3] * 4,) + e[4:], "index entry 3"),  # payload larger than the frame
        (lambda e: (e[0] + 1,) + e[1:], "index entry 3"),  # another frame number
        (lambda e: e[:4] + (9,) + e[5:], "index entry 3"),  # unknown style
        (lambda e: e[:4] + (STYLE_RAW,) + e[5:], "index entry 3"),  # RAW must store the whole payload
    ],
)
def test_index_entries_are_checked_against_the_state_file(tmp_path: Path, tamper, message: str) -> None:
    ram = mixed_ram(9)
    path = tmp_path / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=FRAME)
    entries, _ = read_index(path)
    assert entries[3][4] == STYLE_LZ4
    entries[3] = tamper(entries[3])
    rewrite_index(path, entries)
    with pytest.raises(CorruptMemoryFileError, match=message) as err:
        frames.read_into(path, np.zeros(len(ram), np.uint8), info)
    assert err.value.frame == 3


def assemble(path: Path, info: MemFileInfo, data: bytes, entries: list[tuple[int, ...]]) -> MemFileInfo:
    """Write an lz4 memory file from `data` and `entries` by the module docstring's layout
    (an encoder independent of the module); returns `info` with the new file size."""
    index = b"".join(ENTRY.pack(*e) for e in entries)
    head = struct.pack(
        "<8sIIQQQQQ16s", b"MVMFRAME", 1, 1, info.length, info.frame_size, len(entries), len(data),
        xxhash.xxh3_64_intdigest(index), bytes.fromhex(info.digest),
    )
    path.write_bytes(data + index + head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little"))
    return replace_size(info, path.stat().st_size)


def test_the_layout_is_the_documented_one(tmp_path: Path) -> None:
    ram = mixed_ram(12, 3)
    path = tmp_path / "vm.mem"
    info = frames.write_full(path, ram, PAGE, frame_size=FRAME)
    entries, index_offset = read_index(path)
    copy = tmp_path / "copy.mem"
    assert assemble(copy, info, path.read_bytes()[:index_offset], entries) == info
    assert copy.read_bytes() == path.read_bytes()


def test_an_lz4_block_that_would_decode_past_its_frame_is_refused(tmp_path: Path) -> None:
    """A frame whose block decodes to more than the frame holds (a decompression bomb in
    miniature) fails inside the bounded decoder, naming the frame."""
    ram = mixed_ram(10, 2)  # frame 0 ZERO, frame 1 LZ4
    info = frames.write_full(tmp_path / "vm.mem", ram, PAGE, frame_size=FRAME)
    bomb = lz4.block.compress(bytes(8 * FRAME), store_size=False)  # 8 frames of zeros
    assert len(bomb) < FRAME
    checksum = xxhash.xxh3_64_intdigest(ram[FRAME:].tobytes())
    entries = [(0, 0, 0, FRAME, STYLE_ZERO, 0), (1, 0, len(bomb), FRAME, STYLE_LZ4, checksum)]
    bad = assemble(tmp_path / "bomb.mem", info, bomb, entries)
    with pytest.raises(CorruptMemoryFileError, match="frame 1: LZ4 block"):
        frames.read_into(tmp_path / "bomb.mem", np.zeros(len(ram), np.uint8), bad)
    short = lz4.block.compress(bytes(FRAME // 2), store_size=False)  # decodes to half a frame
    entries[1] = (1, 0, len(short), FRAME, STYLE_LZ4, checksum)
    bad = assemble(tmp_path / "short.mem", info, short, entries)
    with pytest.raises(CorruptMemoryFileError, match="frame 1: LZ4 block decodes to"):
        frames.read_into(tmp_path / "short.mem", np.zeros(len(ram), np.uint8), bad)


def test_bad_arguments(tmp_path: Path) -> None:
    ram = mixed_ram(11, 2)
    with pytest.raises(ValueError, match="frame size"):
        frames.write_full(tmp_path / "a.mem", ram, PAGE, frame_size=PAGE + 1)
    with pytest.raises(ValueError, match="frame size"):
        frames.write_full(tmp_path / "a.mem", ram, PAGE, frame_size=frames.MAX_FRAME_SIZE * 2)
    with pytest.raises(ValueError, match="threads"):
        frames.write_full(tmp_path / "a.mem", ram, PAGE, threads=0)
    with pytest.raises(ValueError, match="a raw memory file has no frame size"):
        MemFileInfo("full", len(ram), PAGE, "0" * 32, 0, frame_size=FRAME)
    with pytest.raises(ValueError, match="needs a frame size"):
        MemFileInfo("full", len(ram), PAGE, "0" * 32, 0, format="lz4")


# --- through save and load ----------------------------------------------------------------------
CONFIG = VmConfig(guest="memwalk", mem_size=32 * MIB, quantum=2_000, track_dirty_pages=True, params={"rounds": 0, "pattern": 2, "writes": 200, "region_mib": 4})


def test_compressed_snapshots_restore_bit_for_bit_with_both_backends(tmp_path: Path) -> None:
    reference = MicroVM(CONFIG)
    reference.run(500_000)
    vm = MicroVM(CONFIG)
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "s0", compress="lz4", frame_size=256 * 1024)
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "s1", "diff")  # raw diff over an lz4 base: formats mix
    vm.run(100_000)
    report = vm.save_snapshot(tmp_path / "s2", "diff", compress="lz4", threads=2)
    assert report.memory_bytes_written == (tmp_path / "s2.mem").stat().st_size
    for backend in ("copy", "mmap"):
        restored = MicroVM.load_snapshot(tmp_path / "s2", backend)
        assert restored.state_digest() == vm.state_digest()
        restored.run(200_000)
        assert restored.state_digest() == reference.state_digest()
    info = describe(tmp_path / "s0", verify=True, schema=MACHINE)
    assert info["memory_format"] == "lz4" and info["frame_size"] == 256 * 1024 and info["pair_ok"] is True
    assert info["compression_ratio"] == round(32 * MIB / (tmp_path / "s0.mem").stat().st_size, 3) > 10
    assert describe(tmp_path / "s1", schema=MACHINE)["compression_ratio"] is None


def test_a_corrupt_frame_fails_the_load_and_nothing_is_returned(tmp_path: Path) -> None:
    vm = MicroVM(CONFIG)
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "s", compress="lz4")
    path = tmp_path / "s.mem"
    info = describe(tmp_path / "s", schema=MACHINE)
    entries, _ = read_index(path)
    victim = next(e for e in entries if e[4] != STYLE_ZERO)
    flip(path, victim[1] + victim[2] - 1)
    for backend in ("copy", "mmap"):
        with pytest.raises(CorruptMemoryFileError, match=rf"s\.mem' is corrupt: frame {victim[0]}:"):
            MicroVM.load_snapshot(tmp_path / "s", backend)
    assert describe(tmp_path / "s", verify=True, schema=MACHINE)["pair_ok"] is False
    assert info["pair_ok"] is None


def test_bad_compression_options_write_nothing(tmp_path: Path) -> None:
    vm = MicroVM(CONFIG)
    vm.run(10_000)
    with pytest.raises(ValueError, match="compress"):
        vm.save_snapshot(tmp_path / "s", compress="zstd")
    with pytest.raises(ValueError, match="frame size"):
        vm.save_snapshot(tmp_path / "s", compress="lz4", frame_size=1000)
    assert not os.listdir(tmp_path)


# --- resources: every bound is checked before the work it bounds --------------------------
def _footer(length: int, frame_size: int, count: int, index_offset: int, index: bytes, digest: str) -> bytes:
    head = struct.pack(
        "<8sIIQQQQQ16s", b"MVMFRAME", 1, 1, length, frame_size, count, index_offset,
        xxhash.xxh3_64_intdigest(index), bytes.fromhex(digest),
    )
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


@pytest.mark.parametrize("kind", ["full", "diff"])
def test_a_tiny_file_claiming_16_gib_of_small_frames_is_refused_before_any_frame_object(
    tmp_path: Path, kind: str
) -> None:
    """80 bytes (a valid empty footer) whose state claims 16 GiB in 4 KiB frames: the entry
    count the state implies is computed, not built frame by frame."""
    import tracemalloc

    length, digest = 16 << 30, "ab" * 16
    path = tmp_path / "tiny.mem"
    path.write_bytes(_footer(length, PAGE, 0, 0, b"", digest))
    if kind == "full":
        info = MemFileInfo("full", length, PAGE, digest, 0)
    else:  # every other page: 2M runs, 2M present frames
        npages = length // PAGE
        page_map = b"\x55" * (npages // 8)
        info = MemFileInfo("diff", length, PAGE, digest, npages // 2, page_map, "cd" * 16)
    info = MemFileInfo(**{**info.__dict__, "format": "lz4", "frame_size": PAGE, "file_size": 80})
    tracemalloc.start()
    try:
        for call in (
            lambda: frames.compute_digest(path, info),
            lambda: frames.frame_styles(path, info),
            lambda: frames.read_frame(path, info, 0),
        ):
            with pytest.raises(CorruptMemoryFileError, match="index has 0 entries"):
                call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # the layout alone would be ~1 GB of Frame objects


def test_verify_streams_within_a_fixed_window_whatever_the_ram_size(tmp_path: Path) -> None:
    """compute_digest (verify, describe --verify) keeps at most READ_WINDOW_BYTES of frames in
    flight: it never holds a RAM-sized buffer (it used to decode into scratch RAM)."""
    import tracemalloc

    size = 160 << 20
    ram = np.zeros(size, np.uint8)
    ram[: 48 << 20] = np.random.default_rng(5).integers(0, 256, 48 << 20, dtype=np.uint8)  # RAW frames
    ram[100 << 20 : 120 << 20] = 7  # LZ4 frames; the rest ZERO
    path = tmp_path / "big.mem"
    info = frames.write_full(path, ram, PAGE, threads=2)
    expected = info.digest
    del ram
    tracemalloc.start()
    try:
        assert frames.compute_digest(path, info, threads=2) == expected
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * frames.READ_WINDOW_BYTES + (8 << 20), peak


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_mmap_source_releases_the_file_pages_it_has_decoded(tmp_path: Path) -> None:
    """Decoding from a read-only mapping drops each decoded frame's file pages, so an
    incompressible file restored with source="mmap" does not add its own size to RSS."""
    size = 64 << 20
    ram = np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8)  # RAW frames: file ~ RAM
    path = tmp_path / "raw-frames.mem"
    info = frames.write_full(path, ram, PAGE, threads=1)
    out = np.zeros(size, np.uint8)
    before = _rss_file_kib()
    seen: list[int] = []
    frames.read_into(path, out, info, source="mmap", threads=1, progress=lambda n: seen.append(_rss_file_kib()))
    assert np.array_equal(out, ram)
    assert max(seen) - before < 8 << 10, (before, max(seen))  # KiB: a frame or two, not 64 MiB
