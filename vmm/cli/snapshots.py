"""`microvm describe`, `verify` and `rebase`: commands on snapshot files, no guest runs."""
from __future__ import annotations

import argparse
import json
import sys

from vmm.cli.inputs import read_key
from vmm.cli.output import print_table
from vmm.cli.status import EXIT_FAULT, EXIT_OK, UsageError


def bars(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Progress bars on stderr for long snapshot work: only on a terminal, never with --quiet."""
    from snapshot.progress import progress_bars

    return progress_bars(enabled=False if getattr(args, "quiet", False) else None)


def cmd_describe(args: argparse.Namespace) -> int:
    from snapshot.describe import describe
    from vmm.persist import MACHINE

    info = describe(args.path, verify=args.verify, progress_bars=bars(args), schema=MACHINE, key=read_key(args))
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


def compression(args: argparse.Namespace) -> tuple[str | None, int]:
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

    compress, frame_size = compression(args)
    report = rebase(
        args.base, args.diffs, args.output, compress=compress, frame_size=frame_size, progress_bars=bars(args), key=read_key(args)
    )
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

    report = verify(args.path, schema=MACHINE, progress_bars=bars(args), key=read_key(args))
    if not args.quiet:
        for link in report.checked:
            print(f"ok  {link.state_path}  {link.kind} {link.memory_format}  {link.memory_digest}")
    if report.broken is not None:
        print(f"microvm: verify: {report.broken}", file=sys.stderr)
        return EXIT_FAULT
    if not args.quiet:
        print(f"microvm: verify: ok ({len(report.checked)} snapshots, base to {report.path})", file=sys.stderr)
    return EXIT_OK
