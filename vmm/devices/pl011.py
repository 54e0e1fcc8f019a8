"""`Pl011`: the Arm PrimeCell UART (PL011), as far as a guest driver can tell.

Source: ARM PrimeCell UART (PL011) Technical Reference Manual, DDI 0183G, section 3
(register offsets and bits). Transmission is instantaneous: a byte written to DR goes straight
to the console, so the TX FIFO always reads empty. Received bytes come from a host queue
(`queue_input`) and move into a 16-entry FIFO (1 entry with FIFOs disabled) as the guest
drains it. The receive timeout interrupt (RTRIS) is raised as soon as fewer bytes than the
RX trigger level are waiting: in virtual time the line is always idle long enough.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Annotated, Callable

from snapshot.plain import U8, U16, U64, MaxLen, Width

# Register offsets (DDI 0183G table 3-1).
UARTDR = 0x000
UARTRSR_ECR = 0x004
UARTFR = 0x018
UARTILPR = 0x020
UARTIBRD = 0x024
UARTFBRD = 0x028
UARTLCR_H = 0x02C
UARTCR = 0x030
UARTIFLS = 0x034
UARTIMSC = 0x038
UARTRIS = 0x03C
UARTMIS = 0x040
UARTICR = 0x044
UARTDMACR = 0x048
PERIPH_ID_BASE = 0xFE0  # UARTPeriphID0..3
PCELL_ID_BASE = 0xFF0  # UARTPCellID0..3

# Peripheral and PrimeCell identification (DDI 0183G 3.3.16-17): part 0x011, designer ARM,
# revision r1p5 (3), and the standard PrimeCell ID 0xB105F00D.
PERIPH_ID = (0x11, 0x10, 0x34, 0x00)
PCELL_ID = (0x0D, 0xF0, 0x05, 0xB1)

# UARTFR bits (DDI 0183G 3.3.3).
FR_BUSY = 1 << 3
FR_RXFE = 1 << 4
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6
FR_TXFE = 1 << 7

# Interrupt bits in IMSC/RIS/MIS/ICR (DDI 0183G 3.3.10-14).
INT_RX = 1 << 4
INT_TX = 1 << 5
INT_RT = 1 << 6
INT_ALL = 0x7FF

LCR_H_FEN = 1 << 4  # FIFOs enabled
CR_RESET = 0x300  # TXE | RXE, UARTEN clear (DDI 0183G 3.3.8 reset value)
IFLS_RESET = 0x12  # half-full triggers
FIFO_DEPTH = 16

# Plain read/write registers: offset -> (Pl011State field, writable bits).
_PLAIN_REGS: dict[int, tuple[str, int]] = {
    UARTILPR: ("ilpr", 0xFF),
    UARTIBRD: ("ibrd", 0xFFFF),
    UARTFBRD: ("fbrd", 0x3F),
    UARTLCR_H: ("lcr_h", 0xFF),
    UARTCR: ("cr", 0xFFFF),
    UARTIFLS: ("ifls", 0x3F),
    UARTIMSC: ("imsc", INT_ALL),
    UARTDMACR: ("dmacr", 0x7),
}

# IFLS RX trigger levels: 1/8, 1/4, 1/2, 3/4, 7/8 of 16 entries (DDI 0183G 3.3.9).
_RX_TRIGGER = (2, 4, 8, 12, 14)


@dataclass
class Pl011State:
    """Registers plus FIFO and host-queue contents, as plain data."""

    # Register widths as implemented (DDI 0183G 3.3; the writable bits of _PLAIN_REGS),
    # checked when a snapshot is decoded (snapshot.plain).
    ibrd: U16 = 0
    fbrd: Annotated[int, Width(6)] = 0
    lcr_h: U8 = 0
    cr: U16 = CR_RESET
    ifls: Annotated[int, Width(6)] = IFLS_RESET
    imsc: Annotated[int, Width(11)] = 0  # INT_ALL
    ris: Annotated[int, Width(11)] = 0
    dmacr: Annotated[int, Width(3)] = 0
    ilpr: U8 = 0
    rx_fifo: Annotated[bytes, MaxLen(FIFO_DEPTH)] = b""
    host_input: bytes = b""
    tx_count: U64 = 0  # bytes the guest has transmitted since boot


class Pl011:
    """A PL011 on the MMIO bus. `on_tx` receives each transmitted byte; `set_irq` the line level."""

    def __init__(
        self,
        on_tx: Callable[[int], None] | None = None,
        set_irq: Callable[[bool], None] | None = None,
    ) -> None:
        self.on_tx = on_tx
        self.set_irq = set_irq
        self._s = Pl011State()
        self._rx: deque[int] = deque()
        self._host: deque[int] = deque()
        self._irq_level = False

    # --- host side --------------------------------------------------------------------------
    def queue_input(self, data: bytes) -> None:
        """Queue bytes for the guest to receive, in order."""
        self._host.extend(data)
        self._refill()

    @property
    def tx_count(self) -> int:
        return self._s.tx_count

    # --- MMIO -------------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int, vcpu: int) -> int:
        s = self._s
        if offset == UARTDR:
            return self._read_dr()
        if offset == UARTFR:
            fr = FR_TXFE
            fr |= FR_RXFE if not self._rx else 0
            fr |= FR_RXFF if len(self._rx) >= self._rx_capacity() else 0
            return fr
        if PERIPH_ID_BASE <= offset < PERIPH_ID_BASE + 16 and offset % 4 == 0:
            return PERIPH_ID[(offset - PERIPH_ID_BASE) // 4]
        if PCELL_ID_BASE <= offset < PCELL_ID_BASE + 16 and offset % 4 == 0:
            return PCELL_ID[(offset - PCELL_ID_BASE) // 4]
        plain = _PLAIN_REGS.get(offset)
        if plain is not None:
            return int(getattr(s, plain[0]))
        if offset == UARTRIS:
            return s.ris
        if offset == UARTMIS:
            return s.ris & s.imsc
        return 0  # UARTRSR_ECR (no receive errors) and reserved offsets

    def mmio_write(self, offset: int, size: int, value: int, vcpu: int) -> None:
        s = self._s
        if offset == UARTDR:
            s.tx_count += 1
            if self.on_tx is not None:
                self.on_tx(value & 0xFF)
            s.ris |= INT_TX  # the (instantly drained) TX FIFO is below its trigger level
        elif offset == UARTICR:
            s.ris &= ~value & INT_ALL
        elif offset in _PLAIN_REGS:
            name, mask = _PLAIN_REGS[offset]
            setattr(s, name, value & mask)
        self._update_rx_interrupts()

    # --- internals ----------------------------------------------------------------------------
    def _rx_capacity(self) -> int:
        return FIFO_DEPTH if self._s.lcr_h & LCR_H_FEN else 1

    def _rx_trigger(self) -> int:
        if not self._s.lcr_h & LCR_H_FEN:
            return 1
        level = self._s.ifls >> 3 & 7
        return _RX_TRIGGER[min(level, len(_RX_TRIGGER) - 1)]

    def _read_dr(self) -> int:
        value = self._rx.popleft() if self._rx else 0
        self._refill()
        return value

    def _refill(self) -> None:
        cap = self._rx_capacity()
        while self._host and len(self._rx) < cap:
            self._rx.append(self._host.popleft())
        self._update_rx_interrupts()

    def _update_rx_interrupts(self) -> None:
        s = self._s
        s.ris &= ~(INT_RX | INT_RT)
        n = len(self._rx)
        if n >= self._rx_trigger():
            s.ris |= INT_RX
        elif n:
            s.ris |= INT_RT
        level = bool(s.ris & s.imsc)
        if level != self._irq_level:
            self._irq_level = level
            if self.set_irq is not None:
                self.set_irq(level)

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # --- state ------------------------------------------------------------------------------------
    def save_state(self) -> Pl011State:
        s = self._s
        return Pl011State(
            ibrd=s.ibrd,
            fbrd=s.fbrd,
            lcr_h=s.lcr_h,
            cr=s.cr,
            ifls=s.ifls,
            imsc=s.imsc,
            ris=s.ris,
            dmacr=s.dmacr,
            ilpr=s.ilpr,
            rx_fifo=bytes(self._rx),
            host_input=bytes(self._host),
            tx_count=s.tx_count,
        )

    def restore_state(self, state: Pl011State) -> None:
        self._s = Pl011State(**{**state.__dict__})
        self._rx = deque(state.rx_fifo)
        self._host = deque(state.host_input)
        self._irq_level = False
        self._update_rx_interrupts()
