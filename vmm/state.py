"""`MicrovmState`: everything a snapshot's state file holds, as plain dataclasses.

Each device owns its state type (vmm/devices/*, vmm/vcpu_state.py, vmm/interrupts.py); this module
only composes them. In the state file the tree is namespaced by nesting: `vcpus[i]`,
`interrupts.gic`, `interrupts.timers[i]`, `devices.uart0`, `devices.mmds`, `scheduler`,
`memory` (the pair identity) and `parent` (the chain link of a diff); those two and the RAM
facts in `vm` are the part snapshot/ reads itself (snapshot.links.StateCore).

Fields are only ever added across minor versions, with defaults, so an older file still
decodes (snapshot.plain fills missing fields that have defaults).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

from snapshot.links import ParentLink
from snapshot.meminfo import MemFileInfo
from snapshot.plain import U32, U64, MaxLen
from vmm.devices.mmds import MmdsState
from vmm.devices.pl011 import Pl011State
from vmm.interrupts import InterruptsState
from vmm.layout import MAX_VCPUS
from vmm.scheduler import SchedulerState
from vmm.vcpu_state import VcpuState


@dataclass
class SavedConfig:
    """The VmConfig the VM was created with (see vmm.config)."""

    vcpus: int
    mem_size: U64
    quantum: U64
    guest: Optional[Annotated[str, MaxLen(256)]]
    image: Optional[Annotated[str, MaxLen(4096)]]
    params: Annotated[dict[str, U64], MaxLen(64)]
    track_dirty_pages: bool
    dirty_granule: Annotated[str, MaxLen(16)]
    seed: U64
    mmds_version: int
    # Added in a minor version (defaults: older files read as before).
    initrd: Optional[Annotated[str, MaxLen(4096)]] = None
    cmdline: Annotated[str, MaxLen(2047)] = ""  # vmm.config.MAX_CMDLINE
    initrd_digest: Annotated[str, MaxLen(64)] = ""  # xxh3-128 hex of the initrd booted, "" without one


@dataclass
class VmInfo:
    """Machine facts: RAM layout, dirty-page granule, vCPU count, the config."""

    ram_base: U64
    ram_size: U64
    page_size: U32
    vcpu_count: int
    config: SavedConfig


@dataclass
class Devices:
    """Per-device namespaces."""

    uart0: Pl011State
    mmds: MmdsState


@dataclass
class MicrovmState:
    vm: VmInfo
    vcpus: Annotated[list[VcpuState], MaxLen(MAX_VCPUS)]
    interrupts: InterruptsState
    devices: Devices
    scheduler: SchedulerState
    memory: MemFileInfo
    parent: Optional[ParentLink] = None
    # 1.1: the memory file's name, written by snapshot.commit (MEMORY_FILE_FIELD); None in 1.0
    memory_file: Optional[Annotated[str, MaxLen(4096)]] = None
