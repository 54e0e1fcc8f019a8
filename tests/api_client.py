"""Test helpers for `microvm serve`: start a server process, talk to it with curl (the Python
client is vmm.api.client)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vmm.api.client import ApiClient, Reply

__all__ = ["ApiClient", "Reply", "ServerProcess", "curl", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # seconds for a server process to create its socket


def curl(sock: str | os.PathLike[str], method: str, path: str, body: str | None = None) -> Reply:
    """One request with Debian's curl, as Firecracker's documentation writes them."""
    argv = ["curl", "--silent", "--show-error", "--unix-socket", str(sock), "-i", "-X", method, f"http://localhost{path}",
            "-H", "Accept: application/json", "-H", "Content-Type: application/json"]
    if body is not None:
        argv += ["-d", body]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=120).stdout.decode()
    head, _, payload = out.partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    return Reply(status, json.loads(payload) if payload.strip() else None)


class ServerProcess:
    """`python -m vmm serve ...` in a child process; `stop()` sends SIGTERM and returns the
    exit status."""

    def __init__(self, sock: Path, *args: str, cwd: Path | None = None) -> None:
        self.sock = sock
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.stdout_path = sock.with_suffix(".stdout")
        self.stderr_path = sock.with_suffix(".stderr")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmm", "serve", "--api-sock", str(sock), *args],
            stdout=open(self.stdout_path, "wb"),
            stderr=open(self.stderr_path, "wb"),
            env=env,
            cwd=cwd,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not sock.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr_path.read_text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("server did not create its socket")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()
