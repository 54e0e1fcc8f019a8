"""GenericTimer: counters, CTL/CVAL/TVAL views, output levels, deadlines, snapshot state."""
from __future__ import annotations

from collections import namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm import sysreg
from vmm.devices.generic_timer import (
    CNTFRQ_HZ,
    CTL_ENABLE,
    CTL_IMASK,
    CTL_ISTATUS,
    GenericTimer,
    TimerState,
)

U64 = (1 << 64) - 1
VIRT = (sysreg.CNTV_CTL_EL0, sysreg.CNTV_CVAL_EL0, sysreg.CNTV_TVAL_EL0)
PHYS = (sysreg.CNTP_CTL_EL0, sysreg.CNTP_CVAL_EL0, sysreg.CNTP_TVAL_EL0)


def armed(ctl_reg, cval_reg, cval: int, ctl: int = CTL_ENABLE, cntvoff: int = 0) -> GenericTimer:
    t = GenericTimer()
    t.cntvoff = cntvoff
    t.sysreg_write(cval_reg, cval, now=0)
    t.sysreg_write(ctl_reg, ctl, now=0)
    return t


def test_sysreg_encodings_and_names():
    assert sysreg.CNTVCT_EL0 == (3, 3, 14, 0, 2)
    assert sysreg.CNTV_CTL_EL0 == (3, 3, 14, 3, 1)
    assert sysreg.CNTP_TVAL_EL0 == (3, 3, 14, 2, 0)
    assert sysreg.CNTKCTL_EL1 == (3, 0, 14, 1, 0)
    assert sysreg.ICC_IAR1_EL1 == (3, 0, 12, 12, 0)
    assert sysreg.ICC_SGI1R_EL1 == (3, 0, 12, 11, 5)
    assert sysreg.ICC_PMR_EL1 == (3, 0, 4, 6, 0)
    # Unicorn's hook tuple is (crn, crm, op0, op1, op2, val).
    CpReg = namedtuple("CpReg", ["crn", "crm", "op0", "op1", "op2", "val"])
    cp = CpReg(crn=12, crm=12, op0=3, op1=0, op2=0, val=0)
    assert sysreg.from_cp_reg(cp) == sysreg.ICC_IAR1_EL1
    assert sysreg.to_cp_tuple(sysreg.ICC_IAR1_EL1) == (12, 12, 3, 0, 0)
    assert sysreg.sysreg_name(sysreg.CNTV_TVAL_EL0) == "CNTV_TVAL_EL0"
    assert sysreg.sysreg_name((3, 0, 1, 0, 0)) == "S3_0_C1_C0_0"
    assert len(set(sysreg.SYSREG_NAMES.values())) == len(sysreg.SYSREG_NAMES) == 32  # 24 + 8 group-0 registers


def test_handles_exactly_the_timer_registers():
    t = GenericTimer()
    counters = (sysreg.CNTPCT_EL0, sysreg.CNTVCT_EL0, sysreg.CNTPCTSS_EL0, sysreg.CNTVCTSS_EL0)
    for reg in VIRT + PHYS + counters + (sysreg.CNTFRQ_EL0, sysreg.CNTKCTL_EL1):
        assert t.handles(reg), sysreg.sysreg_name(reg)
    assert not t.handles(sysreg.ICC_IAR1_EL1)
    with pytest.raises(ValueError, match="ICC_IAR1_EL1"):
        t.sysreg_read(sysreg.ICC_IAR1_EL1, now=0)


def test_frequency_is_fixed_at_1ghz():
    t = GenericTimer()
    assert CNTFRQ_HZ == 1_000_000_000
    t.sysreg_write(sysreg.CNTFRQ_EL0, 62_500_000, now=0)
    assert t.sysreg_read(sysreg.CNTFRQ_EL0, now=5) == CNTFRQ_HZ


def test_counters_follow_now_and_cntvoff():
    t = GenericTimer()
    assert t.sysreg_read(sysreg.CNTPCT_EL0, now=12345) == 12345
    assert t.sysreg_read(sysreg.CNTVCT_EL0, now=12345) == 12345
    t.cntvoff = 1000
    assert t.sysreg_read(sysreg.CNTPCT_EL0, now=12345) == 12345
    assert t.sysreg_read(sysreg.CNTVCT_EL0, now=12345) == 11345
    assert t.sysreg_read(sysreg.CNTVCTSS_EL0, now=12345) == 11345
    assert t.sysreg_read(sysreg.CNTPCTSS_EL0, now=12345) == 12345
    t.sysreg_write(sysreg.CNTVCT_EL0, 0, now=12345)  # read-only
    assert t.sysreg_read(sysreg.CNTVCT_EL0, now=12345) == 11345
    # The virtual count is modulo 2**64.
    t.cntvoff = 20000
    assert t.sysreg_read(sysreg.CNTVCT_EL0, now=12345) == (12345 - 20000) & U64


