"""HTTP/1.1 wire format for the MMDS transport: a strict request parser and a response encoder.

One request per buffer. The parser accepts exactly:

    request-line CRLF *(header-field CRLF) CRLF [body of Content-Length bytes]

- At most `MAX_REQUEST_BYTES` (4096) bytes in all (request line + headers + body); more is 413.
- Request line: `METHOD SP target SP HTTP/1.0|HTTP/1.1`, single spaces. Method is an RFC 7230
  token (case-sensitive). Target is origin-form (`/path`) or absolute-form
  (`http://host[:port]/path`); the query and fragment are dropped; an empty path is 400.
- The head must be printable ASCII (0x20..0x7E) plus HTAB: bare CR or LF, NUL, other
  controls and non-ASCII bytes are 400, so header injection cannot split a field.
- Header field: `name ":" OWS value OWS`; no space before the colon, no obs-fold (400).
  Names are matched case-insensitively. A repeated singleton header (`SINGLETON_HEADERS`,
  aliases count as the same header) is 400. Unknown headers are ignored.
- Body: only with a valid `Content-Length`, which must match the bytes after the head
  exactly (trailing or missing bytes are 400). `Transfer-Encoding` is 501.

Every rejection raises `HttpError` with a stable message. Responses carry only
`Content-Type`, `Content-Length` and, for 405, `Allow`; no Date or Server header, so the
bytes are a pure function of the request and the device state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmm.devices.mmds.errors import HttpError

MAX_REQUEST_BYTES = 4096

HEADER_ACCEPT = "accept"
HEADER_CONTENT_LENGTH = "content-length"
HEADER_TRANSFER_ENCODING = "transfer-encoding"
HEADER_FORWARDED_FOR = "x-forwarded-for"
# Each tuple is one logical header: the name and its aliases (Firecracker accepts both).
HEADER_TOKEN = ("x-metadata-token", "x-aws-ec2-metadata-token")
HEADER_TOKEN_TTL = ("x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds")
SINGLETON_HEADERS: tuple[tuple[str, ...], ...] = (
    ("host",),
    (HEADER_ACCEPT,),
    (HEADER_CONTENT_LENGTH,),
    HEADER_TOKEN,
    HEADER_TOKEN_TTL,
)

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    501: "Not Implemented",
}
CONTENT_TYPE_TEXT = "text/plain"
CONTENT_TYPE_JSON = "application/json"
DEFAULT_VERSION = "HTTP/1.1"
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEAD_RE = re.compile(r"[\t\x20-\x7e]*")
_TARGET_RE = re.compile(r"[\x21-\x7e]+")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")


@dataclass
class HttpRequest:
    """A parsed request. `headers` maps lower-case names to their values in order."""

    method: str
    path: str
    version: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, names: str | tuple[str, ...]) -> str | None:
        """Value of the header called `names` (or any alias in the tuple), else None."""
        for name in (names,) if isinstance(names, str) else names:
            values = self.headers.get(name)
            if values:
                return values[0]
        return None


@dataclass
class HttpResponse:
    """A response to encode; `allow` fills the Allow header of a 405."""

    status: int
    body: bytes = b""
    content_type: str = CONTENT_TYPE_TEXT
    version: str = DEFAULT_VERSION
    allow: tuple[str, ...] = ()

    def encode(self) -> bytes:
        lines = [
            f"{self.version} {self.status} {REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
        ]
        if self.allow:
            lines.append("Allow: " + ", ".join(self.allow))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.body


def _bad(message: str) -> HttpError:
    return HttpError(400, message)


def _parse_target(target: str) -> str:
    """Absolute path of a request target, without query or fragment."""
    if not _TARGET_RE.fullmatch(target):
        raise _bad("Invalid URI.")
    if target[:7].lower() == "http://":
        rest = target[7:]
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        target = rest[cut:] if rest[cut : cut + 1] == "/" else ""
    elif not target.startswith("/"):
        raise _bad("Invalid URI.")
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        raise _bad("Invalid URI.")
    return path


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _bad("Invalid request line.")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise _bad("Invalid HTTP method.")
    if version not in _VERSIONS:
        raise _bad("Unsupported HTTP version.")
    return method, _parse_target(target), version


def _parse_headers(lines: list[str]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            raise _bad("Invalid header.")
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    for group in SINGLETON_HEADERS:
        if sum(len(headers.get(name, ())) for name in group) > 1:
            raise _bad(f"Duplicate header: {group[0]}.")
    return headers


def parse_request(raw: bytes) -> HttpRequest:
    """Parse one complete request (see module docstring); raises `HttpError`."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise HttpError(413, f"Request exceeds {MAX_REQUEST_BYTES} bytes.")
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise _bad("Incomplete request: missing end of headers.")
    head = raw[:end].decode("latin-1")
    # Once the CRLF line ends are removed, any CR or LF left is a bare one: refuse it.
    if not _HEAD_RE.fullmatch(head.replace("\r\n", "")):
        raise _bad("Invalid characters in request head.")
    lines = head.split("\r\n")
    method, path, version = _parse_request_line(lines[0])
    headers = _parse_headers(lines[1:])
    body = raw[end + 4 :]
    request = HttpRequest(method, path, version, headers, body)
    if request.header(HEADER_TRANSFER_ENCODING) is not None:
        raise HttpError(501, "Transfer-Encoding is not supported.")
    length = request.header(HEADER_CONTENT_LENGTH)
    if length is None:
        expected = 0
    elif _DIGITS_RE.fullmatch(length):
        expected = int(length)
    else:
        raise _bad("Invalid Content-Length.")
    if len(body) != expected:
        raise _bad("Body length does not match Content-Length.")
    return request
