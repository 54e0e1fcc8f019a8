"""`NativeFill`: the TLB fill's optional fast path in C (vmm/_fill.c).

Every TLB miss of a vCPU calls a fill hook (vmm.tlb). From Python that costs about 2.5 us a
fill, and a memory-heavy guest takes one fill every ~16 instructions (Unicorn's TLB is 256
entries of 1 KiB). So each vCPU gets a C hook first: it serves read, write and fetch fills of
guest RAM, with the MMU off or through the stage-1 walk (MMU on: a Linux boot makes millions
of these), dirty-tracking bookkeeping included, and declines everything else
(faults, MMIO, holes), which Unicorn then hands to the Python fill. Both paths
work on the same arrays and compute the same result (tests/test_native_fill.py).

The C module is built at install time if a C compiler is present (setup.py, optional). Without
it, or with MICROVM_NATIVE_FILL=0 in the environment, the Python fill serves every fill:
slower, never different.
"""
from __future__ import annotations

import ctypes
import os

from unicorn import UC_HOOK_TLB_FILL, Uc, UcError

from snapshot.dirty import AdaptiveController, StepDownMode

try:
    from vmm import _fill
except ImportError:  # not built: no C compiler at install time
    _fill = None

ENV_SWITCH = "MICROVM_NATIVE_FILL"  # "0" turns the native fill off for VMs created afterwards


