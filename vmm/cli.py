"""The `microvm` command line.

Every user error (bad config, unknown guest, unreadable file) prints one line on stderr and
exits with status 2; there is no traceback for user error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

import guests
from vmm.config import DEFAULT_QUANTUM, VmConfig
from vmm.errors import VmmError
from vmm.layout import MIB
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_DEADLOCK = 4
EXIT_RESET = 5

EXIT_CODES = {
    StopReason.POWER_OFF: EXIT_OK,
    StopReason.ALL_OFF: EXIT_OK,
    StopReason.FAULT: EXIT_FAULT,
    StopReason.BUDGET: EXIT_BUDGET,
    StopReason.DEADLOCK: EXIT_DEADLOCK,
    StopReason.RESET: EXIT_RESET,
}

EPILOG_EXIT = """exit status:
  0  the guest powered off (PSCI SYSTEM_OFF, or every vCPU called CPU_OFF)
  1  the guest faulted (a fault report is printed on stderr)
  2  usage or configuration error
  3  the instruction budget ran out before the guest powered off
  4  deadlock: every vCPU waits and no event is pending
  5  the guest asked for a system reset
"""


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def _parse_param(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"parameter {name}: {value!r} is not an integer") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcpus", type=int, default=None, help="number of vCPUs, 1..32 (default: the guest's own)")
    p.add_argument("--mem-mib", type=int, default=128, help="guest RAM in MiB: 16..16384, a multiple of 2 (default 128)")
    p.add_argument(
        "--quantum",
        type=int,
        default=DEFAULT_QUANTUM,
        help=f"instructions per vCPU per scheduling round (default {DEFAULT_QUANTUM})",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        metavar="NAME=VALUE",
        help="guest parameter (repeatable); `microvm guests` lists each guest's parameters",
    )
    p.add_argument("--mmds-data", metavar="FILE.json", help="put this JSON object into the MMDS data store before boot")
    p.add_argument(
        "--mmds-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="MMDS version: 1 = plain GET, 2 = session tokens (default 2)",
    )


def _config_from(args: argparse.Namespace) -> VmConfig:
    target = args.guest
    is_builtin = target in guests.CATALOG
    if not is_builtin and "/" not in target and "." not in target:
        guests.get(target)  # raises ConfigError naming the built-in guests
    vcpus = args.vcpus if args.vcpus is not None else (guests.CATALOG[target].default_vcpus if is_builtin else 1)
    return VmConfig(
        vcpus=vcpus,
        mem_size=args.mem_mib * MIB,
        quantum=args.quantum,
        guest=target if is_builtin else None,
        image=None if is_builtin else target,
        params=dict(args.param),
        mmds_version=args.mmds_version,
    )


def _load_mmds(vm: MicroVM, path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read MMDS data {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"MMDS data {path} is not valid JSON: {e}") from None
    vm.mmds.put(data)


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_guests(args: argparse.Namespace) -> int:
    width = max(len(n) for n in guests.CATALOG)
    for name, spec in sorted(guests.CATALOG.items()):
        print(f"{name:<{width}}  {spec.description}")
        if args.verbose:
            for p in spec.params:
                print(f"{'':<{width}}    --param {p.name}={p.default}  {p.help}")
    return EXIT_OK


def _report(result: RunResult, vm: MicroVM, seconds: float) -> None:
    if result.reason is StopReason.FAULT and result.fault is not None:
        print(result.fault.format(), file=sys.stderr)
    line = f"microvm: {result.reason.value}"
    if result.detail:
        line += f" ({result.detail})"
    line += f"; {result.instructions:,} instructions of virtual time in {seconds:.2f} s"
    print(line, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from(args)
    vm = MicroVM(config, on_console=_write_stdout)
    _load_mmds(vm, args.mmds_data)
    t0 = time.perf_counter()
    result = vm.run(args.max_instructions)
    seconds = time.perf_counter() - t0
    if not args.quiet:
        _report(result, vm, seconds)
    return EXIT_CODES[result.reason]


def cmd_demo(args: argparse.Namespace) -> int:
    rows = []
    for name, vcpus in (("hello", 1), ("smp", 4)):
        for attempt in (1, 2):
            vm = MicroVM(VmConfig(guest=name, vcpus=vcpus))
            t0 = time.perf_counter()
            result = vm.run(args.max_instructions)
            seconds = time.perf_counter() - t0
            out = vm.console_output.decode(errors="replace").strip()
            rows.append((f"{name} #{attempt}", str(vcpus), result.reason.value, f"{result.instructions:,}", f"{seconds:.2f}", vm.state_digest()[:16], out.splitlines()[-1] if out else ""))
    headers = ("run", "vCPUs", "stop", "instructions", "host s", "state digest", "last console line")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    same = rows[0][5] == rows[1][5] and rows[2][5] == rows[3][5]
    print(f"\ndeterminism: each guest ran twice; digests {'identical' if same else 'DIFFER'}")
    return EXIT_OK if same else EXIT_FAULT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microvm",
        description="A simulated AArch64 microVM harness: run guests deterministically, snapshot and restore them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `microvm demo`, then `microvm guests` and `microvm run hello`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("guests", help="list the built-in guests")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each guest's parameters")
    p.set_defaults(func=cmd_guests)

    p = sub.add_parser(
        "run",
        help="run a built-in guest or an image file",
        description="Run GUEST (a built-in name, or the path of a flat binary or AArch64 ELF) and print its console output.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_EXIT,
    )
    p.add_argument("guest", metavar="GUEST", help="built-in guest name or image path")
    _add_machine_args(p)
    p.add_argument(
        "--max-instructions",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N instructions of virtual time per vCPU (rounded up to a scheduling round)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the guest's console output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="a guided tour: run guests twice and show identical results")
    p.add_argument("--max-instructions", type=_positive_int, default=2_000_000_000, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except (VmmError, UsageError) as e:
        print(f"microvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("microvm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
