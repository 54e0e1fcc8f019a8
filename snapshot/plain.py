"""Dataclass <-> plain data, validated strictly against the dataclass's type hints.

State classes (vCPU, devices, ...) are plain `@dataclass`es. `to_plain` turns one into nested
dicts/lists/int/str/bytes/bool/float/None that msgpack encodes as is; `from_plain` turns
decoded (untrusted) plain data back into the dataclass, and checks every value on the way.
Both directions run the same checks, so a state that saves is a state that loads.

Supported annotations: int, bool, str, bytes, float, None, `list[T]`, `tuple[T, ...]`,
`tuple[A, B, ...]`, `dict[str, T]`, `Optional[T]` / `T | None`, `Literal[...]` of str/int, and
nested dataclasses (recursion allowed). `Annotated[...]` markers add limits:
`Width(bits)` on int (unsigned, 0..2**bits-1; see `U8`..`U64`), `Range(low, high)` on int
(low..high inclusive; with a Width, both apply), `MaxLen(n)` / `Len(n)` on
list, tuple, dict, str (characters) and bytes. An unsupported annotation is a programming
error (TypeError), found the first time the class is converted.

Strictness: bool is never an int and int never a bool or float; a missing field is an error
unless the dataclass gives it a default (how add-only minor-version fields read from older
files); an unknown field is an error. Data errors raise `EncodingError` whose detail names the
field path, e.g. "vcpus[3].x[31]: expected int in 0..2**64-1, got -1". Only fields with
`init=True` are converted; `__post_init__` ValueError/TypeError become EncodingError too.
Encoding accepts bytes, bytearray and memoryview for `bytes`, and subclasses of str and float
(e.g. str Enums, numpy.float64), and emits the exact plain type; tuples are emitted as lists
and read back from lists.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from snapshot.errors import EncodingError

MSGPACK_INT_MIN = -(2**63)  # msgpack spec: int 64 is the widest signed integer format
MSGPACK_INT_MAX = 2**64 - 1  # msgpack spec: uint 64 is the widest unsigned integer format
MSGPACK_MAX_WIDTH = 64  # msgpack spec: no integer format wider than 64 bits

_QUOTE_CHARS = 40  # longest repr of a bad value quoted in a message


@dataclass(frozen=True)
class Width:
    """Marker for `Annotated[int, Width(bits)]`: an unsigned integer of `bits` bits (1..64)."""

    bits: int

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= MSGPACK_MAX_WIDTH:
            raise ValueError(f"Width must be 1..{MSGPACK_MAX_WIDTH} bits, got {self.bits}")


@dataclass(frozen=True)
class Range:
    """Marker for `Annotated[int, Range(low, high)]`: an integer in low..high (inclusive), e.g. a
    register field whose architecture allows fewer values than its width holds."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not MSGPACK_INT_MIN <= self.low <= self.high <= MSGPACK_INT_MAX:
            raise ValueError(f"Range({self.low}, {self.high}) is empty or outside msgpack's integers")


@dataclass(frozen=True)
class MaxLen:
    """Marker: at most `n` items (list, tuple, dict), characters (str) or bytes (bytes)."""

    n: int


@dataclass(frozen=True)
class Len:
    """Marker: exactly `n` items, characters or bytes (e.g. a fixed register file)."""

    n: int


U8 = Annotated[int, Width(8)]
U16 = Annotated[int, Width(16)]
U32 = Annotated[int, Width(32)]
U64 = Annotated[int, Width(64)]

# A field path, built as a linked tuple (parent, part) so no string is made unless an error
# is reported. A str part is pre-formatted (".name" or "[key]"); an int part is a list index.
_Path = tuple[Any, ...]
_ROOT: _Path = ()


def _format_path(path: _Path) -> str:
    parts: list[str] = []
    while path:
        path, part = path
        parts.append(f"[{part}]" if isinstance(part, int) else part)
    return "".join(reversed(parts)).lstrip(".")


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def _type_name(value: object) -> str:
    return type(value).__name__


