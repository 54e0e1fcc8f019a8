"""`python -m tools.bench linux`: a stock Debian arm64 kernel to `Run /init` and to power-off.

Assets: `python -m tools.linux fetch`. For 1 and 2 vCPUs: wall seconds and virtual time to
the kernel's `Run /init` line and to PSCI SYSTEM_OFF (the shell at the prompt is sent
`poweroff -f`), the instructions actually executed (idle time jumps are not executed) and
executed MIPS. The same kernel and initramfs run in QEMU with `-icount shift=0` (Debian's
qemu-system-arm; virt machine, `-cpu max` with SVE and pointer authentication off as here)
where installed: `linux_boot_vs_qemu_icount` = the harness's CPU seconds to `Run /init` /
QEMU's (all its threads, read from /proc at the line), 1 vCPU: CPU time, as the exec bench
uses, so that time the two cores give other processes does not count. The `*_seconds` figures
are wall time. Best of N rounds, interleaved (tools.bench.measure).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Callable

from tools.bench.measure import Samples, interleave
from tools.linux import find_assets
from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB

CMDLINE = "console=ttyAMA0 cryptomgr.notests"
MEM_MIB = 512
RUN_INIT = b"Run /init as init process"
PROMPT = b"# "
BUDGET = 3_000_000_000


def _harness(vcpus: int, results: dict[str, float]) -> Callable[[], float]:
    assets = find_assets()
    assert assets is not None

    def case() -> float:
        vm = MicroVM(VmConfig(image=str(assets.image), initrd=str(assets.initrd), cmdline=CMDLINE, mem_size=MEM_MIB * MIB, vcpus=vcpus))
        t0, cpu0 = time.perf_counter(), time.process_time()
        r = vm.run_until_output(RUN_INIT, BUDGET)
        t_init, cpu_init = time.perf_counter() - t0, time.process_time() - cpu0
        assert r.reason is StopReason.OUTPUT, r
        results.setdefault("init_seconds", []).append(t_init)  # type: ignore[union-attr]
        results["init_virtual"] = vm.clock
        results["init_executed"] = vm.scheduler.retired
        r = vm.run_until_output(PROMPT, BUDGET)
        assert r.reason is StopReason.OUTPUT, r
        vm.uart.queue_input(b"poweroff -f\n")
        r = vm.run(BUDGET)
        t_off = time.perf_counter() - t0
        assert r.reason is StopReason.POWER_OFF, r
        results["off_virtual"] = vm.clock
        results["off_executed"] = vm.scheduler.retired
        results.setdefault("off_seconds", []).append(t_off)  # type: ignore[union-attr]
        return cpu_init

    return case


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its threads so far (proc(5): stat
    fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _qemu(vcpus: int) -> Callable[[], float] | None:
    qemu = shutil.which("qemu-system-aarch64")
    assets = find_assets()
    if qemu is None or assets is None:
        return None
    cmd = [
        qemu, "-M", "virt", "-cpu", "max,sve=off,pauth=off", "-m", f"{MEM_MIB}M", "-smp", str(vcpus),
        "-nographic", "-no-reboot", "-icount", "shift=0", "-kernel", str(assets.image), "-initrd", str(assets.initrd),
        "-append", CMDLINE,
    ]

    def case() -> float:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdin is not None
        out = b""
        t_init = None
        try:
            while PROMPT not in out.partition(RUN_INIT)[2]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"QEMU stopped before the prompt: {out[-500:]!r}")
                out += chunk
                if t_init is None and RUN_INIT in out:
                    t_init = _cpu_seconds(proc.pid)
            proc.stdin.write(b"poweroff -f\n")
            proc.stdin.flush()
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert t_init is not None
        return t_init

    return case


def run(quick: bool = False) -> dict[str, object]:
    if find_assets() is None:
        print("linux: no assets; run `python -m tools.linux fetch` first")
        return {"skipped": "no Linux assets"}
    repeats = 1 if quick else 2
    figures: dict[str, object] = {}
    facts: dict[int, dict[str, float]] = {1: {}, 2: {}}
    cases: dict[str, Callable[[], float]] = {f"harness_{n}": _harness(n, facts[n]) for n in (1, 2)}
    qemu = _qemu(1)
    if qemu is not None:
        cases["qemu_1"] = qemu
    samples: dict[str, Samples] = interleave(cases, repeats=repeats, warmup=0)
    for n in (1, 2):
        f = facts[n]
        init_s = min(f["init_seconds"])  # type: ignore[arg-type]
        off_s = min(f["off_seconds"])  # type: ignore[arg-type]
        figures[f"run_init_seconds_{n}vcpu"] = round(init_s, 2)
        figures[f"run_init_virtual_instructions_{n}vcpu"] = int(f["init_virtual"])
        figures[f"run_init_executed_instructions_{n}vcpu"] = int(f["init_executed"])
        figures[f"power_off_seconds_{n}vcpu"] = round(off_s, 2)
        figures[f"power_off_virtual_instructions_{n}vcpu"] = int(f["off_virtual"])
        figures[f"power_off_executed_instructions_{n}vcpu"] = int(f["off_executed"])
        figures[f"executed_mips_{n}vcpu"] = round(f["off_executed"] / off_s / 1e6, 1)
        print(
            f"  {n} vCPU: Run /init {init_s:6.2f} s ({f['init_virtual'] / 1e6:,.0f} M virtual, {f['init_executed'] / 1e6:,.0f} M executed); "
            f"power-off {off_s:6.2f} s ({f['off_virtual'] / 1e6:,.0f} M virtual, {f['off_executed'] / 1e6:,.0f} M executed); "
            f"{figures[f'executed_mips_{n}vcpu']} executed MIPS  (spread {samples[f'harness_{n}'].spread:.0%})"
        )
    if "qemu_1" in samples:
        q, h = samples["qemu_1"].best, samples["harness_1"].best
        figures["qemu_icount_run_init_cpu_seconds_1vcpu"] = round(q, 2)
        figures["run_init_cpu_seconds_1vcpu"] = round(h, 2)
        figures["linux_boot_vs_qemu_icount"] = round(h / q, 2)
        print(f"  QEMU -icount shift=0, 1 vCPU: Run /init {q:6.2f} CPU s; the harness {h:6.2f} CPU s; harness/QEMU = {figures['linux_boot_vs_qemu_icount']}")
    else:
        print("  (no qemu-system-aarch64: Debian's qemu-system-arm; QEMU comparison skipped)")
    return figures
