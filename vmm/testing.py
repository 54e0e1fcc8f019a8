"""The pytest plugin of microvm-harness, registered as entry point `pytest11: microvm`, so any
test in an environment where the package is installed gets these fixtures (docs/testing.md):

- `microvm`: a factory. `microvm("smp", vcpus=2)` boots a built-in guest (its default vCPU
  count unless given; other keywords are VmConfig fields), `microvm("path/to/image.bin")` a
  user's image, `microvm(VmConfig(...), quantum=1000)` a config with fields replaced.
  `mmds={...}` puts MMDS data before the first run. `microvm.restore(path, "mmap")` loads a
  snapshot. Every VM the factory made is released when the test ends.
- `snapshot_dir`: an empty directory for the test's snapshots (under pytest's tmp_path).

and re-exports the comparison helpers `diff_vms` and `assert_vms_equal` (vmm.vmdiff).
"""
from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import pytest

from vmm.config import VmConfig
from vmm.machine import MicroVM
from vmm.vmdiff import VmDiff, assert_vms_equal, diff_vms

__all__ = ["MicrovmFactory", "VmDiff", "assert_vms_equal", "diff_vms", "microvm", "snapshot_dir"]


class MicrovmFactory:
    """Builds VMs for one test and releases them at its end (see the module docstring)."""

    def __init__(self) -> None:
        self.vms: list[MicroVM] = []

    def __call__(
        self,
        guest: str | VmConfig,
        /,
        *,
        mmds: dict[str, Any] | None = None,
        on_console: Callable[[bytes], None] | None = None,
        **config: Any,
    ) -> MicroVM:
        """A booted, paused VM of `guest` (built-in name, image path, or VmConfig) with the
        VmConfig fields `config` set; ConfigError for a bad guest or field value, TypeError for
        an unknown field."""
        vm = MicroVM(self.config(guest, **config), on_console=on_console)
        if mmds is not None:
            vm.mmds.put(mmds)
        self.vms.append(vm)
        return vm

    @staticmethod
    def config(guest: str | VmConfig, /, **fields: Any) -> VmConfig:
        """The VmConfig `microvm(guest, **fields)` boots."""
        if isinstance(guest, VmConfig):
            return dataclasses.replace(guest, **fields)
        import guests  # the catalog of built-in guests

        if guest in guests.CATALOG:
            fields.setdefault("vcpus", guests.CATALOG[guest].default_vcpus)
            return VmConfig(guest=guest, **fields)
        if "/" not in guest and "." not in guest:
            guests.get(guest)  # ConfigError naming the built-in guests
        return VmConfig(image=guest, **fields)

    def restore(
        self,
        path: str | os.PathLike[str],
        mem_backend: Literal["copy", "mmap"] = "copy",
        **options: Any,
    ) -> MicroVM:
        """`MicroVM.load_snapshot(path, mem_backend, **options)`, released with the rest."""
        from vmm.machine import MicroVM

        vm = MicroVM.load_snapshot(path, mem_backend, **options)
        self.vms.append(vm)
        return vm

    def close(self) -> None:
        """Release every VM made so far (their RAM and emulators are freed once unreferenced)."""
        self.vms.clear()
        gc.collect()


@pytest.fixture
def microvm() -> Iterator[MicrovmFactory]:
    """A factory of VMs that are released when the test ends."""
    factory = MicrovmFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def snapshot_dir(tmp_path: Path) -> Path:
    """An empty directory for this test's snapshots."""
    path = tmp_path / "snapshots"
    path.mkdir()
    return path
