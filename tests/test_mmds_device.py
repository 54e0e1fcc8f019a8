"""MMDS device: MMIO registers, DMA through GuestMemory, interrupt, snapshot state."""
from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm.devices.mmds import MMDS_V1, MMDS_V2, MmdsConfigError, MmdsDevice, MmdsState, MmdsStateError
from vmm.devices.mmds import device as dev
from vmm.devices.mmds.http import MAX_REQUEST_BYTES
from vmm.devices.mmds.tokens import NS_PER_SECOND
from vmm.layout import MMDS_BASE, UART0_BASE, VMM_STUB_BASE
from vmm.memory import GuestMemory

RAM_BASE = 0x8000_0000
RAM_SIZE = 16 << 20
REQ = RAM_BASE + 0x10_0000
RESP = RAM_BASE + 0x20_0000
SECRET = b"seed-derived secret for tests!!!"


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class Sink:
    """Records every VMM-side write to RAM, as (offset, length)."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def mark_range(self, offset: int, length: int) -> None:
        self.ranges.append((offset, length))


class Line:
    """The interrupt line: records every `set_irq` call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.calls.append(level)


@dataclasses.dataclass
class Rig:
    mem: GuestMemory
    dev: MmdsDevice
    clock: Clock
    sink: Sink
    line: Line

    def w32(self, off: int, value: int) -> None:
        self.dev.mmio_write(off, 4, value, 0)

    def r32(self, off: int) -> int:
        return self.dev.mmio_read(off, 4, 0)

    def program(self, req_addr: int, req_len: int, resp_addr: int, resp_cap: int) -> None:
        self.dev.mmio_write(dev.REG_REQ_ADDR_LO, 8, req_addr, 0)
        self.w32(dev.REG_REQ_LEN, req_len)
        self.w32(dev.REG_RESP_ADDR_LO, resp_addr & 0xFFFF_FFFF)
        self.w32(dev.REG_RESP_ADDR_HI, resp_addr >> 32)
        self.w32(dev.REG_RESP_CAP, resp_cap)

    def transact(self, request: bytes, resp_cap: int = 8192) -> bytes:
        """Guest-side round trip; returns the response bytes (b"" unless STATUS is DONE)."""
        self.mem.write(REQ, request)
        self.sink.ranges.clear()
        self.program(REQ, len(request), RESP, resp_cap)
        self.w32(dev.REG_DOORBELL, 1)
        if self.r32(dev.REG_STATUS) != dev.STATUS_DONE:
            return b""
        return self.mem.read(RESP, self.r32(dev.REG_RESP_LEN))


def make_rig(version: int = MMDS_V2, **kwargs: object) -> Rig:
    mem = GuestMemory(RAM_BASE, RAM_SIZE)
    sink, line, clock = Sink(), Line(), Clock()
    mem.add_write_sink(sink)
    device = MmdsDevice(mem, now_ns=clock, set_irq=line, token_secret=SECRET, version=version, **kwargs)
    device.store.put({"latest": {"meta-data": {"ami-id": "ami-87654321"}}, "n": 1})
    return Rig(mem, device, clock, sink, line)


def body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


# --- probing and register access -------------------------------------------------------------
def test_id_registers() -> None:
    rig = make_rig(MMDS_V1)
    assert rig.r32(dev.REG_MAGIC) == 0x53444D4D
    assert rig.r32(dev.REG_MAGIC).to_bytes(4, "little") == b"MMDS"
    assert rig.r32(dev.REG_DEV_VERSION) == 1
    assert rig.r32(dev.REG_MMDS_VERSION) == 1
    assert make_rig(MMDS_V2).r32(dev.REG_MMDS_VERSION) == 2
    assert rig.r32(dev.REG_REQ_MAX) == MAX_REQUEST_BYTES
    assert rig.r32(dev.REG_STATUS) == dev.STATUS_IDLE