@pytest.mark.parametrize("regs", [VIRT, PHYS], ids=["virtual", "physical"])
def test_ctl_istatus_and_output(regs):
    ctl, cval, _ = regs
    t = armed(ctl, cval, cval=1000, ctl=0)
    assert t.sysreg_read(ctl, now=2000) == 0  # disabled: ISTATUS reads 0
    t.sysreg_write(ctl, CTL_ENABLE | CTL_IMASK | CTL_ISTATUS, now=0)  # ISTATUS is read-only
    assert t.sysreg_read(ctl, now=999) == CTL_ENABLE | CTL_IMASK
    assert t.sysreg_read(ctl, now=1000) == CTL_ENABLE | CTL_IMASK | CTL_ISTATUS  # regardless of IMASK
    index = 0 if regs is VIRT else 1
    assert t.output_levels(1000)[index] is False  # masked
    t.sysreg_write(ctl, CTL_ENABLE, now=0)
    assert t.output_levels(999)[index] is False
    assert t.output_levels(1000)[index] is True
    assert t.output_levels(1000)[1 - index] is False  # the other timer is untouched
    assert t.sysreg_read(cval, now=0) == 1000


def test_virtual_timer_compares_against_virtual_count():
    t = armed(sysreg.CNTV_CTL_EL0, sysreg.CNTV_CVAL_EL0, cval=1000, cntvoff=500)
    assert t.output_levels(1499) == (False, False)
    assert t.output_levels(1500) == (True, False)
    assert t.next_deadline(600) == 1500
    # Before now reaches cntvoff the virtual count has wrapped to a huge value: condition met.
    assert t.output_levels(0) == (True, False)


def test_cval_is_an_unsigned_64_bit_compare():
    t = armed(sysreg.CNTP_CTL_EL0, sysreg.CNTP_CVAL_EL0, cval=U64)
    assert t.output_levels(1 << 63) == (False, False)
    t.sysreg_write(sysreg.CNTP_CVAL_EL0, 1 << 64 | 7, now=0)  # truncated to 64 bits
    assert t.sysreg_read(sysreg.CNTP_CVAL_EL0, now=0) == 7


@pytest.mark.parametrize("regs", [VIRT, PHYS], ids=["virtual", "physical"])
def test_tval_is_a_signed_32_bit_view(regs):
    ctl, cval, tval = regs
    t = GenericTimer()
    t.cntvoff = 100  # virtual count = now - 100
    now = 10_000
    count = now - 100 if regs is VIRT else now
    t.sysreg_write(cval, count + 250, now=now)
    assert t.sysreg_read(tval, now=now) == 250
    t.sysreg_write(cval, count - 5, now=now)
    assert t.sysreg_read(tval, now=now) == (-5) & 0xFFFF_FFFF
    t.sysreg_write(cval, count + (1 << 32) + 3, now=now)  # truncated to 32 bits
    assert t.sysreg_read(tval, now=now) == 3
    t.sysreg_write(tval, 40, now=now)
    assert t.sysreg_read(cval, now=now) == count + 40
    t.sysreg_write(tval, 0xFFFF_FFFF, now=now)  # -1, sign-extended
    assert t.sysreg_read(cval, now=now) == count - 1
    t.sysreg_write(tval, 0xDEAD_0000_0000_0010, now=now)  # only bits [31:0] count
    assert t.sysreg_read(cval, now=now) == count + 16
    assert t.sysreg_read(tval, now=now + 6) == 10


def test_next_deadline():
    t = GenericTimer()
    assert t.next_deadline(0) is None  # nothing armed
    t.sysreg_write(sysreg.CNTP_CVAL_EL0, 5000, now=0)
    assert t.next_deadline(0) is None  # not enabled
    t.sysreg_write(sysreg.CNTP_CTL_EL0, CTL_ENABLE | CTL_IMASK, now=0)
    assert t.next_deadline(0) is None  # masked: the output never asserts
    t.sysreg_write(sysreg.CNTP_CTL_EL0, CTL_ENABLE, now=0)
    assert t.next_deadline(0) == 5000
    assert t.next_deadline(4999) == 5000
    assert t.next_deadline(5000) is None  # already asserted: nothing newly asserts
    t.cntvoff = 1000
    t.sysreg_write(sysreg.CNTV_CVAL_EL0, 3000, now=0)  # physical 4000
    t.sysreg_write(sysreg.CNTV_CTL_EL0, CTL_ENABLE, now=0)
    assert t.next_deadline(1000) == 4000
    assert t.next_deadline(4000) == 5000


