"""`TranslatedCode`: the RAM pages one vCPU's Unicorn instance may hold translated code of, and
the dropping of those translations when the RAM under them changed behind Unicorn's back.

Unicorn does not see RAM the host writes (device DMA, snapshot restore, reset), so the vCPU
keeps a record of every page a fetch fill reached; data fills of other pages are granted no
execute permission, so a first fetch from a page always fills and marks it (Vcpu._on_tlb_fill,
and the native fill through `Vcpu.code_pages`). Dropping costs nothing for pages never fetched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from unicorn import UC_TLB_CPU, UC_TLB_VIRTUAL

from vmm.vcpu_registers import write_sysreg
from vmm.vcpu_state import saved_sysreg

if TYPE_CHECKING:
    from unicorn import Uc

    from vmm.memory import GuestMemory

# Granule of the record of RAM pages this vCPU may hold translated code of: the 4 KiB
# translation granule, the page of the dirty bitmap (vmm.tlb.DIRTY_PAGE_SIZE).
CODE_PAGE_SIZE = 4096


class TranslatedCode:
    """The record of one vCPU's fetched RAM pages (CODE_PAGE_SIZE bytes each, indexed from
    the RAM base). `flush_tlb` drops the vCPU's TLB entries (Vcpu.flush_tlb)."""

    def __init__(self, memory: GuestMemory, flush_tlb: Callable[[], None]) -> None:
        self.memory = memory
        self.flush_tlb = flush_tlb
        self.pages = bytearray(memory.size // CODE_PAGE_SIZE)  # 1 = may hold translations
        self.bits = np.frombuffer(self.pages, dtype=np.bool_)  # a view of `pages`
        self.stale: set[int] = set()  # fetched pages the host wrote since the vCPU last ran
        self._scratch: object | None = None  # a UcContext for drop

    def note_host_write(self, first_page: int, last_page: int) -> None:
        """The host wrote pages first_page..last_page: those fetched from become stale."""
        if self.pages.find(1, first_page, last_page + 1) < 0:
            return
        self.stale.update(p for p in range(first_page, last_page + 1) if self.pages[p])

    def drop(self, uc: Uc, pages: np.ndarray) -> None:
        """Drop the translated code `uc` holds of these pages (an array of page indices)."""
        pages = pages[self.bits[pages]]
        if not pages.size:
            return
        # Unicorn invalidates by virtual address, translated with the current TLB. Translate
        # with Unicorn's own MMU, switched off, so that VA = PA and the VMM's fill is not called.
        if self._scratch is None:
            self._scratch = uc.context_save()
        else:
            uc.context_update(self._scratch)  # type: ignore[arg-type]
        write_sysreg(uc, saved_sysreg("SCTLR_EL1").enc, 0)
        uc.ctl_set_tlb_mode(UC_TLB_CPU)
        self.flush_tlb()
        try:
            for page in pages.tolist():
                start = self.memory.base + page * CODE_PAGE_SIZE
                uc.ctl_remove_cache(start, start + CODE_PAGE_SIZE)
        finally:
            uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
            self.flush_tlb()
            uc.context_restore(self._scratch)  # type: ignore[arg-type]

    def forget_all(self) -> None:
        """After the instance's whole translation cache was flushed: no page holds code."""
        self.bits[:] = False
