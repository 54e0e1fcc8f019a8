"""The signal class: SIGINT and SIGTERM at random moments while a guest runs or is saved.

In process (`run_inprocess`): a timer thread raises the signal during `vm.run()` of a guest that
never stops by itself; `run()` must raise KeyboardInterrupt with the VM paused at a round end
(a twin run straight to that virtual time has the same state digest, and both continue
identically), nothing printed on stderr by ctypes ("Exception ignored"), not a fault or a
power-off.
Out of process (`run_cli`): a real signal to `microvm run ... --snapshot-at ...`; the command
must exit 130/143 with one line and no traceback, and leave only complete snapshots that were
asked for (every pair loads, no temporary files).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tools.faults.outcome import Stopwatch, Trial, Verdict, describe_exception, failed
from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.signals import raise_terminated

ROOT = Path(__file__).resolve().parents[2]
TRIAL_SECONDS = 60.0

# Guests that run until stopped, each entering Python callbacks often (timer MSRs and IRQs,
# exclusives on several vCPUs, Python TLB fills with the MMU guest, dirty tracking).
FOREVER = (
    VmConfig(guest="ticker", quantum=10_000, params={"period_ns": 2_000, "ticks": 10**9}),
    VmConfig(guest="smp", vcpus=3, quantum=7_000, params={"iterations": 10**9}),
    VmConfig(guest="memwalk", quantum=20_000, params={"rounds": 0, "pattern": 2}, track_dirty_pages=True),
    VmConfig(guest="ipi", vcpus=4, quantum=5_000, params={"rounds": 100_000}),
)


@dataclass
class SignalCase:
    config: VmConfig
    signum: int
    delay: float  # seconds after run() starts

    @property
    def name(self) -> str:
        return f"{self.config.guest}/{signal.Signals(self.signum).name}/{self.delay:.2f}s"


def draw(rng: random.Random) -> SignalCase:
    return SignalCase(rng.choice(FOREVER), rng.choice((signal.SIGINT, signal.SIGTERM)), rng.uniform(0.02, 0.5))


class _Stderr:
    """Captures fd 2 (where ctypes reports exceptions it ignored) for the duration."""

    def __enter__(self) -> _Stderr:
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def run_inprocess(case: SignalCase) -> Trial:
    clock = Stopwatch()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        vm = MicroVM(case.config)
        timer = threading.Timer(case.delay, signal.raise_signal, (case.signum,))
        with _Stderr() as err:
            timer.start()
            try:
                result = vm.run(2_000_000_000)
                interrupted = None
            except KeyboardInterrupt as exc:
                interrupted = exc
            finally:
                timer.join()
    except BaseException as exc:  # noqa: BLE001
        return failed(case.name, Verdict.WRONG_EXCEPTION, describe_exception(exc), seconds=clock.seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if "Exception ignored" in err.text or "Traceback" in err.text:
        return failed(case.name, Verdict.WRONG_EXCEPTION, err.text.strip().splitlines()[-1], seconds=clock.seconds)
    if interrupted is None:
        return failed(case.name, Verdict.VIOLATION, f"run() returned {result.reason.value} instead of raising", seconds=clock.seconds)
    if getattr(interrupted, "signum", signal.SIGINT) != case.signum:
        return failed(case.name, Verdict.VIOLATION, f"{type(interrupted).__name__} for {case.signum}", seconds=clock.seconds)
    if vm.stopped is not None or vm.fault is not None:
        return failed(case.name, Verdict.VIOLATION, f"the VM stopped ({vm.stopped})", seconds=clock.seconds)
    twin = MicroVM(case.config)
    twin.run(vm.clock)
    if twin.clock != vm.clock or twin.state_digest() != vm.state_digest():
        return failed(case.name, Verdict.LOST_DATA, f"paused at {vm.clock}, not a pause point of an uninterrupted run", seconds=clock.seconds)
    step = 3 * case.config.quantum
    vm.run(step)
    twin.run(step)
    if vm.state_digest() != twin.state_digest() or vm.console_output != twin.console_output:
        return failed(case.name, Verdict.LOST_DATA, "the interrupted VM did not continue like its twin", seconds=clock.seconds)
    return Trial(case.name, Verdict.SURVIVED, "", clock.seconds, (f"inprocess:{signal.Signals(case.signum).name}",))


def run_cli(case: SignalCase, directory: Path) -> Trial:
    """A real signal to a `microvm run` that snapshots every few rounds."""
    clock = Stopwatch()
    cfg = case.config
    directory.mkdir(parents=True, exist_ok=True)
    points = ",".join(str(cfg.quantum * k) for k in range(1, 400, 7))
    argv = ["run", cfg.guest, "--vcpus", str(cfg.vcpus), "--quantum", str(cfg.quantum), "-q", "--snapshot-at", points, "--snapshot-dir", str(directory)]
    argv += [f"--param={k}={v}" for k, v in cfg.params.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "vmm", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # Past the interpreter's start-up (a signal then is Python's own business): the first
    # snapshot is written at once, then the signal lands at a random moment of the run and saves.
    deadline = time.monotonic() + TRIAL_SECONDS
    while not any(n.endswith(".snap") for n in os.listdir(directory)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(case.delay)
    proc.send_signal(case.signum)
    try:
        _, err = proc.communicate(timeout=TRIAL_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return failed(case.name, Verdict.HANG, "no exit after the signal", seconds=clock.seconds)
    name = f"cli:{case.name}"
    if "Traceback" in err or "Exception ignored" in err:
        return failed(name, Verdict.WRONG_EXCEPTION, err.strip().splitlines()[-1], seconds=clock.seconds)
    if proc.returncode != 128 + case.signum or err.count("\n") != 1:
        return failed(name, Verdict.VIOLATION, f"exit {proc.returncode}: {err[:200]!r}", seconds=clock.seconds)
    names = sorted(os.listdir(directory))
    if any(n.startswith(".") for n in names):
        return failed(name, Verdict.VIOLATION, f"temporary files left: {names}", seconds=clock.seconds)
    for snap in (n for n in names if n.endswith(".snap")):
        try:
            MicroVM.load_snapshot(directory / snap)
        except Exception as exc:  # noqa: BLE001
            return failed(name, Verdict.LOST_DATA, f"{snap}: {describe_exception(exc)}", seconds=clock.seconds)
    return Trial(name, Verdict.SURVIVED, "", clock.seconds, (f"cli:{signal.Signals(case.signum).name}",))
