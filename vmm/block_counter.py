"""`BlockCounter`: exact slices at the cost of one C call per translation block.

Unicorn's `emu_start(count=N)` stops after exactly N instructions by calling a count hook
before every instruction; on a tight loop that costs 2-9x of free-running speed
(docs/machine.md). The block counter gets the same instruction for less:

- `emu_start` runs with count=0 (no count hook), and the native block hook
  (vmm/_sysreg.c `microvm_block`) charges each translation block its instruction count
  (size / 4) before the block runs. A QEMU translation block is one straight run of
  instructions, so the instruction at `pc` in the running block is number
  `base + (pc - cur_start) / 4` of the call.
- A slice is one `emu_start`. It begins on the VMM stub page, whose first block clears the
  exclusive monitor (CLREX, DDI 0487 B2.9.5); the block hook then sends the run to the guest's
  PC from the stub's second block. Neither is charged.
- The first block that would overrun the budget does not run as translated. If r of its
  instructions fit, the hook sends the run back to it with the next translation block cut to
  r instructions (Unicorn's cflags_next_tb, found by vmm.native_sysreg), and the next block's
  hook finds the budget spent and stops the run. Where cflags_next_tb is not found (or
  MICROVM_TAIL_CFLAGS=0), the hook instead drops the block's translation, sets a code hook on
  instruction r and sends the run back: the code hook stops the run in front of that
  instruction, then deletes itself (which drops the hooked translation). If none fit, the
  run stops in front of the block. No `until` address is used: Unicorn stops at one by running a WFI there, which at EL0 with
  SCTLR_EL1.nTWI = 0 (Linux's user space) traps to EL1 instead.
- A block left early is charged up to where it was left:
  - an exception (the interrupt hook): `leave_at(pc)` of the instruction that raised it;
    a tail left this way is given up, and counting goes on from the exception's target;
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

import ctypes
import os

from unicorn import Uc
from unicorn.arm64_const import UC_ARM64_REG_PC
from unicorn.unicorn_py3.unicorn import uclib

from vmm.icount import InstructionCounterError
from vmm.native_sysreg import TAIL_DONE, TAIL_NONE, SysregState

INSN_BYTES = 4  # every A64 instruction (DDI 0487 C1.1)


def enabled() -> bool:
    """Use the block counter where the native hooks are built (MICROVM_BLOCK_COUNTER=0: no)."""
    return os.environ.get("MICROVM_BLOCK_COUNTER", "1") != "0"


class BlockCounter:
    """One vCPU's block-counted `emu_start` calls (the C half is `NativeSysreg.state`)."""

    def __init__(self, uc: Uc, state: SysregState, stub: int, free_until: int) -> None:
        """`stub`: the VMM stub page (CLREX; B .+4 at its start); `free_until`: an `until`
        no run reaches (on the stub page, away from its code)."""
        self._uc = uc
        self._s = state
        self._stub = stub
        self._free_until = free_until
        state.counting = 1
        state.stub_base = stub
        self.done = 0  # instructions of this slice's finished run
        self.slice_start = 0
        self._pc = ctypes.c_uint64()  # uc_reg_read's out-parameter: 6x cheaper than Uc.reg_read
        self._pc_ref = ctypes.byref(self._pc)

    @property
    def tails(self) -> int:
        """Tails run since this counter was made (a statistic)."""
        return self._s.tails

    def run(self, pc: int, count: int, slice_start: int) -> tuple[int, bool]:
        """Clear the exclusive monitor, then run up to `count` instructions from `pc`; return
        (the PC, whether all `count` ran).

        Not all ran when a hook stopped the run, the IRQ-unmask stop fired, or Unicorn halted
        (WFI): `ran()` then says how many did. UcError propagates, with `counted_at` valid.
        """
        uc, s = self._uc, self._s
        self.done, self.slice_start = 0, slice_start
        self._begin(count)
        s.resume_pc, s.resume_armed = pc, 1
        try:
            uc.emu_start(self._stub, self._free_until, count=0)
        finally:
            if s.tail_hook:  # the run stopped inside its tail (a hook, a fault)
                self._drop_tail_hook()
        self.done = s.base + s.cur_len
        if s.count_error or s.resume_armed or self.done > count:
            raise InstructionCounterError(f"the block counter lost its place ({self.done} of {count} instructions)")
        uclib.uc_reg_read(uc._uch, UC_ARM64_REG_PC, self._pc_ref)
        pc = self._pc.value
        if s.halting or s.stopped:
            return pc, False
        if s.tail_phase == TAIL_DONE:
            return pc, True
        if s.tail_pc:  # stopped in front of a block none of whose instructions fit
            if s.tail_phase != TAIL_NONE or self.done != count:
                raise InstructionCounterError(f"the block counter stopped inside a tail ({self.done} of {count} instructions)")
            return pc, True
        return pc, False  # Unicorn halted: WFI (the caller checks)

    def _begin(self, budget: int) -> None:
        s = self._s
        s.slice_start = self.slice_start
        s.budget = budget
        s.base = s.cur_len = s.cur_start = s.tail_pc = 0
        s.halting = s.count_error = 0
        s.tail_phase = TAIL_NONE

    def _drop_tail_hook(self) -> None:
        uclib.uc_hook_del(self._uc._uch, ctypes.c_size_t(self._s.tail_hook))  # drops its translations
        self._s.tail_hook = 0

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