def test_address_registers_32_and_64_bit() -> None:
    rig = make_rig()
    rig.w32(dev.REG_REQ_ADDR_LO, 0x1234_5678)
    rig.w32(dev.REG_REQ_ADDR_HI, 0x9ABC_DEF0)
    assert rig.dev.mmio_read(dev.REG_REQ_ADDR_LO, 8, 0) == 0x9ABC_DEF0_1234_5678
    rig.dev.mmio_write(dev.REG_RESP_ADDR_LO, 8, 0x1_0000_0002, 0)
    assert (rig.r32(dev.REG_RESP_ADDR_LO), rig.r32(dev.REG_RESP_ADDR_HI)) == (2, 1)
    rig.w32(dev.REG_REQ_LEN, 0x1_0000_0005)  # masked to 32 bits
    assert rig.r32(dev.REG_REQ_LEN) == 5


@pytest.mark.parametrize(
    ("offset", "size"),
    [(dev.REG_MAGIC, 1), (dev.REG_MAGIC, 2), (dev.REG_MAGIC, 8), (dev.REG_MAGIC + 1, 4),
     (dev.REG_REQ_ADDR_LO + 4, 8), (dev.REG_STATUS, 8), (0x01C, 4), (0x044, 4), (0xFFC, 4), (0x1000, 4)],
)
def test_unsupported_accesses_read_zero_and_ignore_writes(offset: int, size: int) -> None:
    rig = make_rig()
    assert rig.dev.mmio_read(offset, size, 0) == 0
    before = rig.dev.save_state()
    rig.dev.mmio_write(offset, size, 0xFFFF_FFFF_FFFF_FFFF, 0)
    assert rig.dev.save_state() == before


def test_read_only_registers_ignore_writes() -> None:
    rig = make_rig()
    for reg in (dev.REG_MAGIC, dev.REG_STATUS, dev.REG_RESP_LEN, dev.REG_IRQ_STATUS, dev.REG_HTTP_STATUS):
        rig.w32(reg, 0xDEAD)
    assert rig.r32(dev.REG_MAGIC) == dev.MMDS_MAGIC and rig.r32(dev.REG_STATUS) == 0
    assert rig.r32(dev.REG_DOORBELL) == 0 and rig.r32(dev.REG_IRQ_ACK) == 0
    assert rig.line.calls == []


# --- DMA and interrupt ---------------------------------------------------------------------------
def test_round_trip_dma_goes_through_guest_memory() -> None:
    rig = make_rig(MMDS_V1)
    request = b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n"
    rig.mem.write(REQ, request)
    rig.mem.write(RESP, b"\xAA" * 4096)  # canary
    rig.sink.ranges.clear()
    rig.program(REQ, len(request), RESP, 4096)
    rig.w32(dev.REG_DOORBELL, 0)
    n = rig.r32(dev.REG_RESP_LEN)
    response = rig.mem.read(RESP, n)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and body(response) == b"ami-87654321"
    assert rig.r32(dev.REG_STATUS) == dev.STATUS_DONE and rig.r32(dev.REG_HTTP_STATUS) == 200
    assert rig.sink.ranges == [(RESP - RAM_BASE, n)]  # one DMA write, seen by dirty tracking
    assert rig.mem.read(RESP + n, 4096 - n) == b"\xAA" * (4096 - n)
    assert rig.mem.read(REQ, len(request)) == request


def test_irq_level_and_write_one_to_clear() -> None:
    rig = make_rig(MMDS_V1)
    rig.transact(b"GET / HTTP/1.1\r\n\r\n")
    assert rig.line.calls == [True] and rig.dev.irq_level
    assert rig.r32(dev.REG_IRQ_STATUS) == dev.IRQ_DONE
    rig.transact(b"GET / HTTP/1.1\r\n\r\n")  # still pending: no new edge, line stays high
    assert rig.line.calls == [True]
    rig.w32(dev.REG_IRQ_ACK, 0)  # writing 0 clears nothing
    assert rig.dev.irq_level
    rig.w32(dev.REG_IRQ_ACK, dev.IRQ_DONE)
    assert rig.line.calls == [True, False] and rig.r32(dev.REG_IRQ_STATUS) == 0
    rig.w32(dev.REG_IRQ_ACK, dev.IRQ_DONE)
    assert rig.line.calls == [True, False]
    rig.dev.reset()
    assert rig.line.calls == [True, False]
    rig.transact(b"GET / HTTP/1.1\r\n\r\n")
    rig.dev.reset()
    assert rig.line.calls == [True, False, True, False] and rig.r32(dev.REG_STATUS) == 0


