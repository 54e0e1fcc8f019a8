"""The `microvm` command line.

Every user error (bad config, unknown guest, unreadable file) prints one line on stderr and
exits with status 2; there is no traceback for user error.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from typing import Callable, Sequence

import guests
from vmm.config import DEFAULT_QUANTUM, VmConfig
from snapshot.errors import SnapshotError
from snapshot.progress import ProgressBars, progress_bars
from vmm.errors import VmmError
from vmm.layout import MIB
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason
from vmm.signals import raise_terminated

# snapshot imports vmm; import it lazily in the commands that need it.

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_DEADLOCK = 4
EXIT_RESET = 5
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # shell convention: 128 + the signal's number (141)

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
a command whose stdout is closed early (e.g. piped into head) stops quietly with status 141
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


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-instructions",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N (more) instructions of virtual time per vCPU (rounded up to a scheduling round)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the guest's console output (no progress bars)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout when the run ends; the guest's console output is in it (`console`) instead of streamed",
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


def _bars(args: argparse.Namespace) -> ProgressBars:
    """Progress bars on stderr for long snapshot work: only on a terminal, never with --quiet."""
    return progress_bars(enabled=False if getattr(args, "quiet", False) else None)


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


class _StdoutConsole:
    """The guest's console streamed to stdout as it is written (an `on_console` sink).

    If stdout's reader has gone (`microvm run GUEST | head -1`), the write's BrokenPipeError is
    kept in `closed` and raised on: inside the UART hook it stops the vCPU at once, as a fault.
    `_check_console` then raises it again so main() exits quietly instead of reporting a guest
    fault the guest did not cause."""

    def __init__(self) -> None:
        self.closed: BrokenPipeError | None = None

    def __call__(self, data: bytes) -> None:
        try:
            _write_stdout(data)
        except BrokenPipeError as exc:
            self.closed = exc
            raise


def _console_sink(args: argparse.Namespace) -> _StdoutConsole | None:
    """Where the guest's console goes as it is written: stdout, unless --json collects it."""
    return None if args.json else _StdoutConsole()


def _check_console(console: _StdoutConsole | None) -> None:
    """Raise the BrokenPipeError that stopped the guest, if the console found stdout closed.
    Call after every run of a VM streaming its console, before acting on the run's result."""
    if console is not None and console.closed is not None:
        raise console.closed


def _finish(args: argparse.Namespace, result: RunResult, vm: MicroVM, seconds: float, **extra: object) -> int:
    """Report the end of a run (stderr line unless --quiet; with --json one JSON object on
    stdout: stop reason, exit status, virtual time, state digest, console output, `extra`)
    and return the exit status."""
    status = EXIT_CODES[result.reason]
    if not args.quiet:
        _report(result, vm, seconds)
    if args.json:
        summary = {
            "stop": result.reason.value,
            "detail": result.detail,
            "exit_status": status,
            "instructions": result.instructions,
            "virtual_time_ns": vm.clock,
            "seconds": round(seconds, 6),
            "state_digest": vm.state_digest(),
            "console": vm.console_output.decode("utf-8", errors="backslashreplace"),
            "fault": result.fault.format() if result.fault is not None else None,
            **extra,
        }
        print(json.dumps(summary, sort_keys=True))
    return status


def _report(result: RunResult, vm: MicroVM, seconds: float) -> None:
    if result.reason is StopReason.FAULT and result.fault is not None:
        print(result.fault.format(), file=sys.stderr)
    line = f"microvm: {result.reason.value}"
    if result.detail:
        line += f" ({result.detail})"
    line += f"; {result.instructions:,} instructions of virtual time in {seconds:.2f} s"
    print(line, file=sys.stderr)


