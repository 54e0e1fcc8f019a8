"""`MmdsDevice`: the MMDS guest transport, a 4 KiB MMIO window with request/response DMA.

The guest writes an HTTP/1.1 request into its own RAM, programs the buffer registers and
writes DOORBELL. Inside that store the device reads the request with `GuestMemory.read`,
answers it (`MmdsService`), writes the response with `GuestMemory.write` (its only way of
touching RAM, so dirty tracking sees the DMA), sets STATUS / RESP_LEN / HTTP_STATUS and
raises its level-triggered interrupt (SPI_MMDS).

Register map (offsets in bytes from MMDS_BASE; all registers are 32-bit, little-endian):

| Offset | Name | Access | Meaning |
| --- | --- | --- | --- |
| 0x000 | MAGIC | RO | 0x53444D4D, the bytes "MMDS" |
| 0x004 | DEV_VERSION | RO | transport version, 1 |
| 0x008 | MMDS_VERSION | RO | metadata protocol configured: 1 (V1) or 2 (V2, tokens) |
| 0x00C | REQ_MAX | RO | largest accepted REQ_LEN in bytes, 4096 |
| 0x010 | REQ_ADDR_LO | RW | request buffer guest physical address, bits 31:0 |
| 0x014 | REQ_ADDR_HI | RW | request buffer address, bits 63:32 |
| 0x018 | REQ_LEN | RW | request length in bytes |
| 0x020 | RESP_ADDR_LO | RW | response buffer guest physical address, bits 31:0 |
| 0x024 | RESP_ADDR_HI | RW | response buffer address, bits 63:32 |
| 0x028 | RESP_CAP | RW | response buffer capacity in bytes |
| 0x02C | RESP_LEN | RO | bytes of the last response (written, or needed if STATUS=4) |
| 0x030 | DOORBELL | WO | any value: process the request now (reads 0) |
| 0x034 | STATUS | RO | 0 idle, 1 done, 2 bad buffer, 3 request too long, 4 response buffer too small |
| 0x038 | HTTP_STATUS | RO | HTTP status code of the last response (0 if none was built) |
| 0x03C | IRQ_STATUS | RO | bit 0: a request completed (set with any STATUS) |
| 0x040 | IRQ_ACK | WO | write 1s to clear IRQ_STATUS bits; the line drops when it is 0 |

Access rules: 32-bit accesses at 4-byte aligned offsets; 64-bit accesses only at REQ_ADDR_LO
and RESP_ADDR_LO (the whole address). Any other size, offset, or an access to a reserved
offset or past 0x044 reads 0 and ignores writes; writes to RO registers are ignored.

DOORBELL outcome, checked in this order:
1. REQ_LEN = 0 or RESP_CAP = 0: STATUS 2 (bad buffer).
2. REQ_LEN > REQ_MAX: STATUS 3 (request too long); nothing is read.
3. [REQ_ADDR, +REQ_LEN) or [RESP_ADDR, +RESP_CAP) not wholly inside guest RAM: STATUS 2. (RAM
   and MMIO never overlap, so this also refuses buffers on MMIO or the VMM stub page.)
4. Otherwise the request is read and answered. If the encoded response is longer than
   RESP_CAP: STATUS 4, RESP_LEN = bytes needed, nothing is written. Else the response is
   written at RESP_ADDR: STATUS 1, RESP_LEN = its length.
HTTP-level problems (malformed request, 401, 404, ...) are STATUS 1 with an HTTP error
response. In every case RESP_LEN and HTTP_STATUS are updated (0 where not applicable),
IRQ_STATUS bit 0 is set and `set_irq(True)` is called. The request and response buffers may
overlap: the request is read completely before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vmm.devices.mmds.errors import MmdsError, MmdsStateError
from vmm.devices.mmds.http import MAX_REQUEST_BYTES
from vmm.devices.mmds.service import DEFAULT_VERSION, MmdsService, check_version
from vmm.devices.mmds.state import MmdsState
from vmm.devices.mmds.store import DEFAULT_DATA_LIMIT, MmdsStore
from vmm.devices.mmds.tokens import TokenAuthority
from vmm.memory import GuestMemory

# --- register offsets --------------------------------------------------------------------
REG_MAGIC = 0x000
REG_DEV_VERSION = 0x004
REG_MMDS_VERSION = 0x008
REG_REQ_MAX = 0x00C
REG_REQ_ADDR_LO = 0x010
REG_REQ_ADDR_HI = 0x014
REG_REQ_LEN = 0x018
REG_RESP_ADDR_LO = 0x020
REG_RESP_ADDR_HI = 0x024
REG_RESP_CAP = 0x028
REG_RESP_LEN = 0x02C
REG_DOORBELL = 0x030
REG_STATUS = 0x034
REG_HTTP_STATUS = 0x038
REG_IRQ_STATUS = 0x03C
REG_IRQ_ACK = 0x040

MMDS_MAGIC = int.from_bytes(b"MMDS", "little")  # 0x53444D4D
DEV_VERSION = 1

# --- STATUS values -----------------------------------------------------------------------
STATUS_IDLE = 0
STATUS_DONE = 1
STATUS_BAD_BUFFER = 2
STATUS_REQ_TOO_LONG = 3
STATUS_RESP_TOO_SMALL = 4
STATUSES = (STATUS_IDLE, STATUS_DONE, STATUS_BAD_BUFFER, STATUS_REQ_TOO_LONG, STATUS_RESP_TOO_SMALL)

IRQ_DONE = 1 << 0

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class MmdsCheckpoint:
    """The device for an in-process rollback (`MmdsDevice.checkpoint`); never persisted."""

    service: MmdsService
    contents: tuple[dict[str, Any], int]  # MmdsStore.contents()
    token_counter: int
    registers: tuple[int, ...]  # in `_REGISTER_FIELDS` order


_REGISTER_FIELDS = (
    "_req_addr",
    "_req_len",
    "_resp_addr",
    "_resp_cap",
    "_resp_len",
    "_status",
    "_http_status",
    "_irq_status",
)


class MmdsDevice:
    """The MMDS device: host data store (`store`), guest transport (MMIO), snapshot state.

    `now_ns` is the VM's virtual clock (ns); `set_irq(level)` drives the SPI line;
    `token_secret` (16..64 bytes, derived by the VMM from the config seed) keys the tokens.
    """

    def __init__(
        self,
        memory: GuestMemory,
        *,
        now_ns: Callable[[], int],
        set_irq: Callable[[bool], None],
        token_secret: bytes,
        version: int = DEFAULT_VERSION,
        data_limit: int = DEFAULT_DATA_LIMIT,
    ) -> None:
        self._memory = memory
        self._now_ns = now_ns
        self._set_irq = set_irq
        self._service = MmdsService(MmdsStore(data_limit), TokenAuthority(token_secret, now_ns), version)
        self._reset_registers()

    # --- host API --------------------------------------------------------------------------
    @property
    def store(self) -> MmdsStore:
        """The data store: `put`, `patch`, `get` from the host."""
        return self._service.store

    @property
    def version(self) -> int:
        return self._service.version

    @property
    def irq_level(self) -> bool:
        """Current level of the interrupt line."""
        return self._irq_status != 0

    def handle_request(self, raw: bytes) -> bytes:
        """Answer request bytes directly (no DMA, no IRQ); for tests and tools."""
        return self._service.handle(raw).encode()

    def reset(self) -> None:
        """Device reset: registers to their initial values, line low. Store and tokens stay."""
        was_high = self.irq_level
        self._reset_registers()
        if was_high:
            self._set_irq(False)

    def _reset_registers(self) -> None:
        self._req_addr = 0
        self._req_len = 0
        self._resp_addr = 0
        self._resp_cap = 0
        self._resp_len = 0
        self._status = STATUS_IDLE
        self._http_status = 0
        self._irq_status = 0

    # --- MMIO ------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int, vcpu: int) -> int:
        """Register value; 0 for unsupported size/offset (see module docstring)."""
        if size == 8 and offset in (REG_REQ_ADDR_LO, REG_RESP_ADDR_LO):
            return self._req_addr if offset == REG_REQ_ADDR_LO else self._resp_addr
        if size != 4 or offset % 4:
            return 0
        return self._read32(offset)

    def mmio_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        """Register store; ignored for unsupported size/offset or RO registers."""
        if size == 8 and offset in (REG_REQ_ADDR_LO, REG_RESP_ADDR_LO):
            if offset == REG_REQ_ADDR_LO:
                self._req_addr = value & _U64
            else:
                self._resp_addr = value & _U64
            return
        if size != 4 or offset % 4:
            return
        self._write32(offset, value & _U32)

    def _read32(self, offset: int) -> int:
        registers = {
            REG_MAGIC: MMDS_MAGIC,
            REG_DEV_VERSION: DEV_VERSION,
            REG_MMDS_VERSION: self._service.version,
            REG_REQ_MAX: MAX_REQUEST_BYTES,
            REG_REQ_ADDR_LO: self._req_addr & _U32,
            REG_REQ_ADDR_HI: self._req_addr >> 32,
            REG_REQ_LEN: self._req_len,
            REG_RESP_ADDR_LO: self._resp_addr & _U32,
            REG_RESP_ADDR_HI: self._resp_addr >> 32,
            REG_RESP_CAP: self._resp_cap,
            REG_RESP_LEN: self._resp_len,
            REG_STATUS: self._status,
            REG_HTTP_STATUS: self._http_status,
            REG_IRQ_STATUS: self._irq_status,
        }
        return registers.get(offset, 0)

    def _write32(self, offset: int, value: int) -> None:
        if offset == REG_REQ_ADDR_LO:
            self._req_addr = (self._req_addr & ~_U32 & _U64) | value
        elif offset == REG_REQ_ADDR_HI:
            self._req_addr = (self._req_addr & _U32) | (value << 32)
        elif offset == REG_REQ_LEN:
            self._req_len = value
        elif offset == REG_RESP_ADDR_LO:
            self._resp_addr = (self._resp_addr & ~_U32 & _U64) | value
        elif offset == REG_RESP_ADDR_HI:
            self._resp_addr = (self._resp_addr & _U32) | (value << 32)
        elif offset == REG_RESP_CAP:
            self._resp_cap = value
        elif offset == REG_DOORBELL:
            self._doorbell()
        elif offset == REG_IRQ_ACK:
            self._ack(value)

    # --- request processing ----------------------------------------------------------------
    def _doorbell(self) -> None:
        self._status, self._resp_len, self._http_status = self._process()
        was_high = self.irq_level
        self._irq_status |= IRQ_DONE
        if not was_high:
            self._set_irq(True)

    def _process(self) -> tuple[int, int, int]:
        """(STATUS, RESP_LEN, HTTP_STATUS) of the programmed request; DMA as a side effect."""
        if self._req_len == 0 or self._resp_cap == 0:
            return STATUS_BAD_BUFFER, 0, 0
        if self._req_len > MAX_REQUEST_BYTES:
            return STATUS_REQ_TOO_LONG, 0, 0
        mem = self._memory
        if not (mem.contains(self._req_addr, self._req_len) and mem.contains(self._resp_addr, self._resp_cap)):
            return STATUS_BAD_BUFFER, 0, 0
        response = self._service.handle(mem.read(self._req_addr, self._req_len))
        wire = response.encode()
        if len(wire) > self._resp_cap:
            return STATUS_RESP_TOO_SMALL, len(wire), response.status
        mem.write(self._resp_addr, wire)
        return STATUS_DONE, len(wire), response.status

    def _ack(self, value: int) -> None:
        was_high = self.irq_level
        self._irq_status &= ~value & _U32
        if was_high and not self.irq_level:
            self._set_irq(False)

    # --- snapshot --------------------------------------------------------------------------
    def save_state(self) -> MmdsState:
        """Everything needed to restore this device (see `MmdsState`)."""
        tokens = self._service.tokens
        return MmdsState(
            version=self._service.version,
            data_json=self.store.to_json(),
            data_limit=self.store.limit,
            token_secret=tokens.secret,
            token_counter=tokens.counter,
            req_addr=self._req_addr,
            req_len=self._req_len,
            resp_addr=self._resp_addr,
            resp_cap=self._resp_cap,
            resp_len=self._resp_len,
            status=self._status,
            http_status=self._http_status,
            irq_status=self._irq_status,
        )

    def checkpoint(self) -> MmdsCheckpoint:
        """The device's state for `rollback` in this process (the store's data is shared)."""
        service = self._service
        return MmdsCheckpoint(
            service=service,
            contents=service.store.contents(),
            token_counter=service.tokens.counter,
            registers=tuple(getattr(self, name) for name in _REGISTER_FIELDS),
        )

    def rollback(self, cp: MmdsCheckpoint) -> None:
        """Return to `cp` (the effect of `restore_state(state saved then)`, without re-parsing
        the store) and drive the IRQ line to the restored level."""
        self._service = cp.service
        cp.service.store.set_contents(cp.contents)
        cp.service.tokens.counter = cp.token_counter
        for name, value in zip(_REGISTER_FIELDS, cp.registers):
            setattr(self, name, value)
        self._set_irq(self.irq_level)

    def restore_state(self, state: MmdsState) -> None:
        """Replace all device state with `state`, then drive the IRQ line to the restored
        level. Raises `MmdsStateError` (and changes nothing) if `state` is inconsistent."""
        service = _service_from_state(state, self._now_ns)
        self._service = service
        self._req_addr = state.req_addr
        self._req_len = state.req_len
        self._resp_addr = state.resp_addr
        self._resp_cap = state.resp_cap
        self._resp_len = state.resp_len
        self._status = state.status
        self._http_status = state.http_status
        self._irq_status = state.irq_status
        self._set_irq(self.irq_level)


def _check_register(state: MmdsState, name: str, limit: int) -> None:
    value = getattr(state, name)
    if type(value) is not int or not 0 <= value <= limit:
        raise MmdsStateError(f"MMDS state field {name} out of range: {value!r}")


def _service_from_state(state: MmdsState, now_ns: Callable[[], int]) -> MmdsService:
    """Validate `state` and build the service it describes."""
    for name in ("req_len", "resp_cap", "resp_len", "http_status"):
        _check_register(state, name, _U32)
    _check_register(state, "irq_status", IRQ_DONE)
    for name in ("req_addr", "resp_addr"):
        _check_register(state, name, _U64)
    if state.status not in STATUSES:
        raise MmdsStateError(f"MMDS state field status out of range: {state.status!r}")
    try:
        check_version(state.version)
        store = MmdsStore(state.data_limit)
        store.load_json(state.data_json)
        tokens = TokenAuthority(state.token_secret, now_ns, state.token_counter)
    except MmdsError as exc:
        raise MmdsStateError(f"MMDS state is invalid: {exc}") from None
    except TypeError:
        raise MmdsStateError("MMDS state has a field of the wrong type") from None
    return MmdsService(store, tokens, state.version)
