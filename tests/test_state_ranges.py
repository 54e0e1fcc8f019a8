"""Everything a state file carries is range-checked against what the machine can be, when it
is decoded: a typed EncodingError naming the field, before any memory is read or allocated,
never an IndexError/ValueError at restore or a huge allocation (issue 15 item 4).

The limits are declared on the state dataclasses (snapshot.plain markers and __post_init__),
so load, describe and verify all refuse the same files.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from snapshot.chain import verify
from snapshot.describe import describe
from snapshot.envelope import encode_state, read_state_file
from snapshot.errors import EncodingError
from vmm import MicroVM, VmConfig
from vmm.cli import main
from vmm.layout import MIB
from vmm.persist import MACHINE

CONFIG = VmConfig(guest="smp", vcpus=2, mem_size=16 * MIB, quantum=1_000, params={"iterations": 2_000})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    d = tmp_path_factory.mktemp("ranges")
    vm = MicroVM(CONFIG)
    vm.run(5_000)
    vm.save_snapshot(d / "s")
    return (d / "s.snap").read_bytes(), (d / "s.mem").read_bytes()


def _at(data: dict[str, Any], path: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path like 'vcpus.0.pstate'."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


# (field path, bad value, words the message must contain)
OUT_OF_RANGE = [
    ("vcpus.0.pstate", 0x3C9, "EL0t, EL1t or EL1h"),  # EL2h
    ("vcpus.1.pstate", 0x3CD, "EL0t, EL1t or EL1h"),  # EL3h
    ("vcpus.0.pstate", 0x3D0, "EL0t, EL1t or EL1h"),  # AArch32 user mode
    ("vcpus.0.sysregs.S3_4_C1_C1_0", 0, "not a saved system register"),  # HCR_EL2
    ("vcpus.0.sysregs.BOGUS", 1, "not a saved system register"),
    ("devices.uart0.ibrd", 1 << 16, "devices.uart0.ibrd"),
    ("devices.uart0.ifls", 0x40, "devices.uart0.ifls"),
    ("devices.uart0.imsc", 1 << 11, "devices.uart0.imsc"),
    ("devices.uart0.rx_fifo", b"x" * 17, "devices.uart0.rx_fifo"),
    ("devices.mmds.req_len", 1 << 32, "devices.mmds.req_len"),
    ("interrupts.timers.0.virt.ctl", 4, "interrupts.timers[0].virt.ctl"),
    ("interrupts.timers.1.cntkctl", 1 << 10, "interrupts.timers[1].cntkctl"),
    ("interrupts.gic.distributor.spis.enabled.0", -1, "interrupts.gic.distributor.spis.enabled[0]"),
    ("interrupts.gic.distributor.spis.pending_latch.1", 1 << 32, "interrupts.gic.distributor.spis.pending_latch[1]"),
    ("interrupts.gic.redistributors.1.private.active.0", 2**63, "interrupts.gic.redistributors[1].private.active[0]"),
    ("interrupts.gic.distributor.spis.priority.3", 0x100, "interrupts.gic.distributor.spis.priority[3]"),
    ("interrupts.gic.distributor.spis.priority.3", 0x07, "implemented"),
    ("interrupts.gic.distributor.irouter.0", 1 << 40, "irouter"),
    ("interrupts.gic.cpu_interfaces.0.bpr1", 2**33, "interrupts.gic.cpu_interfaces[0].bpr1"),
    ("interrupts.gic.cpu_interfaces.0.bpr1", 0, "interrupts.gic.cpu_interfaces[0].bpr1"),
    ("interrupts.gic.cpu_interfaces.1.pmr", 0x101, "interrupts.gic.cpu_interfaces[1].pmr"),
    ("interrupts.gic.cpu_interfaces.1.pmr", 0x01, "implemented"),
    ("interrupts.gic.cpu_interfaces.0.ap1r0", 1 << 32, "interrupts.gic.cpu_interfaces[0].ap1r0"),
    ("interrupts.gic.num_spis", 2**40, "interrupts.gic.num_spis"),
    ("scheduler.clock", 2**64 - 1_000, "scheduler.clock"),
    ("scheduler.clock", 2**62 + 1, "scheduler.clock"),
]
IDS = [f"{path}={value!r}"[:60] for path, value, _ in OUT_OF_RANGE]


@pytest.mark.parametrize(("path", "value", "words"), OUT_OF_RANGE, ids=IDS)
def test_out_of_range_state_is_an_encoding_error_naming_the_field(
    saved: tuple[bytes, bytes], tmp_path: Path, path: str, value: Any, words: str
) -> None:
    snap, mem = saved
    _, data = read_state_file_bytes(snap, tmp_path)
    node, key = _at(data, path)
    node[key] = value
    (tmp_path / "s.snap").write_bytes(encode_state(data))
    (tmp_path / "s.mem").write_bytes(mem)
    tracemalloc.start()
    try:
        for backend in ("copy", "mmap"):
            with pytest.raises(EncodingError, match=words.replace("[", r"\[").replace(".", r"\.")):
                MicroVM.load_snapshot(tmp_path / "s", backend)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MIB  # refused before RAM (16 MiB) or anything huge was allocated
    with pytest.raises(EncodingError):
        describe(tmp_path / "s", schema=MACHINE)
    assert not verify(tmp_path / "s", schema=MACHINE).ok
    assert main(["describe", str(tmp_path / "s.snap")]) == 2


def read_state_file_bytes(blob: bytes, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    path = tmp_path / "orig.snap"
    path.write_bytes(blob)
    return read_state_file(path)


def test_every_saved_state_is_within_its_declared_ranges(saved: tuple[bytes, bytes], tmp_path: Path) -> None:
    """The control: the unmodified file loads, so the limits admit what the machine saves."""
    snap, mem = saved
    (tmp_path / "s.snap").write_bytes(snap)
    (tmp_path / "s.mem").write_bytes(mem)
    vm = MicroVM.load_snapshot(tmp_path / "s")
    vm.run(5_000)
