"""Encryption at rest (issue 19): snapshots saved with `key=` / --encrypt-key-file restore to
the same machine as plain ones (full and diff, raw and lz4, copy and mmap), hide their secrets
from anyone without the key, and every failure is its own typed error naming the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from format_reader import FormatError, read_snapshot
from test_experiments import ray_session  # noqa: F401 (the session's local Ray instance)
from snapshot import commit, frames, links
from snapshot.crypto import HEADER_SIZE, TAG_SIZE, KeyFileError, MissingKeyError, Sealer, TamperedError, WrongKeyError
from snapshot.describe import describe
from snapshot.envelope import encode_state, read_state_file
from snapshot.errors import IncompatibleError, MemoryFileMismatchError
from snapshot.sealedstate import CLEAR_FIELDS
from vmm import MicroVM, VmConfig
from vmm.cli import main
from vmm.experiments import Input, run_experiments
from vmm.experiments.inputs import input_to_json
from vmm.layout import MIB, RAM_BASE
from vmm.persist import MACHINE

KEY = bytes(range(32))
OTHER = bytes(32)
SECRET_RAM = b"RAM-SECRET-0123456789" * 50  # guest RAM no encrypted file may show
SECRET_MMDS = "mmds-secret-token-value"
PAGE = 4096


def _vm() -> MicroVM:
    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, track_dirty_pages=True, params={"rounds": 0}))
    vm.memory.write(RAM_BASE + 20 * MIB, SECRET_RAM)
    vm.mmds.put({"token": SECRET_MMDS})
    vm.run(300_000)
    return vm


def _continue(vm: MicroVM) -> tuple[str, bytes]:
    vm.run(200_000)
    return vm.state_digest(), vm.console_output


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One VM saved at the same two points plain and encrypted (raw and lz4): a full snapshot,
    then a diff over it."""
    d = tmp_path_factory.mktemp("enc")
    vm = _vm()
    out = {}
    for name, key, compress in (("plain", None, None), ("raw", KEY, None), ("lz4", KEY, "lz4")):
        vm.save_snapshot(d / f"{name}-full", compress=compress, key=key)
    vm.run(100_000)
    vm.memory.write(RAM_BASE + 21 * MIB, SECRET_RAM)
    for name, key, compress in (("plain", None, None), ("raw", KEY, None), ("lz4", KEY, "lz4")):
        clone = MicroVM.load_snapshot(d / f"{name}-full", key=key, track_dirty_pages=True)
        clone.run(100_000)
        clone.memory.write(RAM_BASE + 21 * MIB, SECRET_RAM)
        clone.save_snapshot(d / f"{name}-diff", "diff", compress=compress, key=key)
        out[name] = d
    return out


@pytest.mark.parametrize("kind", ["full", "diff"])
@pytest.mark.parametrize("fmt", ["raw", "lz4"])
@pytest.mark.parametrize("backend", ["copy", "mmap"])
def test_an_encrypted_restore_continues_as_the_plain_one(saved, kind: str, fmt: str, backend: str) -> None:
    d = saved[fmt]
    plain = MicroVM.load_snapshot(d / f"plain-{kind}", backend)
    enc = MicroVM.load_snapshot(d / f"{fmt}-{kind}", backend, key=KEY)
    assert np.array_equal(enc.memory.view(), plain.memory.view())
    assert enc.state_digest() == plain.state_digest()
    assert _continue(enc) == _continue(plain)  # bit-identical continuation
    info = enc.lineage.memory  # type: ignore[attr-defined]
    assert info.encrypted and info.format == ("frames" if fmt == "raw" else "lz4")


