"""microvm-harness VMM: a simulated AArch64 microVM on Unicorn.

Start with `MicroVM(VmConfig(guest="hello")).run()`.

The names below load on first use (PEP 562), so that importing a leaf module such as
`vmm.layout` (the guest-facing constants guests/ builds against) does not load the machine.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmm.config import VmConfig
    from vmm.errors import ConfigError, ImageError, VmmError
    from vmm.fault import FaultReport
    from vmm.machine import MicroVM
    from vmm.scheduler import RunResult, StopReason

_EXPORTS = {
    "MicroVM": "vmm.machine",
    "VmConfig": "vmm.config",
    "RunResult": "vmm.scheduler",
    "StopReason": "vmm.scheduler",
    "FaultReport": "vmm.fault",
    "VmmError": "vmm.errors",
    "ConfigError": "vmm.errors",
    "ImageError": "vmm.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vmm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
