"""Typed request bodies of the Firecracker API (Firecracker's `vmm_config`), and their parser.

Each body is a frozen dataclass whose field names are the JSON field names, with types taken
from Firecracker's published API definition (vmm/api/firecracker-api.json records the subset
this harness serves; tests/test_api_schema.py checks these classes against it):

- a field without a default is required; the others may be absent or `null`;
- `str`, `int` (a JSON integer, not a boolean), `bool`, `list[str]`, `dict` (any JSON object),
  `Literal[...]` (one of the listed strings) and nested bodies.

`parse_body(cls, value)` checks a decoded JSON value against `cls` and raises `BodyError`
(one line, naming the field) for an unknown field, a missing required field or a wrong type,
as Firecracker's serde-based parser does. It checks shape only; what the values mean (RAM
sizes, paths, the state machine) is the controller's business (vmm.api.controller).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from vmm.errors import VmmError

T = TypeVar("T")


class BodyError(VmmError):
    """A request body does not have the shape its endpoint takes (HTTP 400)."""


# --- bodies, named as in Firecracker's API definition -------------------------------------------
CpuTemplate = Literal["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]  # a deprecated string enum


@dataclass(frozen=True)
class BootSource:
    """PUT /boot-source. `kernel_image_path` is an image file or `builtin:NAME`; `boot_args`
    holds guest parameters as space-separated NAME=VALUE words."""

    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


@dataclass(frozen=True)
class MachineConfiguration:
    """PUT /machine-config (PATCH takes the same fields, all optional)."""

    vcpu_count: int
    mem_size_mib: int
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    cpu_template: CpuTemplate | None = None
    huge_pages: Literal["None", "Transparent", "2M"] | None = None


@dataclass(frozen=True)
class MachineConfigurationPatch:
    """PATCH /machine-config: MachineConfiguration with every field optional."""

    vcpu_count: int | None = None
    mem_size_mib: int | None = None
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    cpu_template: CpuTemplate | None = None
    huge_pages: Literal["None", "Transparent", "2M"] | None = None


@dataclass(frozen=True)
class InstanceActionInfo:
    """PUT /actions."""

    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


@dataclass(frozen=True)
class Vm:
    """PATCH /vm."""

    state: Literal["Paused", "Resumed"]


@dataclass(frozen=True)
class SnapshotCreateParams:
    """PUT /snapshot/create."""

    snapshot_path: str
    mem_file_path: str
    snapshot_type: Literal["Full", "Diff"] | None = None


@dataclass(frozen=True)
class MemoryBackend:
    """`mem_backend` of PUT /snapshot/load."""

    backend_type: Literal["File", "Uffd"]
    backend_path: str


@dataclass(frozen=True)
class NetworkOverride:
    iface_id: str
    host_dev_name: str


@dataclass(frozen=True)
class VsockOverride:
    uds_path: str


@dataclass(frozen=True)
class SnapshotLoadParams:
    """PUT /snapshot/load. Exactly one of `mem_backend` and `mem_file_path` (deprecated)."""

    snapshot_path: str
    mem_backend: MemoryBackend | None = None
    mem_file_path: str | None = None
    track_dirty_pages: bool | None = None
    enable_diff_snapshots: bool | None = None
    resume_vm: bool | None = None
    network_overrides: list[NetworkOverride] | None = None
    vsock_override: VsockOverride | None = None
    clock_realtime: bool | None = None
    huge_pages: Literal["Snapshot", "None", "Transparent", "2M"] | None = None


@dataclass(frozen=True)
class MmdsConfig:
    """PUT /mmds/config."""

    network_interfaces: list[str]
    version: Literal["V1", "V2"] | None = None
    ipv4_address: str | None = None
    imds_compat: bool | None = None


@dataclass(frozen=True)
class Logger:
    """PUT /logger."""

    log_path: str | None = None
    level: Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"] | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None


@dataclass(frozen=True)
class Metrics:
    """PUT /metrics."""

    metrics_path: str
    emit_id: bool | None = None
    properties: dict[str, str] | None = None


@dataclass(frozen=True)
class TokenBucket:
    size: int
    refill_time: int
    one_time_burst: int | None = None


@dataclass(frozen=True)
class SerialDevice:
    """PUT /serial."""

    serial_out_path: str | None = None
    rate_limiter: TokenBucket | None = None


# Logger levels are case-insensitive in Firecracker: normalised before parsing.
LOG_LEVELS = ("Error", "Warning", "Info", "Debug", "Trace", "Off")


# --- the parser -----------------------------------------------------------------------------------
_JSON_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "an array"}


def required_fields(cls: type) -> list[str]:
    """Names of `cls`'s required fields (no default), in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]


def field_types(cls: type) -> dict[str, Any]:
    """{field name: type} of body `cls`, with `X | None` unwrapped to X."""
    hints = typing.get_type_hints(cls)
    return {f.name: _unwrap_optional(hints[f.name]) for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def parse_body(cls: type[T], value: object, where: str = "the request body") -> T:
    """`value` (decoded JSON) as a `cls`; BodyError naming the first problem otherwise."""
    if type(value) is not dict:
        raise BodyError(f"{where} must be a JSON object")
    types = field_types(cls)
    for key in value:
        if key not in types:
            expected = ", ".join(f"`{n}`" for n in types)
            raise BodyError(f"unknown field `{key}` in {where}, expected one of {expected}")
    for name in required_fields(cls):
        if value.get(name) is None:
            raise BodyError(f"missing field `{name}` in {where}")
    kwargs = {}
    prefix = f"{where}." if where.startswith("`") else ""  # a nested body's fields: `outer`.`inner`
    for name, tp in types.items():
        if value.get(name) is not None:
            kwargs[name] = _check(tp, value[name], f"{prefix}`{name}`")
    return cls(**kwargs)


def _check(tp: Any, value: object, where: str) -> Any:
    """`value` checked against type `tp` (converted for nested bodies)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if type(value) is not str or value not in choices:
            raise BodyError(f"{where} must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return parse_body(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(tp)
        if type(value) is not list:
            raise BodyError(f"{where} must be an array, got {_show(value)}")
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if type(value) is not dict:
            raise BodyError(f"{where} must be an object, got {_show(value)}")
        for k, v in value.items():
            _check(item, v, f"{where}.{k}")
        return dict(value)
    if type(value) is not tp:  # bool is not an int here, nor 1.0
        raise BodyError(f"{where} must be {_JSON_NAMES[tp]}, got {_show(value)}")
    return value


def _show(value: object) -> str:
    """A short description of a JSON value for an error message."""
    if value is None:
        return "null"
    for tp, name in _JSON_NAMES.items():
        if type(value) is tp:
            text = repr(value) if tp in (str, int) else name
            return text if len(text) <= 40 else text[:37] + "..."
    return "a number" if isinstance(value, float) else type(value).__name__
