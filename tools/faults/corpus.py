"""The sample VM and snapshots the crash, file and disk campaigns work on.

The sample is `memwalk` dirtying random pages of a 2 MiB region, on two vCPUs (one powered
off), with MMDS metadata set, so every part of a state file and a memory file with many runs
is exercised. `build_corpus` saves, in one directory:

    base   a full snapshot                         (BASE_STEPS quanta after boot)
    top    a diff over base                        (TOP_STEPS quanta later)
    other  a full snapshot of a different machine  (1 vCPU, OTHER_MEM_SIZE of RAM)

and records each one's state digest (`MicroVM.state_digest`), the identity a restored VM
must have.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from snapshot.errors import InvalidPathError
from vmm import MicroVM, VmConfig
from vmm.layout import MIB

QUANTUM = 2_000  # instructions per round; pauses land on multiples of it
SAMPLE_MEM_SIZE = 20 * MIB  # memwalk walks from RAM base + 16 MiB
OTHER_MEM_SIZE = 18 * MIB
BASE_STEPS = 6  # quanta run before `base`
TOP_STEPS = 5  # quanta run between `base` and `top`
RAM_FILESYSTEM = Path("/dev/shm")  # a tmpfs on Linux
MMDS_DATA = {"latest": {"meta-data": {"instance-id": "i-0123456789", "zone": "rel-1a", "tags": ["x"] * 40}}}

SAMPLE_CONFIG = VmConfig(
    guest="memwalk",
    vcpus=2,
    mem_size=SAMPLE_MEM_SIZE,
    quantum=QUANTUM,
    track_dirty_pages=True,
    params={"rounds": 0, "pattern": 2, "writes": 512, "region_mib": 2},
)
OTHER_CONFIG = VmConfig(guest="compute", mem_size=OTHER_MEM_SIZE, quantum=QUANTUM, params={"iterations": 10**9})


def sample_vm(steps: int = 0) -> MicroVM:
    """A fresh sample VM, run `steps` quanta."""
    vm = MicroVM(SAMPLE_CONFIG)
    vm.mmds.put(MMDS_DATA)
    if steps:
        vm.run(steps * QUANTUM)
    return vm


@dataclass
class Corpus:
    """Snapshots `base`, `top` (diff over base) and `other` in `directory`, with the state
    digest each one must restore to."""

    directory: Path
    digests: dict[str, str] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.digests)


def build_corpus(directory: Path) -> Corpus:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(directory)
    vm = sample_vm(BASE_STEPS)
    vm.save_snapshot(directory / "base", "full")
    corpus.digests["base"] = vm.state_digest()
    vm.run(TOP_STEPS * QUANTUM)
    vm.save_snapshot(directory / "top", "diff")
    corpus.digests["top"] = vm.state_digest()
    other = MicroVM(OTHER_CONFIG)
    other.run(3 * QUANTUM)
    other.save_snapshot(directory / "other", "full")
    corpus.digests["other"] = other.state_digest()
    return corpus


def loads_as(path: Path) -> str | None:
    """The state digest the snapshot at `path` restores to (copy backend: every memory file
    digest verified), or None if there is no snapshot at `path`. SnapshotErrors pass."""
    try:
        vm = MicroVM.load_snapshot(path, "copy")
    except InvalidPathError as exc:
        if exc.errno == 2 and not os.path.lexists(f"{path}.snap"):  # ENOENT: no snapshot there
            return None
        raise
    return vm.state_digest()


@contextmanager
def scratch_directory(prefix: str = "faults-") -> Iterator[Path]:
    """A new directory for campaign files, removed afterwards: on a RAM filesystem
    (RAM_FILESYSTEM) when there is one, where fsync and unlink cost nothing, else in the
    default temporary directory. What the campaigns check (a killed process, an injected
    error, a decoded file) does not depend on the filesystem; the real-filesystem faults
    mount their own tmpfs."""
    base = RAM_FILESYSTEM if os.access(RAM_FILESYSTEM, os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def listing(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def link_files(src: Path, dst: Path, names: set[str] | None = None) -> None:
    """Hard-link the files of `src` (or just `names`) into `dst`, which is emptied first.
    Safe for snapshots: a commit only ever renames over a name, never writes a file in place."""
    dst.mkdir(parents=True, exist_ok=True)
    for n in os.listdir(dst):
        os.unlink(dst / n)
    for n in os.listdir(src) if names is None else names:
        os.link(src / n, dst / n)
