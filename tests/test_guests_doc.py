"""docs/guests.md's listings build and run exactly as printed: the assembly guest with keystone
and with GNU binutils, the C guest with Debian's gcc-aarch64-linux-gnu (skipped, with the reason,
where that is not installed; CI installs it with .ci/cross-compiler and sets
MICROVM_REQUIRE_CROSS=1 so that it cannot skip there)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmm.config import VmConfig
from vmm.errors import ImageError
from vmm.machine import MicroVM
from vmm.scheduler import StopReason

DOC = Path(__file__).resolve().parent.parent / "docs" / "guests.md"


def listings() -> dict[str, str]:
    """The doc's fenced blocks whose first line names a file (`// file: X`, `/* file: X */`,
    `# file: X`), by file name."""
    files = {}
    for body in re.findall(r"^```\w*\n(.*?)^```", DOC.read_text(), re.M | re.S):
        first = body.splitlines()[0]
        match = re.match(r"\s*(?://|/\*|#)\s*file:\s*(\S+)", first)
        if match:
            files[match.group(1)] = body
    return files


def doc_command(prefix: str) -> list[str]:
    """The doc's one shell line that starts with `prefix`, split into words."""
    lines = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"docs/guests.md should show one `{prefix}` line, has {len(lines)}"
    return lines[0].split()


def run_image(path: Path) -> MicroVM:
    vm = MicroVM(VmConfig(image=str(path)))
    result = vm.run(10_000_000)
    assert result.reason is StopReason.POWER_OFF, (result, vm.console_output)
    return vm


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("MICROVM_REQUIRE_CROSS") == "1":
            pytest.fail(f"{tool} is missing but MICROVM_REQUIRE_CROSS=1 (.ci/cross-compiler installs it)")
        pytest.skip(f"{tool} is not installed (Debian: apt-get install gcc-aarch64-linux-gnu, or run .ci/cross-compiler)")


def test_the_doc_has_its_listings() -> None:
    assert set(listings()) == {"hello.S", "start.S", "main.c", "guest.ld", "build.sh"}
    assert len(listings()["hello.S"].splitlines()) <= 22  # "a 20-line example"


def test_assembly_guest_with_keystone(tmp_path: Path) -> None:
    from guests.asm import assemble

    image = tmp_path / "hello.bin"
    image.write_bytes(assemble(listings()["hello.S"]))
    assert run_image(image).console_output == b"hello from my guest\n"


def test_assembly_guest_with_gnu_binutils(tmp_path: Path) -> None:
    need("aarch64-linux-gnu-as")
    (tmp_path / "hello.S").write_text(listings()["hello.S"])
    subprocess.run(doc_command("aarch64-linux-gnu-as"), cwd=tmp_path, check=True)
    subprocess.run(doc_command("aarch64-linux-gnu-ld"), cwd=tmp_path, check=True)
    assert run_image(tmp_path / "hello.elf").console_output == b"hello from my guest\n"
    # What the doc warns about: plain -Ttext leaves the headers' segment below RAM.
    subprocess.run(["aarch64-linux-gnu-ld", "-Ttext=0x80000000", "hello.o", "-o", "plain.elf"], cwd=tmp_path, check=True, capture_output=True)
    with pytest.raises(ImageError, match="does not fit in RAM"):
        MicroVM(VmConfig(image=str(tmp_path / "plain.elf")))


def test_c_guest_with_the_cross_compiler(tmp_path: Path) -> None:
    need("aarch64-linux-gnu-gcc")
    for name, body in listings().items():
        (tmp_path / name).write_text(body)
    build = subprocess.run(["bash", "build.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    vm = run_image(tmp_path / "guest.elf")
    assert vm.console_output == f"sum of squares below 256: {sum(i * i for i in range(256))}\n".encode()
    # -O2 did emit SIMD, which is why start.S enables FP/SIMD in CPACR_EL1.
    dump = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "guest.elf"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert re.search(r"\sv\d+\.\d*[bhsd]", dump)
    assert vm.vcpus[0].sysreg("CPACR_EL1") >> 20 & 3 == 3
