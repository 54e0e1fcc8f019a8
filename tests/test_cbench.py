"""The C guest `cbench` (guests/src/cbench.c): its output equals an independent Python model of
the arithmetic its source specifies, and it runs deterministically across quanta."""
from __future__ import annotations

import pytest

from vmm import MicroVM, StopReason, VmConfig

M32 = (1 << 32) - 1
LIST_NODES, MATRIX_N = 128, 12
ALPHABET = "0123456789abcdefx ,.-+Zz"


def _lcg(state: int) -> tuple[int, int]:
    state = (state * 1664525 + 1013904223) & M32
    return state, state >> 8


def _crc16(crc: int, value: int) -> int:
    for byte in range(4):
        crc ^= ((value >> (8 * byte)) & 0xFF) << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _list(seed: int) -> int:
    values = []
    for _ in range(LIST_NODES):
        seed, r = _lcg(seed)
        values.append((r & 0xFFFF) - 0x8000)
    order = list(range(LIST_NODES))  # reversing the pushed list gives index order again
    found = 0
    for probe in range(16):
        want = values[(probe * 37) % LIST_NODES]
        found += next(i for i in order if values[i] == want)
    # insertion sort taking nodes in index order, inserting before the first not-smaller one
    ordered: list[int] = []
    for i in order:
        at = 0
        while at < len(ordered) and values[ordered[at]] < values[i]:
            at += 1
        ordered.insert(at, i)
    acc = found & M32
    for i in ordered:
        acc = (acc * 31 + values[i]) & M32
    return acc


def _matrix(seed: int) -> int:
    a = [[0] * MATRIX_N for _ in range(MATRIX_N)]
    b = [[0] * MATRIX_N for _ in range(MATRIX_N)]
    for i in range(MATRIX_N):
        for j in range(MATRIX_N):
            seed, r = _lcg(seed)
            a[i][j] = (r & 0xFF) - 128
            seed, r = _lcg(seed)
            b[i][j] = (r & 0xFF) - 128
    c = [[sum(a[i][k] * b[k][j] for k in range(MATRIX_N)) + 7 for j in range(MATRIX_N)] for i in range(MATRIX_N)]
    sig = 0
    for j in range(MATRIX_N):
        col = sum(c[i][j] for i in range(MATRIX_N))
        sig = ((sig * 131) & M32) ^ (col & M32)
    return sig


def _state(seed: int) -> int:
    chars = []
    for _ in range(255):
        seed, r = _lcg(seed)
        chars.append(ALPHABET[r % len(ALPHABET)])
    counts = [0] * 6  # START, INT, HEX0, HEX, WORD, JUNK
    state = 0
    for c in "".join(chars) + "\0":
        if c in " ,\0":
            counts[state] += 1
            state = 0
            continue
        digit, hexl, letter = c.isdigit(), c in "abcdef", ("a" <= c <= "z") or c == "Z"
        if state == 0:
            state = 2 if c == "0" else 1 if digit else 4 if letter else 5
        elif state == 1:
            state = 1 if digit else 5
        elif state == 2:
            state = 3 if c == "x" else 1 if digit else 5
        elif state == 3:
            state = 3 if digit or hexl else 5
        elif state == 4:
            state = 4 if letter else 5
    sig = 0
    for n in counts:
        sig = (sig * 257 + n) & M32
    return sig


def expected_output(iterations: int) -> bytes:
    crc = 0xFFFF
    for it in range(iterations):
        seed = (it * 2654435761 + 1) & M32
        crc = _crc16(crc, _list(seed))
        crc = _crc16(crc, _matrix(seed ^ 0x5A5A5A5A))
        crc = _crc16(crc, _state((seed + 99) & M32))
    return f"cbench: {iterations} iterations, crc {crc:04x}\n".encode()


@pytest.mark.parametrize("iterations", [1, 3, 40])
def test_cbench_output_matches_the_model(iterations: int) -> None:
    vm = MicroVM(VmConfig(guest="cbench", params={"iterations": iterations}))
    result = vm.run(200_000_000)
    assert result.reason is StopReason.POWER_OFF, result
    assert vm.console_output == expected_output(iterations)


def test_cbench_is_deterministic_across_quanta() -> None:
    runs = []
    for quantum in (997, 100_000):
        vm = MicroVM(VmConfig(guest="cbench", quantum=quantum, params={"iterations": 5}))
        assert vm.run(50_000_000).reason is StopReason.POWER_OFF
        runs.append((vm.console_output, vm.clock))
    assert runs[0][0] == runs[1][0] == expected_output(5)
