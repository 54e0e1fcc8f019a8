"""microvm-harness VMM: a simulated AArch64 microVM on Unicorn.

Start with `MicroVM(VmConfig(guest="hello")).run()`.
"""
from vmm.config import VmConfig
from vmm.errors import ConfigError, ImageError, VmmError
from vmm.fault import FaultReport
from vmm.machine import MicroVM
from vmm.scheduler import RunResult, StopReason

__all__ = ["MicroVM", "VmConfig", "RunResult", "StopReason", "FaultReport", "VmmError", "ConfigError", "ImageError"]
