"""The `microvm` command's arguments: the parser, argument types, and the VM configuration
they describe. Commands are looked up by name (vmm.cli.COMMANDS)."""
from __future__ import annotations

import argparse
import re

import guests
from vmm.cli.about import version_text
from vmm.cli.status import EPILOG_EXIT
from vmm.config import DEFAULT_QUANTUM, VmConfig
from vmm.layout import MIB


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


def _u64(text: str) -> int:
    value = _positive_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 2**64")
    return value


def _instance_id(text: str) -> str:
    """Firecracker's instance id rule: 1..64 characters, ASCII letters, digits and hyphens."""
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"{text[:70]!r} must be 1 to 64 letters, digits or hyphens")
    return text


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
    p.add_argument("--initrd", metavar="FILE", help="initramfs for a Linux image (device tree /chosen linux,initrd-start/end)")
    p.add_argument("--cmdline", default="", metavar="TEXT", help='kernel command line (/chosen bootargs), e.g. "console=ttyAMA0"')
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
    p.add_argument(
        "--input",
        metavar="FILE",
        help="bytes for the guest's UART to receive (`-`: stdin, read to its end before the guest starts; at most 1 MiB)",
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="interactive console on a terminal: keys go to the guest's UART as typed; Ctrl-] then p (pause), s (snapshot into --snapshot-dir), q (quit), c (continue). Not deterministic: for a reproducible run use --input",
    )


def _add_snapshot_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--snapshot-dir",
        metavar="DIR",
        help="where --snapshot-at (and the console's snapshot key) write snap-<N>.snap/.mem; created if missing",
    )


def config_from(args: argparse.Namespace) -> VmConfig:
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
        initrd=args.initrd,
        cmdline=args.cmdline,
    )


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


def _add_key_arg(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument(
        "--encrypt-key-file",
        metavar="FILE",
        default=None,
        help=f"{role} (AES-256-GCM): a regular file holding the 32-byte key, raw or as 64 hex digits",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microvm",
        description="A simulated AArch64 microVM harness: run guests deterministically, snapshot and restore them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `microvm demo`, then `microvm guests` and `microvm run hello`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_text()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="version, the native fast path, the host memory each vCPU needs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("guests", help="list the built-in guests")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each guest's parameters")

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
        help="take snapshots at these points (instructions of virtual time; each lands on the next round end, and points that land on the same one share its snapshot; points the guest never reaches are reported)",
    )
    _add_snapshot_dir(p)
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
    _add_key_arg(p, "encrypt the snapshots with this key")

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
        help="copy: read memory files into RAM (verifies digests); mmap: map the base copy-on-write, lazily "
        "(checks each memory file's identity in O(1), not its contents)",
    )
    p.add_argument(
        "--verify-memory",
        action="store_true",
        help="with --mem-backend mmap: also read every memory file once to check its digest (finds damage inside it)",
    )
    p.add_argument(
        "--mmds",
        choices=("keep", "drop"),
        default="keep",
        help="keep: the MMDS data store and token key as saved (bit-identical continuation, the default); "
        "drop: an empty store and a fresh random token key, as Firecracker's clones",
    )
    p.add_argument(
        "--reseed",
        type=_u64,
        default=None,
        metavar="N",
        help="give the clone config seed N (its MMDS token key derives from it): clones with different seeds "
        "share no tokens; this deliberately ends bit-identical continuation",
    )
    _add_run_args(p)
    _add_snapshot_dir(p)
    _add_key_arg(p, "the key of an encrypted snapshot (snapshots saved from the console are encrypted with it too)")

    p = sub.add_parser(
        "serve",
        help="serve Firecracker's HTTP API on a Unix socket (configure, start, pause, snapshot with curl or an SDK)",
        description="Mirror `firecracker --api-sock PATH [--config-file FILE] [--no-api] [--id ID]`: Firecracker's API "
        "endpoints, JSON fields, status codes and state machine on a Unix socket (README: Firecracker users). "
        "A config file configures the VM and starts it at once. The guest's console goes to stdout unless PUT /serial "
        "names a file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_EXIT.replace("  3  the instruction budget ran out before the guest powered off\n", "")
        + "the server runs until the guest stops for good; SIGTERM stops it with status 0\n",
    )
    p.add_argument("--api-sock", metavar="PATH", help="the Unix socket to create (must not exist)")
    p.add_argument("--config-file", metavar="FILE", help="a Firecracker-shaped JSON config; the VM starts at once")
    p.add_argument("--no-api", action="store_true", help="no socket: run the --config-file VM only")
    p.add_argument("--id", type=_instance_id, default="anonymous-instance", help="instance id reported by GET / and in logs (default anonymous-instance)")
    _add_key_arg(p, "encrypt the snapshots PUT /snapshot/create writes and open those PUT /snapshot/load reads")

    p = sub.add_parser(
        "describe",
        help="show a snapshot's metadata without restoring it",
        description="Print a snapshot's metadata: magic, version, kind, vCPUs, memory, devices, chain parent, and (with --verify) whether the memory file matches.",
    )
    p.add_argument("path", metavar="PATH", help="the snapshot's .snap file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="also read the memory file and check its digest (exit 1 if it does not match)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar while verifying")
    _add_key_arg(p, "an encrypted snapshot's key: without it only what is not secret is shown")

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
    _add_key_arg(p, "the key of encrypted inputs; OUT is encrypted with it")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success; no progress bar")

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
    _add_key_arg(p, "the key of an encrypted chain (needed for a full check)")

    p = sub.add_parser(
        "fanout",
        help="run one snapshot over many inputs, on local processes or a Ray cluster",
        description="Run every input of FILE.jsonl (UART bytes, MMDS data, memory writes, registers, a budget, a console "
        "string to stop at; see vmm/experiments/inputs.py) from SNAPSHOT, each from the same state, and write one result "
        "per input, in input order, to OUT. Each worker loads the snapshot once and resets between inputs. Results do "
        "not depend on the engine, the worker count or the order inputs are picked up (wall time and attempts aside).",
        epilog="exit status:\n  0  every input ran (whatever the guests did: see the results)\n  2  usage error, bad snapshot, bad input line (named)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot's .snap file (a diff's chain is found from its parents)")
    p.add_argument("--inputs", required=True, metavar="FILE.jsonl", help="one JSON input per line")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="where to write the results")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local: processes on this machine (default); ray: Ray actors")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="workers (default: the CPUs of this machine or of the Ray cluster)")
    p.add_argument("--address", default=None, metavar="ADDR", help="the Ray cluster to join (default: a running session, else a new local one)")
    p.add_argument(
        "--transfer",
        choices=("path", "object-store"),
        default="path",
        help="ray: how the snapshot reaches the workers: its path (every node must read it; default) or Ray's object store",
    )
    p.add_argument("--budget", type=_positive_int, default=10_000_000, metavar="N", help="instructions of virtual time for an input that names no budget (default 10,000,000)")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="K", help="inputs sent to a worker at a time (default 8)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    _add_key_arg(p, "an encrypted snapshot's key (sent to the workers in memory, never written to disk)")

    p = sub.add_parser("demo", help="the tour: snapshot a running SMP guest, restore the chain, show both continue identically")
    p.add_argument("--max-instructions", type=_positive_int, default=2_000_000_000, metavar="N", help=argparse.SUPPRESS)
    return parser


