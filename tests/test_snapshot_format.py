"""docs/snapshot-format.md is complete: snapshots the project writes (full, diff chains, raw and
lz4 memory files) are read by tests/format_reader.py, a reader written from the document alone,
and what it rebuilds is the VM that was saved."""
from __future__ import annotations

import os
import random
import struct

import lz4.block
import msgpack
import pytest

from format_reader import FormatError, crc64_jones, lz4_block_decompress, read_snapshot, read_state
from vmm.machine import MicroVM
from vmm.testing import assert_vms_equal

MIB = 1 << 20
MEMWALK = {"pattern": 2, "rounds": 0, "writes": 200, "region_mib": 4}


def _check_against(snap, vm) -> None:
    """The independently read snapshot is `vm`: RAM byte for byte, and its key fields."""
    assert snap.ram == vm.memory.view().tobytes()
    data = snap.data
    assert data["scheduler"]["clock"] == vm.clock
    assert [v["pc"] for v in data["vcpus"]] == [v.save_state().pc for v in vm.vcpus]
    assert [v["x"] for v in data["vcpus"]] == [v.save_state().x for v in vm.vcpus]
    assert data["vm"]["ram_base"] == vm.memory.base and data["vm"]["vcpu_count"] == len(vm.vcpus)
    assert data["devices"]["uart0"]["tx_count"] == vm.uart.save_state().tx_count
    assert data["devices"]["mmds"]["data_json"] == vm.mmds_device.save_state().data_json
    assert len(data["interrupts"]["timers"]) == len(vm.vcpus)


def test_crc_parameters_give_the_documented_check_value() -> None:
    assert crc64_jones(b"123456789") == 0xE9C6D914C4B8D9CA


def test_lz4_block_decoder_reads_what_lz4_writes() -> None:
    rng = random.Random(7)
    samples = [
        bytes(4096),
        b"abc" * 5000,
        bytes(rng.randrange(4) for _ in range(20_000)),
        b"".join(rng.randbytes(rng.randrange(1, 300)) * rng.randrange(1, 40) for _ in range(200)),
    ]
    for data in samples:
        assert lz4_block_decompress(lz4.block.compress(data, store_size=False), len(data)) == data
    block = lz4.block.compress(b"abc" * 5000, store_size=False)
    with pytest.raises(FormatError):
        lz4_block_decompress(block[:-3], 15000)
    with pytest.raises(FormatError):
        lz4_block_decompress(block, 14999)


@pytest.mark.parametrize("compress", [None, "lz4"])
def test_full_snapshot_reads_back_as_the_saved_vm(microvm, snapshot_dir, compress) -> None:
    vm = microvm("smp", vcpus=2, mem_size=32 * MIB, quantum=1_000, params={"iterations": 5_000}, mmds={"k": "v"})
    vm.run(7_000)
    vm.save_snapshot(snapshot_dir / "full", compress=compress)
    snap = read_snapshot(snapshot_dir / "full.snap")
    assert snap.header == {"magic": 0x0710_1984_AAAA_0000, "version": [1, 2, 0]}
    assert snap.memory.kind == "full" and snap.memory.format == (compress or "raw")
    assert snap.data["vm"]["config"]["guest"] == "smp" and snap.data.get("parent") is None
    _check_against(snap, vm)


@pytest.mark.parametrize("formats", [(None, None, None, None), ("lz4", "lz4", "lz4", "lz4"), (None, "lz4", None, "lz4")])
def test_diff_chain_reads_back_as_the_saved_vm(microvm, snapshot_dir, formats) -> None:
    vm = microvm("memwalk", mem_size=32 * MIB, quantum=1_000, track_dirty_pages=True, params=MEMWALK)
    for i, compress in enumerate(formats):
        vm.run(20_000)
        vm.save_snapshot(snapshot_dir / f"s{i}", "full" if i == 0 else "diff", compress=compress)
    snap = read_snapshot(snapshot_dir / "s3.snap")
    assert [p.name for p in snap.chain] == ["s0.snap", "s1.snap", "s2.snap", "s3.snap"]
    assert snap.memory.kind == "diff" and 0 < snap.memory.pages_written < 1024  # of 8192
    assert snap.data["parent"]["state_name"] == "s2.snap"
    _check_against(snap, vm)
    # The diff alone covers only its pages: read from the document, they are the ones it holds.
    middle = read_snapshot(snapshot_dir / "s1.snap")
    assert middle.data["scheduler"]["clock"] == 40_000


def test_the_staged_memory_file_rule(microvm, snapshot_dir) -> None:
    vm = microvm("hello", mem_size=16 * MIB)
    vm.run()
    vm.save_snapshot(snapshot_dir / "a")
    digest = read_state(snapshot_dir / "a.snap")[1]["memory"]["digest"]
    os.rename(snapshot_dir / "a.mem", snapshot_dir / f".a.mem.staged-{digest}")
    _check_against(read_snapshot(snapshot_dir / "a.snap"), vm)
    assert_vms_equal(MicroVM.load_snapshot(snapshot_dir / "a"), vm, console=False)  # the project agrees