def test_response_too_small_writes_nothing() -> None:
    rig = make_rig(MMDS_V1)
    request = b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n"
    full = rig.transact(request)
    assert rig.transact(request, resp_cap=len(full) - 1) == b""
    assert rig.r32(dev.REG_STATUS) == dev.STATUS_RESP_TOO_SMALL
    assert rig.r32(dev.REG_RESP_LEN) == len(full)
    assert rig.sink.ranges == [] and rig.dev.irq_level
    assert rig.transact(request, resp_cap=len(full)) == full


@pytest.mark.parametrize(
    ("req_addr", "req_len", "resp_addr", "resp_cap", "status"),
    [
        (REQ, 0, RESP, 4096, dev.STATUS_BAD_BUFFER),
        (REQ, 20, RESP, 0, dev.STATUS_BAD_BUFFER),
        (REQ, MAX_REQUEST_BYTES + 1, RESP, 4096, dev.STATUS_REQ_TOO_LONG),
        (REQ, 0xFFFF_FFFF, RESP, 4096, dev.STATUS_REQ_TOO_LONG),
        (REQ, 20, RESP, 0xFFFF_FFFF, dev.STATUS_BAD_BUFFER),
        (RAM_BASE - 4, 20, RESP, 4096, dev.STATUS_BAD_BUFFER),  # straddles the start of RAM
        (REQ, 20, RAM_BASE + RAM_SIZE - 100, 4096, dev.STATUS_BAD_BUFFER),  # runs off the end
        (REQ, 20, RAM_BASE + RAM_SIZE, 1, dev.STATUS_BAD_BUFFER),
        (MMDS_BASE, 20, RESP, 4096, dev.STATUS_BAD_BUFFER),  # on MMIO
        (REQ, 20, MMDS_BASE, 4096, dev.STATUS_BAD_BUFFER),
        (REQ, 20, UART0_BASE, 4096, dev.STATUS_BAD_BUFFER),
        (REQ, 20, VMM_STUB_BASE, 4096, dev.STATUS_BAD_BUFFER),
        (REQ, 20, 0xFFFF_FFFF_FFFF_F000, 4096, dev.STATUS_BAD_BUFFER),
        (0, 20, RESP, 4096, dev.STATUS_BAD_BUFFER),
    ],
)
def test_bad_buffers(req_addr: int, req_len: int, resp_addr: int, resp_cap: int, status: int) -> None:
    rig = make_rig(MMDS_V1)
    rig.mem.write(REQ, b"GET / HTTP/1.1\r\n\r\n\0\0")
    rig.sink.ranges.clear()
    rig.program(req_addr, req_len, resp_addr, resp_cap)
    rig.w32(dev.REG_DOORBELL, 1)
    assert rig.r32(dev.REG_STATUS) == status
    assert (rig.r32(dev.REG_RESP_LEN), rig.r32(dev.REG_HTTP_STATUS)) == (0, 0)
    assert rig.sink.ranges == [] and rig.line.calls == [True]


def test_overlapping_request_and_response_buffers() -> None:
    rig = make_rig(MMDS_V1)
    request = b"GET /n HTTP/1.1\r\nAccept: application/json\r\n\r\n"
    rig.mem.write(REQ, request)
    rig.program(REQ, len(request), REQ, 4096)
    rig.w32(dev.REG_DOORBELL, 1)
    assert body(rig.mem.read(REQ, rig.r32(dev.REG_RESP_LEN))) == b"1"


def test_http_errors_are_done_with_http_status() -> None:
    rig = make_rig(MMDS_V2)
    response = rig.transact(b"GET /latest HTTP/1.1\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 401 ")
    assert rig.r32(dev.REG_STATUS) == dev.STATUS_DONE and rig.r32(dev.REG_HTTP_STATUS) == 401
    rig.transact(b"\xff\xfe garbage")
    assert rig.r32(dev.REG_HTTP_STATUS) == 400


