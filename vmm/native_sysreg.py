"""`NativeSysreg`: the system-register filter's fast path in C (vmm/_sysreg.c).

Unicorn calls the MRS/MSR hook for every system-register access, and the VMM traps only a few
registers (timer, GIC CPU interface, identity, ID overrides). This installs C hooks that let
the untrapped accesses run natively without entering Python, stop a slice where an IRQ
becomes deliverable (a block hook: the first block with PSTATE.I clear while one is signalled), serve the counters (CNTPCT,
CNTVCT, their self-synchronised views and PMCCNTR) at the exact virtual time of the reading
instruction, flush the TLB on a TLBI, and call the vCPU's Python handlers (`SysregHooks.on_mrs`,
`on_msr`, vmm/sysreg_hooks.py) only for trapped registers. Without the C module, or with MICROVM_NATIVE_FILL=0,
the vCPU registers its Python hooks for every access instead: slower, never different
(tests/test_cpu_model.py, tests/test_tlbi.py and the Linux boot test compare the two).
"""
from __future__ import annotations

import ctypes
import os
from typing import Callable, Iterable

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TB_REMOVE_CACHE, UC_CTL_TLB_FLUSH, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, Uc, UcError
from unicorn import arm64_const as a64
from unicorn.arm64_const import UC_ARM64_REG_PC

from vmm import arch, native_fill, sysreg

SysReg = tuple[int, int, int, int, int]  # (op0, op1, crn, crm, op2)

SR_READ_PY, SR_WRITE_PY, SR_PHYS_COUNT, SR_VIRT_COUNT, SR_STEPS, SR_CONST = 1, 2, 4, 8, 16, 32
MAX_CONSTS = 8  # MICROVM_MAX_CONSTS in vmm/_sysreg.h
PMCCNTR_EL0: SysReg = (3, 3, 9, 13, 0)  # the cycle counter: virtual cycles = instructions
PHYS_COUNTERS = (sysreg.CNTPCT_EL0, sysreg.CNTPCTSS_EL0, PMCCNTR_EL0)
VIRT_COUNTERS = (sysreg.CNTVCT_EL0, sysreg.CNTVCTSS_EL0)
TABLE_SIZE = 1 << 16
CFLAGS_SWITCH = "MICROVM_TAIL_CFLAGS"  # 0: tails use a code hook even where cflags_next_tb is found
MAX_BLOCKS = 16  # MICROVM_MAX_BLOCKS in vmm/_sysreg.h


class TlbRecord(ctypes.Structure):
    """`microvm_tlb_record` in vmm/_sysreg.h."""

    _fields_ = [
        ("unknown", ctypes.c_uint32),
        ("n_blocks", ctypes.c_uint32),
        ("block_va", ctypes.c_uint64 * MAX_BLOCKS),
        ("block_mask", ctypes.c_uint64 * MAX_BLOCKS),
    ]


class CpReg(ctypes.Structure):
    """`uc_arm64_cp_reg` (unicorn/arm64.h)."""

    _fields_ = [(n, ctypes.c_uint32) for n in ("crn", "crm", "op0", "op1", "op2")] + [("val", ctypes.c_uint64)]


SysCallback = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(CpReg), ctypes.c_void_p)