def test_the_independent_reader_reads_an_encrypted_chain(saved) -> None:
    d = saved["lz4"]
    ours = MicroVM.load_snapshot(d / "raw-diff", key=KEY)
    snap = read_snapshot(d / "raw-diff.snap", key=KEY)
    assert bytes(snap.ram) == ours.memory.view().tobytes()
    assert snap.data["scheduler"]["clock"] == ours.clock
    with pytest.raises(FormatError, match="a key is needed"):
        read_snapshot(d / "raw-diff.snap")
    with pytest.raises(FormatError, match="wrong key"):
        read_snapshot(d / "lz4-full.snap", key=OTHER)


def test_nothing_secret_is_on_disk_in_clear(saved) -> None:
    d = saved["raw"]
    plain = (d / "plain-full.mem").read_bytes() + (d / "plain-full.snap").read_bytes()
    assert SECRET_RAM[:64] in plain and SECRET_MMDS.encode() in plain  # the check can fail
    for name in ("raw-full", "raw-diff", "lz4-full", "lz4-diff"):
        blob = (d / f"{name}.mem").read_bytes() + (d / f"{name}.snap").read_bytes()
        assert SECRET_RAM[:21] not in blob and SECRET_MMDS.encode() not in blob and b"memwalk" not in blob, name


def test_describe_without_the_key_shows_only_what_is_not_secret(saved) -> None:
    d = saved["raw"]
    full = describe(d / "raw-diff", schema=MACHINE, key=KEY)
    assert full["encrypted"] is True and full["vcpus"] == 1 and full["guest"] == "memwalk"
    bare = describe(d / "raw-diff", schema=MACHINE)
    assert bare["encrypted"] is True and "needs_key" in bare
    assert {"vcpus", "guest", "virtual_time_ns", "devices"}.isdisjoint(bare)
    assert bare["kind"] == "diff" and bare["memory_format"] == "frames" and bare["memory_size"] == 32 * MIB
    text = json.dumps(bare)
    assert SECRET_MMDS not in text and "memwalk" not in text and "pc" not in text
    with pytest.raises(MissingKeyError, match="raw-diff.snap"):
        describe(d / "raw-diff", verify=True)
    assert describe(d / "raw-diff", verify=True, key=KEY)["pair_ok"] is True


def test_missing_and_wrong_keys_are_typed_and_named(saved) -> None:
    d = saved["raw"]
    with pytest.raises(MissingKeyError, match=r"raw-full\.snap'?: the snapshot is encrypted"):
        MicroVM.load_snapshot(d / "raw-full")
    with pytest.raises(WrongKeyError, match=r"raw-full\.snap'?: wrong key"):
        MicroVM.load_snapshot(d / "raw-full", key=OTHER)
    with pytest.raises(KeyFileError, match="32 bytes"):
        MicroVM.load_snapshot(d / "raw-full", key=b"short")


def test_the_key_never_shows_in_a_pair_repr(saved) -> None:
    with commit.open_pair(saved["raw"] / "raw-full.snap", key=KEY) as pair:
        assert KEY.hex() not in repr(pair) and repr(KEY) not in repr(pair) and "key=" not in repr(pair)


def test_mixed_keys_in_a_chain_name_the_link(tmp_path) -> None:
    vm = _vm()
    vm.save_snapshot(tmp_path / "base", key=KEY)
    vm.run(50_000)
    vm.save_snapshot(tmp_path / "top", "diff", key=OTHER)
    with pytest.raises(WrongKeyError, match=r"base\.snap'?: wrong key"):
        MicroVM.load_snapshot(tmp_path / "top", key=OTHER)
    with pytest.raises(WrongKeyError, match=r"top\.snap'?: wrong key"):
        MicroVM.load_snapshot(tmp_path / "top", key=KEY)


def test_a_plain_diff_over_an_encrypted_base_is_refused(tmp_path) -> None:
    vm = _vm()
    vm.save_snapshot(tmp_path / "base", key=KEY)
    vm.run(50_000)
    with pytest.raises(IncompatibleError, match="base of this diff is encrypted"):
        vm.save_snapshot(tmp_path / "top", "diff")
    vm.save_snapshot(tmp_path / "top", "diff", key=KEY)  # with the key, it is saved encrypted
    assert MicroVM.load_snapshot(tmp_path / "top", key=KEY).state_digest() == vm.state_digest()


