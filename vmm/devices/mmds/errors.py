"""Typed errors of the MMDS device model.

Host-side errors (`MmdsError` and subclasses) reach the VMM's caller and carry stable
messages. `HttpError` is internal to the guest-facing request path: the service turns it
into an HTTP error response and it never escapes to the VMM.
"""
from __future__ import annotations

from vmm.errors import VmmError


class MmdsError(VmmError):
    """Base class of MMDS errors a host user can act on."""


class MmdsConfigError(MmdsError):
    """Bad MMDS configuration (version, data store limit, token secret)."""


class MmdsInvalidData(MmdsError):
    """A value put or patched into the data store is not JSON-compatible."""


class MmdsDataTooLarge(MmdsError):
    """The JSON serialization of the data store would exceed the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"MMDS data store would be {size} bytes, over the limit of {limit} bytes"
        )
        self.size = size
        self.limit = limit


class MmdsNotFound(MmdsError):
    """A host `get` named a path that is not in the data store."""

    def __init__(self, path: str) -> None:
        super().__init__(f"MMDS resource not found: {path!r}")
        self.path = path


class MmdsStateError(MmdsError):
    """A saved `MmdsState` is inconsistent and cannot be restored."""


class HttpError(Exception):
    """A guest request is answered with HTTP `status` and plain-text body `message`.

    `allow` lists the methods for the Allow header of a 405 response.
    """

    def __init__(self, status: int, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow
