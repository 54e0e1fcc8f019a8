"""Hostile guests: programs that misbehave on purpose, and what the VMM must do about them.

Each `HostileGuest` is a small AArch64 program (assembled with keystone at RAM_BASE, MMU off)
that jumps wildly, executes from MMIO or unmapped addresses, runs undefined instructions,
makes unaligned accesses where the architecture faults, pokes MMIO holes, abuses PSCI,
raises interrupt storms, never halts, or hands the MMDS device buffers outside RAM. Most come
in two variants: without a vector table the VM must stop with a clear reason (the words in
`says`); with one, the guest must see the architected exception (ESR class and status code,
FAR, ELR, recorded by its handler at RESULTS).

`run_guest` also checks that nothing escaped into the host (no Python exception, a bounded
wall time), that the stopped VM can be saved for post-mortem, described, and loaded back to
the same state, and - through a `Bystander`, a VM run in slices between the hostile ones -
that other VMs in the process are unaffected. `random_guests` adds wild jumps to random
addresses and programs of random instruction words.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from guests.asm import POWER_OFF, RESULTS, RESULTS_PTR, U64_MAX, VECTOR_GROUPS, assemble, load_constant, psci_call, vector_table
from snapshot.errors import SnapshotError
from snapshot.describe import describe
from vmm.persist import MACHINE
from tools.faults.outcome import Hang, Stopwatch, Trial, Verdict, describe_exception, watchdog
from vmm import MicroVM, StopReason, VmConfig, arch, psci
from vmm.layout import MIB, MMDS_BASE, RAM_BASE, UART0_BASE, VMM_STUB_BASE

MEM_SIZE = 16 * MIB
QUANTUM = 1_000
BUDGET = 200_000  # instructions: every guest here stops, or is stopped, within it
STORM_BUDGET = 10_000  # instructions: storms trap to the VMM every few instructions, so they run shorter
WALL_LIMIT = 60.0  # seconds a guest (and its post-mortem) may take before it counts as a hang
HOLE = 0x7000_0000  # a guest physical address with nothing behind it

# Fault reasons that mean the VMM did not understand what happened (not a clear reason).
UNCLEAR_REASONS = ("emulation stopped", "unhandled CPU exception", "VMM error in a device or hook")

# ESR_EL1 fields (DDI 0487 D17.2.37): EC [31:26], ISS.xFSC [5:0], ISS.WnR [6].
EC_MASK = 0x3F << arch.ESR_EC_SHIFT
FSC_MASK = 0x3F


# Where _with_vectors sends synchronous exceptions: record ESR, FAR, ELR in slots 0-2 and
# power off.
_RECORD = f"""
record:
    {RESULTS_PTR}
    mrs x10, esr_el1
    str x10, [x28]
    mrs x10, far_el1
    str x10, [x28, #8]
    mrs x10, elr_el1
    str x10, [x28, #16]
    {POWER_OFF}
"""


Check = Callable[[list[int]], str | None]  # results slots -> what is wrong, or None


@dataclass(frozen=True)
class HostileGuest:
    """A program and what must happen when it runs for `budget` instructions: the run stops
    for one of `expect`, the stop detail (or fault report) contains every word of `says`,
    and `check` (given result slots 0..15) finds nothing wrong."""

    name: str
    source: str
    expect: tuple[StopReason, ...]
    says: tuple[str, ...] = ()
    check: Check | None = None
    vcpus: int = 1
    budget: int = BUDGET


def _with_vectors(body: str, irq: str | None = None) -> str:
    """`body` run with a vector table: synchronous exceptions from EL1 go to `record`, IRQs
    to `irq` (if given); every other entry spins."""
    irqs = {f"{group}_irq": irq for group in VECTOR_GROUPS} if irq else {}
    vectors = vector_table(cur_sp0_sync="record", cur_spx_sync="record", **irqs)
    return "\n".join(["adr x0, vectors", "msr vbar_el1, x0", "isb", body, _RECORD, vectors])


def _expect_slots(**expected: tuple[int, int]) -> Check:
    """A check that slot `name` (esr=0, far=1, elr=2, sN=N) masked equals a value."""
    index = {"esr": 0, "far": 1, "elr": 2}

    def check(slots: list[int]) -> str | None:
        for name, (mask, value) in expected.items():
            i = index[name] if name in index else int(name[1:])
            if slots[i] & mask != value & mask:
                return f"{name} = {slots[i]:#x}, expected {value & mask:#x} (mask {mask:#x})"
        return None

    return check


def _architected(
    ec: int,
    fsc: int | None = None,
    far: int | None = None,
    elr: int | None = None,
    *,
    wnr: bool | None = None,
    elr_is_s3: bool = False,
) -> Check:
    """A check of what the guest's handler recorded: ESR class `ec` (and status code `fsc`,
    WnR bit `wnr`), FAR `far`, ELR `elr` or (`elr_is_s3`) the fault site stored in slot 3;
    None means not checked."""
    mask, value = EC_MASK, ec << arch.ESR_EC_SHIFT
    if fsc is not None:
        mask, value = mask | FSC_MASK, value | fsc
    if wnr is not None:
        mask, value = mask | arch.ISS_DABT_WNR, value | (arch.ISS_DABT_WNR if wnr else 0)
    expected: dict[str, tuple[int, int]] = {"esr": (mask, value)}
    if far is not None:
        expected["far"] = (U64_MAX, far)
    if elr is not None:
        expected["elr"] = (U64_MAX, elr)
    slots_check = _expect_slots(**expected)
    if not elr_is_s3:
        return slots_check

    def check(slots: list[int]) -> str | None:
        if slots[2] != slots[3]:
            return f"elr = {slots[2]:#x}, expected the faulting instruction at {slots[3]:#x}"
        return slots_check(slots)

    return check


def fault_pair(name: str, body: str, says: tuple[str, ...], check: Check) -> list[HostileGuest]:
    """`body` without a vector table (the VM stops with a fault report saying `says`) and
    with one (the guest's handler sees what `check` expects, then powers off)."""
    return [
        HostileGuest(f"{name} (no vector table)", body, (StopReason.FAULT,), says),
        HostileGuest(f"{name} (vector table)", _with_vectors(body), (StopReason.POWER_OFF,), check=check),
    ]


def _jump(target: int) -> str:
    return f"{load_constant('x1', target)}\nbr x1"


def _at_site(setup: str, insn: str) -> str:
    """`setup`, then `insn` at label fault_site whose address is stored in slot 3."""
    return f"{RESULTS_PTR}\nadr x11, fault_site\nstr x11, [x28, #24]\n{setup}\nfault_site:\n{insn}\n{POWER_OFF}"


def _mmds_bad_buffers() -> HostileGuest:
    """Doorbells with request/response buffers outside RAM: STATUS must be 2 (bad buffer) or
    3 (request too long), recorded in slots 3.. ."""
    ram_end = RAM_BASE + MEM_SIZE
    cases = [  # (req_addr, req_len, resp_addr, resp_cap, status)
        (0, 16, RAM_BASE + 0x20_0000, 4096, 2),
        (RAM_BASE + 0x20_0000, 16, UART0_BASE, 4096, 2),
        (RAM_BASE + 0x20_0000, 16, RAM_BASE + 0x30_0000, 0xFFFF_FFFF, 2),
        (U64_MAX - 7, 16, RAM_BASE + 0x30_0000, 4096, 2),
        (RAM_BASE + 0x20_0000, 0x1_0000, RAM_BASE + 0x30_0000, 4096, 3),
        (VMM_STUB_BASE, 16, RAM_BASE + 0x30_0000, 4096, 2),
        (ram_end - 8, 16, RAM_BASE + 0x30_0000, 4096, 2),
        (RAM_BASE + 0x20_0000, 16, ram_end - 100, 4096, 2),
        (MMDS_BASE, 16, RAM_BASE + 0x30_0000, 4096, 2),
    ]
    lines = [RESULTS_PTR, load_constant("x9", MMDS_BASE)]
    for i, (req, req_len, resp, cap, _) in enumerate(cases):
        lines += [
            load_constant("x10", req), "str x10, [x9, #0x10]",  # REQ_ADDR (64-bit)
            load_constant("x10", req_len), "str w10, [x9, #0x18]",  # REQ_LEN
            load_constant("x10", resp), "str x10, [x9, #0x20]",  # RESP_ADDR (64-bit)
            load_constant("x10", cap), "str w10, [x9, #0x28]",  # RESP_CAP
            "str wzr, [x9, #0x30]",  # DOORBELL
            "ldr w10, [x9, #0x34]",  # STATUS
            f"str x10, [x28, #{8 * (3 + i)}]",
        ]
    lines.append(POWER_OFF)
    check = _expect_slots(**{f"s{3 + i}": (U64_MAX, status) for i, (*_, status) in enumerate(cases)})
    return HostileGuest("MMDS buffers outside RAM", "\n".join(lines), (StopReason.POWER_OFF,), check=check)


_GIC_ON = f"""
    {load_constant("x9", 0x0800_0000)}
    mov w10, #0x12
    str w10, [x9]                 // GICD_CTLR: ARE | EnableGrp1
    {load_constant("x9", 0x080A_0000)}
    str wzr, [x9, #0x14]          // GICR_WAKER: awake
    add x9, x9, #0x10, lsl #12    // SGI_base
    mov w10, #-1
    str w10, [x9, #0x100]         // GICR_ISENABLER0: every SGI and PPI
    mov x10, #0xff
    msr ICC_PMR_EL1, x10
    mov x10, #1
    msr ICC_IGRPEN1_EL1, x10
"""


def _storms() -> list[HostileGuest]:
    """Interrupts that never stop: a timer always firing whose handler never acknowledges
    it, a vCPU sending itself SGIs as fast as it can, a device doorbell rung in a loop. The
    VM must still stop at its budget."""
    timer = f"""
        {_GIC_ON}
        msr cntv_cval_el0, xzr
        mov x10, #1
        msr cntv_ctl_el0, x10         // enabled, unmasked, CVAL 0: always firing
        msr daifclr, #2
    spin:
        add x20, x20, #1
        b spin
    irq_handler:
        eret                          // never acknowledged: taken again at once
    """
    sgi = f"""
        {_GIC_ON}
        msr daifclr, #2
        {load_constant("x10", (1 << 24) | 1)}  // INTID 1, target list: vCPU 0
    storm:
        msr ICC_SGI1R_EL1, x10
        b storm
    irq_handler:
        mrs x11, ICC_IAR1_EL1
        msr ICC_EOIR1_EL1, x11
        add x21, x21, #1
        eret
    """
    doorbell = f"""
        {load_constant("x9", MMDS_BASE)}
    ring:
        str wzr, [x9, #0x30]
        b ring
    """
    budget_only = (StopReason.BUDGET,)
    return [
        HostileGuest("timer interrupt storm", _with_vectors(timer, "irq_handler"), budget_only, budget=STORM_BUDGET),
        HostileGuest("SGI storm", _with_vectors(sgi, "irq_handler"), budget_only, budget=STORM_BUDGET),
        HostileGuest("MMDS doorbell storm", doorbell, budget_only, budget=STORM_BUDGET),
    ]


# PSCI CPU_ON of vCPU 1 at the label `secondary`.
_START_SECONDARY = "\n".join([load_constant("x0", psci.CPU_ON_64), "mov x1, #1", "adr x2, secondary", "mov x3, #0", "hvc #0"])


def _from_secondary(fid: int) -> str:
    """vCPU 1 makes PSCI call `fid` while vCPU 0 spins."""
    return f"{_START_SECONDARY}\nprimary_spin:\nb primary_spin\nsecondary:\n{psci_call(fid)}\nb ."


def _psci_abuse() -> list[HostileGuest]:
    """Calls with arguments PSCI must refuse, and power-state changes from the wrong vCPU."""

    def neg(code: int) -> int:
        return code & U64_MAX

    argument_abuse = [  # (fid, args, expected x0)
        (psci.CPU_ON_64, (0, RAM_BASE, 0), neg(psci.ALREADY_ON)),  # itself
        (psci.CPU_ON_64, (0xFF_FFFF_FFFF, RAM_BASE, 0), neg(psci.INVALID_PARAMETERS)),  # unknown MPIDR
        (psci.CPU_ON_64, (1, UART0_BASE, 0), neg(psci.INVALID_ADDRESS)),  # entry in MMIO
        (psci.CPU_ON_64, (1, VMM_STUB_BASE, 0), neg(psci.INVALID_ADDRESS)),  # entry in the stub page
        (psci.CPU_ON_64, (1, U64_MAX - 3, 0), neg(psci.INVALID_ADDRESS)),
        (psci.AFFINITY_INFO_64, (0, 0xFFFF), neg(psci.INVALID_PARAMETERS)),
        (0xC400_0099, (), neg(psci.NOT_SUPPORTED)),
        (0xFFFF_FFFF, (), neg(psci.NOT_SUPPORTED)),
        (psci.PSCI_FEATURES, (0xFFFF_FFFF,), neg(psci.NOT_SUPPORTED)),
    ]
    lines = [RESULTS_PTR]
    for i, (fid, args, _) in enumerate(argument_abuse):
        lines += [psci_call(fid, *args), f"str x0, [x28, #{8 * (3 + i)}]"]
    lines.append(POWER_OFF)
    check = _expect_slots(**{f"s{3 + i}": (U64_MAX, r) for i, (*_, r) in enumerate(argument_abuse)})
    on_storm = f"""
        {_START_SECONDARY}
    primary_spin:
        b primary_spin
    secondary:
        {RESULTS_PTR}
    again:
        {psci_call(psci.CPU_ON_64, 0, RAM_BASE, 0)}
        str x0, [x28, #24]
        {psci_call(psci.CPU_ON_64, 1, RAM_BASE, 0)}
        str x0, [x28, #32]
        b again
    """
    primary_off = f"""
        {_START_SECONDARY}
        {psci_call(psci.CPU_OFF)}
        b .
    secondary:
        {load_constant("x2", 20_000)}
    count:
        subs x2, x2, #1
        b.ne count
        {POWER_OFF}
    """
    suspend_forever = f"{psci_call(psci.CPU_SUSPEND_64, 0, 0, 0)}\nb ."
    return [
        HostileGuest("PSCI argument abuse", "\n".join(lines), (StopReason.POWER_OFF,), check=check, vcpus=2),
        HostileGuest("SYSTEM_OFF from a secondary", _from_secondary(psci.SYSTEM_OFF), (StopReason.POWER_OFF,), ("vCPU 1", "SYSTEM_OFF"), vcpus=2),
        HostileGuest("SYSTEM_RESET from a secondary", _from_secondary(psci.SYSTEM_RESET), (StopReason.RESET,), ("vCPU 1", "SYSTEM_RESET"), vcpus=2),
        HostileGuest(
            "CPU_ON storm from a secondary",
            on_storm,
            (StopReason.BUDGET,),
            check=_expect_slots(s3=(U64_MAX, neg(psci.ALREADY_ON)), s4=(U64_MAX, neg(psci.ALREADY_ON))),
            vcpus=2,
            budget=STORM_BUDGET,
        ),
        HostileGuest("CPU_OFF of the primary, secondary finishes", primary_off, (StopReason.POWER_OFF,), vcpus=2),
        HostileGuest("CPU_SUSPEND with nothing to wake it", suspend_forever, (StopReason.DEADLOCK,), ("deadlock",)),
    ]


def catalog() -> list[HostileGuest]:
    """Every named hostile guest."""
    iabt, dabt = arch.EC_IABT_CURRENT, arch.EC_DABT_CURRENT
    ext, align = arch.FSC_SYNC_EXTERNAL, arch.FSC_ALIGNMENT
    zeros = RAM_BASE + 0x40_0000  # RAM nothing was loaded into
    guests: list[HostileGuest] = []
    guests += fault_pair("jump to a hole", _jump(HOLE), ("instruction fetch from unmapped", f"{HOLE:#x}"), _architected(iabt, ext, HOLE, HOLE))
    guests += fault_pair("jump to the top of the address space", _jump(U64_MAX - 0xFFFF), ("instruction fetch from unmapped",), _architected(iabt, ext, U64_MAX - 0xFFFF))
    guests += fault_pair("jump to a misaligned address", _jump(zeros + 2), ("PC alignment fault",), _architected(arch.EC_PC_ALIGN, far=zeros + 2, elr=zeros + 2))
    guests += fault_pair("execute from MMIO (UART)", _jump(UART0_BASE), ("instruction fetch from MMIO", f"{UART0_BASE:#x}"), _architected(iabt, ext, UART0_BASE, UART0_BASE))
    guests += fault_pair("execute from MMIO (GIC)", _jump(0x0800_0000), ("instruction fetch from MMIO",), _architected(iabt, ext, 0x0800_0000))
    guests += fault_pair("execute from the VMM stub page", _jump(VMM_STUB_BASE), ("instruction fetch from unmapped",), _architected(iabt, ext))
    guests += fault_pair("execute zeroed RAM", _jump(zeros), ("undefined instruction",), _architected(arch.EC_UNKNOWN, elr=zeros))
    guests += fault_pair("undefined instruction", _at_site("", ".word 0xffffffff"), ("undefined instruction",), _architected(arch.EC_UNKNOWN, elr_is_s3=True))
    guests += fault_pair("EL2 register from EL1", _at_site("", "msr hcr_el2, xzr"), ("undefined instruction",), _architected(arch.EC_UNKNOWN, elr_is_s3=True))
    guests += fault_pair("EL3 register from EL1", _at_site("", "mrs x0, scr_el3"), ("undefined instruction",), _architected(arch.EC_UNKNOWN, elr_is_s3=True))
    odd = RAM_BASE + 0x20_0001
    for insn, what, write in (
        ("ldxr x2, [x1]", "LDXR", False),
        ("ldaxr w2, [x1]", "LDAXR", False),
        (".word 0xF8220023", "LDADD", True),  # ldadd x2, x3, [x1]
        (".word 0xC8A27C23", "CAS", True),  # cas x2, x3, [x1]
    ):
        guests += fault_pair(
            f"unaligned {what}",
            _at_site(load_constant("x1", odd), insn),
            ("alignment fault", f"{odd:#x}"),
            _architected(dabt, align, odd, wnr=write, elr_is_s3=True),
        )
    for addr, access, insn in ((0x0A00_0000, "read from", "ldr w2, [x1]"), (0x0A00_0000, "write to", "str w2, [x1]"),
                               (0x0800_0000 + 0x1_0000 * 3, "read from", "ldr w2, [x1]"), (VMM_STUB_BASE, "write to", "str x2, [x1]"),
                               (VMM_STUB_BASE + 8, "read from", "ldr x2, [x1]"), (RAM_BASE + MEM_SIZE, "write to", "str x2, [x1]")):
        guests += fault_pair(
            f"{access} {addr:#x}",
            _at_site(load_constant("x1", addr), insn),
            (f"{access} unmapped guest physical address {addr:#x}",),
            _architected(dabt, ext, addr, wnr=access == "write to", elr_is_s3=True),
        )
    guests.append(_mmds_bad_buffers())
    guests += _storms()
    guests += _psci_abuse()
    guests.append(HostileGuest("never halts", "spin:\nb spin", (StopReason.BUDGET,)))
    guests.append(HostileGuest("never halts, all vCPUs", f"{psci_call(psci.CPU_ON_64, 1, RAM_BASE, 0)}\nspin:\nb spin", (StopReason.BUDGET,), vcpus=2))
    guests.append(HostileGuest("WFI with interrupts masked and none coming", "wfi\nb .", (StopReason.DEADLOCK,), ("deadlock",)))
    return guests


# --- random guests ----------------------------------------------------------------------------
_JUMP_CLASSES = ("hole", "high", "ram-zeros", "misaligned", "mmio", "stub", "random")
# For the soups' handler: synchronous exceptions and IRQs taken at EL1 go to `skipper`.
_SKIPPING_VECTORS = vector_table(cur_sp0_sync="skipper", cur_sp0_irq="skipper", cur_spx_sync="skipper", cur_spx_irq="skipper")
ANY_STOP = tuple(StopReason)


def _random_target(rng: random.Random, kind: str) -> int:
    if kind == "hole":
        return rng.choice((rng.randrange(0, 0x0800_0000), rng.randrange(0x0A00_0000, RAM_BASE))) & ~3
    if kind == "high":
        return rng.randrange(RAM_BASE + MEM_SIZE, 1 << 64) & ~3
    if kind == "ram-zeros":
        return rng.randrange(RAM_BASE + 0x40_0000, RAM_BASE + MEM_SIZE - 0x20_0000) & ~3
    if kind == "misaligned":
        return rng.randrange(RAM_BASE, RAM_BASE + MEM_SIZE) | rng.choice((1, 2, 3))
    if kind == "mmio":
        return rng.choice((0x0800_0000, 0x080A_0000, UART0_BASE, MMDS_BASE)) + rng.randrange(0, 0x1000, 4)
    if kind == "stub":
        return VMM_STUB_BASE + rng.randrange(0, 0x1000, 4)
    return rng.randrange(1 << 64)


def random_guests(rng: random.Random, jumps: int, soups: int, soup_words: int = 64, budget: int = 20_000) -> Iterator[HostileGuest]:
    """`jumps` wild jumps to random addresses of every class (with and without a vector
    table), then `soups` programs of `soup_words` random instruction words (half with a
    handler that skips whatever faults), each run for `budget` instructions. Any stop reason
    is fine for those as long as it is clear."""
    for i in range(jumps):
        kind = _JUMP_CLASSES[i % len(_JUMP_CLASSES)]
        target = _random_target(rng, kind)
        body = _jump(target)
        if rng.random() < 0.5:
            yield HostileGuest(f"wild jump ({kind}) to {target:#x}", body, (StopReason.FAULT,))
        else:
            yield HostileGuest(f"wild jump ({kind}) to {target:#x}, vector table", _with_vectors(body), (StopReason.POWER_OFF,))
    for i in range(soups):
        words = "\n".join(f".word {rng.getrandbits(32):#010x}" for _ in range(soup_words))
        skip = f"""
            adr x0, vectors
            msr vbar_el1, x0
            b soup
        skipper:
            mrs x10, elr_el1
            add x10, x10, #4
            msr elr_el1, x10
            eret
        {_SKIPPING_VECTORS}
        .p2align 11
        soup:
        """
        source = (skip if i % 2 else "") + words + "\nb .\n"
        yield HostileGuest(f"random words #{i}{' (skipping handler)' if i % 2 else ''}", source, ANY_STOP, budget=budget)


# --- running ----------------------------------------------------------------------------------
class Bystander:
    """A well-behaved VM run a slice at a time between hostile ones; `check()` compares it
    with the same guest run alone for the same virtual time."""

    CONFIG = VmConfig(guest="compute", quantum=QUANTUM, mem_size=MEM_SIZE, params={"iterations": 10**9})
    SLICE = 5 * QUANTUM

    def __init__(self) -> None:
        self.vm = MicroVM(self.CONFIG)
        self.slices = 0

    def step(self) -> None:
        self.vm.run(self.SLICE)
        self.slices += 1

    def check(self) -> Trial:
        clock = Stopwatch()
        alone = MicroVM(self.CONFIG)
        alone.run(self.SLICE * self.slices)
        case = f"bystander VM after {self.slices} slices between hostile guests"
        if alone.state_digest() != self.vm.state_digest() or alone.console_output != self.vm.console_output:
            return Trial(case, Verdict.LOST_DATA, "it differs from the same guest run alone", clock.seconds)
        return Trial(case, Verdict.SURVIVED, "", clock.seconds)


def _slots(vm: MicroVM) -> list[int]:
    return [vm.memory.read_u64(RESULTS + 8 * i) for i in range(16)]


def unclear(text: str) -> bool:
    return any(marker in text for marker in UNCLEAR_REASONS)


def run_guest(guest: HostileGuest, directory: Path, bystander: Bystander | None = None) -> Trial:
    """Run `guest`, check how it stopped, save and reload it for post-mortem; step the
    bystander (if any) afterwards."""
    clock = Stopwatch()
    case = guest.name
    try:
        with watchdog(WALL_LIMIT):
            verdict, detail, tag = _run_checked(guest, directory)
    except Hang as exc:
        verdict, detail, tag = Verdict.HANG, str(exc), "hang"
    if clock.seconds > WALL_LIMIT:  # the alarm cannot interrupt a hook called from Unicorn
        verdict, detail = Verdict.HANG, f"took {clock.seconds:.1f} s (limit {WALL_LIMIT} s)"
    if bystander is not None:
        bystander.step()
    return Trial(case, verdict, detail, clock.seconds, (f"stop:{tag}",))


def _run_checked(guest: HostileGuest, directory: Path) -> tuple[Verdict, str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "guest.bin"
    image.write_bytes(assemble(guest.source))
    try:
        vm = MicroVM(VmConfig(image=str(image), vcpus=guest.vcpus, mem_size=MEM_SIZE, quantum=QUANTUM, track_dirty_pages=True))
        result = vm.run(guest.budget)
    except Exception as exc:
        return Verdict.WRONG_EXCEPTION, f"run: {describe_exception(exc)}", "error"
    tag = result.reason.value
    text = result.fault.format() if result.fault is not None else result.detail
    if result.reason is StopReason.FAULT and unclear(result.fault.reason if result.fault else text):
        return Verdict.WRONG_EXCEPTION, f"unclear stop reason: {text.splitlines()[0]}", tag
    if result.reason not in guest.expect:
        return Verdict.VIOLATION, f"stopped for {result.reason.value} ({text.splitlines()[0] if text else ''}), expected {[r.value for r in guest.expect]}", tag
    missing = [w for w in guest.says if w not in text]
    if missing:
        return Verdict.VIOLATION, f"the stop reason does not say {missing}: {text.splitlines()[0] if text else ''!r}", tag
    if guest.check is not None:
        problem = guest.check(_slots(vm))
        if problem:
            return Verdict.VIOLATION, f"the guest saw the wrong thing: {problem}", tag
    verdict, detail = post_mortem(vm, directory / "post-mortem")
    return verdict, detail, tag


def post_mortem(vm: MicroVM, path: Path) -> tuple[Verdict, str]:
    """Save the stopped `vm`, describe the snapshot, load it back: same state, same stop."""
    try:
        vm.save_snapshot(path, "full")
        info = describe(path, verify=True, schema=MACHINE)
        restored = MicroVM.load_snapshot(path, "copy")
    except SnapshotError as exc:
        return Verdict.LOST_DATA, f"post-mortem snapshot failed: {exc}"
    except Exception as exc:
        return Verdict.WRONG_EXCEPTION, f"post-mortem snapshot: {describe_exception(exc)}"
    if info.get("pair_ok") is not True:
        return Verdict.LOST_DATA, f"post-mortem describe --verify says pair_ok={info.get('pair_ok')}"
    if restored.state_digest() != vm.state_digest() or restored.stopped != vm.stopped:
        return Verdict.LOST_DATA, "the post-mortem snapshot restores to a different state"
    if vm.stopped is not None and vm.stopped.final:
        again = restored.run(QUANTUM)
        if again.reason is not vm.stopped or again.instructions:
            return Verdict.VIOLATION, f"the restored post-mortem VM ran on ({again.reason.value})"
    return Verdict.SURVIVED, ""
