"""Clones of one snapshot (#18): `mmds="keep"` continues bit-identically; `mmds="drop"` gives
each clone an empty MMDS store and its own token key (Firecracker's clones share neither);
`reseed=N` gives a clone seed N, reproducibly, and so ends bit-identical continuation."""
from __future__ import annotations

import pytest

from vmm.cli import main
from vmm.machine import MicroVM
from vmm.testing import assert_vms_equal

MIB = 1 << 20


def token(vm: MicroVM) -> str:
    """A V2 session token issued by `vm`'s MMDS (as a guest's PUT would get it)."""
    wire = vm.mmds_device.handle_request(b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n")
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def accepts(vm: MicroVM, tok: str) -> bool:
    """True if `vm`'s MMDS answers a GET carrying `tok` (200), False if it refuses it (401)."""
    wire = vm.mmds_device.handle_request(f"GET /k HTTP/1.1\r\nX-metadata-token: {tok}\r\n\r\n".encode())
    status = wire.split(b" ", 2)[1]
    assert status in (b"200", b"401"), wire
    return status == b"200"


@pytest.fixture
def saved(microvm, snapshot_dir):
    """A running VM with MMDS data and a token issued before its snapshot."""
    vm = microvm("memwalk", mem_size=32 * MIB, quantum=10_000, params={"rounds": 0, "region_mib": 4}, mmds={"k": "v"})
    vm.run(50_000)
    before = token(vm)
    vm.save_snapshot(snapshot_dir / "base")
    return vm, snapshot_dir / "base", before


def test_dropped_clones_share_no_token_and_no_data(saved) -> None:
    vm, path, before = saved
    a = MicroVM.load_snapshot(path, mmds="drop")
    b = MicroVM.load_snapshot(path, mmds="drop")
    assert a.mmds.get("/") == {} and b.mmds.get("/") == {}
    assert not accepts(a, before) and not accepts(b, before)  # the saved key is gone
    a.mmds.put({"k": "a"})
    b.mmds.put({"k": "b"})
    ta, tb = token(a), token(b)
    assert ta != tb
    assert accepts(a, ta) and accepts(b, tb)
    assert not accepts(a, tb) and not accepts(b, ta)
    assert a.mmds_device.save_state().token_secret != b.mmds_device.save_state().token_secret


def test_kept_clones_continue_bit_identically(saved) -> None:
    vm, path, before = saved
    a = MicroVM.load_snapshot(path, mmds="keep")
    b = MicroVM.load_snapshot(path, "mmap")  # keep is the default
    assert accepts(a, before) and accepts(b, before)
    for clone in (a, b):
        clone.run(200_000)
    vm.run(200_000)
    assert token(a) == token(b) == token(vm)
    assert_vms_equal(a, vm, console=False)
    assert_vms_equal(b, vm, console=False)
    assert a.console_output == b.console_output


def test_reseed_is_reproducible_per_seed_and_ends_bit_identity(saved) -> None:
    vm, path, before = saved
    a1 = MicroVM.load_snapshot(path, reseed=7)
    a2 = MicroVM.load_snapshot(path, reseed=7)
    b = MicroVM.load_snapshot(path, reseed=8)
    assert a1.config.seed == 7 and b.config.seed == 8
    assert a1.mmds.get("/") == {"k": "v"}  # reseed alone keeps the data
    assert not accepts(a1, before)
    t1, t2, tb = token(a1), token(a2), token(b)
    assert t1 == t2 != tb
    assert not accepts(b, t1)
    assert a1.state_digest() == a2.state_digest() != vm.state_digest()


def test_unknown_policy_is_refused(saved) -> None:
    _, path, _ = saved
    with pytest.raises(ValueError, match="mmds must be"):
        MicroVM.load_snapshot(path, mmds="share")  # type: ignore[arg-type]


def test_restore_cli_mmds_and_reseed(saved, capsys) -> None:
    _, path, _ = saved
    base = ["restore", str(path), "--max-instructions", "10000", "--json", "-q"]
    assert main(base) == 3
    kept = capsys.readouterr().out
    assert main([*base, "--mmds", "drop"]) == 3
    dropped = capsys.readouterr().out
    assert main([*base, "--reseed", "5"]) == 3
    reseeded = capsys.readouterr().out
    digests = [line.split('"state_digest": "')[1][:32] for line in (kept, dropped, reseeded)]
    assert len(set(digests)) == 3
    with pytest.raises(SystemExit):
        main([*base, "--reseed", str(2**64)])
