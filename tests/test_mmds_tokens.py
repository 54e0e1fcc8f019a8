"""MMDS V2 session tokens: deterministic, keyed, tamper-evident, expiring in virtual time."""
from __future__ import annotations

import base64

import pytest

from vmm.devices.mmds import MmdsConfigError, TokenAuthority
from vmm.devices.mmds.tokens import MAX_TTL_SECONDS, NS_PER_SECOND, TOKEN_CHARS

SECRET = bytes(range(32))


class Clock:
    """A fake virtual clock in ns."""

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_tokens_are_deterministic_and_unique() -> None:
    a, b = TokenAuthority(SECRET, Clock(5)), TokenAuthority(SECRET, Clock(5))
    seq_a = [a.issue(60) for _ in range(5)]
    assert seq_a == [b.issue(60) for _ in range(5)]
    assert len(set(seq_a)) == 5
    assert all(len(t) == TOKEN_CHARS and t.isascii() and "=" not in t for t in seq_a)
    assert a.counter == 5
    other = TokenAuthority(bytes(32), Clock(5))
    assert other.issue(60) != seq_a[0]
    assert not other.is_valid(seq_a[0])


def test_expiry_in_virtual_time() -> None:
    clock = Clock(1_000)
    ta = TokenAuthority(SECRET, clock)
    token = ta.issue(2)
    assert ta.is_valid(token)
    clock.now = 1_000 + 2 * NS_PER_SECOND - 1
    assert ta.is_valid(token)
    clock.now += 1
    assert not ta.is_valid(token)


def test_restored_authority_accepts_old_tokens() -> None:
    clock = Clock()
    ta = TokenAuthority(SECRET, clock)
    token = ta.issue(MAX_TTL_SECONDS)
    again = TokenAuthority(SECRET, clock, counter=ta.counter)
    assert again.is_valid(token)
    assert again.issue(1) != token


def _flip(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "="))
    raw[index] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 8, 15, 16, 31])
def test_tampered_tokens_rejected(index: int) -> None:
    ta = TokenAuthority(SECRET, Clock())
    token = ta.issue(10)
    assert not ta.is_valid(_flip(token, index))


def test_malformed_tokens_rejected() -> None:
    ta = TokenAuthority(SECRET, Clock())
    token = ta.issue(10)
    # Same bytes, non-canonical spelling: change the 2 spare bits of the last character.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(token[-1])
    alias = token[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    assert alias != token and not ta.is_valid(alias)
    for bad in ("", token[:-1], token + "A", token + "=", token.replace(token[3], "+"),
                "é" * TOKEN_CHARS, " " + token[1:], "A" * TOKEN_CHARS):
        assert not ta.is_valid(bad)


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_issue_rejects_out_of_range_ttl(ttl: int) -> None:
    with pytest.raises(ValueError):
        TokenAuthority(SECRET, Clock()).issue(ttl)


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 65, "a str secret of 32 characters!!"])
def test_secret_checked(secret: bytes) -> None:
    with pytest.raises(MmdsConfigError, match="token secret must be 16..64 bytes"):
        TokenAuthority(secret, Clock())


def test_counter_checked() -> None:
    with pytest.raises(MmdsConfigError):
        TokenAuthority(SECRET, Clock(), counter=-1)
    with pytest.raises(MmdsConfigError):
        TokenAuthority(SECRET, Clock(), counter=1 << 64)
