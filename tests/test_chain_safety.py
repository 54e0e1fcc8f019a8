"""No save may make a snapshot of the VM's own chain unrestorable, and loading refuses a chain
whose links disagree, loop or are missing, with a message that says which.

Issue 15 items 1 and 6: `save(A)`, `save(B, diff)`, `save(A, diff)` used to succeed and leave
neither A nor B restorable (the chain looped); a loop was reported as "chain longer than 64";
the missing-parent message was garbled; a NUL byte in a parent name raised ValueError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from snapshot.chain import verify
from snapshot.envelope import encode_state, read_state_file
from snapshot.errors import (
    ChainLoopError,
    EncodingError,
    IncompatibleError,
    InvalidPathError,
    MissingParentError,
)
from snapshot.links import MAX_CHAIN
from vmm import MicroVM, VmConfig
from vmm.layout import MIB

Q = 2_000
CONFIG = VmConfig(guest="memwalk", mem_size=16 * MIB, quantum=Q, track_dirty_pages=True, params={"rounds": 0, "writes": 50, "region_mib": 2})


def files(d: Path) -> dict[str, bytes]:
    """Every file in `d` (snapshots and anything a save left), by name."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def restorable(d: Path, name: str) -> str:
    """The state digest `name` restores to (raises if it does not restore), after checking
    its whole chain with verify."""
    assert verify(d / name).ok, verify(d / name).broken
    return MicroVM.load_snapshot(d / name).state_digest()


@pytest.fixture()
def chain(tmp_path: Path) -> tuple[MicroVM, dict[str, str]]:
    """A (full) <- B <- C <- D (diffs) of one run; returns the VM (lineage at D) and the state
    digest each snapshot was taken at."""
    vm = MicroVM(CONFIG)
    taken: dict[str, str] = {}
    for i, name in enumerate("ABCD"):
        vm.run(20 * Q)
        vm.save_snapshot(tmp_path / name, "full" if i == 0 else "diff")
        taken[name] = vm.state_digest()
    return vm, taken


def test_a_diff_to_the_name_of_its_grandparent_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The issue's sequence: A, B (diff), A (diff)."""
    vm = MicroVM(CONFIG)
    vm.run(20 * Q)
    vm.save_snapshot(tmp_path / "A")
    a = vm.state_digest()
    vm.run(20 * Q)
    vm.save_snapshot(tmp_path / "B", "diff")
    b = vm.state_digest()
    vm.run(20 * Q)
    before = files(tmp_path)
    with pytest.raises(InvalidPathError, match=r"'.*A\.snap'.*(is a link of this VM's snapshot chain|is the base of the diff B)"):
        vm.save_snapshot(tmp_path / "A", "diff")
    assert files(tmp_path) == before  # nothing written, not even a temp file
    assert restorable(tmp_path, "A") == a and restorable(tmp_path, "B") == b
    vm.save_snapshot(tmp_path / "C", "diff")  # the VM is still usable: the chain goes on
    assert restorable(tmp_path, "C") == vm.state_digest()


@pytest.mark.parametrize(
    "name, kind",
    [("A", "diff"), ("B", "diff"), ("C", "diff"), ("D", "diff"), ("A", "full"), ("B", "full"), ("C", "full")],
)
def test_no_save_to_a_link_of_a_longer_chain_breaks_it(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path, name: str, kind: str) -> None:
    vm, taken = chain
    vm.run(10 * Q)
    before = files(tmp_path)
    with pytest.raises(InvalidPathError, match="snapshot chain|is the base of the diff"):
        vm.save_snapshot(tmp_path / name, kind)  # type: ignore[arg-type]
    assert files(tmp_path) == before
    for n in "ABCD":
        assert restorable(tmp_path, n) == taken[n]


