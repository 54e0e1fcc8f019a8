"""MMDS request parsing and Firecracker-compatible responses (no device, no DMA)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm.devices.mmds import MMDS_V1, MMDS_V2, MmdsService, MmdsStore, TokenAuthority
from vmm.devices.mmds.errors import HttpError
from vmm.devices.mmds.http import MAX_REQUEST_BYTES, REASONS, parse_request
from vmm.devices.mmds.tokens import NS_PER_SECOND

SECRET = b"0123456789abcdef0123456789abcdef"
DATA = {
    "latest": {
        "meta-data": {
            "ami-id": "ami-87654321",
            "reservation-id": "r-79054aef",
            "network": {"interfaces": {}},
        },
        "age": 43,
        "member": False,
        "phones": ["+401234567", "+441234567"],
        "nothing": None,
    },
    "a/b": "slash",
    "..": {"x": "dots"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@dataclass
class Reply:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes


def parse_reply(wire: bytes) -> Reply:
    """Strictly parse a response: status line, unique headers, exact Content-Length."""
    head, sep, body = wire.partition(b"\r\n\r\n")
    assert sep, wire
    lines = head.decode("ascii").split("\r\n")
    version, code, reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1")
    status = int(code)
    assert REASONS[status] == reason
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, value = line.split(": ", 1)
        assert name not in headers and "\r" not in value and "\n" not in value
        headers[name] = value
    assert set(headers) <= {"Content-Type", "Content-Length", "Allow"}
    assert headers["Content-Type"] in ("text/plain", "application/json")
    assert int(headers["Content-Length"]) == len(body)
    return Reply(version, status, headers, body)


def make(version: int = MMDS_V2) -> tuple[MmdsService, Clock]:
    clock = Clock()
    store = MmdsStore()
    store.put(DATA)
    return MmdsService(store, TokenAuthority(SECRET, clock), version), clock


def ask(service: MmdsService, request: bytes | str) -> Reply:
    raw = request.encode("latin-1") if isinstance(request, str) else request
    return parse_reply(service.handle(raw).encode())


def get(path: str, *headers: str, version: str = "HTTP/1.1") -> str:
    return f"GET {path} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"


def token_for(service: MmdsService, ttl: int = 60) -> str:
    reply = ask(service, f"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {ttl}\r\n\r\n")
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/plain"
    return reply.body.decode()


# --- formats (V1 so no token is needed) ----------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/", b"../\na/b\nlatest/"),
        ("/latest", b"age\nmember\nmeta-data/\nnothing\nphones"),
        ("/latest/meta-data/", b"ami-id\nnetwork/\nreservation-id"),
        ("/latest/meta-data/ami-id", b"ami-87654321"),
        ("/latest/meta-data/network/interfaces", b""),
        ("/latest/phones/1", b"+441234567"),
        ("/a~1b", b"slash"),
        ("/../x", b"dots"),  # '..' is a key, not traversal
        ("http://169.254.169.254/latest/meta-data/ami-id", b"ami-87654321"),
        ("HTTP://mmds:80//latest//meta-data//ami-id?x=1#frag", b"ami-87654321"),
        ("/latest/meta-data/ami-id?query=/etc/passwd", b"ami-87654321"),
    ],
)
def test_imds_text(path: str, body: bytes) -> None:
    service, _ = make(MMDS_V1)
    reply = ask(service, get(path))
    assert (reply.status, reply.body, reply.headers["Content-Type"]) == (200, body, "text/plain")


@pytest.mark.parametrize("path", ["/latest/age", "/latest/member", "/latest/phones", "/latest/nothing"])
def test_imds_unsupported_types_are_501(path: str) -> None:
    service, _ = make(MMDS_V1)
    reply = ask(service, get(path))
    assert reply.status == 501
    assert reply.body == b"Cannot retrieve value. The value has an unsupported type."


@pytest.mark.parametrize(
    ("path", "value"),
    [("/latest/age", 43), ("/latest/phones", DATA["latest"]["phones"]), ("/", DATA),
     ("/latest/nothing", None), ("/latest/meta-data/ami-id", "ami-87654321")],
)
@pytest.mark.parametrize("accept", ["application/json", "Application/JSON", "text/plain, application/json;q=0.5"])
def test_json_format(path: str, value: object, accept: str) -> None:
    service, _ = make(MMDS_V1)
    reply = ask(service, get(path, f"Accept: {accept}"))
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == value
    assert b" " not in reply.body  # compact, as serde_json


def test_non_json_accept_gives_imds() -> None:
    service, _ = make(MMDS_V1)
    for accept in ("text/plain", "plain/text", "*/*", ""):
        assert ask(service, get("/latest/meta-data/ami-id", f"Accept: {accept}")).body == b"ami-87654321"


def test_not_found_and_response_version_echo() -> None:
    service, _ = make(MMDS_V1)
    reply = ask(service, get("/nope/x", version="HTTP/1.0"))
    assert (reply.version, reply.status, reply.body) == ("HTTP/1.0", 404, b"Resource not found: /nope/x.")


@pytest.mark.parametrize("version", [MMDS_V1, MMDS_V2])
@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "HEAD", "OPTIONS", "get", "CONNECT"])
def test_method_not_allowed(version: int, method: str) -> None:
    service, _ = make(version)
    reply = ask(service, f"{method} / HTTP/1.1\r\n\r\n")
    assert (reply.status, reply.headers.get("Allow")) == (405, "GET, PUT")
    assert reply.body == b"Not allowed HTTP method."


# --- V2 token flow ---------------------------------------------------------------------------
def test_v2_requires_token_and_expires_in_virtual_time() -> None:
    service, clock = make(MMDS_V2)
    assert ask(service, get("/")).status == 401
    assert ask(service, get("/")).body.startswith(b"No MMDS token provided.")
    clock.now = 7
    token = token_for(service, ttl=2)
    path = "/latest/meta-data/ami-id"
    assert ask(service, get(path, f"X-metadata-token: {token}")).body == b"ami-87654321"
    assert ask(service, get(path, f"x-AWS-ec2-metadata-token:   {token}  ")).status == 200
    clock.now = 7 + 2 * NS_PER_SECOND - 1
    assert ask(service, get(path, f"X-metadata-token: {token}")).status == 200
    clock.now += 1
    reply = ask(service, get(path, f"X-metadata-token: {token}"))
    assert (reply.status, reply.body) == (401, b"MMDS token not valid.")
    # 401 comes before 404: an unauthenticated guest learns nothing about the tree.
    assert ask(service, get("/nope", "X-metadata-token: bogus")).status == 401


def test_token_from_other_secret_rejected() -> None:
    service, _ = make(MMDS_V2)
    other, _ = make(MMDS_V2)
    other.tokens = TokenAuthority(b"another secret, 32 bytes long!!!", Clock())
    token = token_for(other)
    assert ask(service, get("/", f"X-metadata-token: {token}")).status == 401


def test_token_ttl_alias_and_bounds() -> None:
    service, _ = make(MMDS_V2)
    ok = ask(service, "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n")
    assert ok.status == 200
    ok = ask(service, "PUT //latest//api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\n\r\n")
    assert ok.status == 200


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("0", b"Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."),
        ("21601", b"Invalid time to live value provided for token: 21601."),
        ("-1", b"Invalid value for header X-metadata-token-ttl-seconds."),
        ("1.5", b"Invalid value for header"),
        ("abc", b"Invalid value for header"),
        ("", b"Invalid value for header"),
        ("99999999999999999999", b"Invalid value for header"),
    ],
)
def test_bad_ttl_is_400(ttl: str, message: bytes) -> None:
    service, _ = make(MMDS_V2)
    reply = ask(service, f"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {ttl}\r\n\r\n")
    assert reply.status == 400 and reply.body.startswith(message)
    assert service.tokens.counter == 0


def test_token_request_errors() -> None:
    service, _ = make(MMDS_V2)
    reply = ask(service, "PUT /latest/api/token HTTP/1.1\r\n\r\n")
    assert reply.status == 400 and reply.body.startswith(b"Token time to live value not found.")
    reply = ask(service, "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n"
                         "X-Forwarded-For: 1.2.3.4\r\n\r\n")
    assert reply.status == 400 and b"X-Forwarded-For" in reply.body
    reply = ask(service, "PUT /latest/meta-data HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n")
    assert reply.status == 404
    assert service.tokens.counter == 0


def test_v1_ignores_tokens_but_issues_them() -> None:
    service, _ = make(MMDS_V1)
    assert ask(service, get("/latest/meta-data/ami-id", "X-metadata-token: junk")).status == 200
    token = token_for(service)
    assert ask(service, get("/latest/meta-data/ami-id", f"X-metadata-token: {token}")).status == 200


def test_tokens_are_deterministic_across_services() -> None:
    a, _ = make(MMDS_V2)
    b, _ = make(MMDS_V2)
    assert [token_for(a) for _ in range(3)] == [token_for(b) for _ in range(3)]


# --- malformed requests ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"GET / HTTP/1.1\r\n", 400),  # truncated: no blank line
        (b"GET / HTTP/1.1\n\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nAccept: x\n\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\rInjected: b\r\n\r\n", 400),  # CR inside a value
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nAccept : text/plain\r\n\r\n", 400),  # space before colon
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nAccept: a\r\naccept: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-metadata-token: a\r\nX-aws-ec2-metadata-token: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400),  # non-ASCII path
        (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET / http/1.1\r\n\r\n", 400),
        (b"GET\t/ HTTP/1.1\r\n\r\n", 400),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\n\r\n", 400),
        (b"GET latest HTTP/1.1\r\n\r\n", 400),
        (b"GET http:// HTTP/1.1\r\n\r\n", 400),  # empty absolute path, as Firecracker
        (b"GET http://host?x=/y HTTP/1.1\r\n\r\n", 400),
        (b"GET https://host/ HTTP/1.1\r\n\r\n", 400),
        (b"GET ?x HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\nbody-without-length", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_BYTES + b"\r\n\r\n", 413),
        (bytes(range(256)) * 4, 400),
    ],
)
def test_malformed_requests(raw: bytes, status: int) -> None:
    service, _ = make(MMDS_V1)
    assert ask(service, raw).status == status
    with pytest.raises(HttpError):
        parse_request(raw)


def test_accepted_edge_forms() -> None:
    service, _ = make(MMDS_V1)
    ok = [
        b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
        b"GET / HTTP/1.1\r\nX-Empty:\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Tab:\tv\t\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",  # unknown headers may repeat
        b"GET /" + b"a" * (MAX_REQUEST_BYTES - 20) + b" HTTP/1.1\r\n\r\n",
    ]
    statuses = [ask(service, raw).status for raw in ok]
    assert statuses == [200, 200, 200, 200, 404]


def test_request_size_cap_is_exact() -> None:
    head = b"GET / HTTP/1.1\r\nContent-Length: "
    def sized(n: int) -> bytes:
        body_len = n - len(head) - 8  # 4 digits + CRLFCRLF
        return head + b"%04d\r\n\r\n" % body_len + b"x" * body_len
    assert len(sized(MAX_REQUEST_BYTES)) == MAX_REQUEST_BYTES
    service, _ = make(MMDS_V1)
    assert ask(service, sized(MAX_REQUEST_BYTES)).status == 200
    assert ask(service, sized(MAX_REQUEST_BYTES + 1)).status == 413


# --- hostile input, generated -------------------------------------------------------------
_METHODS = st.sampled_from(["GET", "PUT", "POST", "get", "G\x00T", "", "GET GET", "\u00c9"])
_TARGETS = st.one_of(
    st.sampled_from([
        "/", "/latest/meta-data/", "/latest/api/token", "http://169.254.169.254/latest",
        "http://", "HTTP://x:99999/", "/../../etc/passwd", "/a?b=c#d", "/%2e%2e/", "//", "*",
        "/latest/phones/0", "/~", "/a/\u00e9", "/" + "a/" * 600,
    ]),
    st.text(min_size=0, max_size=40),
)
_HEADER_NAMES = st.sampled_from([
    "Accept", "X-metadata-token", "X-aws-ec2-metadata-token", "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds", "X-Forwarded-For", "Content-Length",
    "Transfer-Encoding", "Host", "X: Y", "", " Accept", "Acc\u00e9pt",
])
_HEADER_VALUES = st.one_of(
    st.sampled_from(["application/json", "60", "0", "21601", "-3", "a\r\nX-Injected: 1", "\r", "\n",
                     "x" * 5000, "\u2603", "1e3", "4", "chunked"]),
    st.text(max_size=30),
)
_EOLS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r", ""])


@st.composite
def hostile_requests(draw: st.DrawFn) -> bytes:
    """Near-valid requests with hostile parts, or plain garbage."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    eol = draw(_EOLS)
    text = f"{draw(_METHODS)} {draw(_TARGETS)} {draw(st.sampled_from(['HTTP/1.1', 'HTTP/1.0', 'HTTP/9', '']))}{eol}"
    for name, value in draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=5)):
        text += f"{name}: {value}{draw(_EOLS)}"
    text += draw(_EOLS) + draw(st.text(max_size=10))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=hostile_requests(), version=st.sampled_from([MMDS_V1, MMDS_V2]))
def test_hostile_requests_always_get_valid_responses(raw: bytes, version: int) -> None:
    service, _ = make(version)
    try:
        parse_request(raw)
    except HttpError as err:  # the parser raises nothing but its typed error
        assert err.status in REASONS
    reply = ask(service, raw)  # handle() never raises; the reply is well-formed
    assert reply.status in REASONS
    if reply.status == 405:
        assert reply.headers["Allow"] == "GET, PUT"
