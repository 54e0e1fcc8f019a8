"""Dirty-page tracking in a running VM: every write path feeds the bitmap, nothing is missed."""
from __future__ import annotations

import numpy as np
import pytest
from asm import POWER_OFF, boot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm import ConfigError, MicroVM, StopReason, VmConfig
from vmm.layout import MIB, MMDS_BASE, RAM_BASE

PAGE = 4096
AREA = RAM_BASE + 1 * MIB  # stores land in [AREA, AREA + 14 MiB)
AREA_SIZE = 14 * MIB

# Loads, then stores x2 (a counter) at each address listed in `table`; touches no other
# memory. The load first makes every page's first TLB fill a read fill, so a fill policy that
# granted write on read fills would miss the store.
STORE_LIST = f"""
    adr x1, table
    ldr x2, [x1], #8
loop:
    cbz x2, done
    ldr x3, [x1], #8
    ldr x4, [x3]
    str x2, [x3]
    sub x2, x2, #1
    b loop
done:
    {POWER_OFF}
.p2align 3
table:
"""


def _store_guest(tmp_path, addresses: list[int], **config: object) -> MicroVM:
    table = "\n".join(f".quad {a:#x}" for a in [len(addresses), *addresses])
    return boot(tmp_path, STORE_LIST + table, track_dirty_pages=True, **config)


def _pages(addresses: list[int], size: int = 8) -> set[int]:
    out: set[int] = set()
    for a in addresses:
        out |= {(a - RAM_BASE) // PAGE, (a + size - 1 - RAM_BASE) // PAGE}
    return out


def _dirty_set(vm: MicroVM) -> set[int]:
    return set(int(p) for p in vm.dirty.pages())


addresses = st.lists(st.integers(0, AREA_SIZE // 8 - 1).map(lambda w: AREA + 8 * w), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stores=addresses, host=addresses)
def test_guest_and_host_writes_mark_exactly_the_written_pages(tmp_path, stores: list[int], host: list[int]) -> None:
    vm = _store_guest(tmp_path, stores, quantum=97)
    vm.start_dirty_epoch()
    assert vm.dirty.count() == 0
    for a in host:
        vm.memory.write_u64(a, 0xFFFF)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert _dirty_set(vm) == _pages(stores) | _pages(host)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stores=addresses, granule=st.sampled_from(["per-block", "global"]))
def test_coarse_granules_cover_a_superset_aligned_to_blocks(tmp_path, stores: list[int], granule: str) -> None:
    vm = _store_guest(tmp_path, stores, dirty_granule=granule)
    vm.start_dirty_epoch()
    vm.run(1_000_000)
    exact = _pages(stores)
    got = _dirty_set(vm)
    assert exact <= got
    block = 512  # 2 MiB in 4 KiB pages
    for p in got - exact:
        assert any(q // block == p // block for q in exact), "a page outside every written block"


def test_every_vcpu_is_tracked_and_epochs_reset_on_all_of_them() -> None:
    vm = MicroVM(VmConfig(guest="smp", vcpus=4, track_dirty_pages=True, quantum=1000, params={"iterations": 200}))
    before = vm.memory.view().copy()
    vm.start_dirty_epoch()
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    changed = set(np.flatnonzero((before != vm.memory.view()).reshape(-1, PAGE).any(axis=1)).tolist())
    dirty = _dirty_set(vm)
    assert changed <= dirty  # never a missing page
    stacks = {(0x8100_0000 - i * 0x8000 - 16 - RAM_BASE) // PAGE for i in range(4)}
    assert stacks <= dirty  # every vCPU's own stores were seen


def test_a_new_epoch_catches_the_same_pages_again(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", track_dirty_pages=True, quantum=10_000, params={"rounds": 0, "writes": 64}))
    vm.run(300_000)
    for _ in range(3):
        vm.start_dirty_epoch()
        before = vm.memory.view().copy()
        vm.run(200_000)
        changed = set(np.flatnonzero((before != vm.memory.view()).reshape(-1, PAGE).any(axis=1)).tolist())
        assert changed and changed <= _dirty_set(vm)
        assert vm.dirty_stats().faults > 0


def test_device_dma_marks_the_response_pages() -> None:
    vm = MicroVM(VmConfig(guest="hello", track_dirty_pages=True, mmds_version=1))
    vm.mmds.put({"latest": {"meta-data": {"id": "i-1"}}})
    vm.start_dirty_epoch()
    req = b"GET /latest/meta-data/id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    req_addr, resp_addr = RAM_BASE + 3 * MIB, RAM_BASE + 5 * MIB - 100  # response straddles a page
    vm.memory.write(req_addr, req)
    vm.start_dirty_epoch()
    dev = vm.mmds_device
    for off, value in ((0x10, req_addr), (0x14, req_addr >> 32), (0x18, len(req)), (0x20, resp_addr), (0x24, resp_addr >> 32), (0x28, 4096)):
        dev.mmio_write(off, 4, value & 0xFFFF_FFFF, 0)
    dev.mmio_write(0x30, 4, 1, 0)
    assert dev.mmio_read(0x34, 4, 0) == 1  # done
    n = dev.mmio_read(0x2C, 4, 0)
    assert b"i-1" in vm.memory.read(resp_addr, n)
    assert _dirty_set(vm) == _pages([resp_addr], n)
    assert MMDS_BASE  # the device is on the bus at its documented base


def test_ram_has_no_writable_handle_outside_guest_memory() -> None:
    vm = MicroVM(VmConfig(guest="hello", track_dirty_pages=True))
    with pytest.raises(ValueError):
        vm.memory.view()[0] = 1


def test_dirty_api_needs_tracking_on() -> None:
    vm = MicroVM(VmConfig(guest="hello"))
    with pytest.raises(ConfigError, match="track_dirty_pages=True"):
        vm.start_dirty_epoch()
    with pytest.raises(ConfigError, match="dirty_granule"):
        VmConfig(dirty_granule="huge")
