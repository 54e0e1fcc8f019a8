"""The `microvm` command line: exit statuses, one-line errors, snapshot commands, demo."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from vmm.cli import EXIT_BROKEN_PIPE, main


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
        (["run", "hello", "--initrd", "/dev/null"], "an initrd needs a kernel image"),
        (["run", "hello", "--input", "/no/such/input"], "cannot read input /no/such/input"),
        (["run", "hello", "--input", "/dev/null"], "input /dev/null is not a regular file"),
        (["run", "hello", "--cmdline", "bad\ttab"], "cmdline must be printable ASCII"),
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


def _json_line(out: str) -> dict:
    """The single JSON object --json prints: stdout is exactly one line."""
    assert out.endswith("\n") and out.count("\n") == 1
    return json.loads(out)


def test_run_json_summary_replaces_the_streamed_console(capsys) -> None:
    assert main(["run", "hello", "--json", "-q"]) == 0
    summary = _json_line(capsys.readouterr().out)
    assert summary["console"] == "Hello from microvm-harness! vCPUs: 1\n"
    assert (summary["stop"], summary["exit_status"], summary["fault"], summary["snapshots"]) == ("power_off", 0, None, [])
    assert summary["virtual_time_ns"] == summary["instructions"] > 0 and len(summary["state_digest"]) == 32


def test_run_and_restore_json_agree_with_an_uninterrupted_run(tmp_path, capsys) -> None:
    common = ["--param", "rounds=0", "--quantum", "10000", "--json", "-q"]
    assert main(["run", "memwalk", "--max-instructions", "300000", *common]) == 3
    whole = _json_line(capsys.readouterr().out)
    d = tmp_path / "snaps"
    argv = ["run", "memwalk", "--max-instructions", "100000", "--snapshot-at", "50000,100000", "--snapshot-dir", str(d), *common]
    assert main(argv) == 3
    first = _json_line(capsys.readouterr().out)
    assert [(s["kind"], s["virtual_time_ns"]) for s in first["snapshots"]] == [("full", 50_000), ("diff", 100_000)]
    assert first["snapshots"][1]["path"] == str(d / "snap-100000.snap")
    assert main(["restore", str(d / "snap-100000.snap"), "--max-instructions", "200000", "--json", "-q"]) == 3
    rest = _json_line(capsys.readouterr().out)
    assert (rest["restored_at_ns"], rest["virtual_time_ns"], rest["stop"]) == (100_000, 300_000, "budget")
    assert rest["state_digest"] == whole["state_digest"]
    assert first["console"] + rest["console"] == whole["console"]


def test_dirty_report_json_lists_the_epochs(capsys) -> None:
    argv = ["run", "memwalk", "--param", "rounds=2", "--param", "writes=512", "--quantum", "5000", "--dirty-report", "10000", "--json", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    epochs = _json_line(captured.out)["epochs"]
    assert epochs[0]["start_ns"] == 0 and epochs[0]["end_ns"] == 10_000
    assert all(a["end_ns"] == b["start_ns"] for a, b in zip(epochs, epochs[1:]))
    assert len(epochs) == captured.err.count("microvm: epoch") and sum(e["dirty_pages"] for e in epochs) > 0


def _cells(line: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each cell of a table line (cells are separated by 2+ spaces)."""
    return [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", line)]


def test_describe_prints_an_aligned_table(tmp_path, capsys) -> None:
    d = tmp_path / "snaps"
    argv = ["run", "memwalk", "--param", "rounds=0", "--quantum", "10000", "--max-instructions", "100000", "--snapshot-at", "50000,100000"]
    assert main([*argv, "--snapshot-dir", str(d), "-q"]) == 3
    capsys.readouterr()
    assert main(["describe", str(d / "snap-100000.snap")]) == 0
    rows = {cells[0][2]: cells[1:] for cells in map(_cells, capsys.readouterr().out.splitlines())}
    assert len({value[0][0] for value in rows.values() if value}) == 1  # every value starts in one column
    assert rows["devices"][0][2] == "uart0, mmds, gicv3"
    assert rows["parent.state_name"][0][2] == "snap-50000.snap"
    assert rows["pair_ok"] == []  # not verified: blank


def test_demo_tables_are_aligned_with_numbers_right_aligned(capsys) -> None:
    assert main(["demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("snapshot  kind"))
    table = [_cells(line) for line in lines[header : header + 4]]
    assert [c[2] for c in table[0]] == ["snapshot", "kind", "at instr", "pages", "KiB written", "save ms"]
    assert all(len(row) == 6 for row in table)
    assert len({tuple(c[0] for c in row[:2]) for row in table}) == 1  # text columns start together
    assert len({tuple(c[1] for c in row[2:]) for row in table}) == 1  # number columns end together


def test_compressed_run_rebase_and_verify(tmp_path, capsys) -> None:
    d = tmp_path / "snaps"
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "300000", "--snapshot-at", "100000,200000,300000"]
    assert main([*argv, "--snapshot-dir", str(d), "--compress", "lz4", "--frame-size", "256K", "-q"]) == 3
    capsys.readouterr()
    assert main(["describe", str(d / "snap-100000.snap"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["memory_format"] == "lz4" and info["frame_size"] == 256 * 1024 and info["compression_ratio"] > 1
    assert main(["verify", str(d / "snap-300000.snap")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\nok  ") + captured.out.startswith("ok  ") == 3 and "verify: ok" in captured.err
    assert main(["rebase", str(d / "snap-100000"), str(d / "snap-200000"), str(d / "snap-300000"), "-o", str(d / "merged"), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["verify", str(d / "merged"), "-q"]) == 0
    assert main(["restore", str(d / "merged"), "--max-instructions", "100000", "-q"]) == 3
    assert capsys.readouterr().out.startswith("memwalk round")


def test_verify_exits_1_naming_the_first_broken_link(tmp_path, capsys) -> None:
    d = tmp_path / "snaps"
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "200000", "--snapshot-at", "100000,200000"]
    assert main([*argv, "--snapshot-dir", str(d), "-q"]) == 3
    (d / "snap-100000.snap").unlink()
    capsys.readouterr()
    assert main(["verify", str(d / "snap-200000.snap"), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("microvm: verify: broken chain link ") and "snap-200000.snap" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verify", "/no/such.snap"], "no such snapshot"),
        (["rebase", "/no/a.snap", "/no/b.snap", "-o", "/no/c"], "invalid snapshot path"),
        (["run", "hello", "--frame-size", "1M"], "--frame-size needs --compress lz4"),
        (["run", "hello", "--compress", "lz4", "--frame-size", "5000"], "--frame-size: frame size must be a multiple of 4096"),
    ],
)
def test_chain_and_compression_user_errors(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _console_command() -> list[str]:
    """The installed `microvm` script beside this interpreter, else what that script runs."""
    script = shutil.which("microvm", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-c", "import sys; from vmm.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    "extra, first_bytes",
    [([], b"memwalk round 1:"), (["--json", "-q"], b'{"console": "mem')],
    ids=["streamed-console", "json-summary"],
)
def test_stdout_closed_early_exits_quietly_with_status_141(extra: list[str], first_bytes: bytes) -> None:
    # About 140 KB of output, more than a pipe holds (64 KiB): the command is still writing
    # when the reader leaves, so it must meet the closed pipe whatever the timing. Without -q
    # a run that ended would report on stderr: the streamed case shows it stopped at once.
    argv = ["run", "memwalk", "--param", "rounds=0", "--param", "writes=1", "--max-instructions", "2000000", *extra]
    proc = subprocess.Popen([*_console_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(len(first_bytes))
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert first == first_bytes
    assert err == b"", err.decode(errors="replace")  # no traceback, no guest fault report
    assert proc.returncode == EXIT_BROKEN_PIPE == 141
