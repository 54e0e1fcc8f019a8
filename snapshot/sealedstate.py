"""The state tree of an encrypted snapshot: which facts stay clear, and the rest sealed.

An encrypted snapshot's state file is an ordinary envelope (snapshot.envelope: magic, version,
CRC-64) whose data map holds only:

    vm           {ram_base, ram_size, page_size}: the RAM facts (snapshot.links.RamInfo)
    memory       the MemFileInfo (kind, format, sizes, content digest, page map, encryption id)
    memory_file  the memory file's name, when recorded (snapshot.commit)
    parent       a diff's ParentLink, or nil
    sealed       {"header": the crypto header (snapshot.crypto, HEADER_SIZE bytes),
                  "payload": msgpack of the whole data tree, sealed as item 0 of 1, KIND_STATE}

The clear fields are what naming, chaining, crash recovery and `describe` without the key
need; registers, devices, MMDS data and the VM config are only in the sealed payload. The
sealed tree holds the clear fields too, and `open_state` requires them equal (TamperedError
otherwise), so the GCM tag authenticates the clear copy as well.
"""
from __future__ import annotations

from typing import Any

import msgpack

from snapshot.crypto import HEADER_SIZE, KIND_STATE, MissingKeyError, Sealer, TamperedError
from snapshot.envelope import unpack_bounded
from snapshot.errors import EncodingError

SEALED_FIELD = "sealed"  # ours: key of the sealed payload in an encrypted state's data
# the clear fields (module docstring): snapshot.links VM_FIELD and PARENT_FIELD, snapshot.commit
# MEMORY_FIELD and MEMORY_FILE_FIELD (test_encryption checks they agree)
CLEAR_FIELDS = ("vm", "memory", "memory_file", "parent")
RAM_FACTS = ("ram_base", "ram_size", "page_size")  # the clear part of `vm`


def is_sealed_state(data: dict[str, Any]) -> bool:
    """Whether a state's plain data is an encrypted snapshot's (has SEALED_FIELD)."""
    return SEALED_FIELD in data


def _clear_part(data: dict[str, Any]) -> dict[str, Any]:
    clear = {k: data[k] for k in CLEAR_FIELDS[1:] if k in data}
    vm = data.get(CLEAR_FIELDS[0])
    if isinstance(vm, dict):
        clear[CLEAR_FIELDS[0]] = {k: vm[k] for k in RAM_FACTS if k in vm}
    return clear


def seal_state(data: dict[str, Any], key: bytes, where: str) -> dict[str, Any]:
    """The data map of the encrypted state file holding plain `data` (module docstring), with a
    fresh file id. EncodingError if `data` is not msgpack data."""
    sealer = Sealer.create(key, where)
    try:
        payload = msgpack.packb(data, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"data is not plain msgpack data: {exc}") from exc
    sealed = {"header": sealer.header, "payload": sealer.seal(payload, 0, 1, KIND_STATE)}
    return {**_clear_part(data), SEALED_FIELD: sealed}


def open_state(data: dict[str, Any], key: bytes | None, where: str) -> dict[str, Any]:
    """The whole data tree of an encrypted state's `data` map: MissingKeyError without a key,
    WrongKeyError for another key, TamperedError if the payload or a clear field was changed,
    EncodingError if the map is not shaped as the module docstring says. Decoding is bounded as
    the envelope's is."""
    sealed = data.get(SEALED_FIELD)
    extra = [k for k in data if k not in CLEAR_FIELDS and k != SEALED_FIELD]
    if extra:
        raise EncodingError(f"unknown field {str(extra[0])[:40]!r} beside the sealed state")
    if (
        type(sealed) is not dict
        or set(sealed) != {"header", "payload"}
        or type(sealed["header"]) is not bytes
        or len(sealed["header"]) != HEADER_SIZE
        or type(sealed["payload"]) is not bytes
    ):
        raise EncodingError(f"data.{SEALED_FIELD}: expected {{header: {HEADER_SIZE} bytes, payload: bytes}}")
    if key is None:
        raise MissingKeyError(where)
    sealer = Sealer.open(key, sealed["header"], where)
    tree = unpack_bounded(memoryview(sealer.open_item(sealed["payload"], 0, 1, KIND_STATE)))
    if type(tree) is not dict or SEALED_FIELD in tree:
        raise EncodingError("the sealed state is not a data map")
    if _clear_part(tree) != {k: v for k, v in data.items() if k != SEALED_FIELD}:
        raise TamperedError(where, "a clear field (vm, memory, memory_file or parent)")
    return tree