@settings(max_examples=300, deadline=None)
@given(
    now=st.integers(0, (1 << 62)),
    cval=st.integers(0, U64),
    cntvoff=st.integers(0, U64),
    virtual=st.booleans(),
)
def test_deadline_is_the_first_tick_the_output_asserts(now, cval, cntvoff, virtual):
    ctl, cval_reg, _ = VIRT if virtual else PHYS
    t = armed(ctl, cval_reg, cval=cval, cntvoff=cntvoff)
    index = 0 if virtual else 1
    deadline = t.next_deadline(now)
    if t.output_levels(now)[index]:
        assert deadline is None
        return
    assert deadline is not None and deadline > now
    assert t.output_levels(deadline)[index]
    assert not t.output_levels(deadline - 1)[index]


def test_el0_access_follows_cntkctl():
    t = GenericTimer()
    assert not t.el0_access_allowed(sysreg.CNTVCT_EL0)
    t.sysreg_write(sysreg.CNTKCTL_EL1, 1 << 1, now=0)  # EL0VCTEN
    assert t.el0_access_allowed(sysreg.CNTVCT_EL0)
    assert t.el0_access_allowed(sysreg.CNTFRQ_EL0)
    assert not t.el0_access_allowed(sysreg.CNTPCT_EL0)
    assert not t.el0_access_allowed(sysreg.CNTV_CTL_EL0)
    t.sysreg_write(sysreg.CNTKCTL_EL1, (1 << 8) | (1 << 0), now=0)  # EL0VTEN | EL0PCTEN
    assert t.el0_access_allowed(sysreg.CNTV_TVAL_EL0, write=True)
    assert not t.el0_access_allowed(sysreg.CNTP_TVAL_EL0)
    assert not t.el0_access_allowed(sysreg.CNTKCTL_EL1)
    assert t.sysreg_read(sysreg.CNTKCTL_EL1, now=0) == (1 << 8) | 1


def test_save_restore_round_trip_and_isolation():
    t = armed(sysreg.CNTV_CTL_EL0, sysreg.CNTV_CVAL_EL0, cval=777, cntvoff=11)
    t.sysreg_write(sysreg.CNTP_CVAL_EL0, 999, now=0)
    t.sysreg_write(sysreg.CNTKCTL_EL1, 3, now=0)
    state = t.save_state()
    assert state == TimerState(
        virt=state.virt, phys=state.phys, cntkctl=3, cntvoff=11
    ) and (state.virt.ctl, state.virt.cval, state.phys.cval) == (CTL_ENABLE, 777, 999)

    fresh = GenericTimer()
    fresh.restore_state(state)
    assert fresh.save_state() == state
    for now in (0, 787, 788, 10_000):
        assert fresh.output_levels(now) == t.output_levels(now)
        assert fresh.next_deadline(now) == t.next_deadline(now)
        for reg in VIRT + PHYS:
            assert fresh.sysreg_read(reg, now) == t.sysreg_read(reg, now)

    # Neither side aliases the other.
    state.virt.cval = 1
    fresh.sysreg_write(sysreg.CNTV_CVAL_EL0, 2, now=0)
    assert t.sysreg_read(sysreg.CNTV_CVAL_EL0, now=0) == 777
    assert fresh.save_state().virt.cval == 2


def test_restore_masks_fields_to_architectural_widths():
    t = GenericTimer()
    s = TimerState()
    s.virt.ctl = 0xFF
    s.phys.cval = 1 << 70
    t.restore_state(s)
    out = t.save_state()
    assert out.virt.ctl == CTL_ENABLE | CTL_IMASK
    assert out.phys.cval == 0


def test_rollback_returns_to_a_saved_state_without_aliasing_it():
    t = armed(sysreg.CNTV_CTL_EL0, sysreg.CNTV_CVAL_EL0, cval=777, cntvoff=11)
    state = t.save_state()
    t.sysreg_write(sysreg.CNTV_CVAL_EL0, 5, now=0)
    t.sysreg_write(sysreg.CNTKCTL_EL1, 3, now=0)
    t.rollback(state)
    assert t.save_state() == state
    t.sysreg_write(sysreg.CNTV_CVAL_EL0, 6, now=0)  # after the rollback: the saved state stays as saved
    assert state.virt.cval == 777
    t.rollback(state)
    assert t.sysreg_read(sysreg.CNTV_CVAL_EL0, now=0) == 777