def _fail(path: _Path, problem: str) -> EncodingError:
    where = _format_path(path)
    return EncodingError(f"{where}: {problem}" if where else problem)


class _Spec:
    """A compiled annotation: checks one value, returning it converted for the direction."""

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class _Sized:
    """Length bound from a MaxLen (at most `limit`) or Len (`exact`ly `limit`) marker, in
    items, characters or bytes; no bound if `limit` is None."""

    limit: int | None = None
    exact: bool = False

    def check(self, value: Any, unit: str, path: _Path) -> None:
        if self.limit is None:
            return
        n = len(value)
        if self.exact and n != self.limit:
            raise _fail(path, f"expected exactly {self.limit} {unit}, got {n}")
        if n > self.limit:
            raise _fail(path, f"expected at most {self.limit} {unit}, got {n}")


_UNBOUNDED = _Sized()


class _Int(_Spec):
    def __init__(self, low: int, high: int, label: str) -> None:
        self.low, self.high, self.label = low, high, label

    def convert(self, value: Any, path: _Path, decoding: bool) -> int:
        if decoding:
            ok = type(value) is int
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise _fail(path, f"expected int, got {_type_name(value)}")
        if not self.low <= value <= self.high:
            raise _fail(path, f"expected int in {self.label}, got {_quote(value)}")
        return int(value)


# How an accepted subclass or bytes-like value becomes the exact plain type when encoding
# (str.__str__ gives a str-mixin Enum's value, where str() would give its name).
_TO_EXACT: dict[type, Any] = {str: str.__str__, float: float.__float__, bytes: bytes}


class _Scalar(_Spec):
    """bool, float, str, bytes or None: exact type when decoding; when encoding, `accepts`
    (subclasses, and bytes-like for bytes), converted to the exact type."""

    def __init__(self, exact: type, accepts: tuple[type, ...], sized: _Sized, unit: str) -> None:
        self.exact, self.accepts, self.sized, self.unit = exact, accepts, sized, unit

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        if decoding:
            ok = type(value) is self.exact
        else:
            ok = isinstance(value, self.accepts) and not (
                self.exact is not bool and isinstance(value, bool)
            )
        if not ok:
            raise _fail(path, f"expected {self.exact.__name__}, got {_type_name(value)}")
        self.sized.check(value, self.unit, path)
        if type(value) is not self.exact:
            value = _TO_EXACT[self.exact](value)
        return value


class _Literal(_Spec):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        for allowed in self.values:
            if type(value) is type(allowed) and value == allowed:
                return allowed
        choices = ", ".join(repr(v) for v in self.values)
        raise _fail(path, f"expected one of {choices}, got {_quote(value)}")


class _Optional(_Spec):
    def __init__(self, inner: _Spec) -> None:
        self.inner = inner

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        return None if value is None else self.inner.convert(value, path, decoding)


class _Sequence(_Spec):
    """list[T] or tuple[T, ...]: a list in plain data."""

    def __init__(self, item: _Spec, kind: type, sized: _Sized) -> None:
        self.item, self.kind, self.sized = item, kind, sized

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        expected = list if decoding else self.kind
        if type(value) is not expected:
            raise _fail(path, f"expected {expected.__name__}, got {_type_name(value)}")
        self.sized.check(value, "items", path)
        item = self.item.convert
        out = [item(v, (path, i), decoding) for i, v in enumerate(value)]
        return self.kind(out) if decoding and self.kind is not list else out


class _FixedTuple(_Spec):
    """tuple[A, B, ...]: a list of exactly that many items in plain data."""

    def __init__(self, items: tuple[_Spec, ...]) -> None:
        self.items = items

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        expected = list if decoding else tuple
        if type(value) is not expected:
            raise _fail(path, f"expected {expected.__name__}, got {_type_name(value)}")
        if len(value) != len(self.items):
            raise _fail(path, f"expected exactly {len(self.items)} items, got {len(value)}")
        out = [s.convert(v, (path, i), decoding) for i, (s, v) in enumerate(zip(self.items, value))]
        return tuple(out) if decoding else out


