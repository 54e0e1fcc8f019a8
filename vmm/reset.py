"""In-process reset: `ResetPoint`, a snapshot kept in memory, and `reset_to(vm, point)`, which
returns the running VM it was taken from to it by restoring only what changed since (the
snapshot-fuzzer loop of Nyx, snapchange and wtf: run, reset, run, reset, ...).

A point holds a reference image of RAM (a copy, or for `ResetPoint.load` a lazy MAP_PRIVATE
mapping of the snapshot's memory file), the plain state of the GIC, timers, UART and
scheduler (virtual clock), and in-process checkpoints of the vCPUs (one Unicorn CPU context
each) and of the MMDS device.

Which pages to restore: taking a point starts a new dirty epoch, so from then on the VM's dirty
bitmap holds every page written since the point (guest stores via the TLB fill, device DMA and
host writes via GuestMemory). When an epoch starts for another reason (a snapshot save, another
point, a reset to another point), each live point of the VM first folds the pages that may
differ from it into a bitmap of its own (`MicroVM.epoch_listeners`). A reset copies back the
union from the reference image, drops the translated code of those pages only on vCPUs that
fetched from them (`Vcpu.drop_translations`), restores every device, and starts a new epoch.
Dirty tracking must be on.

Diff snapshots keep working: a point remembers the VM's lineage and the pages dirty since that
snapshot when it was taken; a reset puts both back (those pages stay marked dirty, so they are
restored by every reset too: take points soon after a save or load to keep them few).

A point belongs to the VM it was taken from (or loaded with); resetting another VM to it
raises `IncompatibleError`. Reset only at a pause point (between `run()` calls), also after
the guest faulted or powered off.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Literal

import numpy as np

from snapshot.dirty import DirtyBitmap, runs_of_pages
from snapshot.errors import IncompatibleError
from vmm.devices.mmds.device import MmdsCheckpoint
from vmm.devices.pl011 import Pl011State
from vmm.interrupts import InterruptsState
from vmm.machine import MicroVM
from vmm.persist import open_snapshot
from vmm.scheduler import SchedulerState
from vmm.tlb import DIRTY_PAGE_SIZE
from vmm.vcpu import CODE_PAGE_SIZE, VcpuCheckpoint

assert CODE_PAGE_SIZE == DIRTY_PAGE_SIZE  # restored pages are the pages whose code is dropped

IMAGE_CHUNK = 64 << 20  # bytes of RAM scanned per numpy pass when a point copies RAM


def _image(ram: np.ndarray) -> np.ndarray:
    """A read-only copy of `ram`. Zero pages are not copied: the copy starts as lazily zeroed
    memory, so they cost neither time nor resident memory."""
    image = np.zeros(ram.size, dtype=np.uint8)
    words = DIRTY_PAGE_SIZE // 8
    for base in range(0, ram.size, IMAGE_CHUNK):
        chunk = ram[base : base + IMAGE_CHUNK]
        used = np.flatnonzero(np.bitwise_or.reduce(chunk.view(np.uint64).reshape(-1, words), axis=1))
        for first, count in runs_of_pages(used):
            lo, hi = base + first * DIRTY_PAGE_SIZE, base + (first + count) * DIRTY_PAGE_SIZE
            image[lo:hi] = ram[lo:hi]
    image.flags.writeable = False
    return image


class _Points:
    """The live reset points of one VM. As its epoch listener, folds the bitmap about to be
    cleared into every point."""

    def __init__(self) -> None:
        self.points: weakref.WeakSet[ResetPoint] = weakref.WeakSet()

    def __call__(self, bitmap: DirtyBitmap) -> None:
        if not self.points:
            return
        pages = bitmap.pages()
        for point in self.points:
            point._may_differ(pages)

    def others(self, point: ResetPoint) -> list[ResetPoint]:
        if len(self.points) == 1:
            return []
        return [p for p in self.points if p is not point]


_POINTS: weakref.WeakKeyDictionary[MicroVM, _Points] = weakref.WeakKeyDictionary()


def _require_tracking(vm: MicroVM) -> None:
    if vm.dirty_tracker is None:
        raise IncompatibleError("a reset point needs dirty-page tracking (track_dirty_pages=True)")


def _points_of(vm: MicroVM) -> _Points:
    points = _POINTS.get(vm)
    if points is None:
        points = _POINTS[vm] = _Points()
        vm.epoch_listeners.append(points)
    return points


class ResetPoint:
    """A VM's state kept in this process for `MicroVM.reset_to`. Take one with
    `vm.snapshot_point()` (or `ResetPoint.capture(vm)`), or load one from disk with
    `ResetPoint.load(path)`."""

    def __init__(self, vm: MicroVM, ram: np.ndarray) -> None:
        """Use `capture` or `load`. `ram`: a read-only image equal to the VM's RAM now."""
        _require_tracking(vm)
        self._vm = weakref.ref(vm)
        self._ram = ram
        self.interrupts: InterruptsState = vm.interrupts.save_state()
        self.uart: Pl011State = vm.uart.save_state()
        self.scheduler: SchedulerState = vm.scheduler.save_state()
        self._vcpus: list[VcpuCheckpoint] = [v.checkpoint() for v in vm.vcpus]
        self._mmds: MmdsCheckpoint = vm.mmds_device.checkpoint()
        self._fault = vm.scheduler.fault
        self._lineage = vm.lineage
        # Pages dirty since the VM's last save or load (its next diff's base): kept dirty.
        self._seed = runs_of_pages(vm.dirty.pages()) if vm.lineage is not None else []
        self._since: DirtyBitmap | None = None  # pages that may differ, beyond the VM's bitmap
        points = _points_of(vm)
        vm.start_dirty_epoch()  # the other points fold the bitmap in; this one starts clean
        self._mark_seed(vm.dirty)
        points.points.add(self)

    @classmethod
    def capture(cls, vm: MicroVM) -> ResetPoint:
        """A point at `vm`'s current state (call at a pause point). Copies RAM once (zero
        pages excepted) and starts a new dirty epoch. Needs dirty tracking (IncompatibleError)."""
        _require_tracking(vm)  # before the copy
        return cls(vm, _image(vm.memory.view()))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mem_backend: Literal["copy", "mmap"] = "copy",
        base: str | os.PathLike[str] | None = None,
        *,
        on_console: Any = None,
    ) -> tuple[MicroVM, ResetPoint]:
        """A VM restored from the snapshot at `path` (`load_snapshot`, same arguments) and a
        point at that snapshot, whose reference image maps the memory file lazily. The
        snapshot must have been saved with dirty tracking on."""
        vm = MicroVM.load_snapshot(path, mem_backend, base, on_console=on_console)
        _require_tracking(vm)
        # The snapshot's RAM read a second time, mapped copy-on-write: the reference image.
        image = open_snapshot(path, "mmap", base, verify_memory=False).ram
        return vm, cls(vm, image)

    @property
    def clock(self) -> int:
        """Virtual time of the point, ns."""
        return self.scheduler.clock

    def _may_differ(self, pages: np.ndarray) -> None:
        """Record pages of the VM that may no longer equal this point's image."""
        if not len(pages):
            return
        if self._since is None:
            self._since = DirtyBitmap(self._ram.size, DIRTY_PAGE_SIZE)
        for first, count in runs_of_pages(pages):
            self._since.mark_range(first * DIRTY_PAGE_SIZE, count * DIRTY_PAGE_SIZE)

    def reset(self, vm: MicroVM) -> None:
        """`reset_to(vm, self)` (what `MicroVM.reset_to` calls, without importing this module
        on every reset)."""
        reset_to(vm, self)

    def _mark_seed(self, bitmap: DirtyBitmap) -> None:
        for first, count in self._seed:
            bitmap.mark_range(first * DIRTY_PAGE_SIZE, count * DIRTY_PAGE_SIZE)


