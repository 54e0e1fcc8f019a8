"""Syndromes of UNDEFs raised inside Unicorn (vmm/syndrome.py): the decoder on instruction
words, and guests whose EL1 handler reads ESR_EL1 after the instruction."""
from __future__ import annotations

import pytest

from tests.asm import POWER_OFF, RESULTS_PTR, boot, mov64, result, vector_table
from vmm import StopReason, arch
from vmm.layout import RAM_BASE
from vmm.syndrome import ISS_COND_AARCH64, TrapControls, sve_shown, undef_syndrome

SCTLR_RESET = 0xC5_0838  # Unicorn's reset SCTLR_EL1: nTWI = nTWE = 1, UCT = DZE = UCI = UMA = 0
SCTLR_OPEN = SCTLR_RESET | 1 << 9 | 1 << 14 | 1 << 15 | 1 << 26  # UMA, DZE, UCT, UCI set
EL0 = arch.PSTATE_EL0T
EL1 = arch.PSTATE_EL1H_MASKED


def controls(pstate: int = EL0, sctlr: int = SCTLR_RESET, cpacr: int = 0, pmuserenr: int = 0, sve: bool = False) -> TrapControls:
    return TrapControls(pstate=pstate, sctlr_el1=sctlr, cpacr_el1=cpacr, pmuserenr_el0=pmuserenr, sve_shown=sve)


def sysreg_iss(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int, read: bool) -> int:
    """EC 0x18 ISS as DDI 0487 D17.2.37 lays it out (spelled out field by field)."""
    return (op0 << 20) + (op2 << 17) + (op1 << 14) + (crn << 10) + (rt << 5) + (crm << 1) + int(read)


# Words assembled with keystone (tests/asm.py) once; the hand-made ones flip L (bit 21) of those.
MRS_CTR_X3 = 0xD53B_0023
MSR_CTR_X3 = 0xD51B_0023  # a write to a read-only register
MRS_DAIF_X3 = 0xD53B_4223
MSR_DAIF_X7 = 0xD51B_4227
MSR_DAIFSET_2 = 0xD503_42DF
MSR_DAIFCLR_F = 0xD503_4FFF
DC_ZVA_X3 = 0xD50B_7423
SYSL_DC_ZVA_ENCODING = 0xD52B_7423  # SYSL with DC ZVA's fields: unallocated
DC_CVAU_X3 = 0xD50B_7B23
DC_CIVAC_X9 = 0xD50B_7E29
IC_IVAU_X2 = 0xD50B_7522
DC_IVAC_X3 = 0xD508_7623  # EL1 only
WFI = 0xD503_207F
WFE = 0xD503_205F
MRS_PMCR_X3 = 0xD53B_9C03
MRS_PMCCNTR_X3 = 0xD53B_9D03
MSR_PMSWINC_X1 = 0xD51B_9C81
MRS_PMSWINC_X1 = 0xD53B_9C81  # write-only register read
MSR_PMSELR_X1 = 0xD51B_9CA1
MRS_PMCEID0_X1 = 0xD53B_9CC1
MSR_PMCEID0_X1 = 0xD51B_9CC1  # read-only register write
MRS_PMEVCNTR3_X2 = 0xD53B_E862
MSR_PMEVTYPER3_X2 = 0xD51B_EC62
MRS_PMUSERENR_X2 = 0xD53B_9E02
MSR_PMUSERENR_X2 = 0xD51B_9E02  # read-only at EL0
MRS_SCTLR_X3 = 0xD538_1003
MRS_MIDR_X3 = 0xD538_0003
MRS_ZCR_X3 = 0xD538_1203  # S3_0_C1_C2_0
RDVL_X0_1 = 0x04BF_5020  # SVE
FMOV_D0_X1 = 0x9E67_0020
UDF_0 = 0x0000_0000
MRS_CNTVCT_X3 = 0xD53B_E043


