"""Built-in interrupt-driven guests: ticker (virtual timer), ipi (SGI ring) and echo (UART RX).

Expected console output follows the format each guest's header comment (guests/src/<name>.S)
specifies, computed here independently.
"""
from __future__ import annotations

import re

import pytest

import guests
from vmm import MicroVM, StopReason, VmConfig
from vmm.cli import main as cli_main

LIMIT = 200_000_000  # instruction budget: a broken guest stops with BUDGET instead of hanging


def make_vm(guest: str, *, vcpus: int = 1, quantum: int = 100_000, **params: int) -> MicroVM:
    return MicroVM(VmConfig(guest=guest, vcpus=vcpus, quantum=quantum, params=params))


def run_guest(guest: str, *, budget: int = LIMIT, **kw: int) -> tuple[MicroVM, object]:
    vm = make_vm(guest, **kw)
    return vm, vm.run(budget)


def assert_powered_off(vm: MicroVM, result) -> None:
    assert result.reason is StopReason.POWER_OFF, (result, vm.console_output)


def count_slices(vm: MicroVM) -> list[int]:
    """Count every slice the scheduler runs on any vCPU (the returned one-element list)."""
    counter = [0]
    for v in vm.vcpus:
        original = v.run_slice

        def counting(count: int, start: int, _orig=original) -> object:
            counter[0] += 1
            return _orig(count, start)

        v.run_slice = counting  # type: ignore[method-assign]
    return counter


# --- ticker ---------------------------------------------------------------------------------------
TICKER = guests.get("ticker")
TICKER_DEFAULTS = {p.name: p.default for p in TICKER.params}
HEADER = re.compile(r"ticker: period (\d+) ns, (\d+) ticks, start (\d+)\n")
# Instructions from taking the timer IRQ to the handler's CNTVCT_EL0 read: the vector's branch,
# 14 in rt_irq_entry up to its `blr` (guests/src/runtime.S), 5 in tk_irq up to the MRS.
TICKER_IRQ_LATENCY = 1 + 14 + 5


def ticker_start(out: str, period: int, ticks: int) -> int:
    """The guest's printed start value (checking the rest of the header line)."""
    m = HEADER.match(out)
    assert m, out
    assert (int(m[1]), int(m[2])) == (period, ticks)
    return int(m[3])


def ticker_model(period: int, ticks: int, start: int) -> str:
    """Each tick's IRQ is taken at exactly its deadline, start + n * period (the guest idles
    in WFI, so nothing delays it), and the handler reads the counter TICKER_IRQ_LATENCY later."""
    lines = [f"ticker: period {period} ns, {ticks} ticks, start {start}\n"]
    lines += [f"tick {n} at {start + n * period + TICKER_IRQ_LATENCY}\n" for n in range(1, ticks + 1)]
    return "".join(lines) + "ticker done\n"


def test_ticker_defaults_fire_exactly_on_time_and_skip_idle_time() -> None:
    assert TICKER_DEFAULTS == {"period_ns": 1_000_000, "ticks": 5}
    quantum = 10_000
    vm = make_vm("ticker", quantum=quantum)
    slices = count_slices(vm)
    result = vm.run(LIMIT)
    assert_powered_off(vm, result)
    period, ticks = TICKER_DEFAULTS["period_ns"], TICKER_DEFAULTS["ticks"]
    out = vm.console_output.decode()
    start = ticker_start(out, period, ticks)
    assert out == ticker_model(period, ticks, start)
    # The virtual clock covers all ticks; power-off comes in the slice of the last tick.
    last = start + ticks * period
    assert last <= vm.clock <= last + quantum
    # ~500 quanta of virtual time, but the idle gaps were jumped: about one slice per tick.
    assert vm.clock // quantum >= 500
    assert slices[0] <= 2 * (ticks + 1)


@pytest.mark.parametrize(
    ("period", "ticks", "quantum"),
    [
        (12_345, 7, 10_000),  # deadlines off the quantum grid
        (100_000, 3, 100_000),  # deadlines on the grid
        (250_000, 4, 1_000),
        (3_000_000_000, 2, 100_000),  # > 2**31 ns: beyond what CNTV_TVAL could express
    ],
)
def test_ticker_periods(period: int, ticks: int, quantum: int) -> None:
    vm = make_vm("ticker", quantum=quantum, period_ns=period, ticks=ticks)
    slices = count_slices(vm)
    result = vm.run(ticks * period + 10 * quantum)
    assert_powered_off(vm, result)
    out = vm.console_output.decode()
    assert out == ticker_model(period, ticks, ticker_start(out, period, ticks))
    assert slices[0] <= 2 * (ticks + 1)


