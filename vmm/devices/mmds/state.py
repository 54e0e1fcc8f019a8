"""`MmdsState`: everything needed to restore the MMDS device and its data store.

Plain field types only, so any snapshot encoder (msgpack, JSON) can carry it.

Deviations from Firecracker, on purpose: Firecracker persists only the MMDS version and
network config; it drops the data store (to avoid leaking per-VM data into clones) and its
token key. Here the data store, the token secret and the token counter are saved too, so a
restored VM is bit-for-bit the one that was saved and a token issued before the snapshot is
still valid after restore (until its virtual-time expiry). Clones that want Firecracker's
behaviour restore with `MicroVM.load_snapshot(..., mmds="drop")` (an empty store, a fresh
token key), as the API server does; `reseed=N` derives the key from a new seed instead
(vmm.persist.clone_of).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from snapshot.plain import MSGPACK_INT_MAX, U32, U64, MaxLen, Range


@dataclass
class MmdsState:
    """Saved MMDS device. Units: bytes for sizes/lengths, guest physical addresses for addrs."""

    version: Annotated[int, Range(1, 2)]  # MMDS protocol version, 1 or 2
    data_json: str  # canonical JSON of the data store (a JSON object)
    data_limit: Annotated[int, Range(2, MSGPACK_INT_MAX)]  # data store limit in bytes of canonical JSON
    token_secret: Annotated[bytes, MaxLen(64)]  # 16..64 bytes, keys the token tags
    token_counter: U64  # number of tokens issued so far
    req_addr: U64  # REQ_ADDR register
    req_len: U32  # REQ_LEN register
    resp_addr: U64  # RESP_ADDR register
    resp_cap: U32  # RESP_CAP register
    resp_len: U32  # RESP_LEN register
    status: U32  # STATUS register
    http_status: U32  # HTTP_STATUS register
    irq_status: U32  # IRQ_STATUS register; the IRQ line level is `irq_status != 0`
