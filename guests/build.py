"""Assemble the built-in guests: guests/src/runtime.S + guests/src/<name>.S -> guests/bin/<name>.bin.

Usage: python -m guests.build [--check] [NAME ...]
  --check  rebuild in memory and report any committed binary that differs (exit 1).
Needs the `keystone-engine` package (in the project's `dev` extra). Images are linked to run at
RAM_BASE with the MMU off.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guests import CATALOG, asm
from vmm.layout import RAM_BASE

SRC = Path(__file__).parent / "src"
BIN = Path(__file__).parent / "bin"


def source_of(name: str) -> str:
    """The full assembly text of guest `name`: the runtime followed by the guest."""
    return (SRC / "runtime.S").read_text() + "\n" + (SRC / f"{name}.S").read_text()


def assemble(name: str) -> bytes:
    """Guest `name` assembled at RAM_BASE; SystemExit with a one-line message if that fails."""
    try:
        image = asm.assemble(source_of(name), RAM_BASE)
    except (asm.AssemblyError, asm.AssemblerMissingError) as e:
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
