"""The built-in guest `mmds`: an MMDS client running in the VM (guests/src/mmds.S).

The console output is checked byte for byte against an independent Python model of the
guest (the sequence in its header comment) and of Firecracker's MMDS semantics (IMDS text,
compact sorted JSON, 401/404/400/501 bodies, the HTTP/1.1 response head).
"""
from __future__ import annotations

import base64
import json

import pytest

import guests
from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB, RAM_BASE

LIMIT = 20_000_000  # instruction budget: a broken guest stops with BUDGET instead of hanging
BUF_OFFSET = 2 * MIB  # the guest's buffer area: RAM_BASE + 2 MiB
REQ_OFFSET = BUF_OFFSET
TOKEN_OFFSET = BUF_OFFSET + 0x1000
RESP_OFFSET = BUF_OFFSET + 0x2000
RESP_MAX = 0x1_0000
NS_PER_SECOND = 1_000_000_000

STORE = {
    "latest": {
        "meta-data": {
            "instance-id": "i-0123456789abcdef0",
            "ami-id": "ami-12345678",
            "local-hostname": "vm.internal",
            "placement": {"availability-zone": "eu-west-1a", "region": "eu-west-1"},
            "network": {"interfaces": {"macs": {"02:00:00:00:00:01": {"device-number": "0"}}}},
            "tags": ["a", "b"],
            "owner": "café",  # non-ASCII: raw UTF-8 in IMDS text and in JSON
        },
        "user-data": "#!/bin/sh\necho hi\n",
    }
}

IID = "/latest/meta-data/instance-id"
# (path, json, token) in the guest's order; token: "real", "none" or "bogus"
REQUESTS = [
    ("/latest/meta-data/", False, "real"),
    (IID, False, "real"),
    ("/latest/meta-data", True, "real"),
    (IID, False, "none"),
    (IID, False, "bogus"),
]
SUFFIX = {"real": "", "none": " no-token", "bogus": " bad-token"}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 501: "Not Implemented"}
MSG_NO_TOKEN = "No MMDS token provided. Use `X-metadata-token` header to specify the session token."
MSG_INVALID_TOKEN = "MMDS token not valid."
MSG_BAD_TTL = "Invalid value for header X-metadata-token-ttl-seconds."
MSG_UNSUPPORTED = "Cannot retrieve value. The value has an unsupported type."
TOKEN_CHARS = 43


# --- reference model ----------------------------------------------------------------------------
def wire(status: int, body: bytes, ctype: str = "text/plain") -> bytes:
    head = f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def lookup(store: dict, path: str) -> tuple[bool, object]:
    node: object = store
    for key in path.rstrip("/").split("/")[1:]:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def get_response(store: dict, path: str, as_json: bool) -> tuple[int, bytes, str]:
    found, value = lookup(store, path)
    if not found:
        return 404, f"Resource not found: {path}.".encode(), "text/plain"
    if as_json:
        return 200, json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode(), "application/json"
    if isinstance(value, dict):
        return 200, "\n".join(k + "/" if isinstance(value[k], dict) else k for k in sorted(value)).encode(), "text/plain"
    if isinstance(value, str):
        return 200, value.encode(), "text/plain"
    return 501, MSG_UNSUPPORTED.encode(), "text/plain"


def token_response(ttl: int) -> tuple[int, bytes]:
    """(status, body) of the token request; a 200 body stands for any 43-character token."""
    text = str(ttl)
    if len(text) > 10:
        return 400, MSG_BAD_TTL.encode()
    if not 1 <= ttl <= 21_600:
        return 400, (
            f"Invalid time to live value provided for token: {ttl}. Please provide a value between 1 and 21600."
        ).encode()
    return 200, b"T" * TOKEN_CHARS


