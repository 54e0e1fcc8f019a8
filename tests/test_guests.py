"""Built-in guests smp, memwalk and compute (and the committed binaries).

Each guest's console output is checked against an independent Python model of the arithmetic
its header comment (guests/src/<name>.S) specifies.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import guests
from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB, RAM_BASE

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
REGION_BASE = RAM_BASE + 16 * MIB
LIMIT = 200_000_000  # instruction budget: a broken guest stops with BUDGET instead of hanging


def run_guest(guest: str, *, vcpus: int = 1, quantum: int = 100_000, mem_size: int = 128 * MIB,
              budget: int = LIMIT, **params: int) -> tuple[MicroVM, object]:
    vm = MicroVM(VmConfig(guest=guest, vcpus=vcpus, quantum=quantum, mem_size=mem_size, params=params))
    return vm, vm.run(budget)


def assert_powered_off(vm: MicroVM, result) -> None:
    assert result.reason is StopReason.POWER_OFF, (result, vm.console_output)


# --- reference models ---------------------------------------------------------------------------
def xorshift64(x: int) -> int:
    x ^= (x << 13) & M64
    x ^= x >> 7
    x ^= (x << 17) & M64
    return x


def compute_model(iterations: int) -> str:
    x, l, c = GOLDEN, 1, 0
    for _ in range(iterations):
        x = xorshift64(x)
        l = (l * 6364136223846793005 + 1442695040888963407) & M64
        c = (c + x * l) & M64
        c = l ^ (((c >> 23) | (c << 41)) & M64)
    return f"compute: {iterations} iterations, checksum {c:016x}\n"


MEMWALK_DEFAULTS = {p.name: p.default for p in guests.get("memwalk").params}


def memwalk_model(**given: int) -> tuple[list[str], dict[int, int]]:
    """(lines of the first `rounds` rounds, final region contents {offset: u64})."""
    p = {**MEMWALK_DEFAULTS, **given}
    pattern, size, writes = p["pattern"], p["region_mib"] * MIB, p["writes"]
    cursor, step = 0, (8 if pattern == 0 else p["stride"] % size)
    state = p["seed"] or GOLDEN
    choices = size // 8 if pattern == 2 else p["hot_pages"] * 512
    mem: dict[int, int] = {}
    lines = []
    for r in range(1, p["rounds"] + 1):
        offsets = []
        for _ in range(writes):
            if pattern < 2:
                offsets.append(cursor & ~7)
                cursor = (cursor + step) % size
            else:
                state = xorshift64(state)
                offsets.append(((state * choices) >> 64) * 8)
        key = (r * GOLDEN) & M64
        for i, off in enumerate(offsets):
            mem[off] = ((key ^ off) + i) & M64
        c = 0xCBF29CE484222325
        for off in offsets:
            c = ((c ^ mem[off]) * 0x100000001B3) & M64
            c ^= c >> 29
        lines.append(f"memwalk round {r}: {c:016x}\n")
    return lines, mem


# --- smp ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantum", [1_000, 7_919, 100_000])
@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_smp_counter_is_exact(vcpus: int, quantum: int) -> None:
    iterations = 3_000  # ~30k instructions per vCPU: many slices, so updates interleave
    vm, result = run_guest("smp", vcpus=vcpus, quantum=quantum, iterations=iterations)
    assert_powered_off(vm, result)
    assert vm.console_output == f"smp: {vcpus} vCPUs, counter = {2 * iterations * vcpus}\n".encode()


def test_smp_defaults_and_zero_iterations() -> None:
    spec = guests.get("smp")
    vm, result = run_guest("smp", vcpus=spec.default_vcpus, quantum=10_000)
    assert_powered_off(vm, result)
    total = 2 * spec.params[0].default * spec.default_vcpus
    assert vm.console_output == f"smp: {spec.default_vcpus} vCPUs, counter = {total}\n".encode()
    vm, result = run_guest("smp", vcpus=3, quantum=1_000, iterations=0)
    assert_powered_off(vm, result)
    assert vm.console_output == b"smp: 3 vCPUs, counter = 0\n"


# --- memwalk --------------------------------------------------------------------------------------
SMALL = dict(rounds=3, region_mib=1, writes=700, stride=4104, seed=12345, hot_pages=3)


def check_region(vm: MicroVM, region_mib: int, expected: dict[int, int]) -> None:
    words = np.frombuffer(vm.memory.read(REGION_BASE, region_mib * MIB), dtype="<u8")
    model = np.zeros(region_mib * MIB // 8, dtype=np.uint64)
    for off, value in expected.items():
        model[off // 8] = value
    assert np.array_equal(words, model)


@pytest.mark.parametrize("pattern", [0, 1, 2, 3])
def test_memwalk_patterns_output_and_memory(pattern: int) -> None:
    params = dict(SMALL, pattern=pattern)
    vm, result = run_guest("memwalk", **params)
    assert_powered_off(vm, result)
    lines, mem = memwalk_model(**params)
    assert vm.console_output.decode() == "".join(lines) + "memwalk done\n"
    check_region(vm, params["region_mib"], mem)
    if pattern == 3:
        assert max(mem) < params["hot_pages"] * 4096
    if pattern == 1:  # 700 writes * 4104 bytes per round wraps the 1 MiB region
        assert len(mem) == 3 * 700


@pytest.mark.parametrize(
    "params",
    [
        dict(pattern=0, rounds=3, region_mib=1, writes=50_000),  # sequential wraps the region
        dict(pattern=1, rounds=2, region_mib=1, writes=500, stride=1000),  # unaligned stride
        dict(pattern=1, rounds=2, region_mib=1, writes=500, stride=(5 << 20) + 24),  # stride > S
        dict(pattern=1, rounds=2, region_mib=1, writes=64, stride=0),  # one word
        dict(pattern=2, rounds=2, region_mib=3, writes=800, seed=0),  # seed 0 substitute
        dict(pattern=3, rounds=2, region_mib=1, writes=300, hot_pages=256),  # the whole region
        dict(pattern=2, rounds=2, region_mib=1, writes=0),
    ],
)
def test_memwalk_edge_cases(params: dict[str, int]) -> None:
    vm, result = run_guest("memwalk", **params)
    assert_powered_off(vm, result)
    lines, mem = memwalk_model(**params)
    assert vm.console_output.decode() == "".join(lines) + "memwalk done\n"
    check_region(vm, params["region_mib"], mem)


@pytest.mark.parametrize("pattern", [0, 1, 2, 3])
def test_memwalk_default_params(pattern: int) -> None:
    vm, result = run_guest("memwalk", pattern=pattern)
    assert_powered_off(vm, result)
    lines, _ = memwalk_model(pattern=pattern)
    assert vm.console_output.decode() == "".join(lines) + "memwalk done\n"


def test_memwalk_forever_with_rounds_zero() -> None:
    vm, result = run_guest("memwalk", budget=3_000_000, quantum=10_000, pattern=2, rounds=0, writes=1000)
    assert result.reason is StopReason.BUDGET
    out = vm.console_output.decode()
    assert "done" not in out
    printed = out.splitlines(keepends=True)
    complete = printed if out.endswith("\n") else printed[:-1]
    assert len(complete) >= 20  # ~20k instructions a round
    lines, _ = memwalk_model(pattern=2, rounds=len(complete) + 1, writes=1000)
    assert complete == lines[: len(complete)]
    assert out == "".join(lines)[: len(out)]


@pytest.mark.parametrize(
    ("params", "mem_size", "message"),
    [
        (dict(pattern=4), 128 * MIB, "memwalk: unknown pattern 4\n"),
        (dict(region_mib=0), 128 * MIB, "memwalk: region of 0 MiB does not fit in 128 MiB of RAM\n"),
        (dict(region_mib=111), 128 * MIB, "memwalk: region of 111 MiB does not fit in 128 MiB of RAM\n"),
        (dict(region_mib=8), 24 * MIB, "memwalk: region of 8 MiB does not fit in 24 MiB of RAM\n"),
        (dict(region_mib=1), 16 * MIB, "memwalk: region of 1 MiB does not fit in 16 MiB of RAM\n"),
        (dict(region_mib=2**50), 128 * MIB, f"memwalk: region of {2**50} MiB does not fit in 128 MiB of RAM\n"),
        (dict(pattern=3, hot_pages=0), 128 * MIB, "memwalk: hot_pages must be 1 to 2048\n"),
        (dict(pattern=3, region_mib=1, hot_pages=257), 128 * MIB, "memwalk: hot_pages must be 1 to 256\n"),
    ],
)
def test_memwalk_rejects_bad_parameters(params: dict[str, int], mem_size: int, message: str) -> None:
    vm, result = run_guest("memwalk", mem_size=mem_size, **params)
    assert_powered_off(vm, result)
    assert vm.console_output.decode() == message


def test_memwalk_largest_region_fits() -> None:
    # 128 MiB RAM: 16 MiB below the region, 2 MiB DTB window at the top -> 110 MiB
    params = dict(pattern=1, rounds=1, region_mib=110, writes=110 * 256, stride=4096)
    vm, result = run_guest("memwalk", **params)
    assert_powered_off(vm, result)
    lines, mem = memwalk_model(**params)
    assert vm.console_output.decode() == "".join(lines) + "memwalk done\n"
    assert max(mem) == 110 * MIB - 4096
    assert vm.memory.read_u64(REGION_BASE + max(mem)) == mem[max(mem)]


# --- compute --------------------------------------------------------------------------------------
@pytest.mark.parametrize("iterations", [0, 1, 2, 1_000, 150_001])
def test_compute_checksum(iterations: int) -> None:
    vm, result = run_guest("compute", iterations=iterations)
    assert_powered_off(vm, result)
    assert vm.console_output.decode() == compute_model(iterations)


def test_compute_loop_is_eight_instructions_per_iteration() -> None:
    # quantum 1: the clock counts every instruction to power-off
    # (same number of decimal digits, so printing the count costs the same)
    a, ra = run_guest("compute", quantum=1, iterations=100)
    b, rb = run_guest("compute", quantum=1, iterations=300)
    assert_powered_off(a, ra)
    assert_powered_off(b, rb)
    assert rb.instructions - ra.instructions == 8 * 200


# --- determinism ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("guest", "vcpus", "quantum", "params"),
    [
        ("hello", 2, 100_000, {}),
        ("smp", 4, 7_919, {"iterations": 2_000}),
        ("memwalk", 1, 100_000, dict(SMALL, pattern=2)),
        ("memwalk", 1, 100_000, dict(SMALL, pattern=0)),
        ("compute", 1, 100_000, {"iterations": 10_000}),
    ],
)
def test_runs_are_deterministic(guest: str, vcpus: int, quantum: int, params: dict[str, int]) -> None:
    runs = [run_guest(guest, vcpus=vcpus, quantum=quantum, **params) for _ in range(2)]
    (a, ra), (b, rb) = runs
    assert_powered_off(a, ra)
    assert ra == rb
    assert a.console_output == b.console_output
    assert a.state_digest() == b.state_digest()


def test_smp_interleaving_changes_state_but_not_result() -> None:
    a, _ = run_guest("smp", vcpus=4, quantum=1_000, iterations=2_000)
    b, _ = run_guest("smp", vcpus=4, quantum=7_919, iterations=2_000)
    assert a.console_output == b.console_output
    assert a.state_digest() != b.state_digest()  # different clocks and schedules


# --- committed binaries ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(guests.CATALOG))
def test_committed_binary_matches_rebuild(name: str) -> None:
    from guests import build

    if build.is_c_guest(name):
        if shutil.which(build.CROSS_PREFIX + "gcc") is None:
            pytest.skip("aarch64-linux-gnu-gcc is not installed (Debian: gcc-aarch64-linux-gnu; CI installs it)")
    else:
        pytest.importorskip("keystone")

    assert (build.BIN / f"{name}.bin").read_bytes() == build.assemble(name)
    assert guests.get(name).binary() == build.assemble(name)


def test_build_check_passes() -> None:
    pytest.importorskip("keystone")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (Debian: gcc-aarch64-linux-gnu; CI installs it)")
    from guests import build

    assert build.main(["--check"]) == 0
