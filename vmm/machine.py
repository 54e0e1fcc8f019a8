"""`MicroVM`: guest RAM, vCPUs, devices and the scheduler, put together and booted.

Boot follows the Linux arm64 boot protocol (Documentation/arch/arm64/booting.rst): the image
is loaded at a 2 MiB-aligned offset of RAM, the primary vCPU starts at the entry point in
EL1h with the MMU off and DAIF masked, x0 = DTB address. Built-in guests also get x1 = the
parameter block (guests/__init__.py). Secondary vCPUs start powered off (PSCI CPU_ON).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgpack
import numpy as np
import xxhash

import guests
from snapshot.dirty import AdaptiveController, DirtyBitmap, TrackingConfig, TrackingStats
from snapshot.frames import DEFAULT_FRAME_SIZE
from vmm import layout
from vmm.config import VmConfig
from vmm.cpu_model import install_cpu_model
from vmm.devicetree import build_dtb
from vmm.devices.mmds import MmdsDevice, MmdsStore
from vmm.devices.mmds.tokens import secret_for_seed
from vmm.devices.pl011 import Pl011
from vmm.errors import ConfigError, ImageError
from vmm.fault import FaultReport, build_report
from vmm.hostfile import read_bounded
from vmm.image import load_image, load_kernel, read_image_file
from vmm.interrupts import Interrupts
from vmm.memory import GuestMemory
from vmm.mmio import MmioBus
from vmm.psci import Psci
from vmm.scheduler import RunResult, Scheduler, StopReason
from vmm.signals import DeferredSignals
from vmm.sysreg_traps import base_sysreg_traps
from vmm.tlb import DIRTY_PAGE_SIZE, TRANSLATION_REGS, TlbFiller
from vmm.vcpu import CODE_PAGE_SIZE, FaultInfo, PowerState, Vcpu, VcpuHooks

if TYPE_CHECKING:
    from typing import Literal

    from snapshot.progress import ProgressBars
    from vmm.persist import SaveReport
    from vmm.reset import ResetPoint


class MicroVM:
    """One virtual machine. Create, optionally tweak, then `run()`.

    `on_console` (if given) receives every byte the guest writes to the UART, as it is written.
    """

    def __init__(
        self,
        config: VmConfig,
        *,
        on_console: Callable[[bytes], None] | None = None,
        ram: np.ndarray | None = None,
        boot: bool = True,
    ) -> None:
        """`ram` (a writable uint8 array of mem_size bytes) and `boot=False` are for restoring
        snapshots (`MicroVM.load_snapshot`): the machine is built but no image is loaded."""
        self.config = config
        self.memory = GuestMemory(layout.RAM_BASE, config.mem_size, ram)
        self.lineage: object | None = None  # vmm.persist.Lineage of the last save/load
        self.boots_linux = False  # booted a Linux arm64 Image (set by _boot; host-side fact)
        self.initrd_digest = ""  # xxh3-128 hex of the initrd booted (snapshots record it)
        self._console = bytearray()
        self._on_console = on_console
        self.vcpus: list[Vcpu] = []
        self.interrupts = Interrupts(config.vcpus)
        self.scheduler = Scheduler(self.vcpus, config.quantum, self.interrupts)
        self.uart = Pl011(on_tx=self._tx, set_irq=self.interrupts.line(layout.SPI_UART0))
        self.mmds_device = MmdsDevice(
            self.memory,
            now_ns=lambda: self.scheduler.clock,
            set_irq=self.interrupts.line(layout.SPI_MMDS),
            token_secret=secret_for_seed(config.seed),
            version=config.mmds_version,
        )
        self.bus = MmioBus()
        gic = self.interrupts.gic
        self.bus.add("gicd", layout.GICD_BASE, layout.GICD_SIZE, gic.distributor)
        self.bus.add("gicr", layout.GICR_BASE, layout.gicr_region_size(config.vcpus), gic.redistributors)
        self.bus.add("uart0", layout.UART0_BASE, layout.UART0_SIZE, self.uart)
        self.bus.add("mmds", layout.MMDS_BASE, layout.MMDS_SIZE, self.mmds_device)
        self.psci = Psci(self.vcpus, self.memory)
        self.dirty_tracker: AdaptiveController | None = None
        # Called with the dirty bitmap just before start_dirty_epoch() clears it (reset points
        # keep what may differ from them this way: vmm.reset).
        self.epoch_listeners: list[Callable[[DirtyBitmap], None]] = []
        if config.track_dirty_pages:
            self.dirty_tracker = AdaptiveController(config.mem_size, DIRTY_PAGE_SIZE, _tracking_config(config))
            self.memory.add_write_sink(self.dirty_tracker)
        self.tlb = TlbFiller(self.memory, self.bus, self.dirty_tracker)
        hooks = VcpuHooks(
            psci=self.psci,
            on_fault=self._on_fault,
            tlb_fill=self.tlb,
            tlb_fill_native=self.tlb.native_stage,
            fetch_word=self.tlb.fetch_word,
            on_restore=self.tlb.invalidate,
            irq_pending=lambda v: self.interrupts.wakeup_pending(v.index),
            irq_signalled=lambda v: self.interrupts.irq_signalled(v.index),
            unprivileged_retry=self.tlb.unprivileged_retry,
            on_tlbi=self._on_tlbi,
            cntvoff=lambda v: self.interrupts.timers[v.index].cntvoff,
        )
        for enc in TRANSLATION_REGS:
            hooks.sysreg_observe[enc] = self._on_translation_write
        base_sysreg_traps(hooks)
        install_cpu_model(hooks)
        self.interrupts.install_traps(hooks)
        for i in range(config.vcpus):
            self.vcpus.append(Vcpu(i, self.memory, self.bus, hooks))
        self.memory.add_write_sink(_HostCodeWrites(self.vcpus))
        if boot:
            self._boot()

    # --- boot -------------------------------------------------------------------------------------
    def _boot(self) -> None:
        cfg = self.config
        fdt_addr = self.memory.end - layout.FDT_MAX_SIZE
        params_addr = fdt_addr + layout.PARAMS_OFFSET_IN_FDT_WINDOW
        if cfg.guest is not None:
            spec = guests.get(cfg.guest)
            values = spec.resolve_params(cfg.params)
            named = dict(zip((p.name for p in spec.params), values))
            entry = load_image(self.memory, spec.binary(), limit=fdt_addr, name=f"guest {cfg.guest}")
            linux, initrd = False, None
        elif cfg.image is not None:
            data = read_image_file(cfg.image, max_size=self.memory.size)
            loaded = load_kernel(self.memory, data, limit=fdt_addr, name=cfg.image)
            entry, linux = loaded.entry, loaded.linux
            initrd = self._load_initrd(loaded.end, fdt_addr)
            values = [cfg.params[k] for k in sorted(cfg.params)]
            named = dict(sorted(cfg.params.items()))
        else:
            raise ConfigError("nothing to boot: give a built-in guest or an image")
        dtb = build_dtb(
            vcpus=cfg.vcpus,
            mem_size=cfg.mem_size,
            params=named,
            bootargs=cfg.cmdline,
            initrd=initrd,
            rng_seed=hashlib.blake2b(cfg.seed.to_bytes(8, "little"), person=b"microvm-rng", digest_size=64).digest()
            if linux
            else b"",
        )
        self.memory.write(fdt_addr, dtb)
        self.boots_linux = linux
        if linux:  # booting.rst: x0 = DTB, x1..x3 = 0 (reserved for future use)
            self.vcpus[0].reset(entry, x0=fdt_addr)
            return
        block = [guests.PARAMS_MAGIC, cfg.vcpus, layout.RAM_BASE, cfg.mem_size, len(values), *values]
        self.memory.write(params_addr, b"".join(v.to_bytes(8, "little") for v in block))
        self.vcpus[0].reset(entry, x0=fdt_addr, x1=params_addr)

    def _load_initrd(self, image_end: int, fdt_addr: int) -> tuple[int, int] | None:
        """Copy the initrd just below the DTB window, page aligned and clear of the image's
        claimed memory (`image_end`); its (start, end) for /chosen, or None without one."""
        path = self.config.initrd
        if path is None:
            return None
        room = fdt_addr - image_end
        data = read_bounded(path, max_size=max(room, 0), what="initrd", why="it must fit between the image and the device tree", error=ImageError)
        start = (fdt_addr - len(data)) & ~(layout.PAGE_SIZE - 1)
        if not data or start < image_end:
            what = "empty" if not data else f"{len(data)} bytes; {max(room, 0)} fit between the image and the device tree"
            raise ImageError(f"initrd {path} is {what}")
        self.memory.write(start, data)
        self.initrd_digest = xxhash.xxh3_128_hexdigest(data)
        return start, start + len(data)

    # --- running ----------------------------------------------------------------------------------
    def run(self, max_instructions: int | None = None) -> RunResult:
        """Run until the guest powers off, faults, deadlocks, or `max_instructions` pass.

        The budget is virtual time in instructions per vCPU, rounded up to the next round
        end (see vmm.scheduler).

        SIGINT and SIGTERM (when their handlers are Python callables, as SIGINT's default is)
        are deferred while the guest runs (vmm.signals): the VM pauses at the end of the
        round in progress, then the signal's handler runs here, so Ctrl-C raises
        KeyboardInterrupt from `run()` with the VM paused at a round end. It can run on, be
        snapshotted, and continues exactly as a VM that was never interrupted would. A handler
        that returns instead makes `run()` return StopReason.INTERRUPTED.
        """
        with DeferredSignals() as signals:
            return self.scheduler.run(max_instructions, interrupted=lambda: signals.pending)

    def run_until_output(self, pattern: bytes, max_instructions: int | None = None) -> RunResult:
        """Run until the console output written from now on contains `pattern`: stops at the
        end of the round in which it appeared (StopReason.OUTPUT; a pause point like any
        other), or as `run` does (power-off, fault, budget; Ctrl-C as in `run`)."""
        if not pattern:
            raise ValueError("pattern must not be empty")
        start = len(self._console)
        pos = [start]

        def seen() -> bool:
            found = self._console.find(pattern, pos[0]) >= 0
            pos[0] = max(start, len(self._console) - len(pattern) + 1)
            return found

        return self.run_until(seen, max_instructions)

    def run_until(self, condition: Callable[[], bool], max_instructions: int | None = None) -> RunResult:
        """Run until the first round end at which `condition()` is true (StopReason.OUTPUT),
        or as `run` does. `condition` must depend only on guest-visible state."""
        with DeferredSignals() as signals:
            return self.scheduler.run(max_instructions, until=condition, interrupted=lambda: signals.pending)

    @property
    def clock(self) -> int:
        """Virtual time since boot, in ns (= instructions per vCPU)."""
        return self.scheduler.clock

    @property
    def stopped(self) -> StopReason | None:
        return self.scheduler.stopped

    @property
    def fault(self) -> FaultReport | None:
        return self.scheduler.fault

    @property
    def console_output(self) -> bytes:
        """Everything the guest has written to the UART since this VM object was created or
        last `reset_to` a point."""
        return bytes(self._console)

    # --- dirty tracking -----------------------------------------------------------------------------
    @property
    def dirty(self) -> DirtyBitmap:
        """Pages written since the current dirty epoch began (4 KiB pages of RAM)."""
        return self._tracker().bitmap

    def dirty_stats(self) -> TrackingStats:
        """Faults, dirty pages and granule state of the current epoch."""
        return self._tracker().stats()

    def start_dirty_epoch(self) -> None:
        """Forget what was dirty: clear the bitmap and make every vCPU refill its TLB."""
        tracker = self._tracker()
        for listener in self.epoch_listeners:
            listener(tracker.bitmap)
        tracker.new_epoch()
        for v in self.vcpus:
            v.flush_tlb()

    def _tracker(self) -> AdaptiveController:
        if self.dirty_tracker is None:
            raise ConfigError("dirty-page tracking is off; create the VM with track_dirty_pages=True")
        return self.dirty_tracker

    # --- snapshots and reset (vmm.persist, vmm.reset: they import this module, not the reverse) --
    def save_snapshot(
        self,
        path: str | os.PathLike[str],
        kind: Literal["full", "diff"] = "full",
        *,
        compress: str | None = None,
        frame_size: int = DEFAULT_FRAME_SIZE,
        threads: int | None = None,
        progress_bars: ProgressBars | None = None,
        mem_path: str | os.PathLike[str] | None = None,
        key: bytes | None = None,
    ) -> SaveReport:
        """Save this VM (at a pause point) to `<path>.snap` + `<path>.mem` (or `mem_path`: any
        name, any directory; the state file records it), crash-safely: the
        previous snapshot at that name survives any failure. `kind="diff"` writes only the
        pages dirtied since this VM's last save or load (needs track_dirty_pages=True).
        `compress="lz4"` writes the memory file as LZ4 frames of `frame_size` bytes of RAM
        (2 MiB by default), compressed on `threads` workers. `progress_bars` (snapshot.progress)
        shows the write. The folder is created if it does not exist. `key` (32 bytes, e.g.
        snapshot.crypto.load_key_file): encrypt the snapshot with AES-256-GCM (state payload and
        every memory frame; load it with the same key). Raises SnapshotError
        (snapshot.errors) if the save fails."""
        from snapshot.links import ensure_directory, snapshot_paths
        from vmm import persist

        ensure_directory(snapshot_paths(path)[0].parent)
        if mem_path is not None:
            ensure_directory(Path(mem_path).parent)
        return persist.save_snapshot(
            self, path, kind, compress=compress, frame_size=frame_size, threads=threads, progress_bars=progress_bars, mem_path=mem_path,
            key=key,
        )

    @classmethod
    def load_snapshot(
        cls,
        path: str | os.PathLike[str],
        mem_backend: Literal["copy", "mmap"] = "copy",
        base: str | os.PathLike[str] | None = None,
        *,
        verify_memory: bool | None = None,
        on_console: Callable[[bytes], None] | None = None,
        progress_bars: ProgressBars | None = None,
        mem_path: str | os.PathLike[str] | None = None,
        mmds: Literal["keep", "drop"] = "keep",
        reseed: int | None = None,
        track_dirty_pages: bool | None = None,
        key: bytes | None = None,
    ) -> MicroVM:
        """A new VM restored from the snapshot at `path`, paused, ready to `run()`.

        `mem_backend`: "copy" reads the memory files into anonymous RAM; "mmap" maps the full
        base MAP_PRIVATE (lazy, copy-on-write) and lays diffs over it (an lz4 base still
        becomes anonymous RAM). `base`: the diff's base snapshot, instead of the recorded
        parent. `verify_memory`: check memory-file digests (default: yes for copy, where it
        costs one pass that is done anyway; no for mmap, whose point is not to read the file;
        lengths and chain digests are always checked). `mem_path`: the snapshot's memory file,
        instead of the one its state file records (its digest is then always verified).
        `key`: an encrypted snapshot's key, for every encrypted link of its chain
        (MissingKeyError / WrongKeyError / TamperedError name the file; with "mmap" an
        encrypted base is decrypted into private anonymous memory). Raises SnapshotError for a
        bad or mismatched file.

        Clones (vmm.persist.clone_of): `mmds="keep"` restores the MMDS data store and token key
        as saved (bit-identical continuation); `"drop"` empties the store and draws a fresh
        token key, as Firecracker, so clones of one snapshot share no metadata or tokens.
        `reseed=N` gives the clone config seed N and the token key derived from it: reproducible
        per seed, different across seeds; it deliberately ends bit-identical continuation.
        `track_dirty_pages` overrides the saved setting (Firecracker does not save it)."""
        from vmm import persist

        opened = persist.open_snapshot(
            path, mem_backend, base, verify_memory=verify_memory, progress_bars=progress_bars, mem_path=mem_path, key=key
        )
        config, state = persist.clone_of(opened.config, opened.state, mmds=mmds, reseed=reseed, track_dirty_pages=track_dirty_pages)
        vm = cls(config, on_console=on_console, ram=opened.ram, boot=False)
        persist.restore_devices(vm, state)
        vm.initrd_digest = state.vm.config.initrd_digest
        vm.lineage = opened.lineage
        return vm

    def snapshot_point(self) -> ResetPoint:
        """A reset point here (at a pause point): see `vmm.reset.ResetPoint.capture`."""
        from vmm.reset import ResetPoint

        return ResetPoint.capture(self)

    def reset_to(self, point: ResetPoint) -> None:
        """Return to `point`, taken earlier from this VM, restoring only what changed since
        (`vmm.reset.reset_to`). The console output starts empty, as after a restore."""
        point.reset(self)
        self._console.clear()

    @property
    def mmds(self) -> MmdsStore:
        """The MMDS data store: `put(obj)`, `patch(obj)` (RFC 7396 merge patch), `get(path)`."""
        return self.mmds_device.store

    def _tx(self, byte: int) -> None:
        b = bytes((byte,))
        self._console += b
        if self._on_console is not None:
            self._on_console(b)

    def _on_tlbi(self, vcpu: Vcpu) -> None:
        """Any TLBI is treated as broadcast: the other vCPUs flush before their next slice."""
        for v in self.vcpus:
            if v is not vcpu:
                v.tlb_stale = True

    def _on_translation_write(self, vcpu: Vcpu) -> None:
        """SCTLR_EL1, TCR_EL1 or a TTBR is about to be written: drop the cached registers and
        the TLB (entries carry no ASID, so a TTBR switch must not keep the old ones)."""
        self.tlb.invalidate(vcpu)
        vcpu.flush_tlb()

    def _on_fault(self, vcpu: Vcpu, info: FaultInfo) -> FaultReport:
        return build_report(vcpu, info)

    # --- identity ---------------------------------------------------------------------------------
    def state_digest(self) -> str:
        """xxh3-128 over guest-visible state: vCPUs, devices, virtual clock and all of RAM.

        Two VMs with equal digests continue identically. Console output is not included
        (compare `console_output` separately).
        """
        h = xxhash.xxh3_128()
        vcpus = [v.save_state().__dict__ for v in self.vcpus]
        devices = {"uart0": self.uart.save_state().__dict__, "mmds": self.mmds_device.save_state().__dict__}
        irq = asdict(self.interrupts.save_state())
        h.update(msgpack.packb({"vcpus": vcpus, "devices": devices, "interrupts": irq, "clock": self.clock}))
        h.update(self.memory.view().data)
        return h.hexdigest()

    @property
    def vcpus_on(self) -> int:
        return sum(1 for v in self.vcpus if v.power is PowerState.ON)


class _HostCodeWrites:
    """A GuestMemory write sink: host writes (tests, fan-out inputs, device DMA) over code a
    vCPU has run reach that vCPU's next fetch, as in a VM restored after the write."""

    def __init__(self, vcpus: list[Vcpu]) -> None:
        self._vcpus = vcpus

    def mark_range(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        first, last = offset // CODE_PAGE_SIZE, (offset + length - 1) // CODE_PAGE_SIZE
        for vcpu in self._vcpus:
            vcpu.note_host_write(first, last)


def _tracking_config(config: VmConfig) -> TrackingConfig:
    if config.dirty_granule == "page":
        return TrackingConfig(threshold=0)
    return TrackingConfig(mode=config.dirty_granule)