class SysregState(ctypes.Structure):
    """`microvm_sysreg_state` in vmm/_sysreg.h."""

    _fields_ = [
        ("table", ctypes.c_void_p),
        ("emu_counter", ctypes.c_void_p),
        ("slice_start", ctypes.c_int64),
        ("cntvoff", ctypes.c_uint64),
        ("py_mrs", ctypes.c_void_p),
        ("py_msr", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("ctl", ctypes.c_void_p),
        ("reg_pc", ctypes.c_int32),
        ("tlb_flush_ctl", ctypes.c_uint32),
        ("python_calls", ctypes.c_uint64),
        ("native_reads", ctypes.c_uint64),
        ("tlbis", ctypes.c_uint64),
        ("emu_stop", ctypes.c_void_p),
        ("reg_pstate", ctypes.c_uint32),
        ("irq_signalled", ctypes.c_uint32),
        ("stopped", ctypes.c_uint32),
        ("counting", ctypes.c_uint32),
        ("budget", ctypes.c_uint64),
        ("base", ctypes.c_uint64),
        ("cur_start", ctypes.c_uint64),
        ("cur_len", ctypes.c_uint64),
        ("tail_pc", ctypes.c_uint64),
        ("count_error", ctypes.c_uint32),
        ("halting", ctypes.c_uint32),
        ("n_consts", ctypes.c_uint32),
        ("const_index", ctypes.c_uint32 * MAX_CONSTS),
        ("const_value", ctypes.c_uint64 * MAX_CONSTS),
        ("cpu", ctypes.c_void_p),
        ("flush_page", ctypes.c_void_p),
        ("page_tlbis", ctypes.c_uint64),
        ("record", TlbRecord),
        ("stub_base", ctypes.c_uint64),
        ("resume_pc", ctypes.c_uint64),
        ("resume_armed", ctypes.c_uint32),
        ("tail_phase", ctypes.c_uint32),
        ("tail_until", ctypes.c_uint64),
        ("tail_hook", ctypes.c_size_t),
        ("hook_add", ctypes.c_void_p),
        ("hook_del", ctypes.c_void_p),
        ("hook_code", ctypes.c_uint32),
        ("remove_cache_ctl", ctypes.c_uint32),
        ("tails", ctypes.c_uint64),
        ("cflags_next_tb", ctypes.c_void_p),
        ("tail_retries", ctypes.c_uint32),
    ]


TAIL_NONE, TAIL_ARMED, TAIL_RUNNING, TAIL_DONE = range(4)  # MICROVM_TAIL_* in vmm/_sysreg.h


def _ctl_write(control: int, nargs: int) -> int:
    """The uc_ctl code that writes `control` with `nargs` arguments (unicorn.h UC_CTL)."""
    return (UC_CTL_IO_WRITE << 30) | (nargs << 26) | control


def _index(enc: SysReg) -> int:
    op0, op1, crn, crm, op2 = enc
    return (op0 & 3) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)


def layout_matches() -> bool:
    fill = native_fill._fill
    if fill is None or not hasattr(fill, "sysreg_layout"):
        return False
    size, fields = fill.sysreg_layout()
    ours = [(name, getattr(SysregState, name).offset) for name, *_ in SysregState._fields_]
    return size == ctypes.sizeof(SysregState) and fields == ours


def available() -> bool:
    """Built, laid out as expected, and not switched off (MICROVM_NATIVE_FILL=0)?"""
    return native_fill.available() and _LAYOUT_OK


_LAYOUT_OK = layout_matches()


def _cp_tuple(cp: CpReg) -> object:
    from unicorn.unicorn_py3.arch.arm64 import CpReg as UcCpReg

    return UcCpReg(cp.crn, cp.crm, cp.op0, cp.op1, cp.op2, cp.val)


