"""A host write over code the guest already ran (GuestMemory.write: a test, a fan-out input,
device DMA) takes effect at the next instruction fetch, as in a VM restored right after the
write: translated code of the written pages is dropped before the vCPUs run again."""
from __future__ import annotations

from pathlib import Path

from asm import RESULTS, assemble, boot, mov64, result
from vmm import MicroVM
from vmm.layout import RAM_BASE

# A loop that adds the immediate of its `add` to x1 and stores x1 at RESULTS each time.
LOOP = f"""
    {mov64("x2", RESULTS)}
    mov x1, #0
loop:
    add x1, x1, #1
    str x1, [x2]
    b loop
"""


def _add_address(source: str) -> int:
    """Guest address of the loop's `add`."""
    code = assemble(source)
    add_1 = assemble("add x1, x1, #1")
    return RAM_BASE + code.index(add_1)


def test_a_host_write_over_executed_code_is_seen_like_after_a_restore(tmp_path: Path) -> None:
    vm = boot(tmp_path, LOOP, quantum=1_000, track_dirty_pages=True)
    vm.run(10_000)
    before = result(vm, 0)
    vm.memory.write(_add_address(LOOP), assemble("add x1, x1, #100"))  # the loop now adds 100
    vm.save_snapshot(tmp_path / "after-write")
    restored = MicroVM.load_snapshot(tmp_path / "after-write")
    vm.run(10_000)
    restored.run(10_000)
    assert result(vm, 0) - before > 100 * 1000  # the new instruction ran
    assert result(vm, 0) == result(restored, 0)
    assert vm.state_digest() == restored.state_digest()
