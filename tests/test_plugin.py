"""The pytest plugin (vmm.testing, entry point pytest11 `microvm`): fixtures, VM comparison,
and the user's test of docs/testing.md, run as written."""
from __future__ import annotations

import re
import weakref
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import vmm.testing
from vmm import ConfigError, StopReason, VmConfig
from vmm.layout import RAM_BASE
from vmm.testing import MicrovmFactory, assert_vms_equal, diff_vms

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
MEMWALK = {"rounds": 0, "region_mib": 4, "writes": 64}


def test_the_plugin_is_loaded_through_its_entry_point(request) -> None:
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "microvm"]
    assert ep.value == "vmm.testing"
    assert request.config.pluginmanager.get_plugin("microvm") is vmm.testing


def test_factory_builds_from_names_and_configs(microvm) -> None:
    assert microvm("smp").config.vcpus == 4  # the guest's default
    vm = microvm("smp", vcpus=2, quantum=1_000, params={"iterations": 100})
    assert (vm.config.guest, vm.config.vcpus, vm.config.quantum) == ("smp", 2, 1_000)
    assert vm.run().reason is StopReason.POWER_OFF
    from_config = microvm(VmConfig(guest="hello"), mem_size=32 << 20)
    assert (from_config.config.guest, from_config.config.mem_size) == ("hello", 32 << 20)
    assert len(microvm.vms) == 3


def test_factory_boots_images_and_puts_mmds_data(microvm, tmp_path) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(microvm("hello").memory.read(RAM_BASE, 4096))
    assert microvm(str(image)).config.image == str(image)
    vm = microvm("mmds", mmds={"latest": {"meta-data": {"instance-id": "i-9"}}})
    assert vm.mmds.get("/latest/meta-data/instance-id") == "i-9"


def test_factory_refuses_bad_input(microvm) -> None:
    with pytest.raises(ConfigError, match="unknown guest 'nope'"):
        microvm("nope")
    with pytest.raises(ConfigError, match="vcpus must be"):
        microvm("hello", vcpus=0)
    with pytest.raises(TypeError, match="bogus"):
        microvm("hello", bogus=1)
    assert microvm.vms == []


def test_factory_releases_its_vms() -> None:
    factory = MicrovmFactory()
    vm = factory("hello")
    vm.run()
    ref = weakref.ref(vm)
    del vm
    assert ref() is not None
    factory.close()
    assert ref() is None and factory.vms == []


def test_snapshot_dir_is_an_empty_directory(snapshot_dir, tmp_path) -> None:
    assert snapshot_dir.is_dir() and not list(snapshot_dir.iterdir())
    assert snapshot_dir.parent == tmp_path


def test_restore_through_the_factory_is_equivalent(microvm, snapshot_dir) -> None:
    vm = microvm("smp", vcpus=3, quantum=2_000, track_dirty_pages=True, params={"iterations": 2_000})
    vm.run(20_000)
    vm.save_snapshot(snapshot_dir / "a")
    vm.run(6_000)
    vm.save_snapshot(snapshot_dir / "b", "diff")
    restored = microvm.restore(snapshot_dir / "b", "mmap")
    assert not diff_vms(vm, restored, console=False)
    assert_vms_equal(vm, restored, console=False)
    assert restored in microvm.vms


def test_equal_vms_have_an_empty_diff(microvm) -> None:
    a, b = microvm("hello"), microvm("hello")
    a.run()
    b.run()
    diff = diff_vms(a, b)
    assert not diff and str(diff) == "the VMs are equivalent"
    assert_vms_equal(a, b)


def test_diff_names_registers_and_devices(microvm) -> None:
    a = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=MEMWALK)
    b = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=MEMWALK)
    a.run(40_000)
    b.run(40_000)
    state = b.vcpus[0].save_state()
    state.x[3] ^= 0xFF
    state.pc += 4
    state.sysregs = {**state.sysregs, next(iter(state.sysregs)): 0x1234}
    b.vcpus[0].restore_state(state)
    b.mmds.put({"k": 1})
    diff = diff_vms(a, b)
    paths = [d.path for d in diff.fields]
    sysreg = next(iter(state.sysregs))
    assert paths == ["vcpus[0].x3", "vcpus[0].pc", f"vcpus[0].sysregs[{sysreg}]", "devices.mmds.data_json"]
    text = str(diff)
    assert text.startswith("the VMs differ (4 fields, 0 memory ranges):\n")
    x3 = a.vcpus[0].save_state().x[3]
    assert f"  vcpus[0].x3: {x3:#x} != {x3 ^ 0xFF:#x}\n" in text
    assert "  devices.mmds.data_json: '{}' != '{\"k\":1}'" in text
    with pytest.raises(AssertionError, match=re.escape("vcpus[0].x3")):
        assert_vms_equal(a, b)


