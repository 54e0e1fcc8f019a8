"""GuestRunner (#18): a pause lands on a round end, and what the guest sees there is what a VM
run straight to that point sees; host inputs land between rounds. Which round end a pause
lands on depends on host timing (an input, like the moment a Firecracker pause arrives); the
state at that round end does not."""
from __future__ import annotations

import threading
import time

import pytest

from vmm.api.runner import GuestRunner, GuestStoppedError
from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason

MIB = 1 << 20
CONFIG = VmConfig(guest="memwalk", vcpus=1, mem_size=32 * MIB, quantum=20_000, params={"rounds": 0, "region_mib": 4, "pattern": 2})


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.05])
def test_a_pause_lands_on_a_round_end_with_the_state_of_a_straight_run(delay: float) -> None:
    vm = MicroVM(CONFIG)
    runner = GuestRunner(vm)
    try:
        runner.resume()
        time.sleep(delay)
        runner.pause()
        first = vm.clock
        runner.resume()
        time.sleep(delay)
        runner.pause()
        assert not runner.running
        clock = vm.clock
        assert first % CONFIG.quantum == 0 and clock % CONFIG.quantum == 0
        assert clock == runner.call(lambda v: v.clock)  # paused: nothing runs between calls
    finally:
        runner.close()
    reference = MicroVM(CONFIG)
    reference.run(clock)
    assert reference.state_digest() == vm.state_digest()
    assert reference.console_output == vm.console_output


def test_host_inputs_land_between_rounds_while_running() -> None:
    vm = MicroVM(CONFIG)
    runner = GuestRunner(vm)
    try:
        runner.resume()
        time.sleep(0.02)

        def put(v: MicroVM) -> int:
            v.mmds.put({"at": "round end"})
            return v.clock

        at = runner.call(put)
        time.sleep(0.02)
        runner.pause()
        end = vm.clock
    finally:
        runner.close()
    assert at % CONFIG.quantum == 0 and end >= at
    reference = MicroVM(CONFIG)
    reference.run(at)
    reference.mmds.put({"at": "round end"})
    reference.run(end - at)
    assert reference.state_digest() == vm.state_digest()


def test_a_stopped_guest_reports_once_and_refuses_more_work() -> None:
    stopped: list[RunResult] = []
    done = threading.Event()
    vm = MicroVM(VmConfig(guest="hello", mem_size=16 * MIB))
    runner = GuestRunner(vm, on_stop=lambda r: (stopped.append(r), done.set()))
    runner.resume()
    assert done.wait(60)
    assert [r.reason for r in stopped] == [StopReason.POWER_OFF]
    assert runner.result is not None and runner.running is False
    with pytest.raises(GuestStoppedError, match="power_off"):
        runner.call(lambda v: v.clock)
    with pytest.raises(GuestStoppedError):
        runner.resume()
    runner.pause()  # harmless
    runner.close()
    assert b"ello" in vm.console_output


def test_an_exception_in_a_call_reaches_the_caller_and_the_runner_goes_on() -> None:
    runner = GuestRunner(MicroVM(CONFIG))
    try:
        with pytest.raises(ZeroDivisionError):
            runner.call(lambda v: 1 // 0)
        assert runner.call(lambda v: v.clock) == 0
    finally:
        runner.close()
