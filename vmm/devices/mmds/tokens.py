"""`TokenAuthority`: deterministic, self-verifying MMDS V2 session tokens.

A token is the unpadded base64url text (43 characters) of 32 bytes:

    counter (u64 LE) || expiry_ns (u64 LE) || tag (16 bytes)
    tag = BLAKE2b-128(key=secret, person=b"mmds-token-v1", counter || expiry_ns)

`counter` numbers the tokens issued (0, 1, 2, ...), so the same secret, clock and request
sequence give the same tokens on every run; nothing comes from host time or host
randomness. `expiry_ns` is virtual time (the VM clock, 1 instruction = 1 ns): a token is
valid while `now_ns() < expiry_ns` and its tag verifies under the secret.

Tokens are stateless, like Firecracker's (which seals the expiry with AES-GCM under a random
key): there is no table of issued tokens, so a guest cannot exhaust host memory by asking
for tokens. Saving `secret` and `counter` therefore keeps every issued token valid across a
snapshot and restore (Firecracker does not persist its key; we do, deliberately).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Callable

from vmm.devices.mmds.errors import MmdsConfigError

MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 21_600  # 6 hours, as Firecracker and IMDSv2
NS_PER_SECOND = 1_000_000_000
TOKEN_CHARS = 43  # base64url of 32 bytes, unpadded
SECRET_MIN_BYTES = 16
SECRET_MAX_BYTES = 64  # BLAKE2b key limit
_U64 = (1 << 64) - 1
_PERSON = b"mmds-token-v1"
_TAG_BYTES = 16
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{%d}" % TOKEN_CHARS)


def _tag(secret: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_TAG_BYTES, key=secret, person=_PERSON).digest()


def secret_for_seed(seed: int) -> bytes:
    """The token secret a VM with config seed `seed` (u64) starts with: deterministic, so the
    same seed issues the same tokens."""
    return hashlib.blake2b(seed.to_bytes(8, "little"), person=b"microvm-mmds").digest()


def fresh_secret() -> bytes:
    """A token secret from the host's CSPRNG: the one place host randomness reaches the
    guest, on purpose (a clone restored with mmds="drop" shares no key with its siblings,
    as Firecracker's clones do not)."""
    return secrets.token_bytes(32)


def check_secret(secret: bytes) -> None:
    """Raise `MmdsConfigError` unless `secret` is 16..64 bytes."""
    if type(secret) is not bytes or not SECRET_MIN_BYTES <= len(secret) <= SECRET_MAX_BYTES:
        raise MmdsConfigError(
            f"MMDS token secret must be {SECRET_MIN_BYTES}..{SECRET_MAX_BYTES} bytes"
        )


class TokenAuthority:
    """Issues and checks session tokens; `now_ns` is the VM's virtual clock in ns."""

    def __init__(self, secret: bytes, now_ns: Callable[[], int], counter: int = 0) -> None:
        check_secret(secret)
        if type(counter) is not int or not 0 <= counter <= _U64:
            raise MmdsConfigError(f"MMDS token counter must be a u64, got {counter!r}")
        self.secret = secret
        self.counter = counter
        self._now_ns = now_ns

    @staticmethod
    def ttl_in_range(ttl_seconds: int) -> bool:
        return MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS

    def issue(self, ttl_seconds: int) -> str:
        """A new token valid for `ttl_seconds` (1..21600) of virtual time from now.

        The caller checks the range (`ttl_in_range`); out-of-range values raise ValueError
        as a programming error.
        """
        if not self.ttl_in_range(ttl_seconds):
            raise ValueError(f"token TTL {ttl_seconds} outside {MIN_TTL_SECONDS}..{MAX_TTL_SECONDS}")
        expiry = min(self._now_ns() + ttl_seconds * NS_PER_SECOND, _U64)
        body = self.counter.to_bytes(8, "little") + expiry.to_bytes(8, "little")
        self.counter = (self.counter + 1) & _U64
        raw = body + _tag(self.secret, body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def is_valid(self, token: str) -> bool:
        """True if `token` was issued under this secret and has not expired."""
        if len(token) != TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
            return False
        raw = base64.urlsafe_b64decode(token + "=")
        # Only the canonical spelling is accepted (the last character carries 2 spare bits).
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return False
        body, tag = raw[:16], raw[16:]
        if not hmac.compare_digest(tag, _tag(self.secret, body)):
            return False
        expiry = int.from_bytes(body[8:16], "little")
        return self._now_ns() < expiry
