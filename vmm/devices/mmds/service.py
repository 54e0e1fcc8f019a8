"""`MmdsService`: answers one guest HTTP request from the data store, as Firecracker's MMDS.

Semantics (Firecracker's current user guide; error bodies are Firecracker's messages):

| request | V1 | V2 |
| --- | --- | --- |
| `GET <path>` | 200 with the value; tokens ignored | needs a valid `X-metadata-token` (alias `X-aws-ec2-metadata-token`): none or invalid/expired is 401; then as V1 |
| `PUT /latest/api/token` | issues a token (kept for migration to V2) | issues a token |
| `PUT` other path | 404 | 404 |
| other methods | 405, `Allow: GET, PUT` | 405, `Allow: GET, PUT` |

- Token request: `X-metadata-token-ttl-seconds` (alias `X-aws-ec2-metadata-token-ttl-seconds`)
  must be decimal 1..21600: missing, non-numeric or out of range is 400. A PUT carrying
  `X-Forwarded-For` is 400. The response body is the token, `text/plain`.
- Output format: JSON (`application/json`) if any media range in `Accept` is
  `application/json`, otherwise IMDS text: an object lists its keys in sorted order, one
  per line joined by `\\n` (no trailing newline), a key whose value is an object gets a
  trailing `/`; a string prints as is. Other values (numbers, booleans, null, arrays) in
  IMDS format are 501 "Cannot retrieve value. The value has an unsupported type.", as
  Firecracker.
- A path that is not in the store is 404 "Resource not found: <path>.".
- Malformed requests are 400, requests over 4096 bytes 413, Transfer-Encoding 501 (see
  `vmm.devices.mmds.http`).
"""
from __future__ import annotations

from vmm.devices.mmds.errors import HttpError, MmdsConfigError
from vmm.devices.mmds.http import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TEXT,
    HEADER_ACCEPT,
    HEADER_FORWARDED_FOR,
    HEADER_TOKEN,
    HEADER_TOKEN_TTL,
    HttpRequest,
    HttpResponse,
    parse_request,
)
from vmm.devices.mmds.store import JsonValue, MmdsStore, canonical_json
from vmm.devices.mmds.tokens import MAX_TTL_SECONDS, MIN_TTL_SECONDS, TokenAuthority

MMDS_V1 = 1
MMDS_V2 = 2
# Firecracker's `/mmds/config` still defaults to V1 (deprecated); new VMs here get V2.
DEFAULT_VERSION = MMDS_V2
TOKEN_PATH = "/latest/api/token"
ALLOWED_METHODS = ("GET", "PUT")

MSG_NOT_ALLOWED = "Not allowed HTTP method."
MSG_NO_TOKEN = (
    "No MMDS token provided. Use `X-metadata-token` header to specify the session token."
)
MSG_INVALID_TOKEN = "MMDS token not valid."
MSG_NO_TTL = (
    "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to "
    "specify the token's lifetime."
)
MSG_BAD_TTL = "Invalid value for header X-metadata-token-ttl-seconds."
MSG_FORWARDED = "Unsupported header name. Key: X-Forwarded-For."
MSG_UNSUPPORTED_TYPE = "Cannot retrieve value. The value has an unsupported type."


def check_version(version: int) -> None:
    if type(version) is not int or version not in (MMDS_V1, MMDS_V2):
        raise MmdsConfigError(f"MMDS version must be 1 or 2, got {version!r}")


def _sanitize(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _wants_json(request: HttpRequest) -> bool:
    accept = request.header(HEADER_ACCEPT) or ""
    ranges = (part.split(";", 1)[0].strip().lower() for part in accept.split(","))
    return CONTENT_TYPE_JSON in ranges


def format_imds(value: JsonValue) -> bytes:
    """IMDS text of `value`; raises HttpError 501 for types IMDS cannot show."""
    if type(value) is dict:
        keys = (key + "/" if type(value[key]) is dict else key for key in sorted(value))
        return "\n".join(keys).encode("utf-8")
    if type(value) is str:
        return value.encode("utf-8")
    raise HttpError(501, MSG_UNSUPPORTED_TYPE)


class MmdsService:
    """Store + token authority + version: turns request bytes into response bytes."""

    def __init__(self, store: MmdsStore, tokens: TokenAuthority, version: int = DEFAULT_VERSION) -> None:
        check_version(version)
        self.store = store
        self.tokens = tokens
        self.version = version

    def handle(self, raw: bytes) -> HttpResponse:
        """The response to one request's bytes. Never raises for any input."""
        http_version = "HTTP/1.1"
        try:
            request = parse_request(raw)
            http_version = request.version
            response = self._dispatch(request)
        except HttpError as err:
            response = HttpResponse(err.status, err.message.encode("utf-8"), allow=err.allow)
        response.version = http_version
        return response

    def _dispatch(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET":
            if self.version == MMDS_V2:
                self._require_token(request)
            return self._get(request)
        if request.method == "PUT":
            return self._put_token(request)
        raise HttpError(405, MSG_NOT_ALLOWED, allow=ALLOWED_METHODS)

    def _require_token(self, request: HttpRequest) -> None:
        token = request.header(HEADER_TOKEN)
        if token is None:
            raise HttpError(401, MSG_NO_TOKEN)
        if not self.tokens.is_valid(token):
            raise HttpError(401, MSG_INVALID_TOKEN)

    def _get(self, request: HttpRequest) -> HttpResponse:
        found, value = self.store.lookup(request.path)
        if not found:
            raise HttpError(404, f"Resource not found: {request.path}.")
        if _wants_json(request):
            return HttpResponse(200, canonical_json(value), CONTENT_TYPE_JSON)
        return HttpResponse(200, format_imds(value), CONTENT_TYPE_TEXT)

    def _put_token(self, request: HttpRequest) -> HttpResponse:
        if request.header(HEADER_FORWARDED_FOR) is not None:
            raise HttpError(400, MSG_FORWARDED)
        if _sanitize(request.path) != TOKEN_PATH:
            raise HttpError(404, f"Resource not found: {request.path}.")
        ttl_text = request.header(HEADER_TOKEN_TTL)
        if ttl_text is None:
            raise HttpError(400, MSG_NO_TTL)
        if not (ttl_text.isascii() and ttl_text.isdigit() and len(ttl_text) <= 10):
            raise HttpError(400, MSG_BAD_TTL)
        ttl = int(ttl_text)
        if not TokenAuthority.ttl_in_range(ttl):
            raise HttpError(
                400,
                f"Invalid time to live value provided for token: {ttl}. Please provide a "
                f"value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}.",
            )
        return HttpResponse(200, self.tokens.issue(ttl).encode("ascii"), CONTENT_TYPE_TEXT)
