"""Malformed requests never stop the API server (#18): bad JSON, huge or lying bodies, unknown
fields, wrong types, wrong methods and paths, broken HTTP and requests in the wrong state order
all get a 400 (414/431 for http.server's line and header limits), never a 500 or a dead server."""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_client import ApiClient, Reply
from vmm.api import config as bodies
from vmm.api.config import field_types
from vmm.api.controller import ApiController
from vmm.api.server import MAX_PAYLOAD, ROUTES, ApiServer


class InProcessServer:
    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.controller = ApiController("fuzz")
        self.server = ApiServer(str(sock), self.controller)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.controller.shutdown()

    def raw(self, data: bytes, *, half_close: bool = True) -> bytes:
        """Send raw bytes on a fresh connection; everything the server answers before closing."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def alive(self) -> None:
        client = ApiClient(self.sock)
        try:
            assert client.request("GET", "/").status == 200
        finally:
            client.close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessServer]:
    monkeypatch.chdir(tmp_path)  # a fuzzed log_path or serial_out_path lands here
    srv = InProcessServer(tmp_path / "api.sock")
    yield srv
    srv.close()


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _fault(raw: bytes) -> str:
    return json.loads(raw.partition(b"\r\n\r\n")[2])["fault_message"]


@pytest.mark.parametrize(
    "request_bytes, status, message",
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 400, f"limit of {MAX_PAYLOAD}"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "Content-Length"),
        (b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe", 400, "not valid JSON"),
        (b"PUT /mmds HTTP/1.1\r\nContent-Length: 3\r\n\r\nNaN", 400, "not valid JSON"),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 40000\r\n\r\n" + b"[" * 40000, 400, "not valid JSON"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, ""),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431, ""),
        (b"BREW /pot HTTP/1.1\r\n\r\n", 400, "BREW"),
        (b"GET / HTTP/9.9\r\n\r\n", 400, ""),
        (b"PUT /actions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"action", 400, "not valid JSON"),
    ],
)
def test_broken_http_gets_a_fault_and_the_server_stays_up(server: InProcessServer, request_bytes: bytes, status: int, message: str) -> None:
    out = server.raw(request_bytes)
    assert _status(out) == status, out[:200]
    assert message in _fault(out)
    server.alive()


def test_a_stalled_client_does_not_block_others(server: InProcessServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(server.sock))
        stalled.sendall(b"PUT /mmds HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")  # and then nothing
        server.alive()


def test_connections_beyond_the_limit_are_closed_and_service_resumes(server: InProcessServer) -> None:
    server.server.max_connections = 3
    server.server._slots = threading.BoundedSemaphore(3)
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for s in idle:
            s.connect(str(server.sock))
        time.sleep(0.2)  # the server has accepted them
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(10)
            extra.connect(str(server.sock))
            try:
                extra.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert extra.recv(100) == b""  # closed without an answer
            except (ConnectionResetError, BrokenPipeError):
                pass  # closed with the request unread (before or after it was sent)
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the idle connections' threads end as they see EOF
        try:
            server.alive()
            break
        except (AssertionError, ConnectionError, OSError):
            assert time.monotonic() < deadline
            time.sleep(0.05)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ENDPOINTS = sorted(ROUTES)
FIELD_NAMES = sorted({name for cls in vars(bodies).values() if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__")
                      for name in field_types(cls)})
BODIES = st.one_of(st.none(), JSON, st.dictionaries(st.sampled_from([*FIELD_NAMES, "bogus"]), JSON, max_size=5))


@st.composite
def requests(draw: Any) -> tuple[str, str, Any]:
    method, path = draw(st.sampled_from(ENDPOINTS))
    method = draw(st.sampled_from([method, method, "GET", "PUT", "PATCH", "DELETE", "POST"]))
    path = draw(st.sampled_from([path, path, path + "/x", "/" + draw(st.text(alphabet="abcdefgh/-_", max_size=12))]))
    return method, path, draw(BODIES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(requests(), min_size=1, max_size=8))
def test_fuzzed_requests_get_400_or_success_never_500(server: InProcessServer, reqs: list[tuple[str, str, Any]]) -> None:
    client = ApiClient(server.sock)
    try:
        for method, path, body in reqs:
            reply: Reply = client.request(method, path, body)
            assert reply.status in (200, 204, 400), (method, path, body, reply)
            if reply.status == 400:
                assert isinstance(reply.body["fault_message"], str) and reply.body["fault_message"]
    finally:
        client.close()
    server.alive()


def test_valid_requests_in_random_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Well-formed requests in shuffled orders: each is accepted or refused by the state
    machine with a 400, and the server keeps answering."""
    monkeypatch.chdir(tmp_path)
    ops = [
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32, "track_dirty_pages": True}),
        ("PUT", "/boot-source", {"kernel_image_path": "builtin:memwalk", "boot_args": "rounds=0 region_mib=4"}),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PATCH", "/vm", {"state": "Resumed"}),
        ("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": "full", "mem_file_path": "full.memory"}),
        ("PUT", "/snapshot/create", {"snapshot_type": "Diff", "snapshot_path": "diff", "mem_file_path": "diff.memory"}),
        ("PUT", "/snapshot/load", {"snapshot_path": "full", "mem_file_path": "full.memory"}),
        ("PUT", "/mmds", {"k": "v"}),
        ("PUT", "/actions", {"action_type": "FlushMetrics"}),
        ("GET", "/vm/config", None),
    ]
    rng = random.Random(18)
    statuses: set[int] = set()
    for i in range(4):
        srv = InProcessServer(tmp_path / f"api{i}.sock")
        client = ApiClient(srv.sock)
        try:
            for method, path, body in rng.sample(ops, len(ops)) + rng.sample(ops, len(ops)):
                reply = client.request(method, path, body)
                assert reply.status in (200, 204, 400), (method, path, reply)
                statuses.add(reply.status)
            assert client.request("GET", "/").status == 200
        finally:
            client.close()
            srv.close()
    assert statuses == {200, 204, 400}


def test_named_pipes_for_logs_never_block_the_api(server: InProcessServer, tmp_path: Path) -> None:
    """Firecracker users point the logger and metrics at named pipes: one without a reader is
    refused at once (the API does not hang in open), one with a reader gets JSON lines."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    client = ApiClient(server.sock)
    try:
        r = client.request("PUT", "/logger", {"log_path": str(fifo)})
        assert r.status == 400 and "no reader" in r.body["fault_message"]
        r = client.request("PUT", "/metrics", {"metrics_path": str(tmp_path)})
        assert r.status == 400 and "metrics file" in r.body["fault_message"]
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert client.request("PUT", "/logger", {"log_path": str(fifo), "level": "Info"}).status == 204
            assert client.request("GET", "/").status == 200
            os.set_blocking(reader, True)
            first = json.loads(os.read(reader, 65536).decode().splitlines()[0])
            assert first["level"] == "Info" and first["id"] == "fuzz"
        finally:
            os.close(reader)
    finally:
        client.close()
