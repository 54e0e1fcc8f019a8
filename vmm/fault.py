"""`FaultReport`: what a user sees when a guest takes an exception it cannot handle.

A fault stops the VM (never the host process). The report names the vCPU, the PC, the
exception class in words, the faulting instruction disassembled (Capstone) and the registers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmm import arch

if TYPE_CHECKING:
    from vmm.vcpu import FaultInfo, Vcpu


@dataclass
class FaultReport:
    """A guest fault the guest could not handle, as plain data."""

    vcpu: int
    pc: int
    reason: str
    exception_class: str | None = None
    esr: int | None = None
    far: int | None = None
    instruction: int | None = None
    disassembly: str = "<not in RAM>"
    registers: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what happened and where."""
        return f"vCPU {self.vcpu} fault at pc={self.pc:#x}: {self.reason}"

    def format(self) -> str:
        """Multi-line report for a terminal."""
        lines = [self.summary()]
        if self.exception_class:
            lines.append(f"  exception class: {self.exception_class}")
        if self.esr is not None:
            lines.append(f"  ESR_EL1: {self.esr:#010x}")
        if self.far is not None:
            lines.append(f"  FAR_EL1: {self.far:#x}")
        insn = f"{self.instruction:08x}" if self.instruction is not None else "--------"
        lines.append(f"  instruction: {insn}  {self.disassembly}")
        names = list(self.registers)
        for i in range(0, len(names), 4):
            row = names[i : i + 4]
            lines.append("  " + "  ".join(f"{n:>6}={self.registers[n]:#018x}" for n in row))
        return "\n".join(lines)


def disassemble(word: int, pc: int) -> str:
    """One AArch64 instruction in assembler syntax, or a note if Capstone cannot decode it."""
    import capstone  # imported lazily: only fault paths need it

    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    for insn in md.disasm(word.to_bytes(4, "little"), pc):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return "<undecodable>"


def build_report(vcpu: Vcpu, info: FaultInfo) -> FaultReport:
    """Collect registers and the faulting instruction for `info` on `vcpu`."""
    from vmm.vcpu import saved_sysreg_key

    state = vcpu.save_state()
    regs = {f"x{i}": value for i, value in enumerate(state.x)}
    regs["sp_el0"] = state.sp_el0
    regs["sp_el1"] = state.sp_el1
    regs["pstate"] = state.pstate
    regs["elr_el1"] = state.sysregs[saved_sysreg_key("ELR_EL1")]
    regs["vbar_el1"] = state.sysregs[saved_sysreg_key("VBAR_EL1")]
    try:
        word = vcpu.insn_at(info.pc)
    except Exception:  # an unsupported translation: the report still goes out
        word = None
    return FaultReport(
        vcpu=vcpu.index,
        pc=info.pc,
        reason=info.reason,
        exception_class=arch.EC_NAMES.get(info.ec) if info.ec is not None else None,
        esr=info.esr,
        far=info.far,
        instruction=word,
        disassembly=disassemble(word, info.pc) if word is not None else "<not in RAM>",
        registers=regs,
    )
