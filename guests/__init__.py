"""Built-in guest programs: their catalog, parameters and committed binaries.

Each guest is a flat AArch64 binary in guests/bin/<name>.bin, built by guests/build.py: assembled
from guests/src/<name>.S plus the shared runtime (guests/src/runtime.S), or, for a C guest,
compiled from guests/src/<name>.c with guests/src/c/start.S by aarch64-linux-gnu-gcc. It is
linked to run at the start of RAM (0x8000_0000) with the MMU off.

Boot contract (docs/machine.md): x0 = DTB address, x1 = parameter block address. The
parameter block is an array of little-endian u64: [PARAMS_MAGIC, vcpu count, RAM base,
RAM size, n, param_0 .. param_{n-1}] with the guest's parameters in the order declared here.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Mapping

from vmm.errors import ConfigError

PARAMS_MAGIC = int.from_bytes(b"MVMPARAM", "little")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: int
    help: str


@dataclass(frozen=True)
class GuestSpec:
    """A built-in guest: name, one-line description, parameters, and a suggested vCPU count."""

    name: str
    description: str
    params: tuple[ParamSpec, ...] = ()
    default_vcpus: int = 1

    def binary(self) -> bytes:
        """The committed, assembled image."""
        path = resources.files("guests") / "bin" / f"{self.name}.bin"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"guest {self.name!r} has no built binary; run python -m guests.build") from None

    def resolve_params(self, given: Mapping[str, int]) -> list[int]:
        """Parameter values in declared order: defaults overridden by `given`."""
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"guest {self.name!r} has no parameter {unknown[0]!r} (parameters: {allowed})")
        return [int(given.get(p.name, p.default)) for p in self.params]


CATALOG: dict[str, GuestSpec] = {
    g.name: g
    for g in (
        GuestSpec("hello", "prints a greeting and powers off with PSCI SYSTEM_OFF"),
        GuestSpec(
            "smp",
            "starts every vCPU with PSCI CPU_ON; all add to a shared counter (LDXR/STXR and LSE), the primary prints the total",
            (ParamSpec("iterations", 20000, "increments per vCPU per method"),),
            default_vcpus=4,
        ),
        GuestSpec(
            "memwalk",
            "dirties memory in a pattern each round and prints a checksum; the dirty-tracking and snapshot workload",
            (
                ParamSpec("pattern", 0, "0 sequential, 1 strided, 2 random (seeded), 3 hot set"),
                ParamSpec("rounds", 4, "rounds to run; 0 runs forever"),
                ParamSpec("region_mib", 8, "size of the walked region in MiB (from RAM base + 16 MiB)"),
                ParamSpec("stride", 4096, "bytes between writes for pattern 1"),
                ParamSpec("writes", 2048, "writes per round"),
                ParamSpec("seed", 1, "seed of the random pattern"),
                ParamSpec("hot_pages", 16, "pages in the hot set for pattern 3"),
            ),
        ),
        GuestSpec(
            "compute",
            "CPU-bound checksum loop that prints its result; the execution-speed workload",
            (ParamSpec("iterations", 2_000_000, "loop iterations"),),
        ),
        GuestSpec(
            "mmds",
            "MMDS client: gets a session token, fetches metadata (IMDS text and JSON) with and without it, prints the responses",
            (
                ParamSpec("ttl", 60, "token lifetime in seconds sent in X-metadata-token-ttl-seconds"),
                ParamSpec("resp_cap", 65536, "response buffer capacity in bytes (at most 65536)"),
            ),
        ),
        GuestSpec(
            "ticker",
            "programs the virtual timer for a fixed period, sleeps in WFI and prints each tick's CNTVCT; the timer-IRQ workload",
            (
                ParamSpec("period_ns", 1_000_000, "timer period in ns (counter ticks at 1 GHz)"),
                ParamSpec("ticks", 5, "timer interrupts to take before powering off"),
            ),
        ),
        GuestSpec(
            "ipi",
            "passes a token around a ring of all vCPUs with SGIs (ICC_SGI1R_EL1), logs the visits, the primary prints them",
            (ParamSpec("rounds", 3, "times the token goes around the ring (at most 100000)"),),
            default_vcpus=4,
        ),
        GuestSpec(
            "echo",
            "PL011 RX interrupts: echoes received bytes upper-cased until it receives the quit byte",
            (ParamSpec("quit", ord("q"), "byte value that ends the session after it is echoed (> 255: never)"),),
        ),
        GuestSpec(
            "cbench",
            "C benchmark (CoreMark-style mix: linked lists, matrix multiply, a state machine, CRC-16), built with "
            "gcc-aarch64-linux-gnu -O2; prints a CRC of its results; the compiled-code speed workload",
            (ParamSpec("iterations", 2000, "rounds of the whole mix"),),
        ),
        GuestSpec(
            "mmu",
            "builds stage-1 tables (TTBR0 and TTBR1, 2 MiB blocks and 4 KiB pages), turns the MMU on, writes through "
            "aliased mappings, reads back through another and prints a checksum; optionally takes translation and "
            "permission faults in its own handler and prints ESR/FAR",
            (
                ParamSpec("pages", 16, "4 KiB data pages written through the aliases (1 to 256)"),
                ParamSpec("words", 64, "8-byte words written per page (1 to 512)"),
                ParamSpec("seed", 1, "seed of the written values"),
                ParamSpec("faults", 0, "bit mask: 1 load from an unmapped VA, 2 store to a read-only page"),
            ),
        ),
    )
}


def get(name: str) -> GuestSpec:
    """The built-in guest called `name`; ConfigError naming the choices otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ConfigError(f"unknown guest {name!r} (built-in guests: {', '.join(sorted(CATALOG))})") from None