def test_what_stays_allowed(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    """A full snapshot over the chain's top (nothing in the chain depends on it) and any save
    once a full snapshot has started a new chain."""
    vm, taken = chain
    vm.run(10 * Q)
    vm.save_snapshot(tmp_path / "D")  # full, over the top
    assert restorable(tmp_path, "D") == vm.state_digest()
    for n in "ABC":
        assert restorable(tmp_path, n) == taken[n]
    vm.run(10 * Q)
    vm.save_snapshot(tmp_path / "E", "diff")  # over the new full D
    assert restorable(tmp_path, "E") == vm.state_digest()


def test_a_restored_vm_knows_its_whole_chain(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    _, taken = chain
    vm = MicroVM.load_snapshot(tmp_path / "C")
    vm.run(10 * Q)
    for name in "ABC":
        with pytest.raises(InvalidPathError, match="snapshot chain|is the base of the diff"):
            vm.save_snapshot(tmp_path / name, "diff")
    vm.save_snapshot(tmp_path / "D", "diff")  # D is not in C's chain: replacing it is fine
    assert restorable(tmp_path, "D") == vm.state_digest()
    for n in "ABC":
        assert restorable(tmp_path, n) == taken[n]


def test_a_diff_past_the_longest_chain_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A diff that would be link MAX_CHAIN + 1 could never be restored: refused up front."""
    import vmm.persist

    monkeypatch.setattr(vmm.persist, "MAX_CHAIN", 3)
    vm = MicroVM(CONFIG)
    for i in range(3):
        vm.run(5 * Q)
        vm.save_snapshot(tmp_path / f"s{i}", "full" if i == 0 else "diff")
    with pytest.raises(IncompatibleError, match="at most 3 snapshots"):
        vm.save_snapshot(tmp_path / "s3", "diff")
    assert MAX_CHAIN == 64


# --- load-side link checks ----------------------------------------------------------------------
def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    _, data = read_state_file(path)
    change(data)
    path.write_bytes(encode_state(data))


def test_a_loop_is_reported_as_a_loop(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    rewrite(tmp_path / "B.snap", lambda d: d["parent"].__setitem__("state_name", "D.snap"))
    with pytest.raises(ChainLoopError, match=r"loops: '.*' is its own ancestor"):
        MicroVM.load_snapshot(tmp_path / "D")
    report = verify(tmp_path / "D")
    assert report.broken is not None and "loops" in str(report.broken) and "longer than" not in str(report.broken)


def test_a_missing_parent_message_names_the_diff_and_the_parent(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    (tmp_path / "B.snap").unlink()
    with pytest.raises(MissingParentError) as caught:
        MicroVM.load_snapshot(tmp_path / "D")
    message = str(caught.value)
    assert f"diff {str(tmp_path / 'C.snap')!r} needs its parent snapshot {str(tmp_path / 'B.snap')!r}" in message
    assert "which was not found" in message and "digest " in message and "(digest " not in message


def test_a_nul_byte_in_a_parent_name_is_an_encoding_error(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    rewrite(tmp_path / "D.snap", lambda d: d["parent"].__setitem__("state_name", "C\x00.snap"))
    with pytest.raises(EncodingError, match="parent.*NUL"):
        MicroVM.load_snapshot(tmp_path / "D")
    assert not verify(tmp_path / "D").ok


def test_a_parent_digest_that_disagrees_with_its_link_is_refused_by_load(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    """memory.parent_digest and parent.memory_digest must be the same digest: load used to
    follow one and check the other, so only verify noticed."""
    rewrite(tmp_path / "D.snap", lambda d: d["parent"].__setitem__("memory_digest", "0" * 32))
    for backend in ("copy", "mmap"):
        with pytest.raises(EncodingError, match="parent.memory_digest .* is not memory.parent_digest"):
            MicroVM.load_snapshot(tmp_path / "D", backend)  # type: ignore[arg-type]


def test_a_vm_restored_from_a_link_cannot_replace_a_base_of_later_diffs(chain: tuple[MicroVM, dict[str, str]], tmp_path: Path) -> None:
    """Found by the campaign (tools/faults/saves.py): a VM restored from B is free to save over
    its own top as far as its chain goes, but C (a diff of the original run) is taken over B:
    replacing B would leave C unrestorable. Any save over a snapshot a diff in its directory
    is taken over is refused."""
    _, taken = chain
    vm = MicroVM.load_snapshot(tmp_path / "B")
    vm.run(10 * Q)
    before = files(tmp_path)
    for name, kind in (("B", "full"), ("C", "full"), ("C", "diff")):
        with pytest.raises(InvalidPathError, match="is the base of the diff"):
            vm.save_snapshot(tmp_path / name, kind)  # type: ignore[arg-type]
    assert files(tmp_path) == before
    vm.save_snapshot(tmp_path / "D", "diff")  # D has no diff over it: replacing it is allowed
    for n in "ABC":
        assert restorable(tmp_path, n) == taken[n]
    assert restorable(tmp_path, "D") == vm.state_digest()
