"""What the `microvm` command reads besides its arguments: MMDS data, console input, an
encryption key file, and the folder snapshots go to. All are untrusted and checked before use
(vmm.hostfile, snapshot.crypto.load_key_file)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from snapshot.errors import InvalidPathError
from snapshot.links import ensure_directory
from vmm.cli.status import UsageError
from vmm.devices.mmds.errors import MmdsError
from vmm.devices.mmds.store import parse_json
from vmm.hostfile import read_bounded

# An MMDS data file may be pretty-printed; the store's own limit (51,200 canonical bytes by
# default) applies after parsing. This bounds the read and the parse.
MMDS_FILE_MAX = 1 << 20
# Console input is kept in the UART's host queue, which snapshots carry: bounded like a state
# file's other contents (the state file limit is 10,000,000 bytes).
INPUT_MAX = 1 << 20


def load_mmds(vm: object, path: str | None) -> None:
    """Put the JSON object in file `path` into `vm`'s MMDS store (nothing if None)."""
    if path is None:
        return
    data = read_bounded(path, max_size=MMDS_FILE_MAX, what="MMDS data", why="an MMDS data file", error=UsageError)  # type: ignore[arg-type]
    try:
        vm.mmds.put(parse_json(data))  # type: ignore[attr-defined]
    except MmdsError as e:
        raise UsageError(f"MMDS data {path}: {e}") from None


def read_input(path: str | None) -> bytes:
    """The bytes of --input: a file, or stdin for "-" (read to its end before the guest starts,
    so the run is deterministic); b"" if None."""
    if path is None:
        return b""
    if path != "-":
        return read_bounded(path, max_size=INPUT_MAX, what="input", why="console input", error=UsageError)  # type: ignore[arg-type]
    try:
        data = sys.stdin.buffer.read(INPUT_MAX + 1)
    except OSError as e:
        raise UsageError(f"cannot read input from stdin: {e.strerror or e}") from None
    if len(data) > INPUT_MAX:
        raise UsageError(f"input on stdin is more than {INPUT_MAX:,} bytes (console input)")
    return data


def snapshot_dir(path: str) -> Path:
    """--snapshot-dir, created if missing and checked writable before any guest runs."""
    try:
        return ensure_directory(path)
    except InvalidPathError as e:
        raise UsageError(f"--snapshot-dir {e.reason}: {os.fspath(path)}") from None


def snapshot_points(text: str | None) -> list[int]:
    """--snapshot-at N[,N2,...]: increasing instruction counts."""
    if not text:
        return []
    try:
        points = [int(p, 0) for p in text.split(",")]
    except ValueError:
        raise UsageError(f"--snapshot-at takes comma-separated instruction counts, got {text!r}") from None
    if any(p < 0 for p in points) or points != sorted(set(points)):
        raise UsageError("--snapshot-at points must be increasing and not negative")
    return points


def read_key(args: object) -> bytes | None:
    """The key in --encrypt-key-file (None without it): a regular file of 32 raw bytes or 64 hex
    digits, read bounded (snapshot.crypto.load_key_file; KeyFileError, one line naming the
    file, otherwise). The key itself is never printed."""
    from snapshot.crypto import load_key_file

    path = getattr(args, "encrypt_key_file", None)
    return None if path is None else load_key_file(path)
