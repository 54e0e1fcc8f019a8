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


@dataclass
class MmdsState:
    """Saved MMDS device. Units: bytes for sizes/lengths, guest physical addresses for addrs."""

    version: int  # MMDS protocol version, 1 or 2
    data_json: str  # canonical JSON of the data store (a JSON object)
    data_limit: int  # data store limit in bytes of canonical JSON
    token_secret: bytes  # 16..64 bytes, keys the token tags
    token_counter: int  # u64, number of tokens issued so far
    req_addr: int  # REQ_ADDR register (u64)
    req_len: int  # REQ_LEN register (u32)
    resp_addr: int  # RESP_ADDR register (u64)
    resp_cap: int  # RESP_CAP register (u32)
    resp_len: int  # RESP_LEN register (u32)
    status: int  # STATUS register
    http_status: int  # HTTP_STATUS register
    irq_status: int  # IRQ_STATUS register; the IRQ line level is `irq_status != 0`
