"""The API server: Firecracker's HTTP API on a Unix socket, served by the standard library's
`http.server` (HTTP/1.1, keep-alive) on a threading `socketserver.UnixStreamServer`.

Responses: 204 without a body for accepted changes, 200 with a JSON body for reads, 400 with
`{"fault_message": "..."}` for anything the server refuses. A malformed request never stops
the server: request lines and headers are parsed by http.server (its own limits: 64 KiB per
line, 100 headers), a body is at most MAX_PAYLOAD bytes (Firecracker's
HTTP_MAX_PAYLOAD_SIZE; larger ones are refused before they are read and the connection is
closed), chunked bodies are refused, and bad JSON, unknown fields, wrong types, an unknown
path or method and requests out of state order are all 400 (vmm.api.config,
vmm.api.controller). An unexpected exception is a bug: 500, logged, and the server stays up.

`serve(...)` runs a server (and/or a config file's VM) until the guest stops, SIGTERM or Ctrl-C.
"""
from __future__ import annotations

import json
import os
import signal
import socketserver
import stat
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import metadata
from typing import Any, Callable

from vmm.api.config import (
    LOG_LEVELS,
    BodyError,
    BootSource,
    InstanceActionInfo,
    Logger,
    MachineConfiguration,
    MachineConfigurationPatch,
    Metrics,
    MmdsConfig,
    SerialDevice,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
    parse_body,
)
from vmm.api.controller import ApiController
from vmm.api.resources import UNSUPPORTED_DEVICES, ApiError, unsupported_device
from vmm.devices.mmds import DEFAULT_DATA_LIMIT
from vmm.scheduler import RunResult

MAX_PAYLOAD = 51_200  # bytes; Firecracker's HTTP_MAX_PAYLOAD_SIZE (src/vmm/src/lib.rs)
MAX_MMDS_PAYLOAD = max(MAX_PAYLOAD, DEFAULT_DATA_LIMIT)  # a whole data store fits in one PUT
MAX_CONFIG_FILE = 1 << 20  # bytes; a config file is a few hundred
REQUEST_TIMEOUT = 30.0  # seconds a connection may stall mid-request before it is closed
MAX_CONNECTIONS = 64  # open API connections served at once
POLL_SECONDS = 0.1  # how soon the main loop notices that the guest stopped or SIGTERM came
# The Firecracker API definition vmm/api/firecracker-api.json was written from (its info.version).
FIRECRACKER_API_VERSION = "1.17.0-dev"

Handler = Callable[[ApiController, Any], Any]


def _no_body(fn: Callable[[ApiController], Any]) -> Handler:
    return lambda c, _body: fn(c)


def _typed(cls: type, fn: Callable[[ApiController, Any], Any]) -> Handler:
    return lambda c, body: fn(c, parse_body(cls, _need(body)))


def _need(body: Any) -> Any:
    if body is _EMPTY:
        raise BodyError("the request body is empty")
    return body


def _logger_body(value: Any) -> Any:
    """Firecracker's logger levels are case-insensitive: normalise before parsing."""
    if type(value) is dict and type(value.get("level")) is str:
        for level in LOG_LEVELS:
            if value["level"].lower() == level.lower():
                return {**value, "level": level}
    return value


_EMPTY = object()  # the body of a request without one

# (method, path) -> handler(controller, decoded body)
ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/"): _no_body(ApiController.describe_instance),
    ("GET", "/version"): _no_body(ApiController.version),
    ("GET", "/machine-config"): _no_body(ApiController.get_machine_config),
    ("PUT", "/machine-config"): _typed(MachineConfiguration, ApiController.put_machine_config),
    ("PATCH", "/machine-config"): _typed(MachineConfigurationPatch, ApiController.put_machine_config),
    ("GET", "/vm/config"): _no_body(ApiController.full_config),
    ("PUT", "/boot-source"): _typed(BootSource, ApiController.put_boot_source),
    ("PUT", "/actions"): _typed(InstanceActionInfo, ApiController.action),
    ("PATCH", "/vm"): _typed(Vm, ApiController.patch_vm),
    ("PUT", "/snapshot/create"): _typed(SnapshotCreateParams, ApiController.snapshot_create),
    ("PUT", "/snapshot/load"): _typed(SnapshotLoadParams, ApiController.snapshot_load),
    ("GET", "/mmds"): _no_body(ApiController.mmds_get),
    ("PUT", "/mmds"): lambda c, body: c.mmds_put(_need(body)),
    ("PATCH", "/mmds"): lambda c, body: c.mmds_patch(_need(body)),
    ("PUT", "/mmds/config"): _typed(MmdsConfig, ApiController.put_mmds_config),
    ("PUT", "/logger"): lambda c, body: c.put_logger(parse_body(Logger, _logger_body(_need(body)))),
    ("PUT", "/metrics"): _typed(Metrics, ApiController.put_metrics),
    ("PUT", "/serial"): _typed(SerialDevice, ApiController.put_serial),
}


