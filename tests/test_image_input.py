"""Guest image files are untrusted input (issue 15): kind and size are checked before a byte is
read, and the ELF work is bounded. Each case once hung, read without bound, or took minutes."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import guests
from tools.faults.cli_input import elf_image  # one ELF builder for the tests and the campaign
from vmm.config import VmConfig
from vmm.errors import ImageError
from vmm.image import MAX_PHDR_TABLE_BYTES
from vmm.layout import RAM_BASE
from vmm.machine import MicroVM

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _cli(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload]


def _one_line_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_fifo_image_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "image.bin"
    os.mkfifo(fifo)
    _one_line_error(_cli(["run", str(fifo)]), "is not a regular file")  # hung in read() before


def test_device_image_is_refused() -> None:
    with pytest.raises(ImageError, match="/dev/zero is not a regular file"):
        MicroVM(VmConfig(image="/dev/zero"))


def test_huge_sparse_image_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(4 << 30)  # 4 GiB of holes
    # Under an address-space limit far below 4 GiB: reading it first ran out of memory.
    limit = 2 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    _one_line_error(_cli(["run", str(big), "--mem-mib", "16"], preexec_fn=cap), "at most 16,777,216 are accepted")


def test_elf_with_thousands_of_zero_filled_segments_is_refused_at_its_header(tmp_path: Path) -> None:
    image = tmp_path / "many.elf"
    image.write_bytes(elf_image([(RAM_BASE + MIB, b"", 8 * MIB)] * 3000, RAM_BASE + MIB))
    with pytest.raises(ImageError, match=r"program-header table of 3000 entries"):
        MicroVM(VmConfig(image=str(image), mem_size=16 * MIB))


def test_elf_with_overlapping_segments_is_refused(tmp_path: Path) -> None:
    count = MAX_PHDR_TABLE_BYTES // 56
    image = tmp_path / "overlap.elf"
    image.write_bytes(elf_image([(RAM_BASE + MIB, b"", 8 * MIB)] * count, RAM_BASE + MIB))
    with pytest.raises(ImageError, match="overlaps the one before it"):
        MicroVM(VmConfig(image=str(image), mem_size=16 * MIB))


def test_elf_with_bss_still_loads_and_runs(tmp_path: Path) -> None:
    code = guests.get("hello").binary()
    image = tmp_path / "hello.elf"
    at = RAM_BASE + 2 * MIB
    # hello's code, a bss segment after it, and a second data segment: all land where they say.
    image.write_bytes(elf_image([(at, code, len(code) + 4096), (at + 2 * MIB, b"\xaa" * 16, 64)], at))
    vm = MicroVM(VmConfig(image=str(image), mem_size=16 * MIB))
    assert vm.memory.read(at + 2 * MIB, 20) == b"\xaa" * 16 + bytes(4)
    assert vm.run().reason.value == "power_off" and vm.console_output.startswith(b"Hello")
