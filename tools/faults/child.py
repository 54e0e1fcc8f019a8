"""Run a function in a forked child process, bounded in time, and get its JSON result back.

The child runs `fn()`, sends {"result": value} (or {"error": text} if fn raised) through a
pipe and leaves with os._exit (no cleanup handlers, no return into the caller's stack). The
parent can kill it at any point; `wait` reaps it, killing it first if it outlives its time
limit (a hang).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

from tools.faults.outcome import describe_exception

_EXIT_OK = 0
_EXIT_RAISED = 3
# Bound at import: the function run in a child may wrap os.write (fault injection, tracing).
_write = os.write


@dataclass
class ChildExit:
    """How a child ended: 'done' (with `result`), 'error' (fn raised: `error`), 'killed'
    (SIGKILL), 'hang' (outlived its limit; killed) or 'crashed' (any other death)."""

    ending: str
    result: Any = None
    error: str = ""


class Child:
    """A forked child running one function."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = _EXIT_RAISED
            try:
                os.close(read_end)
                try:
                    message = {"result": fn()}
                    code = _EXIT_OK
                except BaseException as exc:
                    message = {"error": describe_exception(exc)}
                data = json.dumps(message, default=str).encode()
                while data:
                    data = data[_write(write_end, data) :]
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self._pipe = read_end
        self._chunks: list[bytes] = []
        self._status: int | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # pragma: no cover - only after it was reaped
            pass

    def exited(self) -> bool:
        """True once the child has ended (it is then reaped by `wait`)."""
        return self._status is not None or self._poll()

    def _poll(self) -> bool:
        self._drain()
        done, status = os.waitpid(self.pid, os.WNOHANG)
        if done:
            self._status = status
        return bool(done)

    def _drain(self) -> None:
        """Read what the child wrote so far (so a large result cannot block it)."""
        os.set_blocking(self._pipe, False)
        try:
            while chunk := os.read(self._pipe, 1 << 16):
                self._chunks.append(chunk)
        except BlockingIOError:
            pass

    def wait(self, time_limit: float) -> ChildExit:
        """Reap the child, killing it if it is still running after `time_limit` seconds."""
        deadline = time.monotonic() + time_limit
        delay = 0.0002
        hung = False
        while not self.exited():
            if time.monotonic() > deadline:
                self.kill()
                os.waitpid(self.pid, 0)
                hung = True
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        self._drain()
        os.close(self._pipe)
        if hung:
            return ChildExit("hang")
        status = self._status
        assert status is not None
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return ChildExit("killed")
        try:
            message = json.loads(b"".join(self._chunks) or b"{}")
        except ValueError:
            message = {}
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _EXIT_OK and "result" in message:
            return ChildExit("done", message["result"])
        if "error" in message:
            return ChildExit("error", error=message["error"])
        return ChildExit("crashed", error=f"wait status {status}")


def call_in_child(fn: Callable[[], Any], time_limit: float) -> ChildExit:
    """Run `fn` in a child and wait for it."""
    return Child(fn).wait(time_limit)
