"""How snapshots are named and linked into chains, read from files alone.

Every state file, whatever machine wrote it, carries three things this library understands:
`memory` (the MemFileInfo of its memory file), `parent` (a diff's ParentLink, None for a full
snapshot) and the RAM facts under `vm` (`ram_base`, `ram_size`, `page_size`). `StateCore` is that
view. The rest of the tree is the machine's (vmm.persist reads it); this library carries it
as plain data and lets a `MachineSchema` check and summarise it where a caller passes one.

- `snapshot_paths(path)`: `<name>.snap` and `<name>.mem` for a name given with or without .snap
  (the default pair; a state file records its memory file's actual name, snapshot.commit).
- `open_chain(path)`: [full, diff, ..., path], each pair open, every link checked by digest.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, Protocol

from snapshot.commit import MEMORY_SUFFIX, STATE_SUFFIX, OpenedPair, open_pair
from snapshot.errors import (
    ChainLoopError,
    EncodingError,
    IncompatibleError,
    InvalidPathError,
    MissingParentError,
    ParentMismatchError,
    errno_text,
    SnapshotError,
    resolve_path,
)
from snapshot.meminfo import DIFF, MemFileInfo, check_digest_text
from snapshot.plain import U32, U64, MaxLen, from_plain

MAX_CHAIN = 64  # ours: the longest diff chain followed when loading
VM_FIELD = "vm"  # ours: key of the RAM facts in a state's plain data
PARENT_FIELD = "parent"  # ours: key of a diff's ParentLink


@dataclass
class ParentLink:
    """Where a diff's base snapshot is: its state file's name (relative to this file's
    directory) and the digests that identify it."""

    state_name: Annotated[str, MaxLen(255)]
    state_crc: U64  # CRC-64 trailer of the parent's state file
    memory_digest: Annotated[str, MaxLen(32)]

    def __post_init__(self) -> None:
        """ValueError (EncodingError when decoded) for a name no file can have (empty, or with
        a NUL byte) or a digest that is not 32 lowercase hex characters."""
        if not self.state_name or "\0" in self.state_name:
            raise ValueError("state_name is empty or contains a NUL byte")
        check_digest_text("memory_digest", self.memory_digest)


@dataclass
class RamInfo:
    """The guest RAM a memory file images: base address and size in bytes, page size in bytes."""

    ram_base: U64
    ram_size: U64
    page_size: U32


@dataclass
class StateCore:
    """The part of a state file this library understands (module docstring); `data` is the
    whole decoded tree."""

    ram: RamInfo
    memory: MemFileInfo
    parent: ParentLink | None
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.memory.kind


class MachineSchema(Protocol):
    """What a machine layer (vmm.persist) tells this library about the rest of a state tree."""

    def check(self, data: dict[str, Any]) -> None:
        """Raise a SnapshotError (EncodingError, IncompatibleError) unless `data` is a state
        this machine can restore."""

    def summary(self, data: dict[str, Any]) -> dict[str, Any]:
        """Human-facing facts of `data` for `describe` (vCPUs, guest, virtual time, ...)."""


def snapshot_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(`<name>.snap`, `<name>.mem`) for `path` given with or without the .snap suffix."""
    p = Path(path)
    if p.suffix == STATE_SUFFIX:
        p = p.with_suffix("")
    if not p.name or p.name in (".", ".."):
        raise InvalidPathError(str(path), "is not a snapshot name")
    return p.with_name(p.name + STATE_SUFFIX), p.with_name(p.name + MEMORY_SUFFIX)


def ensure_directory(path: str | os.PathLike[str]) -> Path:
    """The folder `path`, created with its parents if missing, ready for snapshots to be
    written into. InvalidPathError (one line naming it) if it is, or lies under, something
    that is not a folder (a file, /dev/null, a FIFO), its name is too long, or it cannot be
    created or written (checked with access(2), which root passes)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidPathError(p, "exists and is not a folder") from None
    except NotADirectoryError:
        raise InvalidPathError(p, "lies under a file, not a folder") from None
    except OSError as exc:
        raise InvalidPathError(p, f"cannot create the folder: {errno_text(exc.errno, exc.strerror)}", errno=exc.errno) from None
    if not p.is_dir():  # e.g. a symlink to a file made between the checks
        raise InvalidPathError(p, "is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(p).f_flag & os.ST_RDONLY else errno.EACCES
        raise InvalidPathError(p, f"the folder is not writable: {errno_text(code, os.strerror(code))}", errno=code)
    return p


def decode_core(pair: OpenedPair) -> StateCore:
    """The pair's StateCore, checked for consistency (EncodingError)."""
    data = pair.data
    vm = data.get(VM_FIELD)
    if not isinstance(vm, dict):
        raise EncodingError(f"data.{VM_FIELD}: expected a map of the machine's RAM facts")
    fields = ("ram_base", "ram_size", "page_size")
    missing = [f for f in fields if f not in vm]
    if missing:
        raise EncodingError(f"data.{VM_FIELD}: missing field {missing[0]!r}")
    ram: RamInfo = from_plain(RamInfo, {f: vm[f] for f in fields}, path=f"data.{VM_FIELD}")
    parent: ParentLink | None = from_plain(Optional[ParentLink], data.get(PARENT_FIELD), path=f"data.{PARENT_FIELD}")
    memory = pair.memory
    if memory.length != ram.ram_size:
        raise EncodingError(f"memory file length {memory.length} is not the RAM size {ram.ram_size}")
    if memory.page_size != ram.page_size:
        raise IncompatibleError(f"memory file page size {memory.page_size} does not match the VM's page size {ram.page_size}")
    if (memory.kind == DIFF) != (parent is not None):
        raise EncodingError("a diff must name its parent and a full snapshot must not")
    if parent is not None and parent.memory_digest != memory.parent_digest:
        raise EncodingError(
            f"parent.memory_digest {parent.memory_digest} is not memory.parent_digest {memory.parent_digest}"
        )
    return StateCore(ram, memory, parent, data)