def _snapshot_points(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        points = [int(p, 0) for p in text.split(",")]
    except ValueError:
        raise UsageError(f"--snapshot-at takes comma-separated instruction counts, got {text!r}") from None
    if any(p < 0 for p in points) or points != sorted(set(points)):
        raise UsageError("--snapshot-at points must be increasing and not negative")
    return points


def cmd_run(args: argparse.Namespace) -> int:
    points = _snapshot_points(args.snapshot_at)
    if points and not args.snapshot_dir:
        raise UsageError("--snapshot-at needs --snapshot-dir")
    if points and args.dirty_report is not None:
        raise UsageError("--dirty-report and --snapshot-at cannot be combined")
    config = _config_from(args)
    if (points and args.kind != "full") or args.dirty_report is not None:
        config = VmConfig(**{**config.__dict__, "track_dirty_pages": True})
    if args.dirty_report is not None:
        return _run_dirty_report(config, args)
    compress, frame_size = _compression(args)
    console = _console_sink(args)
    vm = MicroVM(config, on_console=console)
    _load_mmds(vm, args.mmds_data)
    t0 = time.perf_counter()
    result: RunResult | None = None
    snapshots: list[dict[str, object]] = []
    for i, point in enumerate(points):
        if args.max_instructions is not None and point > args.max_instructions:
            break
        result = vm.run(point - vm.clock if point > vm.clock else 0)
        _check_console(console)
        kind = "full" if i == 0 or args.kind == "full" else "diff"
        os.makedirs(args.snapshot_dir, exist_ok=True)
        report = vm.save_snapshot(
            os.path.join(args.snapshot_dir, f"snap-{vm.clock}"), kind, compress=compress, frame_size=frame_size, progress_bars=_bars(args)
        )
        snapshots.append(
            {"path": str(report.state_path), "kind": kind, "virtual_time_ns": vm.clock, "pages_written": report.pages_written, "seconds": round(report.seconds, 6)}
        )
        if not args.quiet:
            print(
                f"microvm: {kind} snapshot at {vm.clock:,} -> {report.state_path} "
                f"({report.pages_written} pages, {report.seconds * 1000:.1f} ms)",
                file=sys.stderr,
            )
        if result.reason.final:
            break
    remaining = None if args.max_instructions is None else max(args.max_instructions - vm.clock, 0)
    if result is None or not result.reason.final:
        result = vm.run(remaining)
        _check_console(console)
    return _finish(args, result, vm, time.perf_counter() - t0, snapshots=snapshots)


def _run_dirty_report(config: VmConfig, args: argparse.Namespace) -> int:
    """Run in epochs of args.dirty_report instructions, printing the dirty pages of each."""
    if args.dirty_report == 0:
        raise UsageError("--dirty-report epoch must be at least 1 instruction")
    from vmm.plots import dirty_epochs

    console = _console_sink(args)
    vm = MicroVM(config, on_console=console)
    _load_mmds(vm, args.mmds_data)
    t0 = time.perf_counter()
    epochs: list[dict[str, int]] = []
    for epoch in dirty_epochs(vm, args.dirty_report, max_instructions=args.max_instructions):
        _check_console(console)
        pages = epoch.pages.size
        epochs.append({"start_ns": epoch.start, "end_ns": epoch.end, "dirty_pages": pages, "runs": epoch.runs})
        print(
            f"microvm: epoch {epoch.index} [{epoch.start:,}, {epoch.end:,}): {pages} dirty pages ({pages * 4} KiB) in {epoch.runs} runs",
            file=sys.stderr,
        )
        result = epoch.result
    return _finish(args, result, vm, time.perf_counter() - t0, epochs=epochs)


def cmd_dirty_map(args: argparse.Namespace) -> int:
    """Run GUEST for --epochs epochs of --epoch instructions and plot the pages each wrote."""
    from vmm.plots import PlotUnavailableError, build_map, dirty_epochs, plot_dirty_map, require_matplotlib

    try:
        require_matplotlib()  # before spending time running the guest
    except PlotUnavailableError as e:
        raise UsageError(str(e)) from None
    if args.epoch == 0 or args.epochs == 0:
        raise UsageError("--epoch and --epochs must be at least 1")
    config = VmConfig(**{**_config_from(args).__dict__, "track_dirty_pages": True})
    vm = MicroVM(config)  # the console output is not shown: the map is the report
    _load_mmds(vm, args.mmds_data)
    epochs = list(dirty_epochs(vm, args.epoch, max_epochs=args.epochs))
    dmap = build_map(epochs, vm.memory.size // vm.dirty.page_size, ram_base=vm.memory.base, page_size=vm.dirty.page_size)
    title = f"{args.guest}: pages written per epoch of {args.epoch:,} instructions ({config.vcpus} vCPU{'s' if config.vcpus > 1 else ''})"
    try:
        plot_dirty_map(dmap, args.output, title=title)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    result = epochs[-1].result
    summary = {
        "output": args.output,
        "epochs": dmap.epochs,
        "columns": dmap.columns,
        "pages_per_column": dmap.pages_per_column,
        "first_address": dmap.ram_base + dmap.first_page * dmap.page_size,
        "dirty_pages": [int(e.pages.size) for e in epochs],
        "stop": result.reason.value,
        "virtual_time_ns": vm.clock,
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    elif not args.quiet:
        print(f"microvm: dirty map of {dmap.epochs} epochs x {dmap.columns} columns -> {args.output}", file=sys.stderr)
    if result.reason is StopReason.FAULT and result.fault is not None:
        print(result.fault.format(), file=sys.stderr)
    return EXIT_OK if result.reason is StopReason.BUDGET else EXIT_CODES[result.reason]


def cmd_restore(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    console = _console_sink(args)
    vm = MicroVM.load_snapshot(args.path, args.mem_backend, on_console=console, progress_bars=_bars(args))
    restore_s = time.perf_counter() - t0
    restored_at = vm.clock
    if not args.quiet:
        print(f"microvm: restored {args.path} ({args.mem_backend}) in {restore_s * 1000:.1f} ms at virtual time {vm.clock:,}", file=sys.stderr)
    t0 = time.perf_counter()
    result = vm.run(args.max_instructions)
    _check_console(console)
    return _finish(
        args, result, vm, time.perf_counter() - t0, restored_from=args.path, restored_at_ns=restored_at, restore_seconds=round(restore_s, 6)
    )


def cmd_describe(args: argparse.Namespace) -> int:
    from snapshot.describe import describe
    from vmm.persist import MACHINE

    info = describe(args.path, verify=args.verify, progress_bars=_bars(args), schema=MACHINE)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print_table(_describe_rows(info), headers=None)
    return EXIT_FAULT if info["pair_ok"] is False else EXIT_OK


def _describe_rows(info: dict[str, object]) -> list[tuple[str, str]]:
    """describe()'s fields as (name, value) rows: lists joined, a dict (the parent link) as one
    row per field, None as blank."""
    rows: list[tuple[str, str]] = []
    for key, value in info.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", _cell(v)) for k, v in value.items())
        else:
            rows.append((key, _cell(value)))
    return rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


_NUMBER = re.compile(r"-?[\d,]+(\.\d+)?")  # a cell printed as a number: right-aligned


def _byte_size(text: str) -> int:
    """'2M' -> 2 MiB, '512K' -> 512 KiB, '4096' -> 4096 bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    try:
        return int(text[:-1] if scale > 1 else text, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2M, 512K, 4096)") from None


def _add_compress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compress",
        choices=("none", "lz4"),
        default="none",
        help="memory file format: none (default) = the raw RAM image; lz4 = independently compressed frames with an index and checksums (smaller; restores need not read zero frames; lazy mmap RAM needs none)",
    )
    p.add_argument(
        "--frame-size",
        type=_byte_size,
        default=None,
        metavar="SIZE",
        help="with --compress lz4: bytes of RAM per frame, whole 4 KiB pages, e.g. 512K (default 2M)",
    )


def _compression(args: argparse.Namespace) -> tuple[str | None, int]:
    """(compress, frame_size) for save_snapshot/rebase from --compress/--frame-size."""
    from snapshot.frames import DEFAULT_FRAME_SIZE
    from snapshot.memory import check_compression
    from vmm.tlb import DIRTY_PAGE_SIZE

    compress = None if args.compress == "none" else args.compress
    if compress is None and args.frame_size is not None:
        raise UsageError("--frame-size needs --compress lz4")
    frame_size = DEFAULT_FRAME_SIZE if args.frame_size is None else args.frame_size
    try:
        check_compression(compress, DIRTY_PAGE_SIZE, frame_size)
    except ValueError as e:
        raise UsageError(f"--frame-size: {e}") from None
    return compress, frame_size


def cmd_rebase(args: argparse.Namespace) -> int:
    from snapshot.chain import rebase

    compress, frame_size = _compression(args)
    report = rebase(args.base, args.diffs, args.output, compress=compress, frame_size=frame_size, progress_bars=_bars(args))
    if not args.quiet:
        info = report.memory
        print(
            f"microvm: merged {report.merged} snapshots into {report.state_path} "
            f"({info.format} memory file of {info.file_length:,} bytes, {report.seconds * 1000:.1f} ms)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from snapshot.chain import verify
    from vmm.persist import MACHINE

    report = verify(args.path, schema=MACHINE, progress_bars=_bars(args))
    if not args.quiet:
        for link in report.checked:
            print(f"ok  {link.state_path}  {link.kind} {link.memory_format}  {link.memory_digest}")
    if report.broken is not None:
        print(f"microvm: verify: {report.broken}", file=sys.stderr)
        return EXIT_FAULT
    if not args.quiet:
        print(f"microvm: verify: ok ({len(report.checked)} snapshots, base to {report.path})", file=sys.stderr)
    return EXIT_OK


def print_table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None) -> None:
    """Print `rows` as aligned columns (with a header line if given); columns whose every
    cell is a number are right-aligned."""
    body = [tuple(r) for r in rows]
    all_rows = ([tuple(headers)] if headers else []) + body
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    numeric = [bool(body) and all(_NUMBER.fullmatch(r[i]) for r in body) for i in range(len(widths))]
    for r in all_rows:
        cells = (c.rjust(w) if right else c.ljust(w) for c, w, right in zip(r, widths, numeric))
        print("  ".join(cells).rstrip())


def cmd_demo(args: argparse.Namespace) -> int:
    """Run smp on 4 vCPUs; take a full then two diff snapshots; restore the chain into a fresh
    VM; continue both and compare."""
    import tempfile

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
    _add_run_args(p)
    p.add_argument(
        "--snapshot-at",
        metavar="N[,N2,...]",
        help="take snapshots at these points (instructions of virtual time; each lands on the next round end)",
    )
    p.add_argument("--snapshot-dir", metavar="DIR", help="where --snapshot-at writes snap-<N>.snap/.mem")
    p.add_argument(
        "--dirty-report",
        type=_positive_int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="EPOCH",
        help="track dirty pages and print, per epoch of EPOCH instructions (default 1,000,000), how many 4 KiB pages were written",
    )
    p.add_argument(
        "--kind",
        choices=("diff", "full"),
        default="diff",
        help="diff (default): the first snapshot is full, later ones diffs; full: every snapshot full",
    )
    _add_compress_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "restore",
        help="restore a snapshot and run it on",
        description="Restore the snapshot PATH (a .snap file; a diff's chain is found from its recorded parents) and continue running it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_EXIT,
    )
    p.add_argument("path", metavar="PATH", help="the snapshot's .snap file (or its name without .snap)")
    p.add_argument(
        "--mem-backend",
        choices=("copy", "mmap"),
        default="copy",
        help="copy: read memory files into RAM (verifies digests); mmap: map the base copy-on-write, lazily",
    )
    _add_run_args(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "describe",
        help="show a snapshot's metadata without restoring it",
        description="Print a snapshot's metadata: magic, version, kind, vCPUs, memory, devices, chain parent, and (with --verify) whether the memory file matches.",
    )
    p.add_argument("path", metavar="PATH", help="the snapshot's .snap file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="also read the memory file and check its digest (exit 1 if it does not match)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar while verifying")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser(
        "dirty-map",
        help="plot which pages each epoch of a run dirtied (PNG heatmap; needs the `plot` extra)",
        description="Run GUEST with dirty-page tracking for K epochs of N instructions of virtual time and draw a heatmap: one row per epoch, guest physical addresses across, brightness = fraction of pages written.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_EXIT.replace("  3  the instruction budget ran out before the guest powered off\n", ""),
    )
    p.add_argument("guest", metavar="GUEST", help="built-in guest name or image path")
    _add_machine_args(p)
    p.add_argument("--epoch", type=_positive_int, default=1_000_000, metavar="N", help="instructions of virtual time per epoch (default 1,000,000)")
    p.add_argument("--epochs", type=_positive_int, default=32, metavar="K", help="epochs to run, fewer if the guest stops first (default 32)")
    p.add_argument("-o", "--output", required=True, metavar="MAP.png", help="where to write the PNG")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_dirty_map)

    p = sub.add_parser(
        "rebase",
        help="merge a snapshot chain into one full snapshot",
        description="Merge BASE (a full snapshot) and DIFF... (each taken over the one before it) into the full snapshot OUT, "
        "which restores to the same state as the last DIFF. Every parent link is checked before any memory is read, every "
        "memory file's digest while it is read; OUT is committed crash-safely like a save. The inputs are not changed.",
        epilog="exit status:\n  0  OUT was written\n  2  usage error, or a broken or unreadable input (OUT untouched)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="the chain's full base snapshot (.snap)")
    p.add_argument("diffs", nargs="+", metavar="DIFF", help="the diffs, oldest first")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the merged snapshot to write (OUT.snap + OUT.mem)")
    _add_compress_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success; no progress bar")
    p.set_defaults(func=cmd_rebase)

    p = sub.add_parser(
        "verify",
        help="check a snapshot and its whole chain",
        description="Check PATH and every snapshot back to its full base (found from the recorded parent names): each "
        "state file's CRC and structure, each memory file against its state file (digest; for lz4 also every frame's "
        "checksum), and each diff's link to its parent. Prints the snapshots checked; on failure one line naming the "
        "first broken link.",
        epilog="exit status:\n  0  everything holds\n  1  a link is broken (named on stderr)\n  2  usage error (e.g. PATH does not exist)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="the snapshot's .snap file (or its name without .snap)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only a broken link; no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="the tour: snapshot a running SMP guest, restore the chain, show both continue identically")
    p.add_argument("--max-instructions", type=_positive_int, default=2_000_000_000, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: run the command `argv` (default sys.argv[1:]) and return its
    exit status. If the reader of stdout goes away early (`microvm demo | head -3`), the
    command stops quietly with EXIT_BROKEN_PIPE, as a program killed by SIGPIPE would; the
    Python docs' "Note on SIGPIPE" (signal module) pattern."""
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # so a closed pipe shows up here rather than at interpreter exit
    except BrokenPipeError:
        # Python flushes stdout again at exit: send what is left to devnull instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _dispatch(argv: Sequence[str] | None) -> int:
    """Parse `argv` and run its command; user errors become one line on stderr, status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return func(args)
    except (VmmError, UsageError, SnapshotError) as e:
        print(f"microvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"microvm: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