def test_ticker_zero_ticks_never_arms_the_timer() -> None:
    vm, result = run_guest("ticker", ticks=0)
    assert_powered_off(vm, result)
    out = vm.console_output.decode()
    assert out == ticker_model(1_000_000, 0, ticker_start(out, 1_000_000, 0))
    assert vm.clock < 1_000_000
    assert vm.interrupts.timers[0].save_state().virt.ctl == 0


def test_ticker_timer_is_disabled_after_the_last_tick() -> None:
    vm, result = run_guest("ticker", ticks=2, period_ns=200_000)
    assert_powered_off(vm, result)
    assert vm.interrupts.timers[0].save_state().virt.ctl == 0


def test_ticker_period_shorter_than_the_quantum_is_exact() -> None:
    # Every deadline is armed (at boot or in the handler) during the round it falls in.
    vm, result = run_guest("ticker", quantum=100_000, period_ns=50_000, ticks=3)
    assert_powered_off(vm, result)
    out = vm.console_output.decode()
    assert out == ticker_model(50_000, 3, ticker_start(out, 50_000, 3))


@pytest.mark.parametrize(("period", "ticks"), [(50_000, 3), (6_000, 5), (12_345, 4)])
def test_ticker_output_does_not_depend_on_the_quantum(period: int, ticks: int) -> None:
    outputs = set()
    for quantum in (1_000, 7_919, 100_000, 10_000_000):  # the last: one round holds every tick
        vm, result = run_guest("ticker", quantum=quantum, period_ns=period, ticks=ticks)
        assert_powered_off(vm, result)
        outputs.add(vm.console_output.decode())
    assert len(outputs) == 1
    out = outputs.pop()
    assert out == ticker_model(period, ticks, ticker_start(out, period, ticks))


def test_ticker_with_deadlines_inside_rounds_continues_identically_after_a_snapshot(tmp_path) -> None:
    from vmm.machine import MicroVM

    quantum, params = 100_000, {"period_ns": 30_000, "ticks": 9}
    reference, result = run_guest("ticker", quantum=quantum, **params)
    assert_powered_off(reference, result)
    for pause in (1, 2):  # rounds [0, 100k) and [100k, 200k) each hold several deadlines
        vm = make_vm("ticker", quantum=quantum, **params)
        assert vm.run(pause * quantum).reason is StopReason.BUDGET
        vm.save_snapshot(tmp_path / f"s{pause}", "full")
        restored = MicroVM.load_snapshot(tmp_path / f"s{pause}", "copy")
        assert_powered_off(restored, restored.run(LIMIT))
        assert vm.console_output + restored.console_output == reference.console_output
        assert restored.state_digest() == reference.state_digest()


# --- ipi ------------------------------------------------------------------------------------------
IPI = guests.get("ipi")


def ipi_model(vcpus: int, rounds: int) -> str:
    visits = [i % vcpus for i in range(rounds * vcpus)]  # ring 0 -> 1 -> ... -> n-1 -> 0
    return f"ipi: {rounds} rounds, visits" + "".join(f" {v}" for v in visits) + "\n"


@pytest.mark.parametrize("quantum", [1_000, 7_919, 100_000])
@pytest.mark.parametrize("vcpus", [1, 2, 3, 4])
def test_ipi_ring_order(vcpus: int, quantum: int) -> None:
    vm, result = run_guest("ipi", vcpus=vcpus, quantum=quantum, rounds=5)
    assert_powered_off(vm, result)
    assert vm.console_output.decode() == ipi_model(vcpus, 5)


def test_ipi_defaults() -> None:
    assert IPI.default_vcpus == 4
    assert [(p.name, p.default) for p in IPI.params] == [("rounds", 3)]
    vm, result = run_guest("ipi", vcpus=IPI.default_vcpus)
    assert_powered_off(vm, result)
    assert vm.console_output == b"ipi: 3 rounds, visits 0 1 2 3 0 1 2 3 0 1 2 3\n"


def test_ipi_targets_above_aff0_15_use_the_range_selector() -> None:
    # vCPUs 16.. are reached with ICC_SGI1R_EL1.RS = 1
    vm, result = run_guest("ipi", vcpus=19, quantum=5_000, rounds=2)
    assert_powered_off(vm, result)
    assert vm.console_output.decode() == ipi_model(19, 2)


@pytest.mark.parametrize("vcpus", [1, 3])
def test_ipi_zero_rounds(vcpus: int) -> None:
    vm, result = run_guest("ipi", vcpus=vcpus, rounds=0)
    assert_powered_off(vm, result)
    assert vm.console_output == b"ipi: 0 rounds, visits\n"


