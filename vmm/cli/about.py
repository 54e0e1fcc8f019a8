"""`microvm guests`, `info`, `--version` and `demo`: what a newcomer runs first."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata

import guests
from vmm.cli.output import print_table
from vmm.cli.status import EXIT_FAULT, EXIT_OK
from vmm.config import VmConfig

DISTRIBUTION = "microvm-harness"
_warned = False


def native_fill_built() -> bool:
    """Was the native TLB fill (vmm/_fill.c, built by `pip install -e .` with a C compiler) built?"""
    from vmm import native_fill

    return native_fill._fill is not None


def version_text() -> str:
    """`microvm --version`: the package version and whether the native fast path is there."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "(not installed: run from a checkout)"
    return f"{version} (native TLB fill: {'built' if native_fill_built() else 'missing'})"


def warn_if_slow(quiet: bool) -> None:
    """Once per process, on stderr: the native fast path is missing, so guests run slower."""
    global _warned
    if _warned or quiet or native_fill_built():
        return
    _warned = True
    print(
        "microvm: warning: the native TLB fill (vmm/_fill.c) was not built, guests run several times slower; "
        "install a C compiler and reinstall from the checkout (pip install -e .), see `microvm info`",
        file=sys.stderr,
    )


def cmd_info(args: argparse.Namespace) -> int:
    """Version, the native fast path, and the host memory a VM needs (docs/machine.md)."""
    from vmm.engine import ENGINE_OVERHEAD, TB_BUFFER_SIZE

    info = {
        "version": version_text().split(" (")[0],
        "native_tlb_fill": native_fill_built(),
        "python": sys.version.split()[0],
        "unicorn": _unicorn_version(),
        "translation_buffer_per_vcpu_bytes": TB_BUFFER_SIZE,
        "address_space_reserved_per_vcpu_bytes": TB_BUFFER_SIZE + ENGINE_OVERHEAD,
        "guests": sorted(guests.CATALOG),
    }
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return EXIT_OK
    native = "built" if info["native_tlb_fill"] else "MISSING: guests run several times slower (needs a C compiler at install)"
    print_table(
        [
            ("version", str(info["version"])),
            ("native TLB fill", native),
            ("python", str(info["python"])),
            ("unicorn", str(info["unicorn"])),
            ("per vCPU", f"{TB_BUFFER_SIZE >> 20} MiB translation buffer, {(TB_BUFFER_SIZE + ENGINE_OVERHEAD) >> 20} MiB of address space checked at creation"),
            ("guests", ", ".join(info["guests"])),  # type: ignore[arg-type]
        ],
        headers=None,
    )
    return EXIT_OK


def _unicorn_version() -> str:
    import unicorn

    return str(getattr(unicorn, "__version__", "unknown"))


def cmd_guests(args: argparse.Namespace) -> int:
    width = max(len(n) for n in guests.CATALOG)
    for name, spec in sorted(guests.CATALOG.items()):
        print(f"{name:<{width}}  {spec.description}")
        if args.verbose:
            for p in spec.params:
                print(f"{'':<{width}}    --param {p.name}={p.default}  {p.help}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run smp on 4 vCPUs; take a full then two diff snapshots; restore the chain into a fresh
    VM; continue both and compare."""
    import tempfile

    from vmm.machine import MicroVM

    config = VmConfig(guest="smp", vcpus=4, quantum=10_000, track_dirty_pages=True, params={"iterations": 200_000})
    step = 400_000
    print(f"microvm demo: guest smp on 4 vCPUs; snapshots every {step:,} instructions of virtual time\n")
    with tempfile.TemporaryDirectory(prefix="microvm-demo-") as tmp:
        original = MicroVM(config)
        rows = []
        for i, kind in enumerate(("full", "diff", "diff")):
            original.run(step)
            report = original.save_snapshot(os.path.join(tmp, f"s{i}"), kind)
            rows.append((report.state_path.name, kind, f"{original.clock:,}", f"{report.pages_written:,}", f"{report.memory_bytes_written / 1024:,.0f}", f"{report.seconds * 1000:.1f}"))
        print_table(rows, ("snapshot", "kind", "at instr", "pages", "KiB written", "save ms"))
        t0 = time.perf_counter()
        restored = MicroVM.load_snapshot(os.path.join(tmp, "s2"), "mmap")
        restore_ms = (time.perf_counter() - t0) * 1000
        printed = original.console_output
        r1 = original.run(args.max_instructions)
        r2 = restored.run(args.max_instructions)
    same = original.state_digest() == restored.state_digest()
    same_out = original.console_output == printed + restored.console_output
    print(f"\nrestored the chain s0 <- s1 <- s2 into a fresh VM (mmap backend) in {restore_ms:.1f} ms; both continue:\n")
    print_table(
        [
            ("original", r1.reason.value, f"{original.clock:,}", original.state_digest()[:16], original.console_output.decode().strip()),
            ("restored", r2.reason.value, f"{restored.clock:,}", restored.state_digest()[:16], restored.console_output.decode().strip()),
        ],
        ("VM", "stop", "virtual time", "state digest", "console"),
    )
    verdict = "identical" if same and same_out else "DIFFERENT"
    print(f"\nstate digests and console output: {verdict}")
    return EXIT_OK if same and same_out else EXIT_FAULT


