"""The CLI at its edges (issue 15): unusable paths and inputs, stdout closed or full. Each is a
typed one-line error with status 2, decided before the guest runs; none hangs or reads without
bound. Subprocesses carry a timeout: the FIFO cases hung before."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from vmm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], shell_redirect: str = "", **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if shell_redirect:
        cmd = " ".join([sys.executable, "-m", "vmm", *args]) + " " + shell_redirect
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload]
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload]


def _one_line(err: str, message: str) -> None:
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def _snapshot_dir_cases(tmp: Path) -> dict[str, tuple[str, str]]:
    (tmp / "afile").write_bytes(b"x")
    os.mkfifo(tmp / "fifo")
    return {
        "a file": (str(tmp / "afile"), "exists and is not a folder"),
        "under a file": (str(tmp / "afile" / "sub"), "lies under a file"),
        "/dev/null": ("/dev/null", "exists and is not a folder"),
        "a FIFO": (str(tmp / "fifo"), "exists and is not a folder"),
        "a too-long name": (str(tmp / ("n" * 300)), "File name too long"),
    }


@pytest.mark.parametrize("case", ["a file", "under a file", "/dev/null", "a FIFO", "a too-long name"])
def test_unusable_snapshot_dir_is_refused_before_the_guest_runs(tmp_path: Path, capsys, case: str) -> None:
    path, message = _snapshot_dir_cases(tmp_path)[case]
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "10000000000", "--snapshot-at", "0", "--snapshot-dir", path]
    assert main(argv) == 2  # at once: the guest would otherwise run 10^10 instructions first
    captured = capsys.readouterr()
    _one_line(captured.err, message)
    assert captured.out == ""


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[None]:
    """A folder nobody may write: chmod for a normal user; for root, which bypasses modes, the
    immutable attribute (chattr +i), or skip."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root, which bypasses folder permissions, and chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_snapshot_dir_is_refused(tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    with _read_only_folder(ro):
        assert main(["run", "hello", "--snapshot-at", "0", "--snapshot-dir", str(ro / "deeper")]) == 2
        _one_line(capsys.readouterr().err, "cannot create the folder")
        assert main(["run", "hello", "--snapshot-at", "0", "--snapshot-dir", str(ro)]) == 2
        _one_line(capsys.readouterr().err, "not writable")


def test_save_snapshot_creates_a_missing_folder(tmp_path: Path) -> None:
    from vmm.config import VmConfig
    from vmm.machine import MicroVM

    vm = MicroVM(VmConfig(guest="hello"))
    report = vm.save_snapshot(tmp_path / "new" / "deeper" / "s")
    assert report.state_path.is_file() and (tmp_path / "new" / "deeper" / "s.mem").is_file()


def test_mmds_data_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "data.json"
    os.mkfifo(fifo)
    proc = _cli(["run", "mmds", "--mmds-data", str(fifo)])  # blocked in open() before
    assert proc.returncode == 2
    _one_line(proc.stderr, "is not a regular file")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is not a regular file"),  # /dev/zero: read until MemoryError before
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 128 levels"),
        ('{"a": ' * 200 + "1" + "}" * 200, "nests deeper than"),
        ("{}" + " " * (2 << 20), "at most 1,048,576 are accepted"),
    ],
    ids=["dev-zero", "5000-digit-integer", "deep-array", "deep-object", "too-big"],
)
def test_bad_mmds_data_is_a_one_line_error(tmp_path: Path, capsys, content: str | None, message: str) -> None:
    path = "/dev/zero"
    if content is not None:
        path = str(tmp_path / "data.json")
        Path(path).write_text(content)
    assert main(["run", "mmds", "--mmds-data", path]) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, message)
    assert path in captured.err


def test_closed_stdout_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    proc = _cli(["run", "hello", "--snapshot-at", "0", "--snapshot-dir", str(tmp_path / "s")], shell_redirect=">&-")
    assert proc.returncode == 2
    _one_line(proc.stderr, "standard output is closed")
    assert not (tmp_path / "s").exists()  # refused before anything was written


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_full_stdout_is_an_output_error_not_a_guest_fault(extra: list[str]) -> None:
    proc = _cli(["run", "hello", "-q", *extra], shell_redirect=">/dev/full")
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, "No space left on device")
    assert "fault" not in proc.stderr


def test_input_file_and_stdin_feed_the_uart(tmp_path: Path) -> None:
    data = tmp_path / "keys"
    data.write_bytes(b"hello q")
    from_file = _cli(["run", "echo", "-q", "--input", str(data)])
    from_stdin = _cli(["run", "echo", "-q", "--input", "-"], input="hello q")
    for proc in (from_file, from_stdin):
        assert proc.returncode == 0, proc.stderr  # deadlock (4) before: nothing fed the UART
        assert "HELLO Q" in proc.stdout
    assert from_file.stdout == from_stdin.stdout