class NativeSysreg:
    """One vCPU's native MRS/MSR/SYS hooks and their state."""

    def __init__(
        self,
        *,
        reads: Iterable[SysReg],
        writes: Iterable[SysReg],
        steps: frozenset[SysReg],
        consts: dict[SysReg, int] | None = None,
        emu_counter: int,
        on_mrs: Callable[[Uc, int, object, object], int],
        on_msr: Callable[[Uc, int, object, object], int],
        uc: Uc,
    ) -> None:
        from unicorn.unicorn_py3.unicorn import uclib

        table = bytearray(TABLE_SIZE)
        for enc in reads:
            table[_index(enc)] |= SR_READ_PY
        for enc in writes:
            table[_index(enc)] |= SR_WRITE_PY
        for enc in PHYS_COUNTERS + VIRT_COUNTERS:
            kind = SR_PHYS_COUNT if enc in PHYS_COUNTERS else SR_VIRT_COUNT
            table[_index(enc)] = (table[_index(enc)] & ~SR_READ_PY) | kind | (SR_STEPS if enc in steps else 0)
        consts = dict(consts or {})
        if len(consts) > MAX_CONSTS:
            raise ValueError(f"at most {MAX_CONSTS} constant system-register reads, got {len(consts)}")
        for enc in consts:
            table[_index(enc)] = SR_CONST | (SR_STEPS if enc in steps else 0)
        self._table = (ctypes.c_uint8 * TABLE_SIZE).from_buffer(table)
        self._keep = [table]
        # The Python handlers get the same (uc, reg, CpReg, user_data) as from the binding.
        self._mrs_cb = SysCallback(lambda _uc, reg, cp, _ud: on_mrs(uc, reg, _cp_tuple(cp.contents), None))
        self._msr_cb = SysCallback(lambda _uc, reg, cp, _ud: on_msr(uc, reg, _cp_tuple(cp.contents), None))
        fn = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        self.state = SysregState(
            table=ctypes.addressof(self._table),
            emu_counter=emu_counter,
            py_mrs=fn(self._mrs_cb),
            py_msr=fn(self._msr_cb),
            reg_read=fn(uclib.uc_reg_read),
            reg_write=fn(uclib.uc_reg_write),
            ctl=fn(uclib.uc_ctl),
            reg_pc=UC_ARM64_REG_PC,
            tlb_flush_ctl=_ctl_write(UC_CTL_TLB_FLUSH, 0),
            emu_stop=fn(uclib.uc_emu_stop),
            reg_pstate=a64.UC_ARM64_REG_PSTATE,
            hook_add=fn(uclib.uc_hook_add),
            hook_del=fn(uclib.uc_hook_del),
            hook_code=UC_HOOK_CODE,
            remove_cache_ctl=_ctl_write(UC_CTL_TB_REMOVE_CACHE, 2),
        )
        cpu, flush_page = _page_flush(uc)
        self.state.cpu, self.state.flush_page = cpu, flush_page
        self.state.cflags_next_tb = _cflags_next_tb(cpu)
        self.state.n_consts = len(consts)
        for i, (enc, value) in enumerate(consts.items()):
            self.state.const_index[i] = _index(enc)
            self.state.const_value[i] = value & 0xFFFF_FFFF_FFFF_FFFF
        self._tlbis_seen = 0

    def register(self, uc: Uc) -> None:
        """Add the MRS, MSR, SYS and block hooks to `uc` (instead of the vCPU's Python ones)."""
        from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

        addresses = native_fill._fill.sysreg_addresses()  # type: ignore[union-attr]
        for name, insn in (("mrs", a64.UC_ARM64_INS_MRS), ("msr", a64.UC_ARM64_INS_MSR), ("sys", a64.UC_ARM64_INS_SYS)):
            handle = uc_hook_h()
            status = uclib.uc_hook_add(
                uc._uch,
                ctypes.byref(handle),
                UC_HOOK_INSN,
                ctypes.c_void_p(addresses[name]),
                ctypes.cast(ctypes.pointer(self.state), ctypes.c_void_p),
                ctypes.c_uint64(1),
                ctypes.c_uint64(0),
                ctypes.c_int(insn),
            )
            if status != 0:
                raise UcError(status)
        add_block_hook(uc, self.state)

    def tlb_flushed(self) -> None:
        """The whole TLB was flushed: the record of what it holds starts empty."""
        self.state.record.unknown = 0
        self.state.record.n_blocks = 0

    def untracked_fill(self) -> None:
        """A fill the record cannot follow (the Python walk): TLBIs flush all until a flush."""
        self.state.record.unknown = 1

    @property
    def record_address(self) -> int:
        return ctypes.addressof(self.state.record)

    def set_irq_signalled(self, signalled: bool) -> None:
        self.state.irq_signalled = int(signalled)

    def take_stopped(self) -> bool:
        """Did the block hook stop the slice (an IRQ to take)? Clears the mark."""
        if not self.state.stopped:
            return False
        self.state.stopped = 0
        return True

    def start_slice(self, start_ns: int, cntvoff: int) -> None:
        self.state.slice_start = start_ns
        self.state.cntvoff = cntvoff

    def take_tlbis(self) -> bool:
        """Did the guest issue a TLBI since the last call?"""
        seen = self.state.tlbis
        if seen == self._tlbis_seen:
            return False
        self._tlbis_seen = seen
        return True

    @property
    def python_calls(self) -> int:
        return self.state.python_calls


def add_block_hook(uc: Uc, state: SysregState) -> None:
    """Add vmm/_sysreg.c's block hook (the IRQ-unmask stop and the block counter) on `state`,
    which must outlive `uc`'s runs."""
    from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

    handle = uc_hook_h()
    status = uclib.uc_hook_add(
        uc._uch,
        ctypes.byref(handle),
        UC_HOOK_BLOCK,
        ctypes.c_void_p(native_fill._fill.sysreg_addresses()["block"]),  # type: ignore[union-attr]
        ctypes.cast(ctypes.pointer(state), ctypes.c_void_p),
        ctypes.c_uint64(1),
        ctypes.c_uint64(0),
    )
    if status != 0:
        raise UcError(status)


# tcg_flush_softmmu_tlb_aarch64(uc) is `mov rdi, [rdi + disp32]; jmp tlb_flush`: uc->cpu is
# at disp32 (x86-64 builds of Unicorn 2.1; anything else and TLBIs flush the whole TLB).
_LOAD_CPU = b"\x48\x8b\xbf"  # mov rdi, qword [rdi + disp32]
_JMP = 0xE9


