"""`exec`: instructions per second of the harness vs a bare Unicorn loop, on `compute`.

Three runs of the same guest binary, side by side in one process run:
1. the harness (`MicroVM`, deterministic scheduler, all hooks installed);
2. a bare Unicorn loop sliced with the same quantum (`emu_start(count=quantum)`), with only
   what the guest needs to finish (RAM, a UART sink, an HVC hook);
3. the same bare loop free-running (one `emu_start` without a count).
Instruction counts come from the harness's virtual clock (the guest is deterministic, so all
three execute the same instructions; the last slice's overcount is below one quantum).
"""
from __future__ import annotations

import time

import numpy as np
from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc
from unicorn import arm64_const as a64

import guests
from vmm import MicroVM, StopReason, VmConfig
from vmm.config import DEFAULT_QUANTUM
from vmm.layout import RAM_BASE, UART0_BASE, UART0_SIZE

SYSTEM_OFF = 0x8400_0008
REPEATS = 3


def _bare_uc(image: bytes, mem_size: int, params: list[int]) -> tuple[Uc, np.ndarray]:
    ram = np.zeros(mem_size, dtype=np.uint8)
    ram[: len(image)] = np.frombuffer(image, dtype=np.uint8)
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_MAX)
    uc.mem_map_ptr(RAM_BASE, mem_size, UC_PROT_ALL, ram.ctypes.data)
    uc.mmio_map(UART0_BASE, UART0_SIZE, lambda *a: 0, None, lambda *a: None, None)
    uc.reg_write(a64.UC_ARM64_REG_CP_REG, (1, 1, 3, 6, 0, 0x401 | (1 << 8)))  # SCR_EL3: HVC enabled
    uc.reg_write(a64.UC_ARM64_REG_CP_REG, (1, 1, 3, 4, 0, 1 << 31))  # HCR_EL2.RW

    def on_hvc(uc: Uc, intno: int, _ud: object) -> None:
        if uc.reg_read(a64.UC_ARM64_REG_X0) == SYSTEM_OFF:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_hvc)
    # The parameter block the runtime reads: x1 points at it.
    params_addr = RAM_BASE + mem_size - 1024 * 1024
    block = [guests.PARAMS_MAGIC, 1, RAM_BASE, mem_size, len(params), *params]
    off = params_addr - RAM_BASE
    ram[off : off + 8 * len(block)] = np.frombuffer(b"".join(v.to_bytes(8, "little") for v in block), dtype=np.uint8)
    uc.reg_write(a64.UC_ARM64_REG_X1, params_addr)
    return uc, ram


def _bare(image: bytes, mem_size: int, params: list[int], quantum: int | None) -> float:
    uc, _ram = _bare_uc(image, mem_size, params)
    pc = RAM_BASE
    t0 = time.perf_counter()
    if quantum is None:
        uc.emu_start(pc, 0)
    else:
        while True:
            uc.emu_start(pc, 0, count=quantum)
            if uc.reg_read(a64.UC_ARM64_REG_X0) == SYSTEM_OFF:
                break
            pc = uc.reg_read(a64.UC_ARM64_REG_PC)
    return time.perf_counter() - t0


def _harness(cfg: VmConfig) -> tuple[float, int]:
    vm = MicroVM(cfg)
    t0 = time.perf_counter()
    result = vm.run()
    seconds = time.perf_counter() - t0
    assert result.reason is StopReason.POWER_OFF, result
    return seconds, result.instructions


def run(quick: bool = False) -> dict[str, float]:
    """Each of the three is run `REPEATS` times, interleaved; the fastest run of each counts
    (this machine is noisy, and noise only ever slows a run down)."""
    iterations = 2_000_000 if quick else 20_000_000
    mem = 64 * 1024 * 1024
    cfg = VmConfig(guest="compute", mem_size=mem, params={"iterations": iterations})
    image = guests.get("compute").binary()
    params = guests.get("compute").resolve_params(cfg.params)
    harness_t, sliced_t, free_t = [], [], []
    instructions = 0
    for _ in range(REPEATS):
        seconds, instructions = _harness(cfg)
        harness_t.append(seconds)
        sliced_t.append(_bare(image, mem, params, DEFAULT_QUANTUM))
        free_t.append(_bare(image, mem, params, None))
    harness_s, sliced_s, free_s = min(harness_t), min(sliced_t), min(free_t)
    figures = {
        "instructions": instructions,
        "quantum": DEFAULT_QUANTUM,
        "harness_mips": round(instructions / harness_s / 1e6, 1),
        "raw_sliced_mips": round(instructions / sliced_s / 1e6, 1),
        "raw_free_mips": round(instructions / free_s / 1e6, 1),
    }
    figures["harness_vs_raw_sliced"] = round(figures["harness_mips"] / figures["raw_sliced_mips"], 3)
    figures["harness_vs_raw_free"] = round(figures["harness_mips"] / figures["raw_free_mips"], 3)
    print(f"compute, {iterations:,} iterations = {instructions:,} instructions; best of {REPEATS} interleaved runs")
    print(f"harness          {harness_s:7.3f} s  {figures['harness_mips']:8.1f} M instr/s")
    print(f"raw, sliced      {sliced_s:7.3f} s  {figures['raw_sliced_mips']:8.1f} M instr/s")
    print(f"raw, free        {free_s:7.3f} s  {figures['raw_free_mips']:8.1f} M instr/s")
    print(f"harness/sliced   {figures['harness_vs_raw_sliced']:.3f}   harness/free {figures['harness_vs_raw_free']:.3f}")
    return figures