def test_input_fifo_is_refused(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "keys"
    os.mkfifo(fifo)
    assert main(["run", "echo", "--input", str(fifo)]) == 2
    _one_line(capsys.readouterr().err, "is not a regular file")


def test_console_needs_a_terminal(capsys) -> None:
    assert main(["run", "echo", "--console"]) == 2
    _one_line(capsys.readouterr().err, "--console needs a terminal")


def test_snapshot_points_on_one_round_end_share_a_snapshot(tmp_path: Path, capsys) -> None:
    d = tmp_path / "s"
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "300000", "--snapshot-at", "50000,100000", "--snapshot-dir", str(d), "--json"]
    assert main(argv) == 3  # was 2: "refusing to replace snap-100000.mem with a diff whose base it is"
    summary = json.loads(capsys.readouterr().out)
    assert [s["points"] for s in summary["snapshots"]] == [[50_000, 100_000]]
    assert sorted(os.listdir(d)) == ["snap-100000.mem", "snap-100000.snap"]


def test_unreached_points_are_reported_not_replaced_by_a_power_off_snapshot(tmp_path: Path, capsys) -> None:
    d = tmp_path / "s"
    assert main(["run", "hello", "--snapshot-at", "0,50000000,60000000", "--snapshot-dir", str(d), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert [s["virtual_time_ns"] for s in summary["snapshots"]] == [0]
    assert [u["point"] for u in summary["unreached_points"]] == [50_000_000, 60_000_000]
    assert "power_off" in summary["unreached_points"][0]["reason"]
    assert "snapshot point 50,000,000 not reached" in captured.err
    assert sorted(os.listdir(d)) == ["snap-0.mem", "snap-0.snap"]  # no snapshot of the powered-off VM


def test_points_beyond_the_budget_are_reported(tmp_path: Path, capsys) -> None:
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "200000", "--snapshot-at", "100000,900000", "--snapshot-dir", str(tmp_path), "--json", "-q"]
    assert main(argv) == 3
    summary = json.loads(capsys.readouterr().out)
    assert [u["point"] for u in summary["unreached_points"]] == [900_000]


@pytest.mark.parametrize("mode", [["--snapshot-at", "100000,200000"], ["--dirty-report", "100000"]])
def test_summary_reports_the_whole_run(tmp_path: Path, capsys, mode: list[str]) -> None:
    argv = ["run", "memwalk", "--param", "rounds=0", "--max-instructions", "300000", "--snapshot-dir", str(tmp_path), "--json", *mode]
    assert main(argv) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["instructions"] == summary["virtual_time_ns"] == 300_000  # was 100,000: the last segment
    assert summary["retired_per_vcpu"] == [300_000]  # one busy vCPU retires every instruction
    assert "300,000 instructions of virtual time" in captured.err


def test_retired_instructions_per_vcpu_beside_virtual_time(capsys) -> None:
    assert main(["run", "smp", "--vcpus", "3", "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    retired = summary["retired_per_vcpu"]
    assert len(retired) == 3 and all(0 < n <= summary["instructions"] for n in retired)
    assert retired[0] < summary["instructions"]  # power-off ends the last round early


def test_version_and_info_say_whether_the_native_path_was_built(capsys) -> None:
    from vmm import native_fill

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    built = "built" if native_fill._fill is not None else "missing"
    assert f"native TLB fill: {built}" in capsys.readouterr().out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["native_tlb_fill"] is (native_fill._fill is not None) and info["translation_buffer_per_vcpu_bytes"] > 0


def test_missing_native_path_warns_once(monkeypatch, capsys) -> None:
    from vmm import native_fill
    from vmm.cli import about

    monkeypatch.setattr(native_fill, "_fill", None)
    monkeypatch.setattr(about, "_warned", False)
    assert main(["run", "hello"]) == 0
    assert main(["run", "hello"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the native TLB fill") == 1 and "pip install -e ." in err


def test_deep_json_is_refused_before_parsing_even_with_a_raised_recursion_limit(tmp_path: Path) -> None:
    """json's C parser recurses per level: with a raised recursion limit, 200,000 levels
    overflowed the C stack (SIGSEGV) instead of raising RecursionError."""
    data = tmp_path / "deep.json"
    data.write_text("[" * 200_000 + "]" * 200_000)
    code = f"import sys; sys.setrecursionlimit(10**6); from vmm.cli import main; sys.exit(main(['run', 'mmds', '--mmds-data', {str(data)!r}]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, "nests deeper than 128 levels")
