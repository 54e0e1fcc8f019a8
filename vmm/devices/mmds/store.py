"""`MmdsStore`: the MMDS data store, a JSON object tree with a size limit.

Contracts:
- The store always holds a JSON object (a `dict`); it starts as `{}`.
- Only JSON-compatible values are accepted: `dict` with `str` keys, `list`, `str` (valid
  Unicode, no lone surrogates), `int`, finite `float`, `bool`, `None`; exact types only (no
  tuples, subclasses, bytes), nested at most `MAX_DEPTH` containers deep. Anything else
  raises `MmdsInvalidData`.
- The size limit applies to the canonical serialization (`canonical_json`: compact, keys
  sorted, UTF-8, non-ASCII not escaped), counted in bytes. A put or patch that would exceed
  it raises `MmdsDataTooLarge`. A refused put or patch leaves the store unchanged.
- The store never aliases caller objects: values are copied in and out.
- Paths are Firecracker's: the request path with runs of `/` collapsed and one trailing `/`
  dropped, read as an RFC 6901 JSON pointer (`~1` is `/`, `~0` is `~`; array elements by
  decimal index without leading zeros). Percent-encoding is not decoded; `.` and `..` are
  ordinary keys (there is no filesystem behind the store).

Deviation from Firecracker: Firecracker refuses a PATCH before the first PUT ("not
initialized"); here the store starts as `{}` and a first PATCH merges into it.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from vmm.devices.mmds.errors import MmdsConfigError, MmdsDataTooLarge, MmdsInvalidData, MmdsNotFound

DEFAULT_DATA_LIMIT = 51_200  # bytes; Firecracker's default `mmds_size_limit`.
MAX_DEPTH = 128  # nesting limit, as serde_json's parser default.

JsonValue = Any  # dict | list | str | int | float | bool | None, checked by `validate_json`

_SCALARS = (str, int, float, bool, type(None))


def validate_json(value: object) -> None:
    """Raise `MmdsInvalidData` unless `value` is JSON-compatible (see module docstring)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth > MAX_DEPTH:
                raise MmdsInvalidData(f"MMDS data nests deeper than {MAX_DEPTH} levels")
            for key, child in item.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise MmdsInvalidData(f"MMDS object key {key!r} is not a string")
                stack.append((child, depth + 1))
        elif kind is list:
            if depth > MAX_DEPTH:
                raise MmdsInvalidData(f"MMDS data nests deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in item)  # type: ignore[attr-defined]
        elif kind is float:
            if not math.isfinite(item):  # type: ignore[arg-type]
                raise MmdsInvalidData(f"MMDS value {item!r} is not a finite number")
        elif kind not in _SCALARS:
            raise MmdsInvalidData(f"MMDS value of type {kind.__name__} is not JSON")


def canonical_json(value: JsonValue) -> bytes:
    """Compact, key-sorted UTF-8 JSON of an already validated value (Firecracker's
    serde_json output shape). Raises `MmdsInvalidData` for text that is not encodable."""
    try:
        text = json.dumps(
            value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:  # lone surrogates, huge ints
        raise MmdsInvalidData(f"MMDS data cannot be serialized as JSON: {type(exc).__name__}") from None


def _reject_constant(name: str) -> None:
    raise MmdsInvalidData(f"MMDS JSON contains the non-standard constant {name}")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string literal (escapes included)


def nesting_depth(data: bytes) -> int:
    """The deepest bracket nesting of JSON text `data`, brackets inside strings not counted;
    linear and non-recursive (numpy), so it can run before the parser."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    step = np.isin(bare, _OPENERS).astype(np.int64) - np.isin(bare, _CLOSERS)
    return int(np.cumsum(step).max(initial=0))


_OPENERS = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSERS = np.frombuffer(b"]}", dtype=np.uint8)


def parse_json(data: bytes | str) -> JsonValue:
    """Parse canonical or any standard JSON; refuses NaN/Infinity and invalid values. The
    nesting depth is checked before parsing: the C parser recurses per level, and with a raised
    recursion limit deep input overflows the C stack instead of raising RecursionError."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nesting_depth(raw) > MAX_DEPTH:
        raise MmdsInvalidData(f"MMDS data nests deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MmdsInvalidData(f"MMDS data is not valid JSON: {type(exc).__name__}") from None
    validate_json(value)
    return value


def merge_patch(target: JsonValue, patch: JsonValue) -> JsonValue:
    """RFC 7396 JSON merge patch: `target` patched by `patch`, as a new value.

    Inputs are not modified; both must be validated (depth bounds the recursion).
    """
    if type(patch) is not dict:
        return patch
    result = dict(target) if type(target) is dict else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pointer_tokens(path: str) -> list[str] | None:
    """Reference tokens of a request path, or None if it is not a JSON pointer.

    `"/"` and `""` are the root (no tokens).
    """
    while "//" in path:
        path = path.replace("//", "/")
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path in ("", "/"):
        return []
    if not path.startswith("/"):
        return None
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _is_index(token: str) -> bool:
    return token.isascii() and token.isdigit() and (token == "0" or not token.startswith("0"))


def resolve(root: JsonValue, path: str) -> tuple[bool, JsonValue]:
    """`(True, value)` at `path` in `root`, or `(False, None)` if there is none."""
    tokens = pointer_tokens(path)
    if tokens is None:
        return False, None
    node = root
    for token in tokens:
        if type(node) is dict and token in node:
            node = node[token]
        elif type(node) is list and _is_index(token) and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None
    return True, node


class MmdsStore:
    """The host-visible data store: `put`, `patch`, `get`, bounded by `limit` bytes."""

    def __init__(self, limit: int = DEFAULT_DATA_LIMIT) -> None:
        if type(limit) is not int or limit < 2:
            raise MmdsConfigError(f"MMDS data store limit must be an integer >= 2 bytes, got {limit!r}")
        self.limit = limit
        self._data: dict[str, JsonValue] = {}
        self._size = 2  # len(b"{}")

    @property
    def size(self) -> int:
        """Bytes of the canonical serialization of the current contents."""
        return self._size

    def put(self, obj: dict[str, JsonValue]) -> None:
        """Replace the whole store with `obj` (a JSON object)."""
        if type(obj) is not dict:
            raise MmdsInvalidData(f"MMDS data must be a JSON object, got {type(obj).__name__}")
        validate_json(obj)
        self._commit(obj)

    def patch(self, obj: dict[str, JsonValue]) -> None:
        """Apply `obj` to the store as an RFC 7396 merge patch (a `None` value deletes)."""
        if type(obj) is not dict:
            raise MmdsInvalidData(f"MMDS patch must be a JSON object, got {type(obj).__name__}")
        validate_json(obj)
        self._commit(merge_patch(self._data, obj))

    def get(self, path: str = "/") -> JsonValue:
        """A copy of the value at `path` (see module docstring); `MmdsNotFound` if absent."""
        found, value = resolve(self._data, path)
        if not found:
            raise MmdsNotFound(path)
        return json.loads(canonical_json(value))

    def lookup(self, path: str) -> tuple[bool, JsonValue]:
        """Like `get` but returns `(found, value)` without copying; callers must not mutate."""
        return resolve(self._data, path)

    def to_json(self) -> str:
        """Canonical JSON text of the whole store (for snapshots)."""
        return canonical_json(self._data).decode("utf-8")

    def contents(self) -> tuple[dict[str, JsonValue], int]:
        """The contents and their size, for an in-process rollback (`set_contents`). Shared,
        not copied: the store replaces its data on every change and never mutates it."""
        return self._data, self._size

    def set_contents(self, contents: tuple[dict[str, JsonValue], int]) -> None:
        """Go back to what `contents()` returned (from this store or one with the same limit)."""
        self._data, self._size = contents

    def load_json(self, text: str) -> None:
        """Replace the store with the JSON object in `text` (limit enforced)."""
        value = parse_json(text)
        if type(value) is not dict:
            raise MmdsInvalidData("MMDS data must be a JSON object")
        self._commit(value)

    def _commit(self, value: dict[str, JsonValue]) -> None:
        encoded = canonical_json(value)
        if len(encoded) > self.limit:
            raise MmdsDataTooLarge(len(encoded), self.limit)
        # Re-parse so the store owns a private copy that shares nothing with the caller.
        self._data = json.loads(encoded)
        self._size = len(encoded)