class _Dict(_Spec):
    """dict[str, T]."""

    def __init__(self, item: _Spec, sized: _Sized) -> None:
        self.item, self.sized = item, sized

    def convert(self, value: Any, path: _Path, decoding: bool) -> dict[str, Any]:
        if type(value) is not dict:
            raise _fail(path, f"expected dict, got {_type_name(value)}")
        self.sized.check(value, "entries", path)
        out: dict[str, Any] = {}
        for key, v in value.items():
            if type(key) is not str:
                raise _fail(path, f"expected str keys, got {_type_name(key)} key {_quote(key)}")
            out[key] = self.item.convert(v, (path, f"[{_quote(key)}]"), decoding)
        return out


@dataclass(frozen=True)
class _Field:
    name: str
    part: str  # ".name", the path part
    spec: _Spec
    required: bool


class _Dataclass(_Spec):
    """A dataclass: a dict keyed by field name in plain data. Fields resolve on first use, so
    recursive classes compile."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._fields: dict[str, _Field] | None = None

    @property
    def fields(self) -> dict[str, _Field]:
        if self._fields is None:
            hints = get_type_hints(self.cls, include_extras=True)
            self._fields = {
                f.name: _Field(
                    f.name,
                    "." + f.name,
                    _compile(hints[f.name]),
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                )
                for f in dataclasses.fields(self.cls)
                if f.init
            }
        return self._fields

    def convert(self, value: Any, path: _Path, decoding: bool) -> Any:
        fields = self.fields
        name = self.cls.__name__
        if not decoding:
            if type(value) is not self.cls:
                raise _fail(path, f"expected {name}, got {_type_name(value)}")
            return {
                f.name: f.spec.convert(getattr(value, f.name), (path, f.part), False)
                for f in fields.values()
            }
        if type(value) is not dict:
            raise _fail(path, f"expected dict for {name}, got {_type_name(value)}")
        for key in value:
            if type(key) is not str or key not in fields:
                raise _fail(path, f"unknown field {_quote(key)} for {name}")
        kwargs: dict[str, Any] = {}
        for f in fields.values():
            if f.name in value:
                kwargs[f.name] = f.spec.convert(value[f.name], (path, f.part), True)
            elif f.required:
                raise _fail(path, f"missing field {f.name!r} for {name}")
        try:
            return self.cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise _fail(path, f"invalid {name}: {exc}") from exc


def _sized_from(markers: list[Any], annotation: object) -> _Sized:
    sized = _UNBOUNDED
    for m in markers:
        if isinstance(m, MaxLen):
            sized = _Sized(m.n)
        elif isinstance(m, Len):
            sized = _Sized(m.n, exact=True)
        elif isinstance(m, (Width, Range)):
            raise TypeError(f"{type(m).__name__} marker on non-int annotation {annotation!r}")
    return sized


@lru_cache(maxsize=None)
def _compile(annotation: Any) -> _Spec:
    """The _Spec for a type annotation; TypeError if it is not supported."""
    markers: list[Any] = []
    base = annotation
    if get_origin(base) is Annotated:
        markers = list(base.__metadata__)
        base = base.__origin__
    origin, args = get_origin(base), get_args(base)

    if base is int:
        if any(isinstance(m, (MaxLen, Len)) for m in markers):
            raise TypeError(f"length marker on int annotation {annotation!r}")
        low, high, label = MSGPACK_INT_MIN, MSGPACK_INT_MAX, "-2**63..2**64-1"
        for m in markers:
            if isinstance(m, Width):
                low, high, label = max(low, 0), min(high, 2**m.bits - 1), f"0..2**{m.bits}-1"
            elif isinstance(m, Range):
                low, high = max(low, m.low), min(high, m.high)
                label = f"{low}..{high}"
        if low > high:
            raise TypeError(f"markers leave no valid value for {annotation!r}")
        return _Int(low, high, label)
    sized = _sized_from(markers, annotation)
    if base is bool:
        return _Scalar(bool, (bool,), _UNBOUNDED, "")
    if base is float:
        return _Scalar(float, (float,), _UNBOUNDED, "")
    if base is str:
        return _Scalar(str, (str,), sized, "characters")
    if base is bytes:
        return _Scalar(bytes, (bytes, bytearray, memoryview), sized, "bytes")
    if base is None or base is type(None):
        return _Scalar(type(None), (type(None),), _UNBOUNDED, "")
    if origin is Literal:
        if not all(type(a) in (str, int) for a in args):
            raise TypeError(f"Literal values must be str or int: {annotation!r}")
        return _Literal(args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"only Optional[T] unions are supported, got {annotation!r}")
        return _Optional(_compile(rest[0]))
    if origin is list and len(args) == 1:
        return _Sequence(_compile(args[0]), list, sized)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Sequence(_compile(args[0]), tuple, sized)
    if origin is tuple and args and Ellipsis not in args:
        if sized is not _UNBOUNDED:
            raise TypeError(f"length marker on fixed-size tuple {annotation!r}")
        return _FixedTuple(tuple(_compile(a) for a in args))
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise TypeError(f"dict keys must be str (msgpack map keys), got {annotation!r}")
        return _Dict(_compile(args[1]), sized)
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        if markers:
            raise TypeError(f"markers are not supported on dataclass annotation {annotation!r}")
        return _Dataclass(base)
    raise TypeError(f"unsupported annotation for snapshot state: {annotation!r}")


def int_bounds(cls: Any, data: Any) -> list[tuple[tuple[Any, ...], int, int]]:
    """(path, low, high) of every int in plain `data` (shaped like `cls`) with the range its
    annotation declares; `path` is the keys and indices from the root. For tools that probe
    the limits (the fault campaign); parts of `data` that do not fit `cls` are skipped."""
    out: list[tuple[tuple[Any, ...], int, int]] = []

    def walk(spec: _Spec, value: Any, path: tuple[Any, ...]) -> None:
        if isinstance(spec, _Optional):
            if value is not None:
                walk(spec.inner, value, path)
        elif isinstance(spec, _Int):
            if type(value) is int:
                out.append((path, spec.low, spec.high))
        elif isinstance(spec, _Sequence) and type(value) is list:
            for i, v in enumerate(value):
                walk(spec.item, v, path + (i,))
        elif isinstance(spec, _FixedTuple) and type(value) is list:
            for i, (item, v) in enumerate(zip(spec.items, value)):
                walk(item, v, path + (i,))
        elif isinstance(spec, _Dict) and type(value) is dict:
            for k, v in value.items():
                walk(spec.item, v, path + (k,))
        elif isinstance(spec, _Dataclass) and type(value) is dict:
            for name, f in spec.fields.items():
                if name in value:
                    walk(f.spec, value[name], path + (name,))

    walk(_compile(cls), data, ())
    return out


def to_plain(obj: Any) -> dict[str, Any]:
    """The plain dict for dataclass instance `obj`, validated against its type hints.

    Raises EncodingError if a value breaks its annotation (the state would not load back),
    TypeError if `obj` is not a dataclass instance or uses an unsupported annotation.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_plain needs a dataclass instance, got {type(obj).__name__}")
    try:
        return typing.cast(dict[str, Any], _compile(type(obj)).convert(obj, _ROOT, False))
    except RecursionError:
        raise EncodingError("state nests too deeply (or contains a cycle)") from None


def from_plain(cls: Any, data: Any, *, path: str = "") -> Any:
    """Build `cls` (a dataclass, or any supported annotation) from untrusted plain `data`.

    `path` prefixes field paths in messages (e.g. "header"). Raises EncodingError naming the
    first offending field; never returns a partially validated object.
    """
    root: _Path = (_ROOT, path) if path else _ROOT
    try:
        return _compile(cls).convert(data, root, True)
    except RecursionError:
        raise _fail(root, "data nests too deeply") from None
