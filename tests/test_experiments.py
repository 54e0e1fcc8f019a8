"""Fan-out (vmm.experiments): each input's result equals a fresh restore of the snapshot run
with that input alone, whatever the engine (local processes, Ray actors), the worker count,
the batch and the order inputs are picked up; a worker that dies has its inputs retried."""
from __future__ import annotations

import collections
import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest

from vmm import MicroVM, VmConfig
from vmm.cli import main
from vmm.experiments import Input, MemoryWrite, RegisterValue, Result, Worker, iter_experiments, run_experiments
from vmm.experiments.engines import MAX_ATTEMPTS, PIPELINE
from vmm.experiments.worker import CONSOLE, CRASH_ENV, INPUT_ERROR, WORKER_LOST
from vmm.layout import MIB, RAM_BASE

UDF = (0).to_bytes(4, "little")  # UDF #0: an undefined instruction (DDI 0487 C6.2.386)
UNKNOWN_REASON_ESR = 0x0200_0000  # ESR_EL1: EC 0 (unknown reason), IL 1 (DDI 0487 D17.2.37)


@pytest.fixture(scope="module")
def echo_snap(tmp_path_factory) -> tuple[Path, int]:
    """The echo guest waiting for UART input (saved without dirty tracking: the workers turn it
    on), and the PC it will resume at."""
    vm = MicroVM(VmConfig(guest="echo", mem_size=32 * MIB, quantum=2_000))
    vm.run(200_000)
    path = tmp_path_factory.mktemp("fanout") / "echo"
    vm.save_snapshot(path)
    return path.with_suffix(".snap"), vm.vcpus[0].pc


def _inputs(pc: int) -> list[Input]:
    """Inputs that differ in every field, including one that patches the code about to run."""
    data = RAM_BASE + 24 * MIB
    out = [Input(id=f"uart-{i}", uart=b"ab%d" % i, budget=40_000) for i in range(5)]
    out += [
        Input(id="quit", uart=b"xq"),  # echo powers off after echoing its quit byte 'q'
        Input(id="stop", uart=b"hello world", stop_at=b"WOR", budget=100_000),
        Input(id="write", uart=b"w", writes=(MemoryWrite(data, b"\x01" * 5000), MemoryWrite(data + 3 * 4096, b"z")), budget=30_000),
        Input(id="patch", uart=b"p", writes=(MemoryWrite(pc, UDF),)),  # traps at pc, if the patch is executed
        Input(id="regs", uart=b"r", registers=(RegisterValue(0, "x5", 0x1234), RegisterValue(0, "x6", 7)), budget=30_000),
        Input(id="bad-gpa", writes=(MemoryWrite(0x1000, b"x"),)),
        Input(id="bad-vcpu", registers=(RegisterValue(3, "x0", 1),)),
        Input(id="silent", budget=50_000),
    ]
    return out


@pytest.fixture(scope="module")
def reference(echo_snap) -> dict[str, dict]:
    """Each input's outcome from a fresh worker that runs it alone (no reset ever happened)."""
    snap, pc = echo_snap
    return {inp.id: _plain(Worker(snap).run(inp)) for inp in _inputs(pc)}


def _plain(r: Result) -> dict:
    d = r.outcome()
    del d["index"]
    return d


def _check(results: list[Result], order: list[Input], reference: dict[str, dict]) -> None:
    assert [r.id for r in results] == [i.id for i in order]
    assert [r.index for r in results] == list(range(len(order)))
    for r in results:
        assert _plain(r) == reference[r.id], r.id


