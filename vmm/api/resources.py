"""What the API configures before boot (Firecracker's `resources.rs`): machine settings, boot
source, MMDS config, and how they map to this machine's `VmConfig`; the devices this machine
lacks; `ApiError`, the 400 for a request that cannot be honoured.

- `kernel_image_path` is an image file (flat binary or ELF, a regular file) or `builtin:NAME`
  for a built-in guest (`microvm guests`); `boot_args` holds guest parameters as NAME=VALUE
  words (integers); `initrd_path` is refused (one image, no initrd).
- Without /mmds/config the MMDS speaks V2 (this machine's default; Firecracker would have no
  MMDS); with it, the body's `version`, V1 if absent (Firecracker's default).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import guests
from vmm.api.config import BootSource, Logger, MachineConfiguration, MachineConfigurationPatch, Metrics, MmdsConfig, SerialDevice
from vmm.config import VmConfig
from vmm.errors import VmmError
from vmm.layout import MIB, RAM_MAX_SIZE

BUILTIN_PREFIX = "builtin:"
# Firecracker's MmdsConfig.ipv4_address format: a link-local address, 169.254.[1-254].[0-255]
_MMDS_IPV4 = re.compile(r"169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])")

# The devices Firecracker offers that this machine does not: endpoint prefix -> name.
UNSUPPORTED_DEVICES = {
    "/drives": "block devices (drives)",
    "/pmem": "pmem devices",
    "/network-interfaces": "network interfaces (virtio-net)",
    "/vsock": "vsock devices",
    "/balloon": "balloon devices",
    "/entropy": "entropy devices (virtio-rng)",
    "/cpu-config": "custom CPU templates (cpu-config)",
    "/hotplug": "memory hotplug (virtio-mem)",
}
MACHINE_DEVICES = "a PL011 UART, an MMDS device, a GICv3 and the generic timer"


class ApiError(VmmError):
    """The request cannot be honoured now or with these values (HTTP 400)."""


def unsupported_device(name: str) -> ApiError:
    return ApiError(f"{name} are not supported: this machine has {MACHINE_DEVICES} only")


@dataclass
class MachineSettings:
    """What /machine-config holds (Firecracker's defaults: 1 vCPU, 128 MiB)."""

    vcpu_count: int = 1
    mem_size_mib: int = 128
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: str = "None"

    def updated(self, body: MachineConfiguration | MachineConfigurationPatch) -> MachineSettings:
        """These settings after PUT (unset optional fields back to their defaults) or PATCH
        (unset fields unchanged); ApiError for what this machine cannot do."""
        base = MachineSettings(self.vcpu_count, self.mem_size_mib) if isinstance(body, MachineConfiguration) else self
        new = MachineSettings(
            vcpu_count=_pick(body.vcpu_count, base.vcpu_count),
            mem_size_mib=_pick(body.mem_size_mib, base.mem_size_mib),
            smt=_pick(body.smt, base.smt),
            track_dirty_pages=_pick(body.track_dirty_pages, base.track_dirty_pages),
            huge_pages=_pick(body.huge_pages, base.huge_pages),
        )
        if new.smt:
            raise ApiError("smt: simultaneous multithreading can be enabled only on x86_64; this machine is AArch64")
        if body.cpu_template not in (None, "None"):
            raise unsupported_device("CPU templates (cpu_template)")
        if new.huge_pages != "None":
            raise ApiError(f"huge_pages {new.huge_pages!r} is not supported: guest RAM uses host pages (\"None\")")
        return new

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "smt": self.smt,
            "track_dirty_pages": self.track_dirty_pages,
            "huge_pages": self.huge_pages,
        }


@dataclass
class Resources:
    """Everything configured before boot, as the API reports it back (GET /vm/config)."""

    machine: MachineSettings = field(default_factory=MachineSettings)
    boot_source: BootSource | None = None
    mmds_config: MmdsConfig | None = None
    logger: Logger | None = None
    metrics: Metrics | None = None
    serial: SerialDevice | None = None

    def vm_config(self, machine: MachineSettings | None = None, boot: BootSource | None = None) -> VmConfig:
        """The VmConfig these resources describe, with `machine` / `boot` in place of the
        current ones (to check a request before taking it); ApiError naming a bad value."""
        machine = machine or self.machine
        boot = boot or self.boot_source
        guest = image = None
        params: dict[str, int] = {}
        if boot is not None:
            path = boot.kernel_image_path
            if path.startswith(BUILTIN_PREFIX):
                guest = path[len(BUILTIN_PREFIX):]
            else:
                image = path
            params = guest_params(boot.boot_args)
        mmds = self.mmds_config
        version = 2 if mmds is None else (1 if (mmds.version or "V1") == "V1" else 2)
        try:
            if guest is not None:
                guests.get(guest).resolve_params(params)
            return VmConfig(
                vcpus=machine.vcpu_count,
                mem_size=machine.mem_size_mib * MIB,
                guest=guest,
                image=image,
                params=params,
                track_dirty_pages=machine.track_dirty_pages,
                mmds_version=version,
            )
        except VmmError as exc:
            raise ApiError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        """GET /vm/config: every configured resource in the config file's shape."""
        out: dict[str, Any] = {"machine-config": self.machine.to_json()}
        sections = (("boot-source", self.boot_source), ("mmds-config", self.mmds_config), ("logger", self.logger), ("metrics", self.metrics))
        for key, body in sections:
            if body is not None:
                out[key] = {k: v for k, v in body.__dict__.items() if v is not None}
        out["drives"] = []
        out["network-interfaces"] = []
        return out


def check_boot_source(body: BootSource) -> None:
    """ApiError unless this machine can boot `body`: no initrd; an image path must be a regular
    file that fits the largest RAM (untrusted: a FIFO or device would block or never end)."""
    if body.initrd_path is not None:
        raise ApiError("initrd_path is not supported: this machine boots one image, without an initrd")
    path = body.kernel_image_path
    if path.startswith(BUILTIN_PREFIX):
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ApiError(f"kernel_image_path {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ApiError(f"kernel_image_path {path}: not a regular file")
    if st.st_size > RAM_MAX_SIZE:
        raise ApiError(f"kernel_image_path {path}: {st.st_size} bytes, larger than the largest guest RAM")


def check_mmds_config(body: MmdsConfig) -> None:
    if body.ipv4_address is not None and not _MMDS_IPV4.fullmatch(body.ipv4_address):
        raise ApiError(f"ipv4_address {body.ipv4_address[:40]!r} is not a valid link-local address 169.254.[1-254].[0-255]")
    if body.imds_compat:
        raise ApiError("imds_compat is not supported: the MMDS answers JSON or IMDS text by the Accept header")


def guest_params(boot_args: str | None) -> dict[str, int]:
    """Guest parameters from `boot_args`: space-separated NAME=VALUE words, VALUE an integer
    (decimal or 0x hex). ApiError naming the first word that is not one."""
    params: dict[str, int] = {}
    for word in (boot_args or "").split():
        name, sep, value = word.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            params[name] = int(value, 0)
        except ValueError:
            raise ApiError(
                f"boot_args word {word[:40]!r} is not NAME=INTEGER (boot_args carries guest parameters)"
            ) from None
    return params


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value
