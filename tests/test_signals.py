"""Ctrl-C and SIGTERM while a guest runs (issue 15, class "Ctrl-C becomes a fake guest result").

In process: a timer thread raises the signal while `run()` executes; the VM must pause at a
round end, `run()` raise KeyboardInterrupt, nothing be printed by ctypes ("Exception ignored"),
and the VM continue to exactly the state of a VM that was never interrupted.
Out of process: real signals to `microvm run`; exit 130/143, one line, no traceback, and no
snapshot file nobody asked for.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.scheduler import StopReason
from vmm.signals import DeferredSignals

# Guests that run "forever" and enter Python callbacks all the time (timer MSRs and IRQs; an
# SMP counter with exclusives; the MMU guest's fills go through Python).
FOREVER = [
    VmConfig(guest="ticker", quantum=10_000, params={"period_ns": 2_000, "ticks": 10**9}),
    VmConfig(guest="smp", vcpus=3, quantum=7_000, params={"iterations": 10**9}),
    VmConfig(guest="memwalk", quantum=20_000, params={"rounds": 0}, track_dirty_pages=True),
]

ROOT = Path(__file__).resolve().parents[1]


def _raise_after(seconds: float, signum: int) -> threading.Timer:
    t = threading.Timer(seconds, signal.raise_signal, (signum,))
    t.start()
    return t


@pytest.mark.parametrize("config", FOREVER, ids=lambda c: c.guest)
def test_sigint_pauses_at_a_round_end_and_the_vm_runs_on_identically(config: VmConfig, capfd) -> None:
    vm = MicroVM(config)
    vm.run(3 * config.quantum)  # past boot
    timer = _raise_after(0.3, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        vm.run()  # no budget: only the signal can end it
    timer.join()
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err
    assert vm.stopped is None and vm.fault is None  # not a guest fault, not a power-off
    paused = vm.clock
    assert paused > 3 * config.quantum
    # A round end: a VM run straight to that virtual time stops exactly there (a budget ends at
    # the first round end at or after it), in the same state; and both continue identically.
    twin = MicroVM(config)
    twin.run(paused)
    assert twin.clock == paused and twin.state_digest() == vm.state_digest()
    vm.run(5 * config.quantum)
    twin.run(5 * config.quantum)
    assert vm.state_digest() == twin.state_digest() and vm.console_output == twin.console_output


def test_sigint_pause_can_be_snapshotted_and_restored(tmp_path: Path) -> None:
    config = FOREVER[0]
    vm = MicroVM(config)
    timer = _raise_after(0.2, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        vm.run()
    timer.join()
    vm.save_snapshot(tmp_path / "s", "full")
    restored = MicroVM.load_snapshot(tmp_path / "s", "copy")
    assert restored.state_digest() == vm.state_digest()
    vm.run(50_000)
    restored.run(50_000)
    assert restored.state_digest() == vm.state_digest()


def test_a_handler_that_returns_makes_run_return_interrupted() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
    try:
        vm = MicroVM(FOREVER[0])
        timer = _raise_after(0.2, signal.SIGINT)
        result = vm.run()
        timer.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert result.reason is StopReason.INTERRUPTED and not result.reason.final
    assert seen == [signal.SIGINT]
    twin = MicroVM(FOREVER[0])
    twin.run(vm.clock)
    assert twin.clock == vm.clock and twin.state_digest() == vm.state_digest()
    assert vm.run(10_000).reason is StopReason.BUDGET


def test_deferred_signals_restore_handlers_and_deliver_once() -> None:
    calls: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        with DeferredSignals() as d:
            assert not d.pending
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert d.pending and calls == []
        assert calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None and not isinstance(signal.getsignal(signal.SIGTERM), int)
        signal.raise_signal(signal.SIGTERM)  # the original handler is back
        assert calls == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def _cli(args: list[str], **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "vmm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)  # type: ignore[call-overload]


def _wait_for_output(proc: subprocess.Popen[str], seconds: float = 60.0) -> None:
    """Wait until the guest has printed something (so the signal lands during execution)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    line = proc.stdout.readline()
    assert line and time.monotonic() < deadline, "the guest printed nothing"


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_exits_cleanly_and_writes_no_unrequested_snapshot(tmp_path: Path, signum: int, status: int) -> None:
    d = tmp_path / "snaps"
    proc = _cli(["run", "ticker", "--param", "period_ns=2000", "--param", "ticks=1000000000", "--quantum", "10000", "--snapshot-at", "20000", "--snapshot-dir", str(d), "-q"])
    _wait_for_output(proc)
    time.sleep(0.3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.count("\n") == 1 and "Traceback" not in err and "Exception ignored" not in err
    assert "interrupted" in err and signal.Signals(signum).name in err
    assert sorted(os.listdir(d)) == ["snap-20000.mem", "snap-20000.snap"]  # the requested one only


def test_cli_sigint_before_any_snapshot_point_leaves_no_snapshot(tmp_path: Path) -> None:
    d = tmp_path / "snaps"
    proc = _cli(["run", "ticker", "--param", "period_ns=2000", "--param", "ticks=1000000000", "--snapshot-at", "10000000000", "--snapshot-dir", str(d), "-q"])
    _wait_for_output(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert not d.exists() or os.listdir(d) == []


def _signal_at_first_write(monkeypatch, signum: int) -> list[int]:
    """Make the first memory-file write of the next save raise `signum` in this process (a
    Ctrl-C that arrives while a save is in progress)."""
    import snapshot.memfile as memfile

    real = memfile.pwrite_all
    calls: list[int] = []

    def pwrite_all(fd: int, data: object, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 1:
            signal.raise_signal(signum)
        real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(memfile, "pwrite_all", pwrite_all)
    return calls


def test_cli_ctrl_c_during_a_save_lets_the_save_complete(tmp_path: Path, monkeypatch, capsys) -> None:
    from vmm.cli import main

    d = tmp_path / "snaps"
    calls = _signal_at_first_write(monkeypatch, signal.SIGINT)
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "10000000000", "--snapshot-at", "100000", "--snapshot-dir", str(d)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert calls and err.endswith("microvm: interrupted by SIGINT\n") and "Traceback" not in err
    assert sorted(os.listdir(d)) == ["snap-100000.mem", "snap-100000.snap"]  # complete, no temp files
    vm = MicroVM.load_snapshot(d / "snap-100000", "copy")  # and it verifies
    twin = MicroVM(VmConfig(guest="memwalk", params={"rounds": 0}, track_dirty_pages=True))
    twin.run(100_000)
    assert vm.state_digest() == twin.state_digest()


def test_api_ctrl_c_during_a_save_leaves_the_old_snapshot(tmp_path: Path, monkeypatch) -> None:
    vm = MicroVM(VmConfig(guest="memwalk", params={"rounds": 0}))
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "a")
    before = vm.state_digest()
    vm.run(100_000)
    _signal_at_first_write(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        vm.save_snapshot(tmp_path / "a")  # no deferral here: the save is abandoned
    assert sorted(os.listdir(tmp_path)) == ["a.mem", "a.snap"]
    assert MicroVM.load_snapshot(tmp_path / "a").state_digest() == before