# --- tampering --------------------------------------------------------------------------------
def _copy(src: Path, dest: Path, name: str) -> Path:
    for suffix in (".snap", ".mem"):
        (dest / f"{name}{suffix}").write_bytes((src / f"{name}{suffix}").read_bytes())
    return dest / name


def _entries(path: Path) -> tuple[np.ndarray, frames.MemFileInfo]:
    with commit.open_pair(path.with_suffix(".snap"), key=KEY) as pair:
        info = pair.memory
        fd = pair.memory_fd
        index = frames._read_index(fd, pair.memory_path, info, KEY)
        return index.entries.copy(), info


def _rewrite_state(snap: Path, change) -> None:  # type: ignore[no-untyped-def]
    header, data = read_state_file(snap)
    change(data)
    snap.write_bytes(encode_state(data, version=tuple(header.version)))


def test_a_changed_byte_in_the_state_payload_is_tampering(saved, tmp_path) -> None:
    snap = _copy(saved["raw"], tmp_path, "raw-full").with_suffix(".snap")

    def flip(data: dict) -> None:
        p = bytearray(data["sealed"]["payload"])
        p[len(p) // 2] ^= 1
        data["sealed"]["payload"] = bytes(p)

    _rewrite_state(snap, flip)
    with pytest.raises(TamperedError, match=r"raw-full\.snap'?: the state payload fails authentication"):
        MicroVM.load_snapshot(snap, key=KEY)


def test_a_changed_clear_field_is_tampering(saved, tmp_path) -> None:
    snap = _copy(saved["raw"], tmp_path, "raw-full").with_suffix(".snap")
    _rewrite_state(snap, lambda data: data["memory"].update(pages_written=data["memory"]["pages_written"] + 1))
    with pytest.raises(TamperedError, match="a clear field"):
        MicroVM.load_snapshot(snap, key=KEY)


@pytest.mark.parametrize("attack", ["flip", "swap", "other-file", "truncate"])
def test_memory_frame_attacks_are_detected(saved, tmp_path, attack: str) -> None:
    """A changed byte in a frame, two frames swapped, a frame taken from another file (same
    key, same place) or the file cut short: each its typed error, before RAM is trusted."""
    base = _copy(saved["raw"], tmp_path, "raw-full")
    mem = base.with_suffix(".mem")
    entries, info = _entries(base)
    raw = np.flatnonzero(entries["style"] == frames.STYLE_RAW)  # frames of equal stored size
    a, b = (int(entries[i]["offset"]) for i in raw[:2])
    size = int(entries[raw[0]]["stored"])
    blob = bytearray(mem.read_bytes())
    expected: type[Exception] = TamperedError
    if attack == "flip":
        blob[a + 100] ^= 0x80
    elif attack == "swap":
        blob[a : a + size], blob[b : b + size] = blob[b : b + size], blob[a : a + size]
    elif attack == "other-file":
        vm = MicroVM.load_snapshot(base, key=KEY)
        vm.save_snapshot(tmp_path / "again", key=KEY)  # same contents, another file id
        other = (tmp_path / "again.mem").read_bytes()
        assert other[a : a + size] != blob[a : a + size]
        blob[a : a + size] = other[a : a + size]
    else:
        del blob[-100:]
        expected = MemoryFileMismatchError  # its recorded size (authenticated with the state)
    mem.write_bytes(bytes(blob))
    with pytest.raises(expected, match=r"raw-full\.mem"):
        MicroVM.load_snapshot(base, key=KEY)


def test_a_memory_file_of_another_encrypted_snapshot_is_refused(saved, tmp_path) -> None:
    base = _copy(saved["raw"], tmp_path, "raw-full")
    vm = MicroVM.load_snapshot(base, key=KEY)
    vm.save_snapshot(tmp_path / "again", key=KEY)
    base.with_suffix(".mem").write_bytes((tmp_path / "again.mem").read_bytes())
    with pytest.raises(MemoryFileMismatchError, match="encryption id"):
        MicroVM.load_snapshot(base, key=KEY)


# --- the frames container ---------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_sealed_encoding_is_bit_identical_whatever_the_threads(tmp_path, compress: bool) -> None:
    rng = np.random.default_rng(3)
    ram = np.zeros(16 * MIB, np.uint8)
    ram[: 4 * MIB] = rng.integers(0, 4, 4 * MIB, dtype=np.uint8)  # compressible
    ram[8 * MIB : 10 * MIB] = rng.integers(0, 256, 2 * MIB, dtype=np.uint8)  # not
    fid = os.urandom(16)
    outs = []
    for threads in (1, 3):
        path = tmp_path / f"t{threads}.mem"
        info = frames.write_full(path, ram, frame_size=MIB, threads=threads, compress=compress, sealer=Sealer.create(KEY, file_id=fid))
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] and outs[0][:8] == b"MVMCRYPT"
    assert info.encryption_id == fid.hex() and info.format == ("lz4" if compress else "frames")
    back = np.zeros_like(ram)
    frames.read_into(path, back, info, key=KEY)
    assert np.array_equal(back, ram)
    styles = frames.frame_styles(path, info, key=KEY)
    assert styles["ZERO"] == 10 and (styles["LZ4"] > 0) == compress
    # every frame is sealed: a ZERO frame stores exactly its tag
    with open(path, "rb") as f:
        entries = frames._read_index(f.fileno(), path, info, KEY).entries
    assert int(entries["offset"][0]) == HEADER_SIZE and set(entries["stored"][entries["style"] == frames.STYLE_ZERO]) == {TAG_SIZE}
    assert not entries["checksum"].any()  # no clear hash of any plaintext