def _page_flush(uc: Uc) -> tuple[int | None, int | None]:
    """(CPUState pointer, address of tlb_flush_page) for dropping one 1 KiB TLB entry, or
    (None, None) where this build of Unicorn is not laid out as expected."""
    from unicorn.unicorn_py3.unicorn import uclib

    try:
        flush_all = ctypes.cast(uclib.tcg_flush_softmmu_tlb_aarch64, ctypes.c_void_p).value
        flush_page = ctypes.cast(uclib.tlb_flush_page_aarch64, ctypes.c_void_p).value
    except AttributeError:
        return None, None
    code = ctypes.string_at(flush_all, 8)
    if code[:3] != _LOAD_CPU or code[7] != _JMP:
        return None, None
    offset = int.from_bytes(code[3:7], "little", signed=True)
    handle = ctypes.cast(uc._uch, ctypes.c_void_p).value
    cpu = ctypes.c_uint64.from_address(handle + offset).value
    return (cpu or None), (flush_page if cpu else None)


# cpu_io_recompile_aarch64 sets `cpu->cflags_next_tb = CF_LAST_IO | 1` with one
# `movl $0x8001, disp8(%reg)` (x86-64 builds of Unicorn 2.1): disp8 is the field's offset in
# CPUState (qemu/include/hw/core/cpu.h). Anywhere else, tails use a code hook.
_CF_LAST_IO_1 = (0x8001).to_bytes(4, "little")  # CF_LAST_IO (0x8000) | 1 instruction
_MOVL_IMM32_DISP8 = 0xC7  # opcode of movl $imm32, disp8(%reg): ModRM mod = 01, reg = 0
_SCAN_BYTES = 160  # the store comes early in the function
NO_CUT_REQUEST = 0xFFFF_FFFF  # cflags_next_tb when no request is pending (cpu_common_reset: -1)
_cflags_offset: int | None | bool = False  # False: not probed yet


def cflags_offset() -> int | None:
    """Offset of cflags_next_tb in Unicorn's CPUState, found and checked once per process, or
    None where it cannot be."""
    global _cflags_offset
    if _cflags_offset is False:
        _cflags_offset = _find_cflags_offset()
    return _cflags_offset


def _find_cflags_offset() -> int | None:
    from unicorn.unicorn_py3.unicorn import uclib

    try:
        recompile = ctypes.cast(uclib.cpu_io_recompile_aarch64, ctypes.c_void_p).value
    except AttributeError:
        return None
    code = ctypes.string_at(recompile, _SCAN_BYTES)
    found = [
        code[i + 2]
        for i in range(len(code) - 7)
        if code[i] == _MOVL_IMM32_DISP8 and code[i + 1] & 0xF8 == 0x40 and code[i + 1] != 0x44 and code[i + 3 : i + 7] == _CF_LAST_IO_1
    ]
    if len(found) != 1:
        return None
    offset = found[0]
    return offset if _probe_cflags(offset) else None


def _probe_cflags(offset: int) -> bool:
    """Does writing r at `offset` of a scratch engine's CPUState cut its next translation
    block to r instructions, as cflags_next_tb does?"""
    from vmm.engine import new_engine
    from vmm.errors import HostResourceError

    base, nops, cut = 0x10_0000, 16, 3
    try:
        uc = new_engine()  # its translation buffer sized as the vCPUs' (Unicorn's default is 1 GiB)
    except HostResourceError:
        return False
    uc.mem_map(base, 0x1000)
    uc.mem_write(base, arch.INSN_NOP.to_bytes(4, "little") * nops)
    cpu, _ = _page_flush(uc)
    if cpu is None:
        return False
    field = ctypes.c_uint32.from_address(cpu + offset)
    if field.value != NO_CUT_REQUEST:
        return False
    sizes: list[int] = []
    uc.hook_add(UC_HOOK_BLOCK, lambda _uc, _address, size, _ud: sizes.append(size))
    field.value = cut
    uc.emu_start(base, base + 4 * nops)
    return bool(sizes) and sizes[0] == 4 * cut and field.value == NO_CUT_REQUEST


def _cflags_next_tb(cpu: int | None) -> int | None:
    """Address of `cpu`'s cflags_next_tb, or None where it cannot be found and checked."""
    if cpu is None or os.environ.get(CFLAGS_SWITCH, "1") == "0":
        return None
    offset = cflags_offset()
    if offset is None or ctypes.c_uint32.from_address(cpu + offset).value != NO_CUT_REQUEST:
        return None
    return cpu + offset
