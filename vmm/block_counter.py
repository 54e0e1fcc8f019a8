"""`BlockCounter`: exact slices at the cost of one C call per translation block.

Unicorn's `emu_start(count=N)` stops after exactly N instructions by calling a count hook
before every instruction; on a tight loop that costs 2-9x of free-running speed
(docs/machine.md). The block counter gets the same instruction for less:

- `emu_start` runs with count=0 (no count hook), and the native block hook
  (vmm/_sysreg.c `microvm_block`) charges each translation block its instruction count
  (size / 4) before the block runs. A QEMU translation block is one straight run of
  instructions, so the instruction at `pc` in the running block is number
  `base + (pc - cur_start) / 4` of the call.
- A block that would overrun the budget does not run: the hook stops in front of it
  (`tail_pc`). The remaining r instructions run as the tail: `emu_start(tail_pc,
  until=tail_pc + 4r)`. Unicorn checks `until` only when it translates, so the cached block is
  dropped before (`ctl_remove_cache`) and the cut-short translation after.
- A block left early is charged up to where it was left:
  - an exception (the interrupt hook): `leave_at(pc)` of the instruction that raised it;
  - a hook that stops the run (`halting`): the instructions that end a slice from a hook
    (a trapped MSR, HVC/SMC) end their block in QEMU, which the caller checks by the PC;
  - a store into the running block's own code does not leave it: Unicorn runs the block to
    its end as translated (the new code runs from the block's next translation);
  - WFI, which halts `emu_start`, ends its block;
  - a memory fault raises UcError with the PC on the faulting instruction (`counted_at`).

So `run(pc, count)` ends on exactly the instruction `emu_start(pc, count=count)` ends on
(tests/test_block_counter.py runs both side by side). Without the C module the vCPU keeps
Unicorn's count= (the reference); MICROVM_BLOCK_COUNTER=0 selects it too.
"""
from __future__ import annotations

import os

from unicorn import Uc
from unicorn.arm64_const import UC_ARM64_REG_PC

from vmm.icount import InstructionCounterError
from vmm.native_sysreg import SysregState

INSN_BYTES = 4  # every A64 instruction (DDI 0487 C1.1)


def enabled() -> bool:
    """Use the block counter where the native hooks are built (MICROVM_BLOCK_COUNTER=0: no)."""
    return os.environ.get("MICROVM_BLOCK_COUNTER", "1") != "0"


class BlockCounter:
    """One vCPU's block-counted `emu_start` calls (the C half is `NativeSysreg.state`)."""

    def __init__(self, uc: Uc, state: SysregState, free_until: int) -> None:
        self._uc = uc
        self._s = state
        self._free_until = free_until  # an `until` no guest reaches (the VMM stub page)
        state.counting = 1
        self.done = 0  # instructions of this slice's finished emu_start calls
        self.slice_start = 0
        self.tails = 0  # tails run since this object was made (a statistic)

    def _begin(self, budget: int) -> None:
        s = self._s
        s.slice_start = self.slice_start + self.done
        s.budget = budget
        s.base = s.cur_len = s.cur_start = s.tail_pc = 0
        s.halting = s.count_error = 0

    def run_stub(self, begin: int, until: int) -> None:
        """Run the VMM stub's one block from `begin` to its stop at `until` (CLREX between
        slices), charged to no slice."""
        self.done = self.slice_start = 0
        self._begin(1)
        self._uc.emu_start(begin, until, count=0)

    def run(self, pc: int, count: int, slice_start: int) -> tuple[int, bool]:
        """Run up to `count` instructions from `pc`; return (the PC, whether all `count` ran).

        Not all ran when a hook stopped the run, the IRQ-unmask stop fired, or Unicorn halted
        (WFI): `ran()` then says how many did. UcError propagates, with `counted_at` valid.
        """
        uc, s = self._uc, self._s
        self.done, self.slice_start = 0, slice_start
        until, tail = self._free_until, None
        while True:
            self._begin(count - self.done)
            try:
                uc.emu_start(pc, until, count=0)
            finally:
                if tail is not None:  # the cut-short translation must not outlive its `until`
                    uc.ctl_remove_cache(tail, until + INSN_BYTES)
            self.done += s.base + s.cur_len
            if s.count_error or self.done > count:
                raise InstructionCounterError(f"the block counter lost its place ({self.done} of {count} instructions)")
            pc = uc.reg_read(UC_ARM64_REG_PC)
            if s.halting or s.stopped:
                return pc, False
            if tail is not None and pc == until:
                return pc, True
            if not s.tail_pc:
                return pc, False  # Unicorn halted: WFI (the caller checks)
            if self.done == count:
                return pc, True
            tail = pc = s.tail_pc
            until = pc + INSN_BYTES * (count - self.done)
            uc.ctl_remove_cache(pc, pc + INSN_BYTES)
            self.tails += 1

    def ran(self) -> int:
        """Instructions the last `run` ran (after it returned)."""
        return self.done

    def counted_at(self, pc: int) -> int:
        """Instructions of this slice up to and including the one at `pc` in the running block
        (inside a hook, or after a UcError raised by that instruction)."""
        s = self._s
        index = (pc - s.cur_start) // INSN_BYTES
        if not 0 <= index < s.cur_len:
            raise InstructionCounterError(f"the block counter has no instruction at {pc:#x} in its running block")
        return self.done + s.base + index + 1

    def leave_at(self, pc: int) -> None:
        """The running block was left after the instruction at `pc` (an exception)."""
        s = self._s
        if s.cur_start <= pc < s.cur_start + INSN_BYTES * s.cur_len:
            s.cur_len = (pc - s.cur_start) // INSN_BYTES + 1
        else:
            s.count_error = 1

    def halt(self) -> None:
        """A hook is stopping the run (uc_emu_stop): the next block must not be charged."""
        self._s.halting = 1