@pytest.mark.parametrize(
    "word, ctl, iss",
    [
        (MRS_CTR_X3, controls(), sysreg_iss(3, 3, 0, 0, 1, 3, True)),
        (MRS_DAIF_X3, controls(), sysreg_iss(3, 3, 4, 2, 1, 3, True)),
        (MSR_DAIF_X7, controls(), sysreg_iss(3, 3, 4, 2, 1, 7, False)),
        (MSR_DAIFSET_2, controls(), sysreg_iss(0, 3, 4, 2, 6, 31, False)),
        (MSR_DAIFCLR_F, controls(), sysreg_iss(0, 3, 4, 15, 7, 31, False)),
        (DC_ZVA_X3, controls(), sysreg_iss(1, 3, 7, 4, 1, 3, False)),
        (DC_CVAU_X3, controls(), sysreg_iss(1, 3, 7, 11, 1, 3, False)),
        (DC_CIVAC_X9, controls(), sysreg_iss(1, 3, 7, 14, 1, 9, False)),
        (IC_IVAU_X2, controls(), sysreg_iss(1, 3, 7, 5, 1, 2, False)),
        (MRS_PMCR_X3, controls(), sysreg_iss(3, 3, 9, 12, 0, 3, True)),
        (MRS_PMCCNTR_X3, controls(pmuserenr=0b1010), sysreg_iss(3, 3, 9, 13, 0, 3, True)),  # ER, SW: not CR
        (MSR_PMSWINC_X1, controls(pmuserenr=0b1100), sysreg_iss(3, 3, 9, 12, 4, 1, False)),
        (MSR_PMSELR_X1, controls(pmuserenr=0b0110), sysreg_iss(3, 3, 9, 12, 5, 1, False)),
        (MRS_PMEVCNTR3_X2, controls(pmuserenr=0b0100), sysreg_iss(3, 3, 14, 8, 3, 2, True)),
        (MSR_PMEVTYPER3_X2, controls(pmuserenr=0b1000), sysreg_iss(3, 3, 14, 12, 3, 2, False)),
        (MRS_PMCEID0_X1, controls(), sysreg_iss(3, 3, 9, 12, 6, 1, True)),
    ],
)
def test_el0_accesses_trapped_by_el1_controls_are_ec_0x18_with_the_full_iss(word: int, ctl: TrapControls, iss: int) -> None:
    assert undef_syndrome(word, ctl) == (arch.EC_SYSREG, iss)


@pytest.mark.parametrize(
    "word, ctl",
    [
        (MRS_CTR_X3, controls(sctlr=SCTLR_OPEN)),  # UCT = 1: the UDEF had another cause
        (MSR_CTR_X3, controls()),  # read-only: UNDEFINED outranks the trap
        (MSR_DAIFSET_2, controls(sctlr=SCTLR_OPEN)),
        (DC_ZVA_X3, controls(sctlr=SCTLR_OPEN)),
        (SYSL_DC_ZVA_ENCODING, controls()),
        (DC_CVAU_X3, controls(sctlr=SCTLR_OPEN)),
        (DC_IVAC_X3, controls()),  # EL1-only maintenance
        (MRS_PMCR_X3, controls(pmuserenr=1)),
        (MRS_PMCCNTR_X3, controls(pmuserenr=0b0100)),  # CR lets EL0 read it
        (MSR_PMSWINC_X1, controls(pmuserenr=0b0010)),  # SW lets EL0 write it
        (MRS_PMSWINC_X1, controls()),  # write-only
        (MSR_PMCEID0_X1, controls()),  # read-only
        (MSR_PMUSERENR_X2, controls()),
        (MRS_PMUSERENR_X2, controls()),
        (MRS_SCTLR_X3, controls()),  # an EL1 register at EL0 is UNDEFINED (no FEAT_IDST trap)
        (MRS_MIDR_X3, controls()),  # ID registers too: ID_AA64MMFR2_EL1.IDS = 0
        (MRS_CTR_X3, controls(pstate=EL1)),  # EL1 controls trap EL0 only
        (MRS_CNTVCT_X3, controls()),  # the generic timer's registers are the VMM's own
        (WFI, controls(sctlr=SCTLR_RESET & ~(1 << 16), pstate=EL1)),
        (WFI, controls()),  # nTWI = 1
        (WFE, controls(sctlr=0)),  # QEMU never traps WFE
        (FMOV_D0_X1, controls(cpacr=0)),  # Unicorn never raises FP/SIMD traps
        (RDVL_X0_1, controls(pstate=EL1, cpacr=0)),  # SVE hidden: UNDEFINED
        (MRS_ZCR_X3, controls(pstate=EL1, cpacr=0)),
        (RDVL_X0_1, controls(pstate=EL0, cpacr=3 << 16, sve=True)),  # ZEN = 0b11 traps nothing
        (UDF_0, controls()),
        (None, controls()),  # the instruction could not be read
    ],
)
def test_everything_else_stays_ec_0x00(word: int | None, ctl: TrapControls) -> None:
    assert undef_syndrome(word, ctl) == (arch.EC_UNKNOWN, 0)


