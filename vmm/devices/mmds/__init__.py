"""MMDS, the microVM metadata service: a Firecracker-compatible data store reachable by the
guest through a small MMIO + DMA transport.

Modules, one concept each:
- `store`: `MmdsStore`, the JSON data store with its size limit (host put/patch/get).
- `tokens`: `TokenAuthority`, deterministic V2 session tokens in virtual time.
- `http`: the strict HTTP/1.1 request parser and response encoder.
- `service`: `MmdsService`, Firecracker's V1/V2 request semantics and IMDS/JSON output.
- `device`: `MmdsDevice`, the MMIO register interface, DMA and interrupt (register table).
- `state`: `MmdsState`, the snapshot state.
- `errors`: typed errors.
"""
from vmm.devices.mmds.device import MmdsDevice
from vmm.devices.mmds.errors import (
    MmdsConfigError,
    MmdsDataTooLarge,
    MmdsError,
    MmdsInvalidData,
    MmdsNotFound,
    MmdsStateError,
)
from vmm.devices.mmds.service import DEFAULT_VERSION, MMDS_V1, MMDS_V2, MmdsService
from vmm.devices.mmds.state import MmdsState
from vmm.devices.mmds.store import DEFAULT_DATA_LIMIT, MmdsStore
from vmm.devices.mmds.tokens import TokenAuthority

__all__ = [
    "DEFAULT_DATA_LIMIT",
    "DEFAULT_VERSION",
    "MMDS_V1",
    "MMDS_V2",
    "MmdsConfigError",
    "MmdsDataTooLarge",
    "MmdsDevice",
    "MmdsError",
    "MmdsInvalidData",
    "MmdsNotFound",
    "MmdsService",
    "MmdsState",
    "MmdsStateError",
    "MmdsStore",
    "TokenAuthority",
]
