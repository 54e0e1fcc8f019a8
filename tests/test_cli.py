"""The `microvm` command line: exit statuses, one-line errors, snapshot commands, demo."""
from __future__ import annotations

import json

import pytest

from vmm.cli import main


def test_run_hello_prints_and_exits_zero(capsys) -> None:
    assert main(["run", "hello", "-q"]) == 0
    assert capsys.readouterr().out == "Hello from microvm-harness! vCPUs: 1\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "nope"], "unknown guest 'nope'"),
        (["run", "hello", "--vcpus", "0"], "vcpus must be"),
        (["run", "hello", "--mem-mib", "15"], "memory size"),
        (["run", "/no/such/image.bin"], "cannot read image"),
        (["run", "hello", "--param", "x=1"], "has no parameter 'x'"),
        (["run", "hello", "--snapshot-at", "10"], "needs --snapshot-dir"),
        (["run", "hello", "--snapshot-at", "20,10", "--snapshot-dir", "d"], "increasing"),
        (["describe", "/no/such.snap"], "invalid snapshot path"),
        (["restore", "/no/such.snap"], "invalid snapshot path"),
    ],
)
def test_user_errors_are_one_line_with_status_2(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_budget_and_fault_exit_statuses(tmp_path, capsys) -> None:
    assert main(["run", "memwalk", "--param", "rounds=0", "--max-instructions", "100000", "-q"]) == 3
    image = tmp_path / "udf.bin"
    image.write_bytes(bytes(4))  # UDF #0 with no vector table
    assert main(["run", str(image)]) == 1
    err = capsys.readouterr().err
    assert "undefined instruction" in err and "instruction: 00000000  udf #0" in err


def test_snapshot_run_restore_describe(tmp_path, capsys) -> None:
    d = tmp_path / "snaps"
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "300000", "--snapshot-at", "100000,200000", "--snapshot-dir", str(d)]
    assert main(argv) == 3
    capsys.readouterr()
    assert main(["describe", str(d / "snap-200000.snap"), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "diff" and info["pair_ok"] is True and info["parent"]["state_name"] == "snap-100000.snap"
    assert main(["restore", str(d / "snap-200000.snap"), "--mem-backend", "mmap", "--max-instructions", "100000", "-q"]) == 3
    assert capsys.readouterr().out.startswith("memwalk round")


def test_demo_shows_identical_continuation(capsys) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "state digests and console output: identical" in out


def test_dirty_report_prints_pages_per_epoch(capsys) -> None:
    argv = ["run", "memwalk", "--param", "rounds=3", "--param", "writes=512", "--quantum", "5000", "--dirty-report", "10000", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("microvm: epoch")]
    assert len(lines) >= 2 and "epoch 0 [0, 10,000)" in lines[0]
    pages = [int(line.split(": ")[2].split()[0]) for line in lines]
    assert sum(pages) > 0 and captured.out.endswith("memwalk done\n")