def test_el0_wfi_with_ntwi_clear_is_ec_0x01_with_cv_and_cond() -> None:
    assert undef_syndrome(WFI, controls(sctlr=SCTLR_RESET & ~(1 << 16))) == (arch.EC_WFX, 1 << 24 | 0xE << 20)
    assert ISS_COND_AARCH64 == 0x1E0_0000


@pytest.mark.parametrize("word", [RDVL_X0_1, MRS_ZCR_X3])
@pytest.mark.parametrize("zen, el, traps", [(0b00, 0, True), (0b10, 1, True), (0b01, 0, True), (0b01, 1, False), (0b11, 0, False)])
def test_sve_traps_by_cpacr_zen_only_when_the_cpu_model_shows_sve(word: int, zen: int, el: int, traps: bool) -> None:
    ctl = controls(pstate=EL0 if el == 0 else EL1, cpacr=zen << 16, sve=True)
    assert undef_syndrome(word, ctl) == ((arch.EC_SVE, 0) if traps else (arch.EC_UNKNOWN, 0))
    hidden = controls(pstate=ctl.pstate, cpacr=ctl.cpacr_el1, sve=False)
    assert undef_syndrome(word, hidden) == (arch.EC_UNKNOWN, 0)


def test_illegal_execution_state_outranks_everything() -> None:
    for word in (UDF_0, MRS_CTR_X3, RDVL_X0_1, None):
        assert undef_syndrome(word, controls(pstate=EL1 | arch.PSTATE_IL, sve=True)) == (arch.EC_ILLEGAL_STATE, 0)


def test_sve_shown_reads_id_aa64pfr0_sve() -> None:
    assert sve_shown(1 << 32) and not sve_shown(0xF << 28 | 0xF << 36)


# --- guests -----------------------------------------------------------------------------------------
VECTORS = vector_table(cur_spx_sync="record", lower_sync="record")
RECORD = f"""
record:
    mrs x13, esr_el1
    str x13, [x28, #8]
    mrs x14, elr_el1
    str x14, [x28, #16]
    mrs x15, spsr_el1
    str x15, [x28, #24]
    {POWER_OFF}
"""


def run_guest(tmp_path, body: str, *, el0: bool = True, sctlr: int | None = None, setup: str = "") -> dict[str, int]:
    """Run `body` (from label `site`) at EL0 or EL1 after `setup` at EL1; the EL1 handler
    records ESR, ELR and SPSR and powers off. `ran` is 1 if the body completed without an
    exception (a UDF after it then ends the run); `site` is the body's address."""
    sctlr_setup = f"{mov64('x1', sctlr)}\nmsr sctlr_el1, x1\nisb" if sctlr is not None else ""
    enter_el0 = "msr elr_el1, x0\nmsr spsr_el1, xzr\neret" if el0 else ""
    src = f"""
        {RESULTS_PTR}
        adr x0, vectors
        msr vbar_el1, x0
        {mov64("x0", RAM_BASE + 0x80_0000)}
        mov sp, x0
        {sctlr_setup}
        {setup}
        adr x0, site
        str x0, [x28, #32]
        mov x3, x28
        {enter_el0}
    site:
        {body}
        mov x0, #1
        str x0, [x28]
        .word 0
    {RECORD}
    {VECTORS}
    """
    vm = boot(tmp_path, src)
    assert vm.run(1_000_000).reason is StopReason.POWER_OFF
    keys = ("ran", "esr", "elr", "spsr", "site")
    return {k: result(vm, i) for i, k in enumerate(keys)}


NTWI = 1 << 16