def parent_state_path(child_state: Path, link: ParentLink) -> Path:
    """Where the parent a diff's state file `child_state` records is: its recorded name,
    relative to the child's directory (so a chain moved as a whole still resolves)."""
    return resolve_path(child_state.parent / link.state_name, "the parent's name")


def check_parent_link(older: StateCore, newer: StateCore) -> None:
    """ParentMismatchError / IncompatibleError unless `newer` is a diff taken over `older`'s
    memory image, with the same RAM size."""
    if newer.memory.parent_digest != older.memory.digest:
        raise ParentMismatchError(str(newer.memory.parent_digest), older.memory.digest)
    if newer.ram.ram_size != older.ram.ram_size:
        raise IncompatibleError("a diff and its base have different RAM sizes")


def dependants(state_path: Path) -> list[Path]:
    """The state files in `state_path`'s directory whose recorded parent is `state_path`: the
    diffs that stop restoring if it is replaced. Reads each other state file of the directory
    (bounded by the envelope's size limit); unreadable ones are skipped (they restore nothing).
    Diffs in other directories that name it are not found."""
    from snapshot.envelope import read_state_file  # the envelope is only needed here

    target = resolve_path(state_path)
    found: list[Path] = []
    try:
        names = sorted(os.listdir(state_path.parent))
    except OSError:
        return found
    for name in names:
        other = state_path.parent / name
        if not name.endswith(STATE_SUFFIX) or name.startswith(".") or other == state_path:
            continue
        try:
            link = from_plain(Optional[ParentLink], read_state_file(other)[1].get(PARENT_FIELD), path=f"data.{PARENT_FIELD}")
            if link is not None and parent_state_path(other, link) == target:
                found.append(other)
        except (SnapshotError, OSError):
            continue
    return found


@dataclass
class Link:
    """One snapshot of an opened chain: its open pair and its decoded core."""

    pair: OpenedPair
    core: StateCore


def close_chain(chain: list[Link]) -> None:
    for link in chain:
        link.pair.close()


def open_chain(
    path: Path,
    base: Path | None = None,
    *,
    memory_path: str | os.PathLike[str] | None = None,
    key: bytes | None = None,
) -> list[Link]:
    """[full, diff1, ..., diffN] ending at the state file `path`, every pair open (close them
    with `close_chain`) and every link checked by digest. `base`: the base of `path` itself,
    instead of its recorded parent. `memory_path`: `path`'s memory file, instead of the one it
    records (the caller verifies its digest). MissingParentError if a parent is absent,
    ChainLoopError if the parents lead back into the chain, IncompatibleError past MAX_CHAIN
    snapshots. `key`: opens every encrypted link (MissingKeyError / WrongKeyError naming the
    first link it does not open)."""
    chain: list[Link] = []
    seen: set[Path] = set()
    try:
        current = path
        while True:
            here = resolve_path(current)
            if here in seen:
                raise ChainLoopError(path, current)
            seen.add(here)
            if len(chain) >= MAX_CHAIN:
                raise IncompatibleError(f"diff chain longer than {MAX_CHAIN} snapshots")
            pair = open_pair(current, memory_path if not chain else None, key=key)
            chain.append(Link(pair, decode_core(pair)))
            link = chain[-1].core.parent
            if link is None:
                break
            if base is not None and len(chain) == 1:
                parent_path = snapshot_paths(base)[0]
            else:
                parent_path = parent_state_path(current, link)
            if not parent_path.exists():
                raise MissingParentError(link.memory_digest, path=current, parent_path=parent_path)
            current = parent_path
        chain.reverse()  # chain[0] has no parent, so decode_core made sure it is full
        for older, newer in zip(chain, chain[1:]):
            check_parent_link(older.core, newer.core)
        return chain
    except BaseException:
        close_chain(chain)
        raise