# --- V2 token flow through the device ------------------------------------------------------------
def put_token(rig: Rig, ttl: int) -> bytes:
    token = body(rig.transact(b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: %d\r\n\r\n" % ttl))
    assert rig.r32(dev.REG_HTTP_STATUS) == 200
    return token


def test_v2_token_flow_with_expiry() -> None:
    rig = make_rig(MMDS_V2)
    rig.clock.now = 1_000
    token = put_token(rig, 5)
    get = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: " + token + b"\r\n\r\n"
    assert body(rig.transact(get)) == b"ami-87654321"
    rig.clock.now = 1_000 + 5 * NS_PER_SECOND - 1
    assert rig.r32(dev.REG_HTTP_STATUS) == 200 and body(rig.transact(get)) == b"ami-87654321"
    rig.clock.now += 1
    assert rig.transact(get).startswith(b"HTTP/1.1 401 ")
    assert rig.transact(b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")


# --- snapshot state ------------------------------------------------------------------------------
def test_state_round_trip_keeps_tokens_registers_and_irq() -> None:
    rig = make_rig(MMDS_V2, data_limit=4096)
    rig.clock.now = 50
    token = put_token(rig, 60)
    rig.dev.store.patch({"extra": ["x", 2.5, None, True]})
    state = rig.dev.save_state()
    assert all(type(getattr(state, f.name)) in (int, str, bytes) for f in dataclasses.fields(state))
    assert state.irq_status == 1 and state.token_counter == 1 and state.data_limit == 4096

    # A fresh device built with a different secret takes everything from the state.
    mem = GuestMemory(RAM_BASE, RAM_SIZE)
    line, clock = Line(), Clock()
    clock.now = 50 + 30 * NS_PER_SECOND
    other = MmdsDevice(mem, now_ns=clock, set_irq=line, token_secret=b"a different secret!!", version=MMDS_V1)
    other.restore_state(dataclasses.replace(state))
    assert line.calls == [True] and other.irq_level
    assert other.save_state() == state
    assert other.version == MMDS_V2 and other.store.limit == 4096
    assert other.store.get("/extra") == ["x", 2.5, None, True]
    for reg in (dev.REG_REQ_ADDR_LO, dev.REG_REQ_LEN, dev.REG_RESP_ADDR_LO, dev.REG_RESP_CAP,
                dev.REG_RESP_LEN, dev.REG_STATUS, dev.REG_HTTP_STATUS, dev.REG_IRQ_STATUS):
        assert other.mmio_read(reg, 4, 0) == rig.r32(reg)
    request = b"GET /n HTTP/1.1\r\nAccept: application/json\r\nX-metadata-token: " + token + b"\r\n\r\n"
    assert body(other.handle_request(request)) == b"1"  # the pre-snapshot token is still valid
    # The next token is the one the original device would have issued next.
    next_token = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 9\r\n\r\n"
    rig.clock.now = clock.now
    assert other.handle_request(next_token) == rig.dev.handle_request(next_token)
    clock.now = 50 + 60 * NS_PER_SECOND
    assert other.handle_request(request).startswith(b"HTTP/1.1 401 ")


def test_restore_lowers_line_when_no_irq_pending() -> None:
    rig = make_rig()
    state = rig.dev.save_state()
    rig.transact(b"GET / HTTP/1.1\r\n\r\n")
    rig.dev.restore_state(state)
    assert rig.line.calls == [True, False] and not rig.dev.irq_level


@pytest.mark.parametrize(
    "change",
    [
        {"version": 3}, {"version": True}, {"data_json": "[]"}, {"data_json": "{"}, {"data_json": 5},
        {"data_json": '{"k": "' + "x" * 100 + '"}', "data_limit": 50}, {"data_limit": 0},
        {"token_secret": b"short"}, {"token_secret": "not bytes but long enough"},
        {"token_counter": -1}, {"req_len": 1 << 32}, {"req_addr": -1}, {"resp_addr": 1 << 64},
        {"status": 9}, {"irq_status": 2}, {"http_status": "200"},
    ],
)
def test_restore_refuses_bad_state_and_changes_nothing(change: dict) -> None:
    rig = make_rig()
    rig.transact(b"GET / HTTP/1.1\r\n\r\n")
    before = rig.dev.save_state()
    with pytest.raises(MmdsStateError):
        rig.dev.restore_state(dataclasses.replace(before, **change))
    assert rig.dev.save_state() == before


def test_config_errors() -> None:
    mem = GuestMemory(RAM_BASE, RAM_SIZE)
    with pytest.raises(MmdsConfigError):
        MmdsDevice(mem, now_ns=Clock(), set_irq=Line(), token_secret=SECRET, version=3)
    with pytest.raises(MmdsConfigError):
        MmdsDevice(mem, now_ns=Clock(), set_irq=Line(), token_secret=b"", version=2)
    with pytest.raises(MmdsConfigError):
        MmdsDevice(mem, now_ns=Clock(), set_irq=Line(), token_secret=SECRET, data_limit=1)


def test_default_version_is_v2() -> None:
    mem = GuestMemory(RAM_BASE, RAM_SIZE)
    device = MmdsDevice(mem, now_ns=Clock(), set_irq=Line(), token_secret=SECRET)
    assert device.version == MMDS_V2 and device.store.limit == 51_200


def test_state_type_is_plain() -> None:
    hints = typing.get_type_hints(MmdsState)  # limits (Annotated markers) stripped
    assert set(hints.values()) <= {int, str, bytes}


# --- hostile guests, generated -------------------------------------------------------------------
_ADDRS = st.one_of(
    st.sampled_from([0, RAM_BASE - 1, RAM_BASE, RAM_BASE + RAM_SIZE - 1, RAM_BASE + RAM_SIZE,
                     MMDS_BASE, 0xFFFF_FFFF_FFFF_FFFF]),
    st.integers(RAM_BASE, RAM_BASE + RAM_SIZE),
    st.integers(0, 2**64 - 1),
)
_LENS = st.one_of(st.sampled_from([0, 1, 2**32 - 1, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1]),
                  st.integers(0, 8192), st.integers(0, 2**32 - 1))
_REQUESTS = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 10\r\n\r\n",
        b"GET http://x/../../ HTTP/1.1\r\nX: a\r\nInjected: 1\r\n\r\n",
    ]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=_REQUESTS,
    req_addr=_ADDRS,
    req_len=_LENS,
    resp_addr=_ADDRS,
    resp_cap=_LENS,
    version=st.sampled_from([MMDS_V1, MMDS_V2]),
)
def test_hostile_doorbells_stay_inside_the_response_buffer(
    request: bytes, req_addr: int, req_len: int, resp_addr: int, resp_cap: int, version: int
) -> None:
    rig = make_rig(version)
    if RAM_BASE <= req_addr and req_addr + len(request) <= RAM_BASE + RAM_SIZE:
        rig.mem.write(req_addr, request)
    rig.sink.ranges.clear()
    rig.program(req_addr, req_len, resp_addr, resp_cap)
    rig.w32(dev.REG_DOORBELL, 1)
    status, n = rig.r32(dev.REG_STATUS), rig.r32(dev.REG_RESP_LEN)
    assert status in dev.STATUSES and status != dev.STATUS_IDLE
    assert rig.line.calls == [True]
    lo, hi = resp_addr - RAM_BASE, resp_addr - RAM_BASE + resp_cap
    for offset, length in rig.sink.ranges:
        assert lo <= offset and offset + length <= hi
    if status == dev.STATUS_DONE:
        assert rig.sink.ranges == [(lo, n)] and 0 < n <= resp_cap
        head = rig.mem.read(resp_addr, n)
        assert head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) and b"\r\n\r\n" in head
        assert int(head[9:12]) == rig.r32(dev.REG_HTTP_STATUS)
    else:
        assert rig.sink.ranges == []
        assert n == 0 or status == dev.STATUS_RESP_TOO_SMALL
