"""`microvm serve` end to end (#18): Firecracker's snapshot documentation driven with curl, the
rest of the API with a Python client, config files, and the restored guest continuing
bit-identically to one that never stopped."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from api_client import ROOT, ApiClient, ServerProcess, curl
from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.testing import assert_vms_equal

MIB = 1 << 20
MEMWALK_ARGS = "rounds=0 pattern=2 writes=200 region_mib=4"


def wait_for_output(path: Path, at_least: int, timeout: float = 60.0) -> int:
    """Wait until the file at `path` holds `at_least` bytes (the guest is running); its size."""
    deadline = time.monotonic() + timeout
    while True:
        size = path.stat().st_size if path.exists() else 0
        if size >= at_least:
            return size
        assert time.monotonic() < deadline, f"{path} stayed at {size} bytes"
        time.sleep(0.05)


def test_firecracker_snapshot_doc_sequence_with_curl(tmp_path: Path) -> None:
    """docs/snapshotting/snapshot-support.md: configure, start, pause, create Full, resume, pause,
    create Diff, then load into a second server with resume_vm true. The second server's guest
    continues bit-identically to one that never stopped (but for the MMDS token key, which an
    API load drops, as Firecracker)."""
    a = ServerProcess(tmp_path / "a.sock", "--id", "vm-a", cwd=tmp_path)
    try:
        sock = a.sock
        r = curl(sock, "PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 64, "smt": false, "track_dirty_pages": true}')
        assert (r.status, r.body) == (204, None)
        r = curl(sock, "PUT", "/boot-source", json.dumps({"kernel_image_path": "builtin:memwalk", "boot_args": MEMWALK_ARGS}))
        assert r.status == 204
        assert curl(sock, "PUT", "/serial", json.dumps({"serial_out_path": str(tmp_path / "a.serial")})).status == 204
        assert curl(sock, "PUT", "/actions", '{"action_type": "InstanceStart"}').status == 204
        r = curl(sock, "GET", "/")
        assert r.status == 200 and r.body["state"] == "Running" and r.body["id"] == "vm-a"
        wait_for_output(tmp_path / "a.serial", 100)
        assert curl(sock, "PATCH", "/vm", '{"state": "Paused"}').status == 204
        assert curl(sock, "GET", "/").body["state"] == "Paused"
        r = curl(sock, "PUT", "/snapshot/create", '{"snapshot_type": "Full", "snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file"}')
        assert (r.status, r.body) == (204, None)
        assert (tmp_path / "snapshot_file.snap").is_file() and (tmp_path / "mem_file").is_file()
        assert curl(sock, "PATCH", "/vm", '{"state": "Resumed"}').status == 204
        wait_for_output(tmp_path / "a.serial", (tmp_path / "a.serial").stat().st_size + 100)
        assert curl(sock, "PATCH", "/vm", '{"state": "Paused"}').status == 204
        # The documentation's Diff reuses the Full's names; a diff that records its parent
        # cannot replace it.
        r = curl(sock, "PUT", "/snapshot/create", '{"snapshot_type": "Diff", "snapshot_path": "./snapshot_file", "mem_file_path": "./mem_file"}')
        assert r.status == 400 and "would replace a snapshot it depends on" in r.body["fault_message"]
        # Nor may it write over the base's memory file under another state name.
        r = curl(sock, "PUT", "/snapshot/create", '{"snapshot_type": "Diff", "snapshot_path": "./diff_file", "mem_file_path": "./mem_file"}')
        assert r.status == 400 and "its own base's memory file" in r.body["fault_message"]
        r = curl(sock, "PUT", "/snapshot/create", '{"snapshot_type": "Diff", "snapshot_path": "./diff_file", "mem_file_path": "./diff_mem"}')
        assert (r.status, r.body) == (204, None)
    finally:
        assert a.stop() == 0, a.stderr
    serial_a = (tmp_path / "a.serial").read_bytes()

    b = ServerProcess(tmp_path / "b.sock", "--id", "vm-b", cwd=tmp_path)
    try:
        load = {"snapshot_path": "./diff_file", "mem_backend": {"backend_path": "./diff_mem", "backend_type": "File"},
                "track_dirty_pages": True, "resume_vm": True}
        r = curl(b.sock, "PUT", "/snapshot/load", json.dumps(load))
        assert (r.status, r.body) == (204, None)
        assert curl(b.sock, "GET", "/").body["state"] == "Running"
        r = curl(b.sock, "GET", "/machine-config")
        assert r.body == {"vcpu_count": 2, "mem_size_mib": 64, "smt": False, "track_dirty_pages": True, "huge_pages": "None"}
        wait_for_output(b.stdout_path, 100)
        assert curl(b.sock, "PATCH", "/vm", '{"state": "Paused"}').status == 204
        r = curl(b.sock, "PUT", "/snapshot/create", '{"snapshot_type": "Full", "snapshot_path": "./final", "mem_file_path": "./final_mem"}')
        assert r.status == 204
    finally:
        assert b.stop() == 0, b.stderr
    serial_b = b.stdout_path.read_bytes()

    clone = MicroVM.load_snapshot(tmp_path / "final")
    config = VmConfig(vcpus=2, mem_size=64 * MIB, guest="memwalk", track_dirty_pages=True,
                      params={k: int(v) for k, v in (w.split("=") for w in MEMWALK_ARGS.split())})
    reference = MicroVM(config)
    reference.run(clone.clock)  # every pause lands on a round end, so this stops exactly there
    assert reference.clock == clone.clock
    assert reference.console_output == serial_a + serial_b
    saved_key = reference.mmds_device.save_state()
    assert clone.mmds_device.save_state().token_secret != saved_key.token_secret  # dropped on load
    reference.mmds_device.restore_state(dataclasses.replace(saved_key, token_secret=clone.mmds_device.save_state().token_secret))
    assert_vms_equal(clone, reference, console=False)
    assert clone.state_digest() == reference.state_digest()


def test_python_client_lifecycle_mmds_logger_metrics(tmp_path: Path) -> None:
    log, metrics = tmp_path / "fc.log", tmp_path / "fc.metrics"
    server = ServerProcess(tmp_path / "api.sock", "--id", "py-vm")
    api, second = ApiClient(server.sock), ApiClient(server.sock)
    try:
        info = {"id": "py-vm", "state": "Not started", "vmm_version": metadata.version("microvm-harness"), "app_name": "microvm-harness"}
        assert api.request("GET", "/").body == info
        assert api.request("GET", "/version").body == {"firecracker_version": "1.17.0-dev"}
        assert api.request("GET", "/machine-config").body["mem_size_mib"] == 128
        assert api.request("PUT", "/logger", {"log_path": str(log), "level": "Info"}).status == 204
        assert api.request("PUT", "/metrics", {"metrics_path": str(metrics), "emit_id": True}).status == 204
        r = api.request("PUT", "/metrics", {"metrics_path": str(metrics)})
        assert r.status == 400 and "already" in r.body["fault_message"]
        for method, path, body in (("PATCH", "/vm", {"state": "Paused"}), ("PUT", "/actions", {"action_type": "FlushMetrics"}),
                                   ("PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m"})):
            r = api.request(method, path, body)
            assert r.status == 400 and "before starting the microVM" in r.body["fault_message"], (path, r)
        r = api.request("PUT", "/actions", {"action_type": "InstanceStart"})
        assert r.status == 400 and "without kernel configuration" in r.body["fault_message"]
        r = api.request("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "10.0.0.1"})
        assert r.status == 400 and "link-local" in r.body["fault_message"]
        assert api.request("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"}).status == 204
        assert api.request("PUT", "/mmds", {"latest": {"meta-data": {"id": "i-1", "zone": "a"}}}).status == 204
        assert api.request("PATCH", "/mmds", {"latest": {"meta-data": {"zone": None, "tag": "t"}}}).status == 204
        assert api.request("GET", "/mmds").body == {"latest": {"meta-data": {"id": "i-1", "tag": "t"}}}
        assert api.request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32}).status == 204
        assert api.request("PATCH", "/machine-config", {"vcpu_count": 2}).status == 204
        r = api.request("PATCH", "/machine-config", {"smt": True})
        assert r.status == 400 and "x86_64" in r.body["fault_message"]
        r = api.request("PUT", "/boot-source", {"kernel_image_path": "builtin:nonesuch"})
        assert r.status == 400 and "unknown guest 'nonesuch'" in r.body["fault_message"]
        r = api.request("PUT", "/boot-source", {"kernel_image_path": "builtin:memwalk", "boot_args": "console=ttyS0"})
        assert r.status == 400 and "console=ttyS0" in r.body["fault_message"]
        assert api.request("PUT", "/boot-source", {"kernel_image_path": "builtin:memwalk", "boot_args": MEMWALK_ARGS}).status == 204
        assert api.request("PUT", "/actions", {"action_type": "InstanceStart"}).status == 204
        assert second.request("GET", "/").body["state"] == "Running"  # a second connection, while the guest runs
        for method, path, body in (("PUT", "/actions", {"action_type": "InstanceStart"}), ("PUT", "/boot-source", {"kernel_image_path": "builtin:hello"}),
                                   ("PATCH", "/machine-config", {"vcpu_count": 1}), ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"})):
            r = api.request(method, path, body)
            assert r.status == 400 and "after starting the microVM" in r.body["fault_message"], (path, r)
        r = api.request("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        assert r.status == 400 and "aarch64" in r.body["fault_message"]
        assert api.request("PATCH", "/mmds", {"latest": {"tag": "running"}}).status == 204
        assert api.request("GET", "/mmds").body["latest"]["tag"] == "running"
        r = api.request("PUT", "/snapshot/create", {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")})
        assert r.status == 400 and "Paused" in r.body["fault_message"]
        assert api.request("PATCH", "/vm", {"state": "Paused"}).status == 204
        assert api.request("PATCH", "/vm", {"state": "Paused"}).status == 204  # successive pauses keep it Paused
        assert api.request("GET", "/").body["state"] == "Paused"
        r = api.request("PUT", "/snapshot/create", {"snapshot_type": "Diff", "snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")})
        assert r.status == 400 and "dirty-page tracking" in r.body["fault_message"]
        config = api.request("GET", "/vm/config").body
        assert config["machine-config"]["vcpu_count"] == 2 and config["boot-source"]["kernel_image_path"] == "builtin:memwalk"
        assert config["mmds-config"] == {"network_interfaces": ["eth0"], "version": "V2"}
        assert api.request("PUT", "/actions", {"action_type": "FlushMetrics"}).status == 204
    finally:
        api.close()
        second.close()
        assert server.stop() == 0, server.stderr
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(lines) == 2  # FlushMetrics, then the flush at exit
    assert lines[0]["id"] == "py-vm" and lines[0]["vmm"]["state"] == "Paused"
    assert lines[0]["api_server"]["requests"] >= 30 and lines[0]["mmds"]["patches"] == 2
    assert lines[1]["vmm"]["virtual_time_ns"] == lines[0]["vmm"]["virtual_time_ns"] > 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["level"] for r in records} <= {"Info", "Warning", "Error"} and all(r["id"] == "py-vm" for r in records)
    assert any("paused at virtual time" in r["msg"] for r in records)


def test_guest_reads_api_mmds_and_the_server_exits_with_the_guest(tmp_path: Path) -> None:
    """The built-in mmds guest reads what PUT /mmds stored; when it powers off the server
    exits with status 0, as Firecracker's process ends with its guest."""
    server = ServerProcess(tmp_path / "api.sock")
    api = ApiClient(server.sock)
    try:
        assert api.request("PUT", "/mmds", {"latest": {"meta-data": {"instance-id": "i-api"}}}).status == 204
        assert api.request("PUT", "/boot-source", {"kernel_image_path": "builtin:mmds"}).status == 204
        assert api.request("PUT", "/actions", {"action_type": "InstanceStart"}).status == 204
        status = server.proc.wait(timeout=120)
    finally:
        api.close()
    assert status == 0, server.stderr
    assert b"i-api" in server.stdout_path.read_bytes()
    assert not server.sock.exists()