def test_memory_files_named_apart_from_their_state_files(microvm, snapshot_dir, tmp_path_factory) -> None:
    """1.1: a memory file with its own name, beside the state file or in another directory,
    is recorded as the document says (bare name / absolute path / nothing for N.mem), found
    by the reader (staged rule included) and by the project, across a chain that mixes them."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    vm = microvm("memwalk", mem_size=32 * MIB, quantum=1_000, track_dirty_pages=True, params=MEMWALK)
    plan = [("s0", snapshot_dir / "mem_file"), ("s1", elsewhere / "layer1"), ("s2", None)]
    for i, (name, mem) in enumerate(plan):
        vm.run(20_000)
        vm.save_snapshot(snapshot_dir / name, "full" if i == 0 else "diff", mem_path=mem)
    recorded = [read_state(snapshot_dir / f"{n}.snap")[1].get("memory_file") for n, _ in plan]
    assert recorded == ["mem_file", str(elsewhere / "layer1"), None]
    assert not (snapshot_dir / "s0.mem").exists() and not (snapshot_dir / "s1.mem").exists()
    _check_against(read_snapshot(snapshot_dir / "s2.snap"), vm)
    assert_vms_equal(MicroVM.load_snapshot(snapshot_dir / "s2"), vm, console=False)
    digest = read_state(snapshot_dir / "s1.snap")[1]["memory"]["digest"]
    os.rename(elsewhere / "layer1", elsewhere / f".layer1.staged-{digest}")
    _check_against(read_snapshot(snapshot_dir / "s2.snap"), vm)
    assert_vms_equal(MicroVM.load_snapshot(snapshot_dir / "s2", "mmap"), vm, console=False)


def test_a_version_1_0_file_still_loads(microvm, snapshot_dir) -> None:
    """A 1.0 state file (no memory_file; header 1.0.0) is read by the reader and the project."""
    vm = microvm("hello", mem_size=16 * MIB)
    vm.run(1_000)
    vm.save_snapshot(snapshot_dir / "old")
    assert "memory_file" not in read_state(snapshot_dir / "old.snap")[1]
    _rewrite_state(snapshot_dir / "old.snap", lambda top: top["header"].__setitem__("version", [1, 0, 0]))
    _check_against(read_snapshot(snapshot_dir / "old.snap"), vm)
    assert_vms_equal(MicroVM.load_snapshot(snapshot_dir / "old"), vm, console=False)


def _rewrite_state(path, edit) -> None:
    """Re-encode the state file at `path` after `edit(top)`, with a CRC from the independent
    implementation."""
    blob = path.read_bytes()
    top = msgpack.unpackb(blob[:-8], raw=False)
    edit(top)
    payload = msgpack.packb(top, use_bin_type=True)
    path.write_bytes(payload + struct.pack("<Q", crc64_jones(payload)))


def test_a_state_file_written_from_the_document_loads_in_the_project(microvm, snapshot_dir) -> None:
    vm = microvm("hello", mem_size=16 * MIB)
    vm.run(1_000)
    vm.save_snapshot(snapshot_dir / "a")
    _rewrite_state(snapshot_dir / "a.snap", lambda top: top["data"]["vcpus"][0]["x"].__setitem__(5, 0x1234))
    restored = MicroVM.load_snapshot(snapshot_dir / "a")
    assert restored.vcpus[0].save_state().x[5] == 0x1234
    assert read_snapshot(snapshot_dir / "a.snap").data["vcpus"][0]["x"][5] == 0x1234


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])), "CRC mismatch"),
        (lambda p: _rewrite_state(p, lambda t: t["header"].__setitem__("magic", 1)), "magic"),
        (lambda p: _rewrite_state(p, lambda t: t["header"].__setitem__("version", [1, 3, 0])), "not readable"),
        (lambda p: _rewrite_state(p, lambda t: t["data"]["memory"].__setitem__("digest", "0" * 32)), "digest mismatch|trailer does not match"),
        (lambda p: _rewrite_state(p, lambda t: t["data"]["memory"].__setitem__("extra", 1)), "unknown"),
        (lambda p: _rewrite_state(p, lambda t: t["data"].__setitem__("memory_file", "../a.mem")), "memory_file"),
    ],
)
def test_the_reader_refuses_what_the_document_forbids(microvm, snapshot_dir, damage, message) -> None:
    vm = microvm("hello", mem_size=16 * MIB)
    vm.run()
    vm.save_snapshot(snapshot_dir / "a")
    damage(snapshot_dir / "a.snap")
    with pytest.raises(FormatError, match=message):
        read_snapshot(snapshot_dir / "a.snap")


def test_a_corrupt_lz4_frame_is_refused(microvm, snapshot_dir) -> None:
    vm = microvm("hello", mem_size=16 * MIB)
    vm.run()
    vm.save_snapshot(snapshot_dir / "a", compress="lz4")
    mem = snapshot_dir / "a.mem"
    blob = bytearray(mem.read_bytes())
    blob[10] ^= 0xFF  # inside the first frame's stored bytes
    mem.write_bytes(bytes(blob))
    with pytest.raises(FormatError, match="frame 0|LZ4"):
        read_snapshot(snapshot_dir / "a.snap")
