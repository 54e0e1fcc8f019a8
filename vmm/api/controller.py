"""`ApiController`: the Firecracker API's state machine over one MicroVM (Firecracker's
`rpc_interface`).

States, as `GET /` reports them: "Not started" (configuring; no VM yet), "Running" (the guest
runs on its own thread, vmm.api.runner) and "Paused" (stopped at a round end). Each method below
serves one endpoint, takes a parsed body (vmm.api.config) and returns the response body (or
None for 204); a request that cannot be honoured raises `ApiError`, which the server answers
with 400 and `{"fault_message": str(error)}`.

Order rules, as Firecracker's:
- pre-boot only: PUT /boot-source, /machine-config (PUT, PATCH), /mmds/config, /serial,
  /snapshot/load; InstanceStart once;
- post-boot only: PATCH /vm, PUT /snapshot/create (Paused only), FlushMetrics;
- /snapshot/load only on a fresh server: before anything but the logger and metrics is
  configured;
- any time: GET /, /version, /machine-config, /vm/config; /mmds (PUT, PATCH, GET); /logger and
  /metrics (once each).

Mapping to this machine (the resources themselves: vmm.api.resources):
- SendCtrlAltDel: Firecracker injects Ctrl+Alt+Del through the x86 i8042 keyboard controller
  and refuses the action on aarch64, whose machine has no i8042. This machine is AArch64 and
  has none either, so the guest gets nothing and the request gets a 400, as on an aarch64
  Firecracker host.
- Host inputs (MMDS puts and patches) and snapshots act between two rounds, on the VM's thread,
  never inside a round (GuestRunner.call).
- Snapshots load with `mmds="drop"`, as Firecracker (clones share no MMDS data or token key).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, BinaryIO, Callable

from snapshot.errors import SnapshotError
from vmm.api.config import (
    BootSource,
    InstanceActionInfo,
    Logger,
    MachineConfiguration,
    MachineConfigurationPatch,
    Metrics,
    MmdsConfig,
    SerialDevice,
    SnapshotCreateParams,
    SnapshotLoadParams,
    Vm,
)
from vmm.api.resources import (
    ApiError,
    MachineSettings,
    Resources,
    check_boot_source,
    check_mmds_config,
    unsupported_device,
)
from vmm.api.runner import GuestRunner, GuestStoppedError
from vmm.api.telemetry import ApiLogger, ApiMetrics, TelemetryError, open_output
from vmm.devices.mmds import MmdsError, MmdsStore
from vmm.errors import VmmError
from vmm.machine import MicroVM
from vmm.scheduler import RunResult

APP_NAME = "microvm-harness"
NOT_STARTED = "Not started"
RUNNING = "Running"
PAUSED = "Paused"
DEFAULT_INSTANCE_ID = "anonymous-instance"  # Firecracker's default --id

# Firecracker's VmmActionError messages for requests in the wrong state.
MSG_AFTER_START = "The requested operation is not supported after starting the microVM."
MSG_BEFORE_START = "The requested operation is not supported before starting the microVM."
MSG_LOAD_AFTER_CONFIG = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
MSG_CTRL_ALT_DEL = (
    "SendCtrlAltDel is not supported on aarch64: the machine has no i8042 keyboard controller, "
    "so the guest would get nothing (as Firecracker on aarch64)."
)

class ApiController:
    """One microVM behind the API. Thread-safe: requests are served one at a time (a lock),
    while the guest runs on its own thread. `on_exit(status)` is called when the guest stops
    for good (the server then exits, as Firecracker does)."""

    def __init__(
        self,
        instance_id: str = DEFAULT_INSTANCE_ID,
        *,
        vmm_version: str = "0",
        api_version: str = "0",
        on_exit: Callable[[RunResult], None] | None = None,
        console: BinaryIO | None = None,
        key: bytes | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._key = key  # snapshots created and loaded are encrypted with it (serve --encrypt-key-file)
        self.vmm_version = vmm_version
        self.api_version = api_version
        self.resources = Resources()
        self.logger = ApiLogger(instance_id)
        self.metrics = ApiMetrics(instance_id)
        self.vm: MicroVM | None = None
        self.runner: GuestRunner | None = None
        self._boot_configured = False  # a boot-specific resource was set: no snapshot load
        self._pending_mmds = MmdsStore()  # MMDS data put before boot
        self._lock = threading.RLock()
        self._on_exit = on_exit
        self._console_default = console if console is not None else sys.stdout.buffer
        self._serial: BinaryIO | None = None

    # --- state --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.runner is None:
            return NOT_STARTED
        return RUNNING if self.runner.running or self.runner.result is not None else PAUSED

    def _require_not_started(self) -> None:
        if self.runner is not None:
            raise ApiError(MSG_AFTER_START)

    def _require_started(self) -> GuestRunner:
        if self.runner is None:
            raise ApiError(MSG_BEFORE_START)
        return self.runner

    # --- reads ----------------------------------------------------------------------------------
    def describe_instance(self) -> dict[str, Any]:
        return {"id": self.instance_id, "state": self.state, "vmm_version": self.vmm_version, "app_name": APP_NAME}

    def version(self) -> dict[str, Any]:
        return {"firecracker_version": self.api_version}

    def get_machine_config(self) -> dict[str, Any]:
        return self.resources.machine.to_json()

    def full_config(self) -> dict[str, Any]:
        return self.resources.to_json()

    # --- pre-boot configuration -----------------------------------------------------------------
    def put_machine_config(self, body: MachineConfiguration | MachineConfigurationPatch) -> None:
        with self._lock:
            self._require_not_started()
            new = self.resources.machine.updated(body)
            self.resources.vm_config(machine=new)  # checks vCPU count and RAM size now
            self.resources.machine = new
            self._boot_configured = True

    def put_boot_source(self, body: BootSource) -> None:
        with self._lock:
            self._require_not_started()
            self.resources.vm_config(boot=body)
            check_boot_source(body)
            self.resources.boot_source = body
            self._boot_configured = True

    def put_mmds_config(self, body: MmdsConfig) -> None:
        with self._lock:
            self._require_not_started()
            check_mmds_config(body)
            self.resources.mmds_config = body
            self._boot_configured = True

    def put_serial(self, body: SerialDevice) -> None:
        with self._lock:
            self._require_not_started()
            if body.rate_limiter is not None:
                raise ApiError("serial rate_limiter is not supported")
            self.resources.serial = body

    def put_logger(self, body: Logger) -> None:
        with self._lock:
            if body.log_path is None:
                raise ApiError("log_path is required: this server logs only to a file or named pipe")
            if body.module is not None:
                raise ApiError("logger module filters are not supported")
            try:
                self.logger.configure(body.log_path, body.level, bool(body.show_log_origin))
            except TelemetryError as exc:
                raise ApiError(str(exc)) from None
            self.resources.logger = body
            self.logger.log("Info", f"logger configured for instance {self.instance_id}")

    def put_metrics(self, body: Metrics) -> None:
        with self._lock:
            try:
                self.metrics.configure(body.metrics_path, bool(body.emit_id), body.properties or {})
            except TelemetryError as exc:
                raise ApiError(str(exc)) from None
            self.resources.metrics = body

    # --- MMDS -----------------------------------------------------------------------------------
    def mmds_put(self, data: Any) -> None:
        self._mmds(lambda store: store.put(data))
        self.metrics.inc("mmds.puts")

    def mmds_patch(self, data: Any) -> None:
        self._mmds(lambda store: store.patch(data))
        self.metrics.inc("mmds.patches")

    def mmds_get(self) -> Any:
        return self._mmds(lambda store: store.get("/"))

    def _mmds(self, op: Callable[[MmdsStore], Any]) -> Any:
        with self._lock:
            try:
                if self.runner is None:
                    self._boot_configured = True
                    return op(self._pending_mmds)
                return self.runner.call(lambda vm: op(vm.mmds))
            except (MmdsError, GuestStoppedError) as exc:
                raise ApiError(str(exc)) from None

    # --- actions --------------------------------------------------------------------------------
    def action(self, body: InstanceActionInfo) -> None:
        kind = body.action_type
        with self._lock:
            if kind == "InstanceStart":
                self._start()
            elif kind == "FlushMetrics":
                self._require_started()
                self.flush_metrics()
            else:
                raise ApiError(MSG_CTRL_ALT_DEL)

    def _start(self) -> None:
        self._require_not_started()
        r = self.resources
        if r.boot_source is None:
            raise ApiError("Cannot start microvm without kernel configuration.")
        config = r.vm_config()
        try:
            vm = MicroVM(config, on_console=self._console_sink())
            vm.mmds.put(self._pending_mmds.get("/"))
        except VmmError as exc:  # e.g. the image changed or vanished since PUT /boot-source
            raise ApiError(f"Cannot start microvm: {exc}") from None
        self._launch(vm, resume=True)
        self.logger.log("Info", f"started {r.boot_source.kernel_image_path} on {config.vcpus} vCPUs, {config.mem_mib} MiB")

    def _launch(self, vm: MicroVM, *, resume: bool) -> None:
        self.vm = vm
        self.runner = GuestRunner(vm, on_stop=self._guest_stopped)
        if resume:
            self.runner.resume()
        self.metrics.inc("vmm.starts")

    def _guest_stopped(self, result: RunResult) -> None:
        """On the VM's thread: the guest stopped for good; the server exits."""
        detail = f" ({result.detail})" if result.detail else ""
        self.logger.log("Info" if result.ok else "Error", f"guest stopped: {result.reason.value}{detail} at {self.vm.clock if self.vm else 0} ns")
        if self._on_exit is not None:
            self._on_exit(result)

    def patch_vm(self, body: Vm) -> None:
        with self._lock:
            runner = self._require_started()
            try:
                if body.state == "Paused":
                    runner.pause()
                    self._flush_serial()
                    self.metrics.inc("vmm.pauses")
                    self.logger.log("Info", f"paused at virtual time {runner.vm.clock} ns")
                else:
                    runner.resume()
                    self.metrics.inc("vmm.resumes")
                    self.logger.log("Info", "resumed")
            except GuestStoppedError as exc:
                raise ApiError(str(exc)) from None

    # --- snapshots ------------------------------------------------------------------------------
    def snapshot_create(self, body: SnapshotCreateParams) -> None:
        with self._lock:
            runner = self._require_started()
            if self.state != PAUSED:
                raise ApiError("Cannot create a snapshot: the microVM must be Paused")
            kind = "diff" if body.snapshot_type == "Diff" else "full"
            try:
                report = runner.call(lambda vm: vm.save_snapshot(body.snapshot_path, kind=kind, mem_path=body.mem_file_path, key=self._key))
            except (VmmError, SnapshotError, OSError) as exc:
                self.metrics.inc("snapshot.create_fails")
                raise ApiError(f"Cannot create a snapshot: {exc}") from None
            self.metrics.inc(f"snapshot.{kind}_creates")
            self.logger.log("Info", f"{kind} snapshot {report.state_path} + {report.memory_path} ({report.pages_written} pages)")

    def snapshot_load(self, body: SnapshotLoadParams) -> None:
        with self._lock:
            self._require_not_started()
            if self._boot_configured or self.resources.serial is not None:
                raise ApiError(MSG_LOAD_AFTER_CONFIG)
            mem_path = self._load_memory_path(body)
            if body.network_overrides:
                raise unsupported_device("network interfaces (network_overrides)")
            if body.vsock_override is not None:
                raise unsupported_device("vsock devices (vsock_override)")
            if body.clock_realtime:
                raise ApiError("clock_realtime is x86_64 only (kvm-clock); the virtual clock resumes where it was saved")
            if body.huge_pages not in (None, "Snapshot", "None"):
                raise ApiError(f"huge_pages {body.huge_pages!r} is not supported: guest RAM uses host pages")
            if body.track_dirty_pages is not None and body.enable_diff_snapshots is not None:
                raise ApiError("give track_dirty_pages or the deprecated enable_diff_snapshots, not both")
            track = bool(body.track_dirty_pages or body.enable_diff_snapshots)
            try:
                vm = MicroVM.load_snapshot(
                    body.snapshot_path,
                    mem_backend="mmap",
                    mem_path=mem_path,
                    track_dirty_pages=track,
                    mmds="drop",
                    on_console=self._console_sink(),
                    key=self._key,
                )
            except (VmmError, SnapshotError, OSError) as exc:
                self.metrics.inc("snapshot.load_fails")
                raise ApiError(f"Cannot load the snapshot: {exc}") from None
            self._set_resources_from(vm)
            self._launch(vm, resume=bool(body.resume_vm))
            self.metrics.inc("snapshot.loads")
            self.logger.log("Info", f"loaded {body.snapshot_path} at virtual time {vm.clock} ns" + (", resumed" if body.resume_vm else ""))

    @staticmethod
    def _load_memory_path(body: SnapshotLoadParams) -> str:
        if (body.mem_backend is None) == (body.mem_file_path is None):
            raise ApiError("give exactly one of mem_backend and the deprecated mem_file_path")
        if body.mem_backend is None:
            assert body.mem_file_path is not None
            return body.mem_file_path
        if body.mem_backend.backend_type != "File":
            raise ApiError(
                f"mem_backend.backend_type {body.mem_backend.backend_type!r} is not supported: "
                "only \"File\" (the memory file mapped copy-on-write)"
            )
        return body.mem_backend.backend_path

    def _set_resources_from(self, vm: MicroVM) -> None:
        cfg = vm.config
        self.resources.machine = MachineSettings(
            vcpu_count=cfg.vcpus, mem_size_mib=cfg.mem_mib, track_dirty_pages=cfg.track_dirty_pages
        )
        self.resources.mmds_config = MmdsConfig(network_interfaces=[], version=f"V{cfg.mmds_version}")

    # --- metrics and shutdown -------------------------------------------------------------------
    def flush_metrics(self) -> bool:
        gauges: dict[str, Any] = {"vmm.state": self.state}
        if self.runner is not None:
            gauges["vmm.rounds"] = self.runner.rounds
        if self.vm is not None:
            gauges["vmm.virtual_time_ns"] = self.vm.clock
            gauges["uart.bytes_written"] = len(self.vm.console_output)
        return self.metrics.flush(gauges)

    def shutdown(self) -> None:
        """Stop the guest at a round end, flush metrics and the serial output, close files."""
        with self._lock:
            if self.runner is not None:
                self.runner.close()
            self.flush_metrics()
            self._flush_serial()
            self.metrics.close()
            self.logger.log("Info", "server exiting")
            self.logger.close()
            if self._serial is not None:
                self._serial.close()
                self._serial = None

    # --- helpers --------------------------------------------------------------------------------
    def _console_sink(self) -> Callable[[bytes], None]:
        serial = self.resources.serial
        if serial is not None and serial.serial_out_path is not None:
            try:
                self._serial = os.fdopen(open_output(serial.serial_out_path, "serial"), "ab", buffering=0)
            except TelemetryError as exc:
                raise ApiError(str(exc)) from None
        out = self._serial or self._console_default

        def sink(data: bytes) -> None:
            try:
                out.write(data)
            except (OSError, ValueError):
                pass  # a closed or full output drops the byte, as a disconnected serial line

        return sink

    def _flush_serial(self) -> None:
        out = self._serial or self._console_default
        try:
            out.flush()
        except (OSError, ValueError):
            pass