def test_snapshot_load_checks(tmp_path: Path, microvm) -> None:
    vm = microvm("memwalk", mem_size=32 * MIB, params={"rounds": 0, "region_mib": 4})
    vm.run(300_000)
    vm.save_snapshot(tmp_path / "snap", mem_path=tmp_path / "memory")
    vm.run(100_000)
    vm.save_snapshot(tmp_path / "other")
    server = ServerProcess(tmp_path / "api.sock")
    api = ApiClient(server.sock)
    try:
        snap = str(tmp_path / "snap")
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}})
        assert r.status == 400 and '"File"' in r.body["fault_message"]
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}})
        assert r.status == 400 and "exactly one" in r.body["fault_message"]
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_file_path": str(tmp_path / "other.mem")})
        assert r.status == 400 and "Cannot load the snapshot" in r.body["fault_message"]  # another snapshot's memory
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_file_path": str(tmp_path / "memory"), "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap0"}]})
        assert r.status == 400 and "network interfaces" in r.body["fault_message"]
        assert api.request("GET", "/").body["state"] == "Not started"
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_file_path": str(tmp_path / "memory")})
        assert (r.status, r.body) == (204, None)
        assert api.request("GET", "/").body["state"] == "Paused"  # resume_vm absent: loaded paused
        assert api.request("GET", "/mmds").body == {}
    finally:
        api.close()
        assert server.stop() == 0, server.stderr
    fresh = ServerProcess(tmp_path / "fresh.sock")
    api = ApiClient(fresh.sock)
    try:
        assert api.request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32}).status == 204
        r = api.request("PUT", "/snapshot/load", {"snapshot_path": str(tmp_path / "snap"), "mem_file_path": str(tmp_path / "memory")})
        assert r.status == 400 and r.body["fault_message"] == "Loading a microVM snapshot not allowed after configuring boot-specific resources."
    finally:
        api.close()
        assert fresh.stop() == 0


@pytest.mark.parametrize(
    "path, device",
    [("/drives/rootfs", "block devices"), ("/network-interfaces/eth0", "network interfaces"), ("/vsock", "vsock"),
     ("/balloon", "balloon"), ("/balloon/statistics", "balloon"), ("/entropy", "entropy"), ("/cpu-config", "cpu-config"),
     ("/hotplug/memory", "hotplug"), ("/pmem/p0", "pmem")],
)
def test_unsupported_devices_are_named(path: str, device: str) -> None:
    from vmm.api.resources import ApiError
    from vmm.api.server import route

    with pytest.raises(ApiError, match=device):
        route("PUT", path)


def _serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vmm", "serve", *args], capture_output=True, timeout=120, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_config_file_no_api_runs_the_guest(tmp_path: Path) -> None:
    config = {"boot-source": {"kernel_image_path": "builtin:hello"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
              "drives": [], "network-interfaces": [], "logger": {"log_path": "fc.log", "level": "Info"}}
    (tmp_path / "vm.json").write_text(json.dumps(config))
    done = _serve("--no-api", "--config-file", "vm.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"Hello" in done.stdout or b"hello" in done.stdout
    assert any("started builtin:hello" in json.loads(line)["msg"] for line in (tmp_path / "fc.log").read_text().splitlines())


@pytest.mark.parametrize(
    "config, message",
    [({"boot-source": {"kernel_image_path": "builtin:hello"}, "drives": [{"drive_id": "rootfs"}]}, "block devices"),
     ({"boot-source": {"kernel_image_path": "builtin:hello"}, "gpu": {}}, "unknown section 'gpu'"),
     ({"machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}, "missing section 'boot-source'"),
     ({"boot-source": {"kernel_image_path": "builtin:hello", "initrd": "x"}}, "unknown field `initrd`"),
     ("not json", "not valid JSON")],
)
def test_bad_config_file_is_one_line_and_status_2(tmp_path: Path, config: object, message: str) -> None:
    (tmp_path / "vm.json").write_text(config if isinstance(config, str) else json.dumps(config))
    done = _serve("--no-api", "--config-file", "vm.json", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "vm.json" in lines[0], lines


def test_usage_errors(tmp_path: Path) -> None:
    assert _serve(cwd=tmp_path).returncode == 2
    assert _serve("--no-api", cwd=tmp_path).returncode == 2
    assert _serve("--api-sock", "x.sock", "--id", "bad id!", cwd=tmp_path).returncode == 2
    (tmp_path / "taken.sock").write_text("")
    done = _serve("--api-sock", "taken.sock", cwd=tmp_path)
    assert done.returncode == 2 and b"already exists" in done.stderr


def test_config_file_with_api_starts_at_once(tmp_path: Path) -> None:
    config = {"boot-source": {"kernel_image_path": "builtin:memwalk", "boot_args": MEMWALK_ARGS},
              "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}, "mmds-config": {"network_interfaces": [], "version": "V1"}}
    (tmp_path / "vm.json").write_text(json.dumps(config))
    server = ServerProcess(tmp_path / "api.sock", "--config-file", str(tmp_path / "vm.json"))
    api = ApiClient(server.sock)
    try:
        assert api.request("GET", "/").body["state"] == "Running"
        assert api.request("GET", "/vm/config").body["mmds-config"]["version"] == "V1"
    finally:
        api.close()
        assert server.stop() == 0, server.stderr
