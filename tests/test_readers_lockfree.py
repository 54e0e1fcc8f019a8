"""Read-only snapshot commands take no lock: restore, verify and describe never wait for a
writer that holds the directory's lock (issue 15: they used to wait forever, silently), and a
reader racing commits to the same name always opens one committed pair."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

from snapshot.chain import verify
from snapshot.describe import describe
from vmm import MicroVM, VmConfig
from vmm.layout import MIB

CONFIG = VmConfig(guest="memwalk", mem_size=16 * MIB, quantum=2_000, track_dirty_pages=True, params={"rounds": 0, "region_mib": 2})
ROOT = Path(__file__).resolve().parent.parent


def test_readers_do_not_wait_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    vm = MicroVM(CONFIG)
    vm.run(10_000)
    vm.save_snapshot(tmp_path / "a")
    vm.run(10_000)
    vm.save_snapshot(tmp_path / "b", "diff")
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dirfd, fcntl.LOCK_EX)  # as a save in progress holds it
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for argv in (
            ["describe", str(tmp_path / "b.snap")],
            ["verify", str(tmp_path / "b.snap")],
            ["restore", str(tmp_path / "b.snap"), "--max-instructions", "1000"],
        ):
            done = subprocess.run([sys.executable, "-m", "vmm", *argv], env=env, capture_output=True, timeout=120)
            assert done.returncode == 0, (argv, done.stderr)
    finally:
        os.close(dirfd)


def test_a_reader_racing_commits_to_the_same_name_opens_a_committed_pair(tmp_path: Path) -> None:
    """One thread saves `s` over and over (new contents each time) while another loads,
    describes and verifies it: every read succeeds and is one of the saved states."""
    vm = MicroVM(CONFIG)
    vm.run(10_000)
    vm.save_snapshot(tmp_path / "s")
    saved = {vm.state_digest()}
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(25):
                vm.run(4_000)
                saved.add(vm.state_digest())  # before the commit: a reader may see it at once
                vm.save_snapshot(tmp_path / "s")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        while not stop.is_set() or reads < 3:
            restored = MicroVM.load_snapshot(tmp_path / "s", "mmap")
            assert restored.state_digest() in saved
            assert describe(tmp_path / "s", verify=True)["pair_ok"] is True
            assert verify(tmp_path / "s").ok
            reads += 1
    finally:
        thread.join()
    assert not failures, failures
