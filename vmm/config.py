"""`VmConfig`: everything that defines a VM before it boots, validated up front."""
from __future__ import annotations

from dataclasses import dataclass, field

from vmm.errors import ConfigError
from vmm.layout import MAX_VCPUS, MIB, RAM_DEFAULT_SIZE, RAM_MAX_SIZE, RAM_MIN_SIZE, RAM_SIZE_ALIGN

DEFAULT_QUANTUM = 100_000  # instructions per vCPU per scheduling round
MAX_QUANTUM = 100_000_000
DIRTY_GRANULES = ("page", "per-block", "global")


@dataclass(frozen=True)
class VmConfig:
    """Machine configuration.

    - `vcpus`: 1..32.
    - `mem_size`: guest RAM in bytes; 16 MiB..16 GiB, a multiple of 2 MiB.
    - `quantum`: instructions each vCPU runs per scheduling round (deterministic mode).
    - `guest`: name of a built-in guest (see `microvm guests`), or None with `image`.
    - `image`: path of a user's flat binary or ELF, loaded at the start of RAM.
    - `params`: guest parameters by name (built-in guests declare theirs).
    - `track_dirty_pages`: keep a dirty-page bitmap (needed for diff snapshots).
    - `dirty_granule`: "page" (exact 4 KiB pages, the default), "per-block" (start with 2 MiB
      blocks, step hot blocks down to pages) or "global" (all blocks step down at once).
      Here a TLB fill happens per page whatever the granule, so coarse blocks save no faults
      and only enlarge diffs; see snapshot/dirty.py and the `dirty` benchmark.
    - `seed`: seeds every guest-visible pseudo-random value (e.g. MMDS tokens).
    - `mmds_version`: 1 (plain GET) or 2 (session tokens, the default).
    """

    vcpus: int = 1
    mem_size: int = RAM_DEFAULT_SIZE
    quantum: int = DEFAULT_QUANTUM
    guest: str | None = None
    image: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    track_dirty_pages: bool = False
    dirty_granule: str = "page"
    seed: int = 0
    mmds_version: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.vcpus, bool) or not isinstance(self.vcpus, int) or not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"vcpus must be an integer from 1 to {MAX_VCPUS}, got {self.vcpus!r}")
        if isinstance(self.mem_size, bool) or not isinstance(self.mem_size, int):
            raise ConfigError(f"mem_size must be an integer number of bytes, got {self.mem_size!r}")
        if not RAM_MIN_SIZE <= self.mem_size <= RAM_MAX_SIZE or self.mem_size % RAM_SIZE_ALIGN:
            raise ConfigError(
                f"memory size must be 16 MiB to 16 GiB in multiples of 2 MiB, got "
                f"{self.mem_size} bytes ({self.mem_size / MIB:g} MiB)"
            )
        if isinstance(self.quantum, bool) or not isinstance(self.quantum, int) or not 1 <= self.quantum <= MAX_QUANTUM:
            raise ConfigError(f"quantum must be an integer from 1 to {MAX_QUANTUM}, got {self.quantum!r}")
        if self.guest is not None and self.image is not None:
            raise ConfigError("give either a built-in guest or an image, not both")
        if self.dirty_granule not in DIRTY_GRANULES:
            raise ConfigError(f"dirty_granule must be one of {', '.join(DIRTY_GRANULES)}, got {self.dirty_granule!r}")
        if self.mmds_version not in (1, 2):
            raise ConfigError(f"mmds_version must be 1 or 2, got {self.mmds_version!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be an integer in 0..2**64-1, got {self.seed!r}")
        for k, v in self.params.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
                raise ConfigError(f"guest parameter {k!r} must be an integer in 0..2**64-1, got {v!r}")

    @property
    def mem_mib(self) -> int:
        return self.mem_size // MIB

    def to_plain(self) -> dict[str, object]:
        """The config as plain data (recorded in snapshots)."""
        return {
            "vcpus": self.vcpus,
            "mem_size": self.mem_size,
            "quantum": self.quantum,
            "guest": self.guest,
            "image": self.image,
            "params": dict(sorted(self.params.items())),
            "track_dirty_pages": self.track_dirty_pages,
            "dirty_granule": self.dirty_granule,
            "seed": self.seed,
            "mmds_version": self.mmds_version,
        }