def route(method: str, path: str) -> Handler:
    """The handler of `method path`; ApiError (400) for an unknown pair, naming an unsupported
    device for Firecracker endpoints this machine lacks."""
    handler = ROUTES.get((method, path))
    if handler is not None:
        return handler
    for prefix, name in UNSUPPORTED_DEVICES.items():
        if path == prefix or path.startswith(prefix + "/"):
            raise unsupported_device(name)
    raise ApiError(f"Invalid request method and/or path: {method} {path[:100]}.")


def decode_json(raw: bytes) -> Any:
    """A request body as JSON (BodyError if it is not: bad UTF-8, bad syntax, NaN, too deep)."""
    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BodyError(f"the request body is not valid JSON: {str(exc)[:120]}") from None


class ApiRequestHandler(BaseHTTPRequestHandler):
    """One connection: requests served in order (keep-alive)."""

    protocol_version = "HTTP/1.1"
    # Assumed until a request line parses: errors about a bad request line then still carry a
    # status line and headers (http.server's own default, HTTP/0.9, sends a bare body).
    default_request_version = "HTTP/1.0"
    server_version = "microvm-harness API"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    server: ApiServer

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _serve(self) -> None:
        controller = self.server.controller
        controller.metrics.inc("api_server.requests")
        path = self.path
        controller.logger.log("Info", f"The API server received a {self.command} request on {path[:100]!r}.", origin="api_server")
        try:
            body = self._read_body(MAX_MMDS_PAYLOAD if path == "/mmds" else MAX_PAYLOAD)
            if body is None:
                return  # answered and closed
            handler = route(self.command, path)
            result = handler(controller, _EMPTY if not body else decode_json(body))
        except (ApiError, BodyError) as exc:
            self._fault(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception as exc:  # a bug: answer, log, keep serving
            controller.logger.log("Error", f"internal error serving {self.command} {path[:100]}: {type(exc).__name__}: {exc}")
            self._fault(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")
            return
        if result is None:
            self._respond(HTTPStatus.NO_CONTENT, None)
        else:
            self._respond(HTTPStatus.OK, result)

    def _read_body(self, limit: int) -> bytes | None:
        """The body, or None after answering 400 and closing the connection (its framing
        cannot be trusted any more)."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._fault(HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not supported: send a Content-Length", close=True)
            return None
        text = self.headers.get("Content-Length")
        if text is None:
            return b""
        if not text.strip().isdigit():
            self._fault(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {text[:40]!r}", close=True)
            return None
        length = int(text)
        if length > limit:
            self._fault(
                HTTPStatus.BAD_REQUEST,
                f"Request payload with size {length} is larger than the limit of {limit} allowed by server.",
                close=True,
            )
            return None
        return self.rfile.read(length)

    def _fault(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        self.server.controller.metrics.inc("api_server.errors")
        if close:
            self.close_connection = True
        self._respond(status, {"fault_message": message}, close=close)

    def _respond(self, status: HTTPStatus, body: Any, *, close: bool = False) -> None:
        """Status line, headers and the JSON `body` (none if None); `close` ends the connection."""
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, headers too long, unknown method)
        as JSON faults that close the connection: 400 unless it is a 414/431 limit."""
        limits = (HTTPStatus.REQUEST_URI_TOO_LONG, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        status = HTTPStatus(code) if code in limits else HTTPStatus.BAD_REQUEST
        try:
            self._fault(status, message or HTTPStatus(code).phrase, close=True)
        except OSError:
            pass  # the peer is gone

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        self.server.controller.logger.log("Debug", format % args, origin="http")

    def address_string(self) -> str:
        return "unix"  # AF_UNIX peers have no address


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The Unix-socket HTTP server; one thread per connection (at most MAX_CONNECTIONS: more
    are closed at once, so a flood of idle clients cannot exhaust threads), requests to the
    controller serialised by its lock."""

    daemon_threads = True
    block_on_close = False
    max_connections = MAX_CONNECTIONS

    def __init__(self, path: str, controller: ApiController) -> None:
        self.controller = controller
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(path, ApiRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.controller.logger.log("Warning", f"more than {self.max_connections} connections: one closed", origin="http")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (peer gone, timeout) ends quietly; nothing else is affected."""
        self.controller.logger.log("Debug", "a connection ended with an error", origin="http")


# --- config file ----------------------------------------------------------------------------------
CONFIG_SECTIONS = {
    "boot-source": (BootSource, ApiController.put_boot_source),
    "machine-config": (MachineConfiguration, ApiController.put_machine_config),
    "mmds-config": (MmdsConfig, ApiController.put_mmds_config),
    "logger": (Logger, ApiController.put_logger),
    "metrics": (Metrics, ApiController.put_metrics),
}
# Firecracker config sections for devices this machine lacks: accepted only empty.
CONFIG_DEVICE_SECTIONS = {
    "drives": "/drives",
    "network-interfaces": "/network-interfaces",
    "pmem": "/pmem",
    "vsock": "/vsock",
    "balloon": "/balloon",
    "entropy": "/entropy",
    "cpu-config": "/cpu-config",
    "memory-hotplug": "/hotplug",
}
# Applied in this order (the logger first, so it sees the rest).
_CONFIG_ORDER = ("logger", "metrics", "machine-config", "mmds-config", "boot-source")


def read_config_file(path: str) -> dict[str, Any]:
    """The config file at `path` as a JSON object (ApiError naming the file otherwise); a
    regular file of at most MAX_CONFIG_FILE bytes."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ApiError(f"config file {path}: not a regular file")
            if st.st_size > MAX_CONFIG_FILE:
                raise ApiError(f"config file {path}: {st.st_size} bytes, over the limit of {MAX_CONFIG_FILE}")
            raw = f.read(MAX_CONFIG_FILE + 1)
    except OSError as exc:
        raise ApiError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        value = decode_json(raw)
    except BodyError as exc:
        raise ApiError(f"config file {path}: {exc}") from None
    if type(value) is not dict:
        raise ApiError(f"config file {path}: must be a JSON object")
    return value


def apply_config(controller: ApiController, config: dict[str, Any], path: str) -> None:
    """Configure `controller` from a config file's contents and start the VM."""
    for key, value in config.items():
        if key in CONFIG_DEVICE_SECTIONS:
            if value not in (None, [], {}):
                device = UNSUPPORTED_DEVICES[CONFIG_DEVICE_SECTIONS[key]]
                raise ApiError(f"config file {path}: section {key!r}: {unsupported_device(device)}")
        elif key not in CONFIG_SECTIONS:
            expected = ", ".join(sorted([*CONFIG_SECTIONS, *CONFIG_DEVICE_SECTIONS]))
            raise ApiError(f"config file {path}: unknown section {key[:40]!r} (sections: {expected})")
    if config.get("boot-source") is None:
        raise ApiError(f"config file {path}: missing section 'boot-source'")
    for key in _CONFIG_ORDER:
        if config.get(key) is None:
            continue
        cls, method = CONFIG_SECTIONS[key]
        value = _logger_body(config[key]) if key == "logger" else config[key]
        try:
            method(controller, parse_body(cls, value, where=f"section {key!r}"))
        except (ApiError, BodyError) as exc:
            raise ApiError(f"config file {path}: {exc}") from None
    controller.action(InstanceActionInfo("InstanceStart"))


# --- the process ------------------------------------------------------------------------------------
def _version() -> str:
    try:
        return metadata.version("microvm-harness")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def check_socket_path(path: str) -> None:
    """ApiError unless `path` is free for a new socket (Firecracker refuses an existing one)."""
    if os.path.lexists(path):
        raise ApiError(f"API socket {path} already exists; remove it first (rm -f {path})")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ApiError(f"API socket {path}: directory {parent} does not exist")


def serve(
    api_sock: str | None,
    *,
    config_file: str | None = None,
    instance_id: str,
    key: bytes | None = None,
) -> RunResult | None:
    """Run until the guest stops for good (its RunResult is returned), or SIGTERM / SIGINT
    (None; SIGINT raises KeyboardInterrupt after a clean shutdown). With `api_sock` None
    (--no-api) a config file is required and the VM runs without a socket. `key`: snapshots
    created and loaded through the API are encrypted with it."""
    if api_sock is None and config_file is None:
        raise ApiError("--no-api needs --config-file (there would be no way to configure the VM)")
    config = read_config_file(config_file) if config_file is not None else None
    if api_sock is not None:
        check_socket_path(api_sock)
    done = threading.Event()
    stopped: list[RunResult] = []
    server: ApiServer | None = None

    def on_exit(result: RunResult) -> None:
        stopped.append(result)
        done.set()

    controller = ApiController(
        instance_id, vmm_version=_version(), api_version=FIRECRACKER_API_VERSION, on_exit=on_exit, key=key
    )
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        if api_sock is not None:
            server = ApiServer(api_sock, controller)
            server.timeout = POLL_SECONDS
        if config is not None:
            apply_config(controller, config, config_file or "")
        # The guest's stop and SIGTERM only set `done`; this loop notices within POLL_SECONDS
        # (no helper thread calling shutdown()).
        while not done.is_set():
            if server is not None:
                server.handle_request()  # one connection (served on its own thread) or a timeout
            else:
                done.wait(POLL_SECONDS)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.server_close()
            _unlink_quietly(api_sock)
        controller.shutdown()
    if interrupted:
        raise KeyboardInterrupt
    return stopped[0] if stopped else None


def _unlink_quietly(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass

