"""`api`: the API server's costs (#18), side by side in one process run.

Figures, on the 4-vCPU `smp` guest (quantum 100,000) unless said otherwise:
- `runner_vs_direct`: guest time for the same number of rounds run by GuestRunner (its own
  thread, one `run(1)` per round, the API thread idle) over a plain `vm.run(1)` loop; 1.0 means
  running in the background costs nothing (interleaved, best of 3, spread alongside);
- `round_ms`: one round, run directly;
- `pause_ms_median` / `pause_ms_max`: `PATCH /vm Paused` answered by the server while the guest
  runs (over the socket, 30 pauses at random moments), and `pause_vs_round` = median / round_ms
  (the contract: a pause answers within about one round);
- `get_ms_running` / `get_ms_paused`: median `GET /` latency while the guest runs and while it
  is paused: the API stays responsive while the guest runs.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tools.bench.measure import add_ratio, interleave, machine_load
from vmm.api.client import ApiClient
from vmm.api.controller import ApiController
from vmm.api.runner import GuestRunner
from vmm.api.server import ApiServer
from vmm.config import VmConfig
from vmm.machine import MicroVM

CONFIG = VmConfig(guest="smp", vcpus=4, params={"iterations": 10**9})


def _direct(rounds: int) -> float:
    vm = MicroVM(CONFIG)
    vm.run(1)  # past boot
    t0 = time.perf_counter()
    for _ in range(rounds):
        vm.run(1)
    return time.perf_counter() - t0


def _runner(rounds: int) -> float:
    vm = MicroVM(CONFIG)
    vm.run(1)
    runner = GuestRunner(vm)
    try:
        done = threading.Event()
        t0 = time.perf_counter()
        runner.resume()
        while runner.rounds < rounds:
            done.wait(0.001)
        runner.pause()
        return (time.perf_counter() - t0) * rounds / runner.rounds
    finally:
        runner.close()


def _api_latencies(pauses: int) -> tuple[list[float], list[float], list[float]]:
    """(pause, GET while running, GET while paused) latencies in seconds, over the socket."""
    with tempfile.TemporaryDirectory() as d:
        controller = ApiController("bench", console=open("/dev/null", "wb"))
        server = ApiServer(str(Path(d) / "api.sock"), controller)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        api = ApiClient(server.server_address)
        rng = random.Random(18)
        pause, running, paused = [], [], []
        try:
            api.request("PUT", "/machine-config", {"vcpu_count": 4, "mem_size_mib": 128})
            api.request("PUT", "/boot-source", {"kernel_image_path": "builtin:smp", "boot_args": "iterations=1000000000"})
            api.request("PUT", "/actions", {"action_type": "InstanceStart"})
            for _ in range(pauses):
                time.sleep(rng.uniform(0.005, 0.03))
                t0 = time.perf_counter()
                api.request("GET", "/")
                running.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert api.request("PATCH", "/vm", {"state": "Paused"}).status == 204
                pause.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                api.request("GET", "/")
                paused.append(time.perf_counter() - t0)
                api.request("PATCH", "/vm", {"state": "Resumed"})
        finally:
            api.close()
            server.shutdown()
            server.server_close()
            controller.shutdown()
        return pause, running, paused


def run(quick: bool = False) -> dict[str, object]:
    rounds = 20 if quick else 100
    samples = interleave({"direct": lambda: _direct(rounds), "runner": lambda: _runner(rounds)}, repeats=3)
    figures: dict[str, object] = {"load": machine_load(), "rounds": rounds}
    add_ratio(figures, "runner_vs_direct", samples["direct"], samples["runner"])
    round_ms = samples["direct"].best / rounds * 1000
    figures["round_ms"] = round(round_ms, 3)
    pause, running, paused = _api_latencies(8 if quick else 30)
    ms = [p * 1000 for p in pause]
    figures["pause_ms_median"] = round(statistics.median(ms), 3)
    figures["pause_ms_max"] = round(max(ms), 3)
    figures["pause_vs_round"] = round(statistics.median(ms) / round_ms, 3)
    figures["get_ms_running"] = round(statistics.median(running) * 1000, 3)
    figures["get_ms_paused"] = round(statistics.median(paused) * 1000, 3)
    print(f"one round (4 vCPUs x 100,000 instructions): {round_ms:.2f} ms; in the background: x{figures['runner_vs_direct']} the time")
    print(f"PATCH /vm Paused while running: median {figures['pause_ms_median']} ms, max {figures['pause_ms_max']} ms ({figures['pause_vs_round']} rounds)")
    print(f"GET / while running: {figures['get_ms_running']} ms; while paused: {figures['get_ms_paused']} ms (medians)")
    return figures
