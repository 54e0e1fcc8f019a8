"""The API server's logger and metrics, each a file (or named pipe) of JSON lines.

- `ApiLogger` (PUT /logger): one object per event, `{"ts_ms", "level", "msg"}` plus `"id"`
  (the instance id) and, with `show_log_origin`, `"origin"` (the module that logged). Levels as
  Firecracker's, in order Error < Warning < Info < Debug < Trace; `Off` writes nothing. Before a
  logger is configured events are dropped, as Firecracker's.
- `ApiMetrics` (PUT /metrics): one object per flush, written on FlushMetrics and when the
  server exits: `utc_timestamp_ms`, then counters since the server started (Firecracker writes
  deltas since the last flush; these are cumulative) grouped as `api_server`, `vmm`,
  `snapshot`, `mmds`, `uart`, and `id` / `properties` when configured.

Host time appears only here (timestamps), never in anything the guest sees.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections import Counter
from typing import Any, TextIO

from vmm.errors import VmmError

LEVELS = ("Error", "Warning", "Info", "Debug", "Trace")  # Firecracker's, most severe first
DEFAULT_LEVEL = "Info"


class TelemetryError(VmmError):
    """A log or metrics destination cannot be opened (HTTP 400)."""


def open_output(path: str, what: str) -> int:
    """A write-only, appending fd of `path`: a regular file (created if absent) or a named pipe
    that has a reader (Firecracker's usual log and metrics destination). The open never blocks
    (O_NONBLOCK: a pipe without a reader is ENXIO, a TelemetryError); writes then block as
    usual. Anything else (a directory, a device) is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        reason = "a named pipe with no reader" if exc.errno == errno.ENXIO else (exc.strerror or str(exc))
        raise TelemetryError(f"cannot open the {what} file {path}: {reason}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        os.close(fd)
        raise TelemetryError(f"cannot open the {what} file {path}: not a regular file or named pipe")
    os.set_blocking(fd, True)
    return fd


def _open_append(path: str, what: str) -> TextIO:
    """`path` opened for appending text lines (open_output), line buffered."""
    return os.fdopen(open_output(path, what), "a", encoding="utf-8", buffering=1)


def _close_quietly(file: TextIO | None) -> None:
    """Close `file`; a reader that went away (EPIPE on the last flush) is not an error."""
    if file is not None:
        try:
            file.close()
        except OSError:
            pass


def _utc_ms() -> int:
    return time.time_ns() // 1_000_000


class ApiLogger:
    """JSON-lines logger; thread-safe. `configure` once (Firecracker allows one PUT /logger)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._file: TextIO | None = None
        self._level = LEVELS.index(DEFAULT_LEVEL)
        self._show_origin = False
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._file is not None

    def configure(self, log_path: str, level: str | None, show_origin: bool) -> None:
        if self.configured:
            raise TelemetryError("the logger is already configured")
        self._file = _open_append(log_path, "log")
        self._level = len(LEVELS) if level == "Off" else LEVELS.index(level or DEFAULT_LEVEL)
        self._show_origin = show_origin

    def log(self, level: str, msg: str, origin: str = "api") -> None:
        if self._file is None or LEVELS.index(level) > self._level:
            return
        record: dict[str, Any] = {"ts_ms": _utc_ms(), "level": level, "id": self.instance_id, "msg": msg}
        if self._show_origin:
            record["origin"] = origin
        with self._lock:
            try:
                self._file.write(json.dumps(record) + "\n")
            except OSError:
                pass  # a full disk or a closed pipe must not stop the VMM (Firecracker drops too)

    def close(self) -> None:
        with self._lock:
            _close_quietly(self._file)
            self._file = None


class ApiMetrics:
    """Counters, flushed as one JSON line to the metrics file. Thread-safe."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.counters: Counter[str] = Counter()  # "group.name" -> count
        self._file: TextIO | None = None
        self._emit_id = False
        self._properties: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._file is not None

    def configure(self, metrics_path: str, emit_id: bool, properties: dict[str, str]) -> None:
        if self.configured:
            raise TelemetryError("the metrics system is already configured")
        self._file = _open_append(metrics_path, "metrics")
        self._emit_id = emit_id
        self._properties = dict(properties)

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counters[name] += by

    def flush(self, gauges: dict[str, Any] | None = None) -> bool:
        """Write one line (counters plus `gauges`, e.g. vmm.virtual_time_ns); False if the
        metrics system is not configured."""
        with self._lock:
            if self._file is None:
                return False
            line: dict[str, Any] = {"utc_timestamp_ms": _utc_ms()}
            if self._emit_id:
                line["id"] = self.instance_id
            if self._properties:
                line["properties"] = self._properties
            for key, value in sorted({**self.counters, **(gauges or {})}.items()):
                group, _, name = key.partition(".")
                line.setdefault(group, {})[name] = value
            try:
                self._file.write(json.dumps(line) + "\n")
                self._file.flush()
            except OSError:
                return False
            return True

    def close(self) -> None:
        with self._lock:
            _close_quietly(self._file)
            self._file = None