@pytest.mark.parametrize(
    "body, sctlr, setup, esr",
    [
        ("wfi", SCTLR_RESET & ~NTWI, "", arch.esr(arch.EC_WFX, ISS_COND_AARCH64)),
        ("mrs x5, ctr_el0", None, "", arch.esr(arch.EC_SYSREG, sysreg_iss(3, 3, 0, 0, 1, 5, True))),
        ("msr daifset, #2", None, "", arch.esr(arch.EC_SYSREG, sysreg_iss(0, 3, 4, 2, 6, 31, False))),
        ("dc zva, x3", None, "", arch.esr(arch.EC_SYSREG, sysreg_iss(1, 3, 7, 4, 1, 3, False))),
        ("ic ivau, x3", None, "", arch.esr(arch.EC_SYSREG, sysreg_iss(1, 3, 7, 5, 1, 3, False))),
        ("mrs x6, pmcr_el0", None, "msr pmuserenr_el0, xzr", arch.esr(arch.EC_SYSREG, sysreg_iss(3, 3, 9, 12, 0, 6, True))),
    ],
    ids=["wfi-nTWI", "ctr-UCT", "daifset-UMA", "dczva-DZE", "icivau-UCI", "pmcr-PMUSERENR"],
)
def test_el0_instructions_trapped_by_el1_controls_reach_the_guest_with_their_syndrome(tmp_path, body, sctlr, setup, esr) -> None:
    r = run_guest(tmp_path, body, sctlr=sctlr, setup=setup)
    assert (r["ran"], r["elr"]) == (0, r["site"])  # trapped at the instruction, preferred return = it
    assert r["spsr"] & arch.PSTATE_M_MASK == arch.PSTATE_EL0T
    assert r["esr"] == esr, f"{r['esr']:#x} != {esr:#x}"


@pytest.mark.parametrize(
    "body, sctlr",
    [("mrs x5, ctr_el0", SCTLR_OPEN), ("msr daifset, #2", SCTLR_OPEN), ("dc zva, x3", SCTLR_OPEN), ("wfe", 0)],
)
def test_the_same_instructions_run_when_the_controls_allow_them(tmp_path, body, sctlr) -> None:
    r = run_guest(tmp_path, body, sctlr=sctlr)  # (WFE: QEMU never traps it, nTWE or not)
    assert r["ran"] == 1 and r["esr"] >> 26 == arch.EC_UNKNOWN  # the UDF after the body


@pytest.mark.parametrize(
    "body, el0, setup",
    [
        ("mrs x5, sctlr_el1", True, ""),  # EL1 register at EL0: UNDEFINED, no FEAT_IDST
        ("mrs x5, midr_el1", True, ""),
        (".word 0x04bf5020", False, ""),  # SVE RDVL, CPACR_EL1.ZEN = 0: SVE is hidden, so UNDEFINED
        (".word 0x04bf5020", False, f"{mov64('x1', 3 << 16 | 3 << 20)}\nmsr cpacr_el1, x1\nisb"),
        ("mrs x5, s3_0_c1_c2_0", False, ""),  # ZCR_EL1
    ],
)
def test_undefined_instructions_stay_ec_0x00(tmp_path, body, el0, setup) -> None:
    r = run_guest(tmp_path, body, el0=el0, setup=setup)
    assert (r["ran"], r["elr"], r["esr"]) == (0, r["site"], arch.esr(arch.EC_UNKNOWN))


def test_an_undef_in_illegal_execution_state_is_ec_0x0e(tmp_path) -> None:
    """An ERET to EL2 (not implemented) is an illegal return: PSTATE.IL is set and execution
    goes on at ELR at EL1. The next instruction takes the illegal-state exception; Unicorn
    raises nothing for PSTATE.IL itself, so the VMM sees it only when that instruction is one
    Unicorn refuses (here UDF): docs/machine.md."""
    body = "mov x1, #0x9\nmsr spsr_el1, x1\nadr x1, illegal\nmsr elr_el1, x1\neret\nillegal: .word 0"
    r = run_guest(tmp_path, body, el0=False)
    assert r["ran"] == 0 and r["esr"] == arch.esr(arch.EC_ILLEGAL_STATE)
    assert r["spsr"] & arch.PSTATE_IL and r["spsr"] & arch.PSTATE_M_MASK == arch.PSTATE_EL1H
    assert r["elr"] == r["site"] + 20  # the UDF after the ERET
