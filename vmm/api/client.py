"""`ApiClient`: a minimal Python client for the API socket (http.client over AF_UNIX), what a
Firecracker SDK does, for scripts, tests and benchmarks.

    api = ApiClient("/tmp/firecracker.socket")
    api.request("PUT", "/actions", {"action_type": "InstanceStart"})   # Reply(204, None)
    api.request("GET", "/").body["state"]                               # "Running"
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: Any  # decoded JSON, or None for an empty body


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket at `path`."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class ApiClient:
    """One keep-alive connection to a server's socket; `request` sends JSON and decodes JSON."""

    def __init__(self, sock: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.conn = UnixHTTPConnection(os.fspath(sock), timeout)

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, json.loads(raw) if raw else None)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