def test_diff_coalesces_memory_ranges(microvm) -> None:
    a, b = microvm("hello", mem_size=32 << 20), microvm("hello", mem_size=32 << 20)
    far = RAM_BASE + (20 << 20)
    b.memory.write(far + 4090, b"\x01" * 10)  # straddles a page boundary: one range
    b.memory.write(far + 3 * 4096, b"\x00\x02\x00\x03")  # two pages on: a second range
    diff = diff_vms(a, b)
    assert not diff.fields and diff.console is None
    assert [(d.start, d.end, d.differing) for d in diff.memory] == [
        (far + 4090, far + 4100, 10),
        (far + 3 * 4096 + 1, far + 3 * 4096 + 4, 2),
    ]
    first = diff.memory[0]
    assert first.a_bytes == bytes(16) and first.b_bytes == b"\x01" * 10 + bytes(6)
    assert str(first) == (
        f"memory [{far + 4090:#x}, {far + 4100:#x}): 10 of 10 bytes differ; from {far + 4090:#x}: "
        + "00 " * 15 + "00 != " + "01 " * 10 + "00 " * 5 + "00"
    )


def test_diff_reports_console_and_sizes(microvm) -> None:
    a, b = microvm("hello"), microvm("hello", mem_size=32 << 20)
    a.run()
    diff = diff_vms(a, b)
    assert diff.memory_size == (128 << 20, 32 << 20) and diff.memory == []
    assert "config.mem_size: 134217728 != 33554432" in str(diff)
    assert diff.console is not None and (diff.console.offset, diff.console.b) == (0, 0)
    assert diff.console.a_text == a.console_output[:48]
    assert diff_vms(a, b, console=False).console is None


def _docs_test_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    tests = [b for b in blocks if "def test_" in b]
    assert len(tests) == 1, "docs/testing.md should hold exactly one user's test"
    return tests[0]


def test_the_documented_user_test_passes_as_written(pytester) -> None:
    source = _docs_test_block()
    assert "microvm.restore" in source and "vm.mmds.put" in source and "save_snapshot" in source
    pytester.makepyfile(test_user=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_failing_user_test_shows_the_readable_diff(pytester) -> None:
    pytester.makepyfile(
        test_user="""
        from vmm.testing import assert_vms_equal

        def test_two_points_in_time(microvm):
            a, b = microvm("hello"), microvm("hello")
            a.run()
            assert_vms_equal(a, b)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: the VMs differ (*fields, *memory range*, console output):",
            "E*vcpus[[]0].pc: 0x* != 0x80000000",
            "E*scheduler.clock: * != 0",
            "E*console output (* vs 0 bytes) differs from byte 0: b'Hello from microvm-harness!*' != b''",
        ]
    )


FAILURE_EXAMPLE = """\
params = {"rounds": 0, "region_mib": 4, "writes": 64}
a = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=params)
b = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=params)
a.run(40_000)
b.run(41_000)
assert_vms_equal(a, b)
"""


def test_the_documented_failure_report_is_what_is_printed(microvm) -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert f"```python\n{FAILURE_EXAMPLE}```\n\nfail with\n\n```\nAssertionError: " in text
    report = text.split("fail with\n\n```\nAssertionError: ", 1)[1].split("```", 1)[0]
    params = {"rounds": 0, "region_mib": 4, "writes": 64}  # FAILURE_EXAMPLE, line by line
    a = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=params)
    b = microvm("memwalk", mem_size=32 << 20, quantum=1_000, params=params)
    a.run(40_000)
    b.run(41_000)
    with pytest.raises(AssertionError) as failure:
        assert_vms_equal(a, b)
    assert str(failure.value) + "\n" == report
