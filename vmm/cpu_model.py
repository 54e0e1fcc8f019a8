"""The vCPU's CPU model: Unicorn's `max` AArch64 CPU with the features that need firmware
hidden from the ID registers.

Unicorn's `max` CPU (QEMU 5.0's) advertises SVE and pointer authentication, but nothing plays
EL3/EL2 firmware: CPTR_EL3.EZ = 0 makes every SVE register access UNDEFINED, and
SCR_EL3.API/APK = 0 make the pointer-authentication keys inaccessible. A guest that believed
the ID registers would fault (Linux: `msr zcr_el1` in read_zcr_features). So the ID registers
that advertise them are trapped and read with those fields zero; the features are then off
for a guest that follows the architecture's discovery rules (Linux, glibc through HWCAPs):

| feature | field | shown |
|---|---|---|
| SVE | ID_AA64PFR0_EL1.SVE [35:32] | 0 (not implemented) |
| PAuth (QARMA, address and generic) | ID_AA64ISAR1_EL1.APA [7:4], API [11:8], GPA [27:24], GPI [31:28] | 0 |
| PAuth (QARMA3) | ID_AA64ISAR2_EL1.APA3 [15:12], GPA3 [11:8] | 0 |
| GICv3 system registers | ID_AA64PFR0_EL1.GIC [27:24] | 1 (the VMM serves ICC_*) |
| no speculative side channels | ID_AA64PFR0_EL1.CSV2 [59:56], CSV3 [63:60] | 1 (true: Unicorn does not speculate; Linux then needs no KPTI) |
| DC ZVA | DCZID_EL0.DZP [4] | 1 (prohibited; BS [3:0] = 4, 64-byte blocks) |

DC ZVA is shown prohibited because Unicorn implements it as one byte store through its slow
store path per byte (about 10% of a Linux boot): Linux's clear_page and memset and glibc's
memset then zero with ordinary stores, which take the TLB fast path. A DC ZVA executed anyway
still zeroes its block (a hypervisor trapping it with HCR_EL2.TDZ would fault it instead).

Everything else is `max` as Unicorn reports it (docs/machine.md lists it). The instructions
themselves are not removed: SVE instructions executed anyway are UNDEFINED (EC 0x00: Unicorn
traps them to EL3, CPTR_EL3.EZ = 0, and vmm.syndrome reports EC 0x19 only when SVE is shown),
and PAC instructions in the hint space are NOPs, as with the keys disabled.
"""
from __future__ import annotations

from vmm.syndrome import ID_AA64PFR0_EL1
from vmm.vcpu import SysReg, Vcpu, VcpuHooks

# ID registers (DDI 0487 D17.2): encodings (op0, op1, CRn, CRm, op2).
ID_AA64ISAR1_EL1: SysReg = (3, 0, 0, 6, 1)
ID_AA64ISAR2_EL1: SysReg = (3, 0, 0, 6, 2)
DCZID_EL0: SysReg = (3, 3, 0, 0, 7)  # DDI 0487 D17.2.34
DCZID_DZP = 1 << 4  # DC ZVA prohibited
DCZID_BS_64_BYTES = 4  # log2 of the block size in 4-byte words


def _field(shift: int, width: int = 4) -> int:
    return ((1 << width) - 1) << shift


# (clear mask, set bits) per trapped ID register.
ID_OVERRIDES: dict[SysReg, tuple[int, int]] = {
    # SVE = 0; GIC = 1 (system registers); CSV2 = CSV3 = 1
    ID_AA64PFR0_EL1: (_field(32) | _field(24) | _field(56) | _field(60), 1 << 24 | 1 << 56 | 1 << 60),
    ID_AA64ISAR1_EL1: (_field(4) | _field(8) | _field(24) | _field(28), 0),  # APA, API, GPA, GPI = 0
    ID_AA64ISAR2_EL1: (_field(12) | _field(8), 0),  # APA3, GPA3 = 0
}


def id_register_value(vcpu: Vcpu, enc: SysReg) -> int:
    """What the guest reads from the trapped ID register `enc`: Unicorn's value, overridden."""
    from vmm.sysreg import to_cp_tuple
    from unicorn import arm64_const as a64

    clear, set_bits = ID_OVERRIDES[enc]
    native = vcpu.uc.reg_read(a64.UC_ARM64_REG_CP_REG, to_cp_tuple(enc))
    return (native & ~clear) | set_bits


def install_cpu_model(hooks: VcpuHooks) -> None:
    """Trap the overridden ID registers (reads; writes to ID registers are UNDEFINED and left
    to Unicorn)."""
    for enc in ID_OVERRIDES:
        hooks.sysreg_read[enc] = lambda v, e=enc: id_register_value(v, e)
    hooks.sysreg_const[DCZID_EL0] = DCZID_DZP | DCZID_BS_64_BYTES