class Tracker(ctypes.Structure):
    """`microvm_tracker` in vmm/_fill.c: an AdaptiveController's buffers and parameters."""

    _fields_ = [
        ("dirty", ctypes.c_void_p),
        ("fine", ctypes.c_void_p),
        ("window_start", ctypes.c_void_p),
        ("window_faults", ctypes.c_void_p),
        ("counts", ctypes.c_void_p),
        ("num_pages", ctypes.c_uint64),
        ("num_blocks", ctypes.c_uint64),
        ("page_shift", ctypes.c_uint32),
        ("block_shift", ctypes.c_uint32),
        ("threshold", ctypes.c_int64),
        ("window_ns", ctypes.c_int64),
        ("global_step_down", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class FillState(ctypes.Structure):
    """`microvm_fill_state` in vmm/_fill.c: one vCPU's fill state."""

    _fields_ = [
        ("ram_base", ctypes.c_uint64),
        ("ram_size", ctypes.c_uint64),
        ("code_pages", ctypes.c_void_p),
        ("code_shift", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("now_ns", ctypes.c_int64),
        ("tracker", ctypes.POINTER(Tracker)),
        ("fills", ctypes.c_uint64),
        ("write_fills", ctypes.c_uint64),
        ("walk", ctypes.c_uint32),
        ("reg_pstate", ctypes.c_uint32),
        ("sctlr", ctypes.c_uint64),
        ("tcr", ctypes.c_uint64),
        ("ttbr0", ctypes.c_uint64),
        ("ttbr1", ctypes.c_uint64),
        ("ram", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("unpriv_page", ctypes.c_uint64),
        ("stub_base", ctypes.c_uint64),
        ("walk_fills", ctypes.c_uint64),
        ("fetch_fills", ctypes.c_uint64),
        ("record", ctypes.c_void_p),
    ]


class _UcTlbEntry(ctypes.Structure):
    _fields_ = [("paddr", ctypes.c_uint64), ("perms", ctypes.c_int32)]


def _layout(struct: type[ctypes.Structure]) -> tuple[int, list[tuple[str, int]]]:
    return ctypes.sizeof(struct), [(name, getattr(struct, name).offset) for name, *_ in struct._fields_]


def layout_matches() -> bool:
    """Do the ctypes mirrors above match the C structs, field by field? (False if not built.)"""
    if _fill is None:
        return False
    c = _fill.layout()
    ours = {"microvm_tracker": _layout(Tracker), "microvm_fill_state": _layout(FillState)}
    return all(c[name] == (size, fields) for name, (size, fields) in ours.items()) and c[
        "uc_tlb_entry"
    ] == ctypes.sizeof(_UcTlbEntry)


def available() -> bool:
    """Is the native fill built, laid out as expected, and not switched off by the environment?"""
    return os.environ.get(ENV_SWITCH, "1") != "0" and _fill is not None and _LAYOUT_OK


_LAYOUT_OK = layout_matches()


def _pin(buffer: object, pins: list[object]) -> int:
    """Address of a writable buffer's first byte. The view kept in `pins` holds an export of
    the buffer, so a bytearray or array cannot be resized (and moved) while C points into it."""
    view = (ctypes.c_char * memoryview(buffer).nbytes).from_buffer(buffer)  # type: ignore[arg-type]
    pins.append(view)
    return ctypes.addressof(view)


def tracker_for(controller: AdaptiveController) -> Tracker:
    """A `Tracker` over `controller`'s live buffers (one per machine, shared by its vCPUs)."""
    buffers = controller.buffers()
    config = controller.config
    page_size = controller.bitmap.page_size
    pins: list[object] = []
    tracker = Tracker(
        dirty=_pin(buffers.dirty, pins),
        fine=_pin(buffers.fine, pins),
        window_start=_pin(buffers.window_start, pins),
        window_faults=_pin(buffers.window_faults, pins),
        counts=_pin(buffers.counts, pins),
        num_pages=controller.bitmap.num_pages,
        num_blocks=controller.num_blocks,
        page_shift=page_size.bit_length() - 1,
        block_shift=(config.block_size // page_size).bit_length() - 1,
        threshold=config.threshold,
        window_ns=config.window_ns,
        global_step_down=int(config.mode is StepDownMode.GLOBAL),
    )
    tracker._pins = pins  # type: ignore[attr-defined]  # as long as the tracker lives
    return tracker


class NativeFill:
    """One vCPU's native fill: its `FillState` and the hook registered on its Unicorn engine."""

    def __init__(
        self,
        ram_base: int,
        ram_size: int,
        code_pages: bytearray,
        code_page_size: int,
        tracker: Tracker | None,
        ram_address: int = 0,
        stub_base: int = 0,
    ) -> None:
        """`ram_address`: host address of guest RAM (for the walk's descriptor reads; 0: the
        walk is never used); `stub_base`: the VMM stub page's VA, left to the Python fill."""
        from unicorn.arm64_const import UC_ARM64_REG_PSTATE
        from unicorn.unicorn_py3.unicorn import uclib

        self._pins: list[object] = [tracker]
        self.state = FillState(
            ram_base=ram_base,
            ram_size=ram_size,
            code_pages=_pin(code_pages, self._pins),
            code_shift=code_page_size.bit_length() - 1,
            identity=0,
            tracker=ctypes.pointer(tracker) if tracker is not None else None,
            reg_pstate=UC_ARM64_REG_PSTATE,
            ram=ram_address,
            reg_read=ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value,
            stub_base=stub_base,
        )

    def register(self, uc: Uc) -> None:
        """Add the C hook to `uc`. Call before the Python fill hook: Unicorn calls TLB-fill
        hooks in the order they were added, until one returns true."""
        from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib  # the binding's C entry points

        if _fill is None:
            raise RuntimeError("the native fill is not built")
        handle = uc_hook_h()
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_TLB_FILL,
            ctypes.c_void_p(_fill.fill_address()),
            ctypes.cast(ctypes.pointer(self.state), ctypes.c_void_p),
            ctypes.c_uint64(1),  # begin > end: every address
            ctypes.c_uint64(0),
        )
        if status != 0:
            raise UcError(status)

    def set_identity(self, identity: bool) -> None:
        """Serve fills (the MMU is off: VA == PA), or decline them all (the MMU is on, or its
        state is not known yet)."""
        self.state.identity = int(identity)
        self.state.walk = 0

    def set_walk(self, sctlr: int, tcr: int, ttbr0: int, ttbr1: int) -> None:
        """The MMU is on with these registers: serve data fills the stage-1 walk resolves to
        RAM without a fault (faults and everything else go to the Python fill)."""
        s = self.state
        s.identity = 0
        s.sctlr, s.tcr, s.ttbr0, s.ttbr1 = sctlr, tcr, ttbr0, ttbr1
        s.walk = int(bool(s.ram))

    def set_unprivileged_page(self, va_page: int | None) -> None:
        """Leave the fills of this 4 KiB VA page to the Python fill (LDTR/STTR: vmm.tlb)."""
        self.state.unpriv_page = 0 if va_page is None else va_page | 1

    @property
    def fetch_fills(self) -> int:
        return self.state.fetch_fills

    @property
    def walk_fills(self) -> int:
        return self.state.walk_fills

    def start_slice(self, start_ns: int) -> None:
        """The slice about to run starts at virtual time `start_ns` (the fault-window clock)."""
        self.state.now_ns = start_ns

    @property
    def fills(self) -> int:
        return self.state.fills

    @property
    def write_fills(self) -> int:
        return self.state.write_fills