def reset_to(vm: MicroVM, point: ResetPoint) -> None:
    """Return `vm` to `point` (the machinery of `MicroVM.reset_to`, which also clears the
    console output). Call at a pause point. IncompatibleError if the point is another VM's."""
    if point._vm() is not vm:
        raise IncompatibleError("the reset point was taken from another VM")
    tracker = vm.dirty_tracker
    assert tracker is not None  # a point exists only for a tracked VM
    pages = tracker.bitmap.pages()
    if point._since is not None:
        pages = np.union1d(pages, point._since.pages())
        point._since = None
    points = _points_of(vm)
    for other in points.others(point):
        other._may_differ(pages)
    # RAM: copy the pages back, then drop code translated from them.
    vm.memory.restore_pages(pages, point._ram, DIRTY_PAGE_SIZE)
    for vcpu in vm.vcpus:
        vcpu.drop_translations(pages)
    # A new epoch; its TLB flush is the vCPUs' rollback below (dirty.py's contract). `pages`
    # holds every dirty page (nothing above marks any), so only they need clearing.
    tracker.new_epoch(pages)
    point._mark_seed(tracker.bitmap)
    for vcpu, cp in zip(vm.vcpus, point._vcpus):
        vcpu.rollback(cp)
    # Devices, in the order of vmm.persist.restore_devices.
    vm.interrupts.rollback(point.interrupts)
    vm.uart.restore_state(point.uart)
    vm.mmds_device.rollback(point._mmds)
    vm.scheduler.restore_state(point.scheduler)
    vm.scheduler.fault = point._fault  # type: ignore[assignment]
    vm.lineage = point._lineage
