"""The interactive console (--console) on a real pseudo-terminal: typed keys reach the guest's
UART, Ctrl-] s saves a snapshot at a pause point, Ctrl-] q quits, the terminal mode is restored."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from vmm.cli.console import ESCAPE, _Keys

ROOT = Path(__file__).resolve().parents[1]


def _read_until(fd: int, needle: bytes, seconds: float = 60.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never came; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen


def test_console_keys_snapshot_and_quit(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    d = tmp_path / "snaps"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmm", "run", "echo", "--param", "quit=300", "--console", "--snapshot-dir", str(d), "-q"],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env,
    )
    try:
        os.write(master, b"abc")
        _read_until(master, b"ABC")  # the echo guest upper-cases what it receives
        os.write(master, bytes([ESCAPE]) + b"s")
        deadline = time.monotonic() + 60
        while not (d.exists() and any(n.endswith(".snap") for n in os.listdir(d))):
            assert time.monotonic() < deadline and proc.poll() is None, "no snapshot"
            time.sleep(0.05)
        os.write(master, b"\x03q")  # Ctrl-C is a key for the guest here, not a signal
        _read_until(master, b"Q")
        os.write(master, bytes([ESCAPE]) + b"q")
        _, err = proc.communicate(timeout=60)
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 3, err  # quit: the guest did not stop by itself
    assert b"Traceback" not in err and b"quit at virtual time" in err
    assert after == before  # raw mode undone
    os.close(slave)


def test_escape_key_splits_commands_from_guest_bytes() -> None:
    keys = _Keys()
    assert keys.feed(b"ab\x1dpc") == (b"abc", ["p"])
    assert keys.feed(b"\x1d") == (b"", [])
    assert keys.feed(b"\x1dx") == (b"\x1dx", [])  # Ctrl-] twice: one literal Ctrl-] for the guest
    assert keys.feed(b"\x1dQ") == (b"", ["q"])
