"""TLBI by VA drops every translation of its VA, and no more is needed (vmm/_sysreg.c tlbi).

Unicorn's TLB holds 1 KiB entries, and its own TLBI by VA drops only the one at the 4 KiB
aligned address. The native filter drops the page's four entries, or the whole TLB when an
entry may have come from a block mapping covering the VA. A guest maps a page and a 2 MiB
block, reads them, remaps each and issues one TLBI VAE1: every quarter of the page, and every
page of the block, must read through the new mapping.
"""
from __future__ import annotations

import pytest
from asm import POWER_OFF, RESULTS_PTR, assemble, mov64, result

from vmm import MicroVM, StopReason, VmConfig, native_fill
from vmm.layout import RAM_BASE

L1, L2, L3 = RAM_BASE + 0x20_0000, RAM_BASE + 0x20_1000, RAM_BASE + 0x20_2000
PAGE_A, PAGE_B = RAM_BASE + 0x30_0000, RAM_BASE + 0x30_1000
BLOCK_A, BLOCK_B = RAM_BASE + 0x40_0000, RAM_BASE + 0x60_0000
# Unicorn's TLB is direct-mapped 1 KiB entries, index (VA >> 10) mod its size, which QEMU
# resizes between 64 and 256 at flushes: these VAs use entries (mod 64) that the program's own
# code, tables and results (0, 4, 8) never evict, so stale entries would still be there.
VA_PAGE, VA_BLOCK = 0x4000_A000, 0x4020_0000  # entries 40-43; L3 index 0xA
# Descriptor bits (DDI 0487 D8.3): valid+table/page, valid block, AF, inner shareable.
TABLE, PAGE, BLOCK, AF, SH_INNER = 0b11, 0b11, 0b01, 1 << 10, 3 << 8
TCR = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32)  # T0SZ 25 (3 levels), WB, ISH, EPD1, 40-bit PA
SUB_PAGES = (0, 1024, 2048, 3072)  # Unicorn's 1 KiB entries of one 4 KiB page
BLOCK_OFFSETS = (0x5000, 0x5400, 0x1_C800, 0x1F_DC00)  # entries 20, 21, 50, 55


def _store(addr: int, value: int) -> str:
    return f"{mov64('x0', addr)}\n{mov64('x1', value)}\nstr x1, [x0]"


def _reads(va: int, offsets: tuple[int, ...], first_slot: int) -> str:
    lines = []
    for i, off in enumerate(offsets):
        lines += [mov64("x0", va + off), "ldr x1, [x0]", f"str x1, [x28, #{8 * (first_slot + i)}]"]
    return "\n".join(lines)


def _tlbi(va: int) -> str:
    return f"dsb ishst\n{mov64('x0', va >> 12)}\ntlbi vae1, x0\ndsb ish\nisb"


def marker(base: int, off: int) -> int:
    return (base + off) ^ 0x5A5A_0000_0000_0000


SOURCE = "\n".join(
    [RESULTS_PTR]
    + [_store(base + off, marker(base, off)) for base in (PAGE_A, PAGE_B) for off in SUB_PAGES]
    + [_store(base + off, marker(base, off)) for base in (BLOCK_A, BLOCK_B) for off in BLOCK_OFFSETS]
    + [
        _store(L1 + 8 * 1, L2 | TABLE),
        _store(L1 + 8 * 2, RAM_BASE | AF | SH_INNER | BLOCK),  # the program: a 1 GiB identity block
        _store(L2 + 8 * 0, L3 | TABLE),
        _store(L2 + 8 * 1, BLOCK_A | AF | SH_INNER | BLOCK),
        _store(L3 + 8 * 0xA, PAGE_A | AF | SH_INNER | PAGE),
        mov64("x0", 0xFF), "msr mair_el1, x0",
        mov64("x0", TCR), "msr tcr_el1, x0",
        mov64("x0", L1), "msr ttbr0_el1, x0",
        "isb",
        "mrs x0, sctlr_el1", "orr x0, x0, #1", "msr sctlr_el1, x0", "isb",
        # A full flush: from here on every entry comes from the native walk, so the filter
        # knows each one's page or block (the first fills after the MMU turns on are Python's).
        "tlbi vmalle1", "dsb ish", "isb",
        _reads(VA_PAGE, SUB_PAGES, 0),
        _reads(VA_BLOCK, BLOCK_OFFSETS, 4),
        _store(L3 + 8 * 0xA, PAGE_B | AF | SH_INNER | PAGE),
        _tlbi(VA_PAGE),
        _reads(VA_PAGE, SUB_PAGES, 8),
        _store(L2 + 8 * 1, BLOCK_B | AF | SH_INNER | BLOCK),
        _tlbi(VA_BLOCK + 0x10_0000),  # one page of the block: the whole block's entries go
        _reads(VA_BLOCK, BLOCK_OFFSETS, 12),
        POWER_OFF,
    ]
)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_tlbi_by_va_drops_the_whole_page_and_block(tmp_path, monkeypatch, native: bool) -> None:
    if native and not native_fill.available():
        pytest.skip("the native hooks are not built here")
    monkeypatch.setenv(native_fill.ENV_SWITCH, "1" if native else "0")
    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(SOURCE))
    vm = MicroVM(VmConfig(image=str(image)))
    r = vm.run(1_000_000)
    assert r.reason is StopReason.POWER_OFF, r
    slots = [result(vm, i) for i in range(16)]
    assert slots[0:4] == [marker(PAGE_A, off) for off in SUB_PAGES]
    assert slots[4:8] == [marker(BLOCK_A, off) for off in BLOCK_OFFSETS]
    assert slots[8:12] == [marker(PAGE_B, off) for off in SUB_PAGES]
    assert slots[12:16] == [marker(BLOCK_B, off) for off in BLOCK_OFFSETS]
    state = vm.vcpus[0].native_sysreg.state if native else None
    if state is not None and state.cpu:
        assert state.tlbis == 3
        assert state.page_tlbis == 1  # the page's TLBI dropped its four entries only; the block's flushed all