def expected_console(store: dict, *, version: int = 2, ttl: int = 60, resp_cap: int = RESP_MAX) -> bytes:
    cap = min(resp_cap, RESP_MAX)
    out = bytearray()

    def exchange(status: int, body: bytes, ctype: str = "text/plain") -> bytes:
        if len(wire(status, body, ctype)) > cap:
            out.extend(b"mmds: device status 4\n")
            return b""
        return body

    status, body = token_response(ttl)
    body = exchange(status, body)
    have_token = status == 200 and len(body) > 0
    out.extend(f"mmds: token {status} len {len(body)}\n".encode())
    if status != 200:
        out.extend(body + b"\n")
    for path, as_json, token in REQUESTS:
        if version == 2 and token == "bogus":
            status, body, ctype = 401, MSG_INVALID_TOKEN.encode(), "text/plain"
        elif version == 2 and (token == "none" or not have_token):
            status, body, ctype = 401, MSG_NO_TOKEN.encode(), "text/plain"
        else:
            status, body, ctype = get_response(store, path, as_json)
        body = exchange(status, body, ctype)
        fmt = "json" if as_json else "text"
        out.extend(f"mmds: GET {path} {fmt}{SUFFIX[token]} -> {status}\n".encode() + body + b"\n")
    out.extend(b"mmds: done\n")
    return bytes(out)