def test_clear_fields_are_the_links_and_commit_field_names() -> None:
    assert CLEAR_FIELDS == (links.VM_FIELD, commit.MEMORY_FIELD, commit.MEMORY_FILE_FIELD, links.PARENT_FIELD)


# --- CLI --------------------------------------------------------------------------------------
def _one_line_error(capsys, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_encrypts_restores_and_reports_one_line_errors(tmp_path, capsys) -> None:
    key_file = tmp_path / "k.hex"
    key_file.write_text(KEY.hex() + "\n")
    other = tmp_path / "other.key"
    other.write_bytes(OTHER)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    snaps = tmp_path / "s"
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "400000", "--snapshot-at", "200000", "--snapshot-dir", str(snaps), "-q"]
    assert main([*argv, "--encrypt-key-file", str(key_file)]) == 3  # budget reached
    capsys.readouterr()
    snap = str(snaps / "snap-200000.snap")
    restore = ["restore", snap, "-q", "--max-instructions", "100000"]
    err = _one_line_error(capsys, restore)
    assert "snap-200000.snap" in err and "the snapshot is encrypted" in err
    err = _one_line_error(capsys, [*restore, "--encrypt-key-file", str(other)])
    assert "snap-200000.snap" in err and "wrong key" in err
    err = _one_line_error(capsys, [*restore, "--encrypt-key-file", str(bad)])
    assert "bad.key" in err and "expected 32 raw bytes or 64 hex digits" in err
    err = _one_line_error(capsys, [*restore, "--encrypt-key-file", str(tmp_path)])
    assert "key file" in err and "not a regular file" in err
    assert main([*restore, "--encrypt-key-file", str(key_file), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["restored_at_ns"] >= 200000
    assert main(["describe", snap, "--json"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert bare["encrypted"] is True and "vcpus" not in bare and "needs_key" in bare
    assert main(["describe", snap, "--json", "--encrypt-key-file", str(key_file)]) == 0
    assert json.loads(capsys.readouterr().out)["guest"] == "memwalk"
    err = _one_line_error(capsys, ["verify", snap])
    assert "the snapshot is encrypted" in err
    assert main(["verify", snap, "-q", "--encrypt-key-file", str(key_file)]) == 0
    mem = snaps / "snap-200000.mem"
    blob = bytearray(mem.read_bytes())
    blob[HEADER_SIZE + 10] ^= 1
    mem.write_bytes(bytes(blob))
    err = _one_line_error(capsys, [*restore, "--encrypt-key-file", str(key_file)])
    assert "snap-200000.mem" in err and "fails authentication" in err
    assert KEY.hex() not in err


# --- fan-out ----------------------------------------------------------------------------------
def test_fanout_with_a_key_gives_the_results_without(tmp_path, capsys) -> None:
    vm = MicroVM(VmConfig(guest="echo", mem_size=32 * MIB, quantum=2_000))
    vm.run(200_000)
    vm.save_snapshot(tmp_path / "plain")
    vm.save_snapshot(tmp_path / "enc", key=KEY)
    inputs = [Input(id=f"u{i}", uart=b"ab%d" % i, budget=40_000) for i in range(4)] + [Input(id="quit", uart=b"xq")]

    def outcomes(results: list) -> list[dict]:  # type: ignore[type-arg]
        return [r.outcome() for r in results]

    plain = outcomes(run_experiments(tmp_path / "plain.snap", inputs, workers=2, batch_size=2))
    assert outcomes(run_experiments(tmp_path / "enc.snap", inputs, workers=2, batch_size=2, key=KEY)) == plain
    with pytest.raises(MissingKeyError):
        run_experiments(tmp_path / "enc.snap", inputs, workers=1)
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(json.dumps(input_to_json(i)) + "\n" for i in inputs[:2]))
    key_file = tmp_path / "k"
    key_file.write_bytes(KEY)
    out = tmp_path / "out.jsonl"
    assert main(["fanout", str(tmp_path / "enc.snap"), "--inputs", str(lines), "-o", str(out), "--workers", "1", "-q", "--encrypt-key-file", str(key_file)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["console"] for g in got] == [p["console"] for p in plain[:2]]
    assert not list(tmp_path.glob("**/*.key*")) and KEY not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != key_file)


@pytest.mark.slow
def test_ray_actors_get_the_key_in_memory(ray_session, tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="echo", mem_size=32 * MIB, quantum=2_000))
    vm.run(200_000)
    vm.save_snapshot(tmp_path / "plain")
    vm.save_snapshot(tmp_path / "enc", key=KEY)
    inputs = [Input(id=f"u{i}", uart=b"ray%d" % i, budget=40_000) for i in range(3)]
    plain = [r.outcome() for r in run_experiments(tmp_path / "plain.snap", inputs, workers=1)]
    for transfer in ("path", "object-store"):
        got = run_experiments(tmp_path / "enc.snap", inputs, engine="ray", workers=2, transfer=transfer, key=KEY, batch_size=1)
        assert [r.outcome() for r in got] == plain, transfer


def test_rebase_of_an_encrypted_chain_writes_an_encrypted_full_snapshot(saved, tmp_path) -> None:
    from snapshot.chain import rebase, verify

    d = saved["lz4"]
    with pytest.raises(MissingKeyError, match="lz4-full.snap"):
        rebase(d / "lz4-full", [d / "lz4-diff"], tmp_path / "merged")
    report = rebase(d / "lz4-full", [d / "lz4-diff"], tmp_path / "merged", key=KEY)
    assert report.memory.encrypted and report.memory.kind == "full"
    merged = MicroVM.load_snapshot(tmp_path / "merged", key=KEY)
    assert merged.state_digest() == MicroVM.load_snapshot(d / "plain-diff").state_digest()
    assert verify(tmp_path / "merged", schema=MACHINE, key=KEY).ok
    with pytest.raises(MissingKeyError):
        verify(tmp_path / "merged")