def test_ipi_rejects_too_many_rounds() -> None:
    vm, result = run_guest("ipi", vcpus=2, rounds=100_001)
    assert_powered_off(vm, result)
    assert vm.console_output == b"ipi: rounds must be at most 100000\n"


# --- echo -----------------------------------------------------------------------------------------
ECHO = guests.get("echo")


def echo_model(data: bytes, quit: int = ord("q")) -> bytes:
    out = bytearray()
    for b in data:
        out.append(b - 32 if ord("a") <= b <= ord("z") else b)
        if b == quit:
            break
    return bytes(out)


def test_echo_input_queued_before_boot() -> None:
    assert [(p.name, p.default) for p in ECHO.params] == [("quit", ord("q"))]
    vm = make_vm("echo")
    vm.uart.queue_input(b"hello q")
    result = vm.run(LIMIT)
    assert_powered_off(vm, result)
    assert vm.console_output == b"HELLO Q"


def test_echo_stops_at_the_quit_byte_and_leaves_the_rest_unread() -> None:
    data = b"Hello, World! 0-9 `az{ @[ \x00\xff\xe1q after"
    vm = make_vm("echo")
    vm.uart.queue_input(data)
    result = vm.run(LIMIT)
    assert_powered_off(vm, result)
    assert vm.console_output == echo_model(data) == b"HELLO, WORLD! 0-9 `AZ{ @[ \x00\xff\xe1Q"
    uart = vm.uart.save_state()
    assert uart.rx_fifo + uart.host_input == b" after"


def test_echo_input_between_runs() -> None:
    vm = make_vm("echo", quantum=5_000)
    result = vm.run(LIMIT)
    assert result.reason is StopReason.DEADLOCK  # waiting for input, nothing pending
    assert vm.console_output == b""
    vm.uart.queue_input(b"abc")
    result = vm.run(LIMIT)
    assert result.reason is StopReason.DEADLOCK  # echoed, no quit byte yet
    assert vm.console_output == b"ABC"
    vm.uart.queue_input(b" xyz q!")
    result = vm.run(LIMIT)
    assert_powered_off(vm, result)
    assert vm.console_output == b"ABC XYZ Q"


def test_echo_quit_parameter() -> None:
    vm = make_vm("echo", quit=ord("!"))
    vm.uart.queue_input(b"quiet! no")
    assert_powered_off(vm, vm.run(LIMIT))
    assert vm.console_output == b"QUIET!"
    vm = make_vm("echo", quit=256)  # never matches
    data = bytes(range(256))
    vm.uart.queue_input(data)
    result = vm.run(LIMIT)
    assert result.reason is StopReason.DEADLOCK
    assert vm.console_output == echo_model(data, quit=256)


# --- determinism and CLI --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("guest", "vcpus", "quantum", "params"),
    [
        ("ticker", 1, 10_000, {"period_ns": 123_457, "ticks": 4}),
        ("ticker", 1, 100_000, {}),
        ("ipi", 4, 7_919, {"rounds": 4}),
        ("ipi", 3, 100_000, {}),
    ],
)
def test_runs_are_deterministic(guest: str, vcpus: int, quantum: int, params: dict[str, int]) -> None:
    (a, ra), (b, rb) = (run_guest(guest, vcpus=vcpus, quantum=quantum, **params) for _ in range(2))
    assert_powered_off(a, ra)
    assert ra == rb
    assert a.console_output == b.console_output
    assert a.state_digest() == b.state_digest()


def test_echo_is_deterministic() -> None:
    digests = []
    for _ in range(2):
        vm = make_vm("echo", quantum=5_000)
        vm.run(LIMIT)
        vm.uart.queue_input(b"same input q")
        assert_powered_off(vm, vm.run(LIMIT))
        digests.append((vm.console_output, vm.state_digest()))
    assert digests[0] == digests[1]


def test_cli_runs_ticker(capsys) -> None:
    assert cli_main(["run", "ticker", "-q"]) == 0
    captured = capsys.readouterr()
    start = ticker_start(captured.out, 1_000_000, 5)
    assert captured.out == ticker_model(1_000_000, 5, start)
    assert captured.err == ""


def test_cli_runs_ipi_with_its_default_vcpus(capsys) -> None:
    assert cli_main(["run", "ipi", "-q", "--param", "rounds=2"]) == 0
    assert capsys.readouterr().out == ipi_model(4, 2)


def test_cli_lists_the_new_guests(capsys) -> None:
    assert cli_main(["guests", "-v"]) == 0
    out = capsys.readouterr().out
    for name, param in (("ticker", "period_ns=1000000"), ("ipi", "rounds=3"), ("echo", "quit=113")):
        assert re.search(rf"^{name}\s", out, re.M)
        assert f"--param {param}" in out
