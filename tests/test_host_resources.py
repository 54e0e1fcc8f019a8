"""Host memory per vCPU (issue 15): Unicorn's translation buffer is sized on purpose, and an
address-space limit is a typed error, not exit(1) from C."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from vmm.config import VmConfig
from vmm.engine import TB_BUFFER_SIZE
from vmm.machine import MicroVM

ROOT = Path(__file__).resolve().parents[1]


def test_every_vcpu_engine_has_the_chosen_translation_buffer() -> None:
    vm = MicroVM(VmConfig(guest="smp", vcpus=2))
    assert TB_BUFFER_SIZE < 1 << 30  # smaller than Unicorn's 1 GiB default
    assert [v.uc.ctl_get_tcg_buffer_size() for v in vm.vcpus] == [TB_BUFFER_SIZE] * 2


def _limited(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True, env=env, preexec_fn=cap, timeout=120)


def _vsz_after_import() -> int:
    """Address space of a fresh interpreter that imported the machine (VmSize, bytes)."""
    code = "import vmm.machine, vmm.cli\nfor l in open('/proc/self/status'):\n    l.startswith('VmSize') and print(int(l.split()[1]) * 1024)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout)


def test_address_space_limit_is_a_one_line_error_not_a_dead_process() -> None:
    # Room for the interpreter, RAM and a few vCPUs, not for 32.
    limit = _vsz_after_import() + (400 << 20)
    small = _limited(["run", "hello", "-q", "--mem-mib", "16"], limit)
    assert small.returncode == 0 and small.stdout.startswith("Hello"), small.stderr
    big = _limited(["run", "smp", "--vcpus", "32", "--mem-mib", "16", "-q"], limit)
    assert big.returncode == 2, big.stderr
    assert big.stderr.startswith("microvm: error: cannot reserve") and big.stderr.count("\n") == 1
    assert "ulimit -v" in big.stderr and "Could not allocate" not in big.stderr