def test_reference_outcomes_are_what_each_input_asks(reference, echo_snap) -> None:
    _, pc = echo_snap
    assert reference["uart-3"]["console"] == "AB3"
    assert reference["quit"]["stop_reason"] == "power_off" and reference["quit"]["console"] == "XQ"
    stop = reference["stop"]
    assert stop["stop_reason"] == CONSOLE and "WOR" in stop["console"] and stop["virtual_instructions"] < 100_000
    # echo's own handler reports the undefined instruction and powers off
    assert f"esr={UNKNOWN_REASON_ESR:016x} elr={pc:016x}" in reference["patch"]["console"]
    assert reference["write"]["dirty_pages"] >= 3  # two pages of the 5000 bytes, one more write
    assert reference["regs"]["state_digest"] != reference["silent"]["state_digest"]
    assert reference["bad-gpa"]["stop_reason"] == INPUT_ERROR and "outside RAM" in reference["bad-gpa"]["detail"]
    assert reference["bad-vcpu"]["stop_reason"] == INPUT_ERROR and "vcpu3" in reference["bad-vcpu"]["detail"]
    silent = reference["silent"]
    assert (silent["stop_reason"], silent["retired_instructions"], silent["virtual_instructions"]) == ("deadlock", 0, 0)
    distinct = ["uart-0", "quit", "stop", "write", "patch", "regs", "silent"]
    assert len({reference[i]["state_digest"] for i in distinct}) == len(distinct)


def test_one_worker_gives_every_input_the_snapshot_state_whatever_ran_before(echo_snap, reference) -> None:
    snap, pc = echo_snap
    inputs = _inputs(pc)
    worker = Worker(snap)
    rng = random.Random(5)
    for _ in range(2):
        order = inputs[:]
        rng.shuffle(order)
        order.insert(0, inputs[0])  # the code at pc is translated before "patch" writes over it
        for inp in order:
            assert _plain(worker.run(inp)) == reference[inp.id], inp.id


def test_local_engine_one_and_two_workers_any_order(echo_snap, reference) -> None:
    snap, pc = echo_snap
    inputs = _inputs(pc)
    _check(run_experiments(snap, inputs, workers=1, batch_size=4), inputs, reference)
    shuffled = inputs[:]
    random.Random(1).shuffle(shuffled)
    _check(run_experiments(snap, shuffled, workers=2, batch_size=3), shuffled, reference)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the test session (it takes seconds to start)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_equals_the_reference_reversed_and_through_the_object_store(ray_session, echo_snap, reference) -> None:
    snap, pc = echo_snap
    inputs = _inputs(pc)[::-1]
    _check(run_experiments(snap, inputs, engine="ray", workers=2, batch_size=2), inputs, reference)
    _check(run_experiments(snap, inputs, engine="ray", workers=1, transfer="object-store"), inputs, reference)


