"""A stock Debian arm64 kernel booted to a busybox shell, and snapshotted at the prompt.

The assets come from `python -m tools.linux fetch` (CI: .ci/linux-assets); without them every
test here skips, saying so. One boot per vCPU count per session (session fixtures); the tests
then restore snapshots taken at the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import xxhash

from tools.linux import cache_dir, find_assets
from vmm import MicroVM, StopReason, VmConfig
from vmm.layout import MIB

pytestmark = pytest.mark.linux

CMDLINE = "console=ttyAMA0 cryptomgr.notests"
MEM = 512 * MIB
BOOT_BUDGET = 2_000_000_000  # virtual instructions per vCPU: about 7x what the boot takes
COMMAND_BUDGET = 300_000_000
PROMPT = b"# "
DIRTY_PAGES_AFTER_ECHO_MAX = 256  # 1 MiB: an `echo` at the prompt writes a few dozen pages


def _config(vcpus: int, kernel: str = "stable") -> VmConfig:
    assets = find_assets(cache_dir(kernel))
    if assets is None:
        option = "" if kernel == "stable" else f" --kernel {kernel}"
        pytest.skip(f"Linux assets not fetched: run `python -m tools.linux fetch{option}` (Debian arm64 kernel + busybox via apt)")
    return VmConfig(
        image=str(assets.image), initrd=str(assets.initrd), cmdline=CMDLINE, mem_size=MEM, vcpus=vcpus,
        track_dirty_pages=True,
    )


def boot_to_prompt(vcpus: int, kernel: str = "stable") -> MicroVM:
    vm = MicroVM(_config(vcpus, kernel))
    result = vm.run_until_output(PROMPT, BOOT_BUDGET)
    assert result.reason is StopReason.OUTPUT, (result, vm.console_output[-2000:])
    return vm


def type_command(vm: MicroVM, command: bytes, expect: bytes) -> bytes:
    """Type `command` (a line) and run until `expect` and then the next prompt; the console
    output this produced (the terminal's echo of the line included)."""
    start = len(vm.console_output)
    vm.uart.queue_input(command + b"\n")
    for pattern in (expect, PROMPT):
        result = vm.run_until_output(pattern, COMMAND_BUDGET)
        assert result.reason is StopReason.OUTPUT, (result, vm.console_output[start:])
    return vm.console_output[start:]


ANSWER = b"42\r\n"
KERNEL_TROUBLE = (b"Oops", b"BUG", b"Kernel panic", b"Unable to handle", b"Internal error")


@dataclass
class AtPrompt:
    """One boot to the prompt and what the original VM did from there."""

    vcpus: int
    console: bytes  # from power-on to the prompt
    digest: str  # at the prompt
    full: Path  # full snapshot at the prompt
    diff: Path  # diff snapshot at the prompt after `echo one` (parent: full)
    one: bytes  # console output of `echo one` from the prompt
    answer: bytes  # console output of `echo $((6*7))` after `echo one`
    answer_digest: str  # state digest after it
    dirty_after_echo: int  # pages written by `echo one` (the diff's pages)


def _at_prompt(tmp: Path, vcpus: int) -> AtPrompt:
    vm = boot_to_prompt(vcpus)
    console, digest = vm.console_output, vm.state_digest()
    vm.save_snapshot(tmp / "full", "full")
    vm.start_dirty_epoch()
    one = type_command(vm, b"echo one", b"one\r\n")
    dirty = vm.dirty_stats().pages_dirty
    vm.save_snapshot(tmp / "diff", "diff")
    answer = type_command(vm, b"echo $((6*7))", ANSWER)
    return AtPrompt(vcpus, console, digest, tmp / "full", tmp / "diff", one, answer, vm.state_digest(), dirty)


@pytest.fixture(scope="session")
def prompt_1(tmp_path_factory: pytest.TempPathFactory) -> AtPrompt:
    return _at_prompt(tmp_path_factory.mktemp("linux1"), 1)


@pytest.fixture(scope="session")
def prompt_2(tmp_path_factory: pytest.TempPathFactory) -> AtPrompt:
    return _at_prompt(tmp_path_factory.mktemp("linux2"), 2)


@pytest.fixture(params=[1, 2], ids=["1vcpu", "2vcpus"])
def at_prompt(request: pytest.FixtureRequest) -> AtPrompt:
    return request.getfixturevalue(f"prompt_{request.param}")


def test_boots_to_the_prompt_and_answers(at_prompt: AtPrompt) -> None:
    assert b"Run /init as init process" in at_prompt.console
    assert at_prompt.console.endswith(b"# \x1b[6n") or at_prompt.console.endswith(PROMPT)
    cpus = b"1 CPU" if at_prompt.vcpus == 1 else b"smp: Brought up 1 node, 2 CPUs"
    assert cpus in at_prompt.console
    assert at_prompt.one.startswith(b"echo one\r\none\r\n")
    assert at_prompt.answer.startswith(b"echo $((6*7))\r\n42\r\n")
    for bad in KERNEL_TROUBLE:
        assert bad not in at_prompt.console


def test_two_boots_are_identical(prompt_1: AtPrompt) -> None:
    vm = boot_to_prompt(1)
    assert vm.console_output == prompt_1.console
    assert vm.state_digest() == prompt_1.digest


@pytest.mark.parametrize("backend", ["copy", "mmap"])
def test_full_snapshot_at_the_prompt_continues_like_the_original(at_prompt: AtPrompt, backend: str) -> None:
    vm = MicroVM.load_snapshot(at_prompt.full, backend)
    assert vm.state_digest() == at_prompt.digest
    assert type_command(vm, b"echo one", b"one\r\n") == at_prompt.one
    assert type_command(vm, b"echo $((6*7))", ANSWER) == at_prompt.answer
    assert vm.state_digest() == at_prompt.answer_digest


@pytest.mark.parametrize("backend", ["copy", "mmap"])
def test_diff_snapshot_at_the_prompt_continues_like_the_original(at_prompt: AtPrompt, backend: str) -> None:
    vm = MicroVM.load_snapshot(at_prompt.diff, backend)
    assert type_command(vm, b"echo $((6*7))", ANSWER) == at_prompt.answer
    assert vm.state_digest() == at_prompt.answer_digest


def test_snapshots_record_the_command_line_and_the_initrd_digest(prompt_1: AtPrompt) -> None:
    vm = MicroVM.load_snapshot(prompt_1.diff, "mmap")
    assert vm.config.cmdline == CMDLINE
    assets = find_assets()
    assert assets is not None and vm.config.initrd == str(assets.initrd)
    assert vm.initrd_digest == xxhash.xxh3_128_hexdigest(assets.initrd.read_bytes())


def test_an_echo_at_the_prompt_dirties_few_pages(prompt_1: AtPrompt) -> None:
    assert 0 < prompt_1.dirty_after_echo <= DIRTY_PAGES_AFTER_ECHO_MAX
    assert prompt_1.diff.with_suffix(".mem").stat().st_blocks * 512 <= (DIRTY_PAGES_AFTER_ECHO_MAX + 16) * 4096


EARLY_BOOT = 60_000_000  # MMU on, fixmap and TLBIs, timer interrupts: the native paths at work


@pytest.mark.slow
def test_native_and_python_paths_boot_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C fill (stage-1 walk), system-register filter and block hook against the Python
    reference, on the first 60 M instructions of the real kernel: the same state, byte for byte."""
    from vmm.native_fill import ENV_SWITCH
    from vmm.testing import assert_vms_equal

    vms = []
    for switch in ("1", "0"):
        monkeypatch.setenv(ENV_SWITCH, switch)
        vm = MicroVM(_config(1))
        assert vm.run(EARLY_BOOT).reason is StopReason.BUDGET
        vms.append(vm)
    assert vms[0].vcpus[0].native_sysreg is not None and vms[1].vcpus[0].native_sysreg is None
    assert vms[0].tlb.python_fills < vms[1].tlb.python_fills
    assert_vms_equal(vms[0], vms[1])
    assert vms[0].console_output == vms[1].console_output


USER_LOOP = b"i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; echo loop $i"


def test_user_space_computes_across_slice_boundaries(prompt_1: AtPrompt) -> None:
    """A shell loop that computes in user space for many slices, so slices end at EL0, where
    Linux traps WFI (SCTLR_EL1.nTWI = 0): the shell gets no exception it did not raise (the old
    block counter stopped its tails with a WFI there, which trapped: a SIGILL)."""
    vm = MicroVM.load_snapshot(prompt_1.full, "copy")
    start = vm.clock
    out = type_command(vm, USER_LOOP, b"loop 3000\r\n")
    assert b"Illegal instruction" not in out
    assert vm.clock - start > 50 * vm.config.quantum  # many slices, most of them in the loop


def test_poweroff_from_the_shell(prompt_1: AtPrompt) -> None:
    vm = MicroVM.load_snapshot(prompt_1.full, "copy")
    vm.uart.queue_input(b"poweroff -f\n")
    result = vm.run(COMMAND_BUDGET)
    assert result.reason is StopReason.POWER_OFF
    assert b"reboot: Power down" in vm.console_output


@pytest.mark.slow
def test_boots_with_a_small_translation_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 4 MiB of translated code the buffer fills and is flushed again and again, also in
    the middle of translating a tail's cut block (the block counter then asks for the cut
    again); the boot reaches `Run /init` at the same instruction as with the default buffer."""
    import vmm.engine

    reference = MicroVM(_config(1))  # engines are made with the buffer size of the moment
    monkeypatch.setattr(vmm.engine, "TB_BUFFER_SIZE", 4 << 20)
    vm = MicroVM(_config(1))
    for machine in (vm, reference):
        assert machine.run_until_output(b"Run /init as init process", BOOT_BUDGET).reason is StopReason.OUTPUT
    assert vm.clock == reference.clock and vm.state_digest() == reference.state_digest()


@pytest.mark.slow
def test_four_vcpus_boot_answer_and_power_off() -> None:
    """SMP at 4 vCPUs: every secondary comes up through PSCI CPU_ON, the shell answers, and
    `poweroff -f` powers the machine off."""
    vm = boot_to_prompt(4)
    assert vm.vcpus_on == 4
    assert ANSWER in type_command(vm, b"echo $((6*7))", ANSWER)
    vm.uart.queue_input(b"poweroff -f\n")
    assert vm.run(COMMAND_BUDGET).reason is StopReason.POWER_OFF
    assert b"reboot: Power down" in vm.console_output


@pytest.mark.parametrize("vcpus", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_the_backports_kernel_boots_answers_and_powers_off(vcpus: int) -> None:
    """Debian's backports kernel (6.12 on bookworm; `python -m tools.linux fetch --kernel
    backports`, not fetched by CI) on the same machine and initramfs."""
    vm = boot_to_prompt(vcpus, "backports")
    assets = find_assets(cache_dir("backports"))
    assert assets is not None
    release = assets.kernel_package.split("=")[0].removeprefix("linux-image-").removesuffix("-unsigned")
    assert f"Linux version {release} ".encode() in vm.console_output
    assert ANSWER in type_command(vm, b"echo $((6*7))", ANSWER)
    assert vm.vcpus_on == vcpus
    vm.uart.queue_input(b"poweroff -f\n")
    assert vm.run(COMMAND_BUDGET).reason is StopReason.POWER_OFF
    for bad in KERNEL_TROUBLE:
        assert bad not in vm.console_output
