"""Errors raised by the VMM. Snapshot errors live in `snapshot.errors`."""
from __future__ import annotations


class VmmError(Exception):
    """Base class for VMM errors a user can act on (bad config, bad image, bad request)."""


class ConfigError(VmmError):
    """The VM configuration is invalid; the message says which field and why."""


class ImageError(VmmError):
    """A guest image could not be read or does not fit in guest RAM."""


class GuestMemoryError(VmmError):
    """A VMM-side access to guest RAM fell outside RAM."""


class HostResourceError(VmmError):
    """The host cannot give the VM a resource it needs (e.g. address space under ulimit -v)."""
