"""The `mmu` guest: stage-1 translation with the MMU on, end to end through the VM.

Checked against independent models written from the guest's contract (guests/src/mmu.S):
the checksum, the exact physical pages it dirties, the ESR/FAR of the faults it takes, and
snapshot equivalence at pause points around the moment it turns the MMU on.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from unicorn import UC_MEM_FETCH, UC_MEM_READ, UC_MEM_WRITE, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE
from unicorn.arm64_const import UC_ARM64_REG_PSTATE

from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB, RAM_BASE, VMM_STUB_BASE
from vmm.mmu import FaultKind, TranslationFault
from vmm.tlb import FAULT_PAGE, fault_address

PAGE = 4096
M64 = (1 << 64) - 1
K = 0x9E37_79B9_7F4A_7C15
TABLES = RAM_BASE + 2 * MIB  # ten 4 KiB tables
DATA = RAM_BASE + 4 * MIB
STACK_TOP = RAM_BASE + 16 * MIB
ALIAS_C = 0xFFFF_8000_0000_0000
VA_UNMAPPED = 0x2_0000_0000
AP_EL0 = 1 << 6  # descriptor AP[1] (Arm ARM D5.3)
PSTATE_PAN = 1 << 22
# ESR_EL1 (Arm ARM D17.2.37): EC [31:26], IL [25], ISS.WnR [6], DFSC [5:0].
EC_DABT_CURRENT = 0x25
IL = 1 << 25
WNR = 1 << 6
DFSC_TRANSLATION_L1 = 0b000101
DFSC_PERMISSION_L3 = 0b001111


def data_model(pages: int, words: int, seed: int) -> dict[tuple[int, int], int]:
    """(data page, word) -> value after steps 1 and 2 of the guest."""
    mem = {(p, w): 0 for p in range(pages) for w in range(words)}
    for i in range(0, pages, 2):  # 1. even alias A pages; alias A page i is data page pages - 1 - i
        for w in range(words):
            mem[pages - 1 - i, w] = ((seed + (i << 32) + w) * K) & M64
    for i in range(pages):  # 2. alias C page i is data page i: even words ^= (i << 16 | w) + 1
        for w in range(0, words, 2):
            mem[i, w] ^= ((i << 16) | w) + 1
    return mem


def checksum_model(pages: int, words: int, seed: int) -> int:
    mem = data_model(pages, words, seed)
    c = 0xCBF2_9CE4_8422_2325
    for p in range(pages):
        for w in range(words):
            c = ((c ^ mem[p, w]) * 0x100_0000_01B3) & M64
            c ^= c >> 29
    return c


def written_pages(pages: int) -> set[int]:
    """RAM page indices the guest stores to: the runtime's rt_params_ptr (page 0), the ten
    tables, the data pages (whatever alias wrote them) and the stack page below STACK_TOP."""
    table0 = (TABLES - RAM_BASE) // PAGE
    data0 = (DATA - RAM_BASE) // PAGE
    return {0, *range(table0, table0 + 10), *range(data0, data0 + pages), (STACK_TOP - RAM_BASE) // PAGE - 1}


def mmu_vm(**params: int) -> MicroVM:
    return MicroVM(VmConfig(guest="mmu", params=params, track_dirty_pages=True, dirty_granule="page", quantum=Q))


def output(vm: MicroVM) -> str:
    return vm.console_output.decode()


Q = 500  # quantum; pause points land on multiples of it


@pytest.mark.parametrize(
    "pages, words, seed",
    [(16, 64, 1), (1, 1, 0), (3, 7, 0xDEAD_BEEF_0BAD_F00D), (256, 2, 5), (2, 512, 9)],
)
def test_checksum_and_memory_match_the_model(pages: int, words: int, seed: int) -> None:
    vm = mmu_vm(pages=pages, words=words, seed=seed)
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    assert output(vm) == f"mmu on\nmmu checksum: {checksum_model(pages, words, seed):016x}\nmmu done\n"
    mem = data_model(pages, words, seed)
    ram = vm.memory.view(DATA, pages * PAGE).view("<u8").reshape(pages, PAGE // 8)
    expected = np.zeros_like(ram)
    for (p, w), value in mem.items():
        expected[p, w] = value
    assert np.array_equal(ram, expected)


def test_the_checksum_depends_on_every_alias() -> None:
    # A guest that read back through a wrong mapping would print another value; make sure the
    # model itself tells the parameters apart.
    assert len({checksum_model(4, 8, s) for s in range(5)}) == 5
    assert checksum_model(4, 8, 1) != checksum_model(8, 4, 1)


@pytest.mark.parametrize("params", [{"pages": 0}, {"pages": 257}, {"words": 0}, {"words": 513}])
def test_bad_parameters_are_reported(params: dict[str, int]) -> None:
    vm = mmu_vm(**params)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    assert output(vm) == "mmu: bad parameters\n"


@pytest.mark.parametrize("pages, faults", [(16, 0), (1, 0), (40, 3)])
def test_dirty_bitmap_is_exactly_the_physical_pages_written(pages: int, faults: int) -> None:
    vm = mmu_vm(pages=pages, words=3, faults=faults)
    vm.start_dirty_epoch()
    before = vm.memory.view().copy()
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    dirty = set(vm.dirty.pages().tolist())
    assert dirty == written_pages(pages)
    changed = set(np.flatnonzero((before != vm.memory.view()).reshape(-1, PAGE).any(axis=1)).tolist())
    assert changed <= dirty  # (a page may be stored to with the value it held)


def test_dirty_pages_of_one_epoch_after_the_mmu_is_on() -> None:
    vm = mmu_vm(pages=8, words=64)
    _mmu_on_at(vm)
    # Step 2 (which stores to every data page) has not begun: data page 0, which only step 2
    # writes, is still zero. The tables are done; from here the guest writes data and stack.
    assert vm.memory.read_u64(DATA) == 0
    vm.start_dirty_epoch()
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    data0 = (DATA - RAM_BASE) // PAGE
    assert set(vm.dirty.pages().tolist()) == {*range(data0, data0 + 8), (STACK_TOP - RAM_BASE) // PAGE - 1}


def test_tracking_does_not_change_what_the_guest_does() -> None:
    params = {"pages": 6, "words": 9, "faults": 3}
    on = mmu_vm(**params)
    off = MicroVM(VmConfig(guest="mmu", params=params, quantum=Q))
    on.run(50_000_000)
    off.run(50_000_000)
    assert on.state_digest() == off.state_digest()
    assert on.console_output == off.console_output


def test_faults_are_delivered_to_the_guest_with_exact_esr_and_far() -> None:
    pages = 5
    vm = mmu_vm(pages=pages, words=2, faults=3)
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    assert vm.fault is None
    reports = re.findall(r"mmu fault: esr=([0-9a-f]{16}) far=([0-9a-f]{16})", output(vm))
    esr_translation = (EC_DABT_CURRENT << 26) | IL | DFSC_TRANSLATION_L1
    esr_permission = (EC_DABT_CURRENT << 26) | IL | WNR | DFSC_PERMISSION_L3
    assert [(int(e, 16), int(f, 16)) for e, f in reports] == [
        (esr_translation, 0x2_0000_03F8),  # load from a VA no table maps; FAR keeps the page offset
        (esr_permission, ALIAS_C + pages * PAGE + 8),  # store through the read-only alias C page
    ]
    assert output(vm).endswith("mmu done\n")
    assert vm.memory.read_u64(DATA + 8) != 1  # the faulting store (of seed 1) did not happen


@pytest.mark.parametrize("faults", [1, 2])
def test_each_fault_alone(faults: int) -> None:
    vm = mmu_vm(pages=2, words=2, faults=faults)
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    assert output(vm).count("mmu fault:") == 1


def _mmu_on_at(vm: MicroVM) -> int:
    """Run `vm` by quanta until the MMU is on; the virtual time then."""
    while not vm.vcpus[0].sysreg("SCTLR_EL1") & 1:
        assert vm.run(Q).reason is StopReason.BUDGET
    return vm.clock


@pytest.fixture(scope="module")
def reference() -> tuple[int, int, str, bytes]:
    """(instructions to MMU on, to power off, final digest, console) of the guest below."""
    vm = mmu_vm(**SNAP_PARAMS)
    on = _mmu_on_at(vm)
    assert vm.run(50_000_000).reason is StopReason.POWER_OFF
    return on, vm.clock, vm.state_digest(), vm.console_output


SNAP_PARAMS = {"pages": 12, "words": 40, "seed": 3, "faults": 3}


@pytest.mark.parametrize("where", ["before_on", "at_on", "after_on", "middle", "near_end"])
@pytest.mark.parametrize("kind", ["full", "diff"])
def test_snapshot_equivalence_around_mmu_enable(tmp_path: Path, reference, where: str, kind: str) -> None:
    on, total, digest, console = reference
    pause = {"before_on": on - Q, "at_on": on, "after_on": on + Q, "middle": (on + total) // 2 // Q * Q, "near_end": total - 2 * Q}[where]
    vm = mmu_vm(**SNAP_PARAMS)
    if kind == "diff":
        vm.run(pause - Q)
        vm.save_snapshot(tmp_path / "base")  # full; the diff below holds the last quantum's pages
        vm.run(Q)
        vm.save_snapshot(tmp_path / "snap", "diff")
    else:
        vm.run(pause)
        vm.save_snapshot(tmp_path / "snap")
    assert vm.clock == pause
    mmu_on = bool(vm.vcpus[0].sysreg("SCTLR_EL1") & 1)
    assert mmu_on == (pause >= on)
    restored = MicroVM.load_snapshot(tmp_path / "snap")
    assert restored.state_digest() == vm.state_digest()
    assert restored.run(50_000_000).reason is StopReason.POWER_OFF
    assert restored.clock == total
    assert restored.state_digest() == digest
    assert vm.console_output + restored.console_output == console


# --- the fill policy with the MMU on, called directly ------------------------------------------
def test_fill_translates_with_pstate_pan_and_reserves_the_stub_page() -> None:
    vm = MicroVM(VmConfig(guest="mmu", params={"pages": 2, "words": 1}, quantum=Q))
    _mmu_on_at(vm)
    vcpu = vm.vcpus[0]
    read, write, execute = UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC
    assert vm.tlb(vcpu, ALIAS_C + 0x400, UC_MEM_READ) == (DATA + 0x400, read | write | execute)
    assert vm.tlb(vcpu, 0x1_0000_0000, UC_MEM_WRITE) == (DATA + PAGE, read | write | execute)  # alias A page 0
    l3c = TABLES + 0x9000
    vm.memory.write_u64(l3c, vm.memory.read_u64(l3c) | AP_EL0)  # alias C page 0: EL0 may access it too
    assert vm.tlb(vcpu, ALIAS_C, UC_MEM_READ) == (DATA, read | write)  # EL1 never executes EL0-writable pages
    pstate = vcpu.pstate
    vcpu.uc.reg_write(UC_ARM64_REG_PSTATE, pstate | PSTATE_PAN)
    vcpu.pending_abort = None
    assert vm.tlb(vcpu, ALIAS_C, UC_MEM_READ) == (FAULT_PAGE, read)  # reaches nothing: exact FAR
    fault = vcpu.pending_abort
    assert isinstance(fault, TranslationFault) and (fault.kind, fault.level) == (FaultKind.PERMISSION, 3)
    assert fault_address(fault, pc=0, reached=FAULT_PAGE + 0x2F8) == ALIAS_C + 0x2F8
    vcpu.uc.reg_write(UC_ARM64_REG_PSTATE, pstate)
    # The VMM's CLREX stub page maps to itself whatever the guest's tables say.
    assert vm.tlb(vcpu, VMM_STUB_BASE, UC_MEM_FETCH) == (VMM_STUB_BASE, execute)
    vcpu.pending_abort = None
    assert vm.tlb(vcpu, VA_UNMAPPED, UC_MEM_FETCH) is None  # an instruction abort: the fill fails
    assert vcpu.pending_abort.kind is FaultKind.TRANSLATION
    assert fault_address(vcpu.pending_abort, pc=VA_UNMAPPED + 0x14, reached=None) == VA_UNMAPPED + 0x14