# --- helpers ------------------------------------------------------------------------------------
class Sink:
    """Records every VMM-side write to RAM as (offset, length)."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def mark_range(self, offset: int, length: int) -> None:
        self.ranges.append((offset, length))


def make_vm(store: dict | None = STORE, *, version: int = 2, quantum: int = 100_000, **params: int) -> MicroVM:
    vm = MicroVM(VmConfig(guest="mmds", mmds_version=version, quantum=quantum, params=params))
    if store is not None:
        vm.mmds.put(store)
    return vm


def run_ok(vm: MicroVM) -> None:
    result = vm.run(LIMIT)
    assert result.reason is StopReason.POWER_OFF, (result, vm.console_output)


# --- tests --------------------------------------------------------------------------------------
def test_catalog_entry() -> None:
    spec = guests.get("mmds")
    assert [(p.name, p.default) for p in spec.params] == [("ttl", 60), ("resp_cap", RESP_MAX)]
    assert spec.default_vcpus == 1


def test_v2_output_is_exact() -> None:
    vm = make_vm()
    run_ok(vm)
    out = vm.console_output
    assert out == expected_console(STORE)
    # spot checks of the model itself, so a shared mistake cannot hide
    assert out.startswith(b"mmds: token 200 len 43\nmmds: GET /latest/meta-data/ text -> 200\n"
                          b"ami-id\ninstance-id\nlocal-hostname\nnetwork/\nowner\nplacement/\ntags\n")
    assert b"-> 200\ni-0123456789abcdef0\n" in out
    assert '"owner":"café"'.encode() in out
    assert out.count(b"-> 401\n") == 2


def test_v1_succeeds_without_token() -> None:
    vm = make_vm(version=1)
    run_ok(vm)
    out = vm.console_output
    assert out == expected_console(STORE, version=1)
    assert b"no-token -> 200\ni-0123456789abcdef0\n" in out
    assert b"bad-token -> 200\ni-0123456789abcdef0\n" in out
    assert b"401" not in out


@pytest.mark.parametrize(
    "store",
    [
        {},
        {"latest": {"meta-data": {"instance-id": 42, "flag": True, "nothing": None}}},
        {"latest": {"meta-data": {"instance-id": "x" * 40_000}}},
    ],
    ids=["empty", "non-string-values", "large-value"],
)
def test_other_stores(store: dict) -> None:
    vm = make_vm(store)
    run_ok(vm)
    assert vm.console_output == expected_console(store)


def test_empty_store_gives_404() -> None:
    vm = make_vm(None)
    run_ok(vm)
    assert b"-> 404\nResource not found: /latest/meta-data/instance-id.\n" in vm.console_output


@pytest.mark.parametrize("ttl", [0, 21_601, 2**64 - 1])
def test_bad_ttl_is_400_and_no_token_is_sent(ttl: int) -> None:
    vm = make_vm(ttl=ttl)
    run_ok(vm)
    assert vm.console_output == expected_console(STORE, ttl=ttl)
    assert vm.console_output.startswith(b"mmds: token 400 len ")
    assert vm.mmds_device.save_state().token_counter == 0


@pytest.mark.parametrize("ttl", [1, 60, 21_600])
def test_guest_token_is_valid_with_the_requested_ttl(ttl: int) -> None:
    vm = make_vm(ttl=ttl, quantum=1_000)
    run_ok(vm)
    assert vm.console_output == expected_console(STORE, ttl=ttl)
    assert vm.mmds_device.save_state().token_counter == 1
    token = vm.memory.read(RAM_BASE + TOKEN_OFFSET, TOKEN_CHARS)
    expiry = int.from_bytes(base64.urlsafe_b64decode(token + b"=")[8:16], "little")
    issued = expiry - ttl * NS_PER_SECOND
    assert 0 <= issued <= vm.clock
    # the device still accepts the token the guest was given
    request = b"GET " + IID.encode() + b" HTTP/1.1\r\nX-metadata-token: " + token + b"\r\n\r\n"
    assert vm.mmds_device.handle_request(request) == wire(200, b"i-0123456789abcdef0")


def test_response_dma_goes_through_guest_memory() -> None:
    vm = make_vm()
    sink = Sink()
    vm.memory.add_write_sink(sink)
    run_ok(vm)
    # one response per request (token + 5 GETs), each written at the response buffer
    assert len(sink.ranges) == 1 + len(REQUESTS)
    assert all(off == RESP_OFFSET for off, _ in sink.ranges)
    json_wire = wire(*get_response(STORE, "/latest/meta-data", True))
    assert sink.ranges[3] == (RESP_OFFSET, len(json_wire))
    assert max(n for _, n in sink.ranges) == len(json_wire)
    # RAM holds the last response (bad token)
    last = wire(401, MSG_INVALID_TOKEN.encode())
    assert sink.ranges[-1] == (RESP_OFFSET, len(last))
    assert vm.memory.read(RAM_BASE + RESP_OFFSET, len(last)) == last
    # and the request buffer the last request the guest built
    req = vm.memory.read(RAM_BASE + REQ_OFFSET, 200)
    assert req.startswith(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                          b"X-metadata-token: " + b"A" * TOKEN_CHARS + b"\r\n\r\n")
    assert not vm.mmds_device.irq_level  # the guest acknowledged every completion


@pytest.mark.parametrize("resp_cap", [0, 100, 120, 300])
def test_small_response_buffer_shows_device_status(resp_cap: int) -> None:
    vm = make_vm(resp_cap=resp_cap)
    sink = Sink()
    vm.memory.add_write_sink(sink)
    run_ok(vm)
    out = vm.console_output
    if resp_cap == 0:  # STATUS 2 (bad buffer): no HTTP status, nothing written
        assert out.startswith(b"mmds: device status 2\nmmds: token 0 len 0\n\n")
        assert out.count(b"mmds: device status 2\n") == 1 + len(REQUESTS)
        assert sink.ranges == []
        return
    assert out == expected_console(STORE, resp_cap=resp_cap)
    assert b"mmds: device status 4\n" in out
    assert all(n <= resp_cap for _, n in sink.ranges)  # nothing written past the capacity


def test_resp_cap_is_clamped_to_the_buffer() -> None:
    vm = make_vm(resp_cap=1 << 30)
    run_ok(vm)
    assert vm.mmds_device.save_state().resp_cap == RESP_MAX
    assert vm.console_output == expected_console(STORE)


@pytest.mark.parametrize("version", [1, 2])
def test_runs_are_deterministic(version: int) -> None:
    a, b = make_vm(version=version, quantum=997), make_vm(version=version, quantum=997)
    run_ok(a)
    run_ok(b)
    assert a.console_output == b.console_output == expected_console(STORE, version=version)
    assert a.state_digest() == b.state_digest()
    assert a.clock == b.clock


def test_cli_run(tmp_path, capsys) -> None:
    from vmm.cli import main

    path = tmp_path / "mmds.json"
    path.write_text(json.dumps(STORE), encoding="utf-8")
    assert main(["run", "mmds", "--mmds-data", str(path), "-q"]) == 0
    assert capsys.readouterr().out.encode() == expected_console(STORE)
    assert main(["run", "mmds", "--mmds-data", str(path), "--mmds-version", "1", "-q", "--param", "ttl=5"]) == 0
    assert capsys.readouterr().out.encode() == expected_console(STORE, version=1, ttl=5)
