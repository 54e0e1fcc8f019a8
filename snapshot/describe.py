"""`describe(path)`: a snapshot's metadata from its files alone, without restoring it."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from snapshot.commit import open_pair
from snapshot.crypto import MissingKeyError
from snapshot.errors import SnapshotError, show_path
from snapshot.links import MachineSchema, decode_core, snapshot_paths
from snapshot.meminfo import LZ4, extent_bytes
from snapshot.memory import memory_digest
from snapshot.progress import ProgressBars, progress_bars as make_progress_bars


def describe(
    path: str | os.PathLike[str],
    *,
    verify: bool = False,
    schema: MachineSchema | None = None,
    progress_bars: ProgressBars | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """The envelope, memory-file and chain facts of the snapshot at `path`, plus
    `schema.summary(...)` of its machine state when a `schema` is given (which also checks that
    state). Reads the memory file only with `verify` (`pair_ok`; shown by `progress_bars`).
    Raises SnapshotError for a bad file.

    An encrypted snapshot (`encrypted`: True) is opened with `key`; without it only the clear
    facts are shown (kind, format, sizes, digests, parent: snapshot.sealedstate), the machine
    summary is left out, `needs_key` says so, and `verify` raises MissingKeyError."""
    snap, _ = snapshot_paths(path)
    with open_pair(snap, key=key, sealed_ok=True) as pair:
        core = decode_core(pair)
        if verify and pair.sealed:
            raise MissingKeyError(show_path(snap))
        if schema is not None and not pair.sealed:
            schema.check(pair.data)
        info = core.memory
        out: dict[str, Any] = {
            "path": str(snap),
            "magic": f"{pair.header.magic:#018x}",
            "version": ".".join(map(str, pair.header.version)),
            "crc_ok": True,
            "kind": info.kind,
            "memory_size": core.ram.ram_size,
            "encrypted": pair.encrypted,
            **(schema.summary(pair.data) if schema is not None and not pair.sealed else {}),
            "memory_file": str(pair.memory_path),
            "memory_file_size": os.fstat(pair.memory_fd).st_size,
            "memory_digest": info.digest,
            "pages_written": info.pages_written,
            "memory_format": info.format,
            "frame_size": info.frame_size or None,
            # RAM bytes the file records per byte of file (lz4 only)
            "compression_ratio": round(extent_bytes(info) / info.file_length, 3) if info.format == LZ4 else None,
            "parent": asdict(core.parent) if core.parent else None,
            "pair_ok": None,
        }
        if pair.sealed:
            out["needs_key"] = "the machine state (vCPUs, devices, MMDS data, config) and verify need the key"
        if verify:
            try:
                bars = progress_bars or make_progress_bars(enabled=False)
                with bars(extent_bytes(info), f"verifying {snap.name}") as advance:
                    out["pair_ok"] = memory_digest(pair, progress=advance) == info.digest
            except SnapshotError:
                out["pair_ok"] = False
    return out
