"""Build the built-in guests into guests/bin/<name>.bin, linked to run at RAM_BASE with the MMU off:
- assembly guests: guests/src/runtime.S + guests/src/<name>.S, assembled with keystone
  (`keystone-engine`, in the project's `dev` extra);
- C guests: guests/src/<name>.c + guests/src/c/start.S, linked by guests/src/c/link.ld, built with
  Debian's cross compiler `aarch64-linux-gnu-gcc` (package gcc-aarch64-linux-gnu).

Usage: python -m guests.build [--check] [NAME ...]
  --check  rebuild in memory and report any committed binary that differs (exit 1).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from guests import CATALOG, PARAMS_MAGIC, asm
from vmm.layout import RAM_BASE

SRC = Path(__file__).parent / "src"
BIN = Path(__file__).parent / "bin"


def source_of(name: str) -> str:
    """The full assembly text of guest `name`: the runtime followed by the guest."""
    return (SRC / "runtime.S").read_text() + "\n" + (SRC / f"{name}.S").read_text()


CROSS_PREFIX = "aarch64-linux-gnu-"  # Debian's gcc-aarch64-linux-gnu
# -mstrict-align: with the MMU off every access is Device memory, where an unaligned access
# faults (DDI 0487 B2.5.2); start.S enables FP/SIMD, which GCC -O2 uses.
C_FLAGS = ("-O2", "-ffreestanding", "-nostdlib", "-nostartfiles", "-static", "-fno-pic", "-mstrict-align", "-Wall", "-Wextra", "-Werror")


class CrossCompilerMissingError(RuntimeError):
    """aarch64-linux-gnu-gcc is not installed."""


def is_c_guest(name: str) -> bool:
    return (SRC / f"{name}.c").is_file()


def compile_c(name: str, base: int = RAM_BASE, *, defines: tuple[str, ...] = (), elf: bool = False) -> bytes:
    """C guest `name` compiled and linked to run at `base`, as a flat binary (or the ELF with
    `elf`); `defines` are extra -D NAME=VALUE. Raises CrossCompilerMissingError without the
    cross compiler, RuntimeError if the build fails."""
    gcc, objcopy = shutil.which(CROSS_PREFIX + "gcc"), shutil.which(CROSS_PREFIX + "objcopy")
    if gcc is None or objcopy is None:
        raise CrossCompilerMissingError(f"building C guests needs {CROSS_PREFIX}gcc (Debian: apt-get install gcc-aarch64-linux-gnu)")
    with tempfile.TemporaryDirectory(prefix="guest-build-") as tmp:
        elf_path, flat = Path(tmp) / f"{name}.elf", Path(tmp) / f"{name}.bin"
        cmd = [
            gcc, *C_FLAGS, f"-DPARAMS_MAGIC={PARAMS_MAGIC:#x}ULL", *(f"-D{d}" for d in defines), f"-Wl,--defsym=RAM_ORIGIN={base:#x}",
            "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-T", str(SRC / "c" / "link.ld"),
            str(SRC / "c" / "start.S"), str(SRC / f"{name}.c"), "-o", str(elf_path),
        ]
        for step in (cmd, [objcopy, "-O", "binary", str(elf_path), str(flat)]):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{Path(step[0]).name} failed: {done.stderr.strip()[:2000]}")
        return (elf_path if elf else flat).read_bytes()


def assemble(name: str) -> bytes:
    """Guest `name` built at RAM_BASE (assembled, or compiled if it is a C guest); SystemExit with
    a one-line message if that fails."""
    try:
        image = compile_c(name) if is_c_guest(name) else asm.assemble(source_of(name), RAM_BASE)
    except (asm.AssemblyError, asm.AssemblerMissingError, CrossCompilerMissingError, RuntimeError) as e:
        raise SystemExit(f"guests/build: {name}: {e}") from None
    if not image:
        raise SystemExit(f"guests/build: {name}: assembler produced no code")
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guests.build", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="guests to build (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with the committed binaries; write nothing")
    args = parser.parse_args(argv)
    names = args.names or sorted(CATALOG)
    stale = []
    for name in names:
        if name not in CATALOG:
            print(f"guests/build: unknown guest {name!r}", file=sys.stderr)
            return 2
        image = assemble(name)
        target = BIN / f"{name}.bin"
        if args.check:
            if not target.exists() or target.read_bytes() != image:
                stale.append(name)
        else:
            BIN.mkdir(exist_ok=True)
            target.write_bytes(image)
            print(f"{name}: {len(image)} bytes -> {target}")
    if stale:
        print(f"guests/build: stale binaries: {', '.join(stale)} (run python -m guests.build)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
