"""`microvm run`, `restore` and `dirty-map`: the commands that run a guest.

Every run is cut into `run()` segments (snapshot points, dirty epochs, console steps); the
report covers the whole run (`RunTotals`). Ctrl-C/SIGTERM stop the VM at a round end
(vmm.signals) and nothing is saved that was not asked for; a save in progress completes first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from snapshot.frames import DEFAULT_FRAME_SIZE
from vmm.cli.about import warn_if_slow
from vmm.cli.inputs import load_mmds, read_input, read_key, snapshot_dir, snapshot_points
from vmm.cli.options import config_from
from vmm.cli.output import RunTotals, StdoutConsole, check_console, console_sink, finish, note
from vmm.cli.snapshots import bars, compression
from vmm.cli.status import EXIT_CODES, EXIT_OK, UsageError
from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason
from vmm.signals import DeferredSignals


def _check_modes(args: argparse.Namespace) -> None:
    if args.console and args.json:
        raise UsageError("--console and --json cannot be combined")
    if args.console and args.input is not None:
        raise UsageError("--console and --input cannot be combined (the console is the input)")


def cmd_run(args: argparse.Namespace) -> int:
    points = snapshot_points(args.snapshot_at)
    if points and not args.snapshot_dir:
        raise UsageError("--snapshot-at needs --snapshot-dir")
    if points and args.dirty_report is not None:
        raise UsageError("--dirty-report and --snapshot-at cannot be combined")
    if args.dirty_report == 0:
        raise UsageError("--dirty-report epoch must be at least 1 instruction")
    _check_modes(args)
    config = config_from(args)
    if (points and args.kind != "full") or args.dirty_report is not None:
        config = VmConfig(**{**config.__dict__, "track_dirty_pages": True})
    # Everything the user gave is checked before the guest runs.
    directory = snapshot_dir(args.snapshot_dir) if args.snapshot_dir else None
    compress, frame_size = compression(args)
    key = read_key(args)
    if key is not None and not points:
        raise UsageError("--encrypt-key-file needs --snapshot-at (it encrypts the snapshots)")
    data = read_input(args.input)
    console = console_sink(args.json)
    warn_if_slow(args.quiet)
    vm = MicroVM(config, on_console=console)
    load_mmds(vm, args.mmds_data)
    # Linux's PL011 driver drains the receive FIFO when it starts: its input waits until the
    # driver unmasks the receive interrupt (a guest-visible moment, so still deterministic).
    hold = bool(data) and vm.boots_linux
    if hold and (points or args.dirty_report is not None or args.console):
        raise UsageError("--input on a Linux image cannot be combined with --snapshot-at, --dirty-report or --console yet")
    if not hold:
        vm.uart.queue_input(data)
    if args.dirty_report is not None:
        return _run_dirty_report(vm, args, console)
    t0 = time.perf_counter()
    totals = RunTotals()
    if hold:
        result = totals.add(vm.run_until(lambda: vm.uart.rx_interrupts_enabled, args.max_instructions))
        check_console(console)
        if result.reason is not StopReason.OUTPUT:
            return finish(args.quiet, args.json, result, totals, vm, time.perf_counter() - t0, snapshots=[], unreached_points=[])
        vm.uart.queue_input(data)
    saver = _Saver(vm, args, directory, compress, frame_size, diffs=args.kind == "diff", key=key)
    result, unreached = _run_to_points(vm, args, console, points, saver, totals)
    if not result.reason.final:
        result = _run_on(vm, args, console, saver, totals, _remaining(args.max_instructions, vm.clock))
    return finish(args.quiet, args.json, result, totals, vm, time.perf_counter() - t0, snapshots=saver.made, unreached_points=unreached)


def _remaining(budget: int | None, clock: int) -> int | None:
    return None if budget is None else max(budget - clock, 0)


class _Saver:
    """Saves snapshots named snap-<virtual time> into the snapshot folder: the first full, later
    ones diffs (unless --kind full); a save in progress completes even if Ctrl-C arrives."""

    def __init__(
        self,
        vm: MicroVM,
        args: argparse.Namespace,
        directory: Path | None,
        compress: str | None,
        frame_size: int,
        *,
        diffs: bool,
        key: bytes | None = None,
    ) -> None:
        self.vm, self.args, self.directory = vm, args, directory
        self.compress, self.frame_size, self.diffs = compress, frame_size, diffs
        self._key = key
        self.made: list[dict[str, object]] = []

    def save(self, points: list[int]) -> None:
        vm, args = self.vm, self.args
        if self.directory is None:
            raise UsageError("saving a snapshot needs --snapshot-dir")
        kind = "diff" if self.made and self.diffs and vm.config.track_dirty_pages else "full"
        with DeferredSignals():  # Ctrl-C here takes effect once the save is complete
            report = vm.save_snapshot(
                self.directory / f"snap-{vm.clock}", kind, compress=self.compress, frame_size=self.frame_size, progress_bars=bars(args), key=self._key
            )
        self.made.append(
            {"path": str(report.state_path), "kind": kind, "virtual_time_ns": vm.clock, "points": points, "pages_written": report.pages_written, "seconds": round(report.seconds, 6)}
        )
        note(args.quiet, f"{kind} snapshot at {vm.clock:,} -> {report.state_path} ({report.pages_written} pages, {report.seconds * 1000:.1f} ms)")

    @property
    def last_at(self) -> int | None:
        return self.made[-1]["virtual_time_ns"] if self.made else None  # type: ignore[return-value]


def _run_to_points(
    vm: MicroVM, args: argparse.Namespace, console: StdoutConsole | None, points: list[int], saver: _Saver, totals: RunTotals
) -> tuple[RunResult, list[dict[str, object]]]:
    """Run to each --snapshot-at point and save there. A point lands on the first round end at
    or after it; points that land on the round end just saved share that snapshot. A point the
    guest never reaches (it stopped first, or --max-instructions ends before) is reported."""
    result = RunResult(StopReason.BUDGET, 0, retired_per_vcpu=[0] * len(vm.vcpus))
    unreached: list[dict[str, object]] = []
    for point in points:
        if args.max_instructions is not None and point > args.max_instructions:
            why = f"it is beyond --max-instructions {args.max_instructions:,}"
        elif result.reason is not StopReason.BUDGET:
            why = f"the guest stopped ({result.reason.value}) at virtual time {vm.clock:,}"
        elif point <= vm.clock and saver.last_at == vm.clock:
            saver.made[-1]["points"].append(point)  # type: ignore[attr-defined]
            note(args.quiet, f"snapshot point {point:,} lands on the round end {vm.clock:,} (quantum {vm.config.quantum:,}) already saved: it shares that snapshot")
            continue
        else:
            result = totals.add(vm.run(max(point - vm.clock, 0)))
            check_console(console)
            if result.reason is StopReason.BUDGET:
                saver.save([point])
                continue
            why = f"the guest stopped ({result.reason.value}) at virtual time {vm.clock:,}"
        unreached.append({"point": point, "reason": why})
        note(args.quiet, f"snapshot point {point:,} not reached: {why}; no snapshot for it")
    return result, unreached


def _run_on(vm: MicroVM, args: argparse.Namespace, console: StdoutConsole | None, saver: _Saver, totals: RunTotals, budget: int | None) -> RunResult:
    """The rest of the run: on the interactive console, or straight."""
    if args.console:
        from vmm.cli.console import run_console

        return run_console(vm, budget, saver=saver.save, totals=totals, check=lambda: check_console(console))
    result = totals.add(vm.run(budget))
    check_console(console)
    return result


def cmd_serve(args: argparse.Namespace) -> int:
    """Firecracker's API on a Unix socket (vmm.api); exits when the guest stops for good, with
    its status, or 0 on SIGTERM."""
    from vmm.api.server import serve

    if args.no_api and args.api_sock is not None:
        raise UsageError("give --api-sock or --no-api, not both")
    if not args.no_api and args.api_sock is None:
        raise UsageError("--api-sock PATH is required (or --no-api with --config-file)")
    result = serve(None if args.no_api else args.api_sock, config_file=args.config_file, instance_id=args.id, key=read_key(args))
    if result is None:
        return EXIT_OK
    if result.reason is StopReason.FAULT and result.fault is not None:
        print(result.fault.format(), file=sys.stderr)
    return EXIT_CODES[result.reason]


def _run_dirty_report(vm: MicroVM, args: argparse.Namespace, console: StdoutConsole | None) -> int:
    """Run in epochs of args.dirty_report instructions, printing the dirty pages of each."""
    from vmm.plots import dirty_epochs

    t0 = time.perf_counter()
    totals = RunTotals()
    epochs: list[dict[str, int]] = []
    for epoch in dirty_epochs(vm, args.dirty_report, max_instructions=args.max_instructions):
        check_console(console)
        totals.add(epoch.result)
        pages = epoch.pages.size
        epochs.append({"start_ns": epoch.start, "end_ns": epoch.end, "dirty_pages": pages, "runs": epoch.runs})
        print(
            f"microvm: epoch {epoch.index} [{epoch.start:,}, {epoch.end:,}): {pages} dirty pages ({pages * 4} KiB) in {epoch.runs} runs",
            file=sys.stderr,
        )
        result = epoch.result
    return finish(args.quiet, args.json, result, totals, vm, time.perf_counter() - t0, epochs=epochs)


def cmd_restore(args: argparse.Namespace) -> int:
    _check_modes(args)
    directory = snapshot_dir(args.snapshot_dir) if args.snapshot_dir else None
    data = read_input(args.input)
    key = read_key(args)
    warn_if_slow(args.quiet)
    t0 = time.perf_counter()
    console = console_sink(args.json)
    vm = MicroVM.load_snapshot(
        args.path,
        args.mem_backend,
        verify_memory=True if args.verify_memory else None,
        on_console=console,
        progress_bars=bars(args),
        mmds=args.mmds,
        reseed=args.reseed,
        key=key,
    )
    restore_s = time.perf_counter() - t0
    restored_at = vm.clock
    vm.uart.queue_input(data)
    note(args.quiet, f"restored {args.path} ({args.mem_backend}) in {restore_s * 1000:.1f} ms at virtual time {vm.clock:,}")
    t0 = time.perf_counter()
    totals = RunTotals()
    saver = _Saver(vm, args, directory, None, DEFAULT_FRAME_SIZE, diffs=False, key=key)  # the console's snapshots
    result = _run_on(vm, args, console, saver, totals, args.max_instructions)
    return finish(
        args.quiet, args.json, result, totals, vm, time.perf_counter() - t0,
        restored_from=args.path, restored_at_ns=restored_at, restore_seconds=round(restore_s, 6), snapshots=saver.made,
    )


def cmd_dirty_map(args: argparse.Namespace) -> int:
    """Run GUEST for --epochs epochs of --epoch instructions and plot the pages each wrote."""
    from vmm.plots import PlotUnavailableError, build_map, dirty_epochs, plot_dirty_map, require_matplotlib

    try:
        require_matplotlib()  # before spending time running the guest
    except PlotUnavailableError as e:
        raise UsageError(str(e)) from None
    if args.epoch == 0 or args.epochs == 0:
        raise UsageError("--epoch and --epochs must be at least 1")
    config = VmConfig(**{**config_from(args).__dict__, "track_dirty_pages": True})
    vm = MicroVM(config)  # the console output is not shown: the map is the report
    load_mmds(vm, args.mmds_data)
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