def _crash(monkeypatch, spec: str) -> None:
    monkeypatch.setenv(CRASH_ENV, spec)


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_dead_workers_inputs_are_retried_elsewhere(request, monkeypatch, echo_snap, reference, engine) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_session")
    snap, pc = echo_snap
    inputs = _inputs(pc)
    _crash(monkeypatch, "write@1")  # the worker process exits on the first attempt of "write"
    results = run_experiments(snap, inputs, engine=engine, workers=2, batch_size=3)
    _check(results, inputs, reference)
    by_id = {r.id: r for r in results}
    assert by_id["write"].attempts == 2
    # Every batch on the dead worker (the running one and the one queued behind it) ran again,
    # its inputs saying so; no other input did.
    retried = {r.index // 3 for r in results if r.attempts > 1}
    assert by_id["write"].index // 3 in retried and len(retried) <= PIPELINE
    assert all(r.attempts == (2 if r.index // 3 in retried else 1) for r in results)


def test_an_input_that_kills_every_worker_is_reported_lost(monkeypatch, echo_snap, reference) -> None:
    snap, pc = echo_snap
    inputs = _inputs(pc)[:6]
    _crash(monkeypatch, "uart-2@99")
    results = run_experiments(snap, inputs, workers=2, batch_size=2)
    lost = results[2]
    assert (lost.id, lost.stop_reason, lost.attempts) == ("uart-2", WORKER_LOST, MAX_ATTEMPTS)
    assert lost.state_digest == "" and "died" in lost.detail
    for r in results[:2] + results[3:]:
        assert _plain(r) == reference[r.id]


def test_inputs_stream_through_a_bounded_window(echo_snap) -> None:
    snap, _ = echo_snap
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            pulled += 1
            yield Input(id=f"n{pulled}", budget=2_000)

    results = iter_experiments(snap, endless(), workers=1, batch_size=2)
    first = [next(results) for _ in range(3)]
    results.close()
    assert [r.id for r in first] == ["n1", "n2", "n3"]
    assert pulled < 1000  # never read ahead of what the worker is given (at most one batch + a window)


def test_a_bad_snapshot_fails_before_any_worker_starts(tmp_path) -> None:
    from snapshot.errors import SnapshotError

    (tmp_path / "x.snap").write_bytes(b"not a snapshot")
    (tmp_path / "x.mem").write_bytes(b"")
    with pytest.raises(SnapshotError):
        run_experiments(tmp_path / "x.snap", [Input(id="a")], workers=1)


def test_mmds_data_reaches_the_guest(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="mmds", mem_size=32 * MIB, quantum=2_000))
    vm.save_snapshot(tmp_path / "mmds")
    worker = Worker(tmp_path / "mmds.snap", budget=5_000_000)
    one = worker.run(Input(id="a", mmds={"latest": {"meta-data": {"instance-id": "i-one"}}}))
    two = worker.run(Input(id="b", mmds={"latest": {"meta-data": {"instance-id": "i-two"}}}))
    assert "i-one" in one.console and "i-two" not in one.console
    assert "i-two" in two.console and "i-one" not in two.console
    bad = worker.run(Input(id="c", mmds={"k": "x" * 60_000}))
    assert bad.stop_reason == INPUT_ERROR


def test_cli_fanout_writes_results_in_order_and_a_summary(tmp_path, echo_snap, reference, capsys) -> None:
    from vmm.experiments.inputs import input_to_json

    snap, pc = echo_snap
    inputs = _inputs(pc)
    lines = tmp_path / "in.jsonl"
    lines.write_text("".join(json.dumps(input_to_json(i)) + "\n" for i in inputs))
    out = tmp_path / "out.jsonl"
    assert main(["fanout", str(snap), "--inputs", str(lines), "-o", str(out), "--workers", "1"]) == 0
    results = [Result(**json.loads(line)) for line in out.read_text().splitlines()]
    _check(results, inputs, reference)
    text = capsys.readouterr().out
    assert f"{len(inputs)} inputs in" in text
    reasons = collections.Counter(d["stop_reason"] for d in reference.values())
    assert "stop reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) in text
    assert f"distinct state digests: {len({d['state_digest'] for d in reference.values()} - {''})}" in text
    assert "slowest: " in text


def test_cli_fanout_names_a_bad_line(tmp_path, echo_snap, capsys) -> None:
    snap, _ = echo_snap
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"id": "a"}\n\n{"id": "b", "writes": [{"gpa": 1, "hex": "zz"}]}\n')
    out = tmp_path / "out.jsonl"
    assert main(["fanout", str(snap), "--inputs", str(lines), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{lines}:3: writes[0]" in err
    assert not out.exists()  # refused before anything ran


def test_retired_instructions_count_executed_instructions_only() -> None:
    busy = MicroVM(VmConfig(guest="compute", mem_size=32 * MIB, quantum=2_000))
    r = busy.run(10_000)
    assert r.retired == r.instructions == 10_000
    idle = MicroVM(VmConfig(guest="ticker", mem_size=32 * MIB, quantum=2_000, params={"period_ns": 200_000}))
    r = idle.run(1_000_000)
    assert 0 < r.retired < r.instructions // 10  # asleep in WFI most of the time


def test_result_outcome_leaves_out_only_host_facts() -> None:
    r = Result(0, "a", "budget", wall_seconds=1.5, attempts=2)
    assert r.outcome() == replace(r, wall_seconds=0.0, attempts=1).outcome()
    assert set(r.to_json()) - set(r.outcome()) == {"wall_seconds", "attempts"}
    assert os.environ.get(CRASH_ENV) is None


@pytest.mark.slow
def test_the_readme_fanout_runs_as_written(tmp_path) -> None:
    """README's five lines (the Ray line aside: it needs a running cluster at `auto`)."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    block = re.search(r"^## Experiments at scale\n.*?^```\n(.*?)^```", text, re.M | re.S)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if "--engine ray" not in line]
    assert len(lines) == 4
    script = "\n".join(re.sub(r"^microvm ", f"{sys.executable} -m vmm ", line) for line in lines)
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    first = json.loads(run.stdout.splitlines()[-1])
    assert (first["id"], first["stop_reason"], first["console"]) == ("hi", "power_off", "HIQ")


@pytest.mark.slow
def test_ctrl_c_stops_a_fanout_cleanly(tmp_path) -> None:
    """SIGINT to the command's process group (a terminal's Ctrl-C) while workers run long
    inputs: one line, status 130, no traceback, no worker left, no result invented."""
    import signal
    import subprocess
    import sys
    import time

    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 * MIB, params={"rounds": 0}))
    vm.save_snapshot(tmp_path / "walk")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"long-{i}", "budget": 10**11}) + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "vmm", "fanout", str(tmp_path / "walk.snap"), "--inputs", str(inputs), "-o", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(8)  # the workers start and take their first inputs
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "microvm: interrupted by SIGINT" and "Traceback" not in err, err[-3000:]
    assert out.read_text() == ""
    survivors = subprocess.run(["pgrep", "-g", str(proc.pid), "-a"], capture_output=True, text=True).stdout
    # no worker outlived the command (a zombie is dead, waiting for init to reap it)
    assert all("<defunct>" in line for line in survivors.splitlines()), survivors


@pytest.mark.slow
def test_a_diff_chain_travels_through_the_object_store(ray_session, tmp_path) -> None:
    """The chain's files (base and diff in sibling folders, linked by a relative name) are
    rebuilt under the actor's own folder; results equal the local engine's from the path."""
    from vmm.experiments.engines import chain_files

    vm = MicroVM(VmConfig(guest="echo", mem_size=32 * MIB, quantum=2_000, track_dirty_pages=True))
    vm.run(2_000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    vm.save_snapshot(tmp_path / "a" / "base")
    vm.uart.queue_input(b"x")
    vm.run(4_000)
    vm.save_snapshot(tmp_path / "b" / "top", kind="diff")
    files, top = chain_files(tmp_path / "b" / "top.snap")
    assert sorted(files) == ["a/base.mem", "a/base.snap", "b/top.mem", "b/top.snap"] and top == "b/top.snap"
    inputs = [Input(id=f"i{i}", uart=b"k%d" % i, budget=20_000) for i in range(4)]
    via_store = run_experiments(tmp_path / "b" / "top.snap", inputs, engine="ray", workers=2, transfer="object-store", batch_size=1)
    local = run_experiments(tmp_path / "b" / "top.snap", inputs, workers=1)
    assert [r.outcome() for r in via_store] == [r.outcome() for r in local]
    assert via_store[1].console == "K1"  # "x" was echoed before the diff; a restored console starts empty


def test_an_unreachable_ray_address_is_refused_within_the_timeout(monkeypatch) -> None:
    """ray.init retries an address nobody answers at for minutes; the fan-out refuses it first,
    before ray.init is called."""
    import time

    import vmm.experiments.engines as engines

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(engines, "RAY_CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init was called: {kw}"))
    for address, words in (("127.0.0.1:1", "cannot reach Ray at 127.0.0.1:1"), ("ray://127.0.0.1:1", "waited up to 1 s")):
        t0 = time.monotonic()
        with pytest.raises(engines.FanoutError, match=words):
            engines._ray_session(address, None)
        assert time.monotonic() - t0 < 5
