"""snapshot.plain: dataclass <-> plain data, strict validation against type hints."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot.errors import EncodingError
from snapshot.plain import U8, U32, U64, Len, MaxLen, Range, Width, from_plain, int_bounds, to_plain


@dataclass
class Device:
    kind: Literal["virtio-net", "virtio-blk", "serial"]
    slot: U8
    blob: Annotated[bytes, MaxLen(64)]


@dataclass
class Vcpu:
    mpidr: U64
    x: Annotated[list[U64], Len(31)]
    pc: U64
    v: Annotated[list[Annotated[bytes, Len(16)]], MaxLen(32)]
    psci: Literal["on", "off", "on-pending"]
    sysregs: Annotated[list[tuple[U32, U64]], MaxLen(8)]


@dataclass
class Vm:
    mem_size: U64
    track_dirty_pages: bool
    vcpus: Annotated[list[Vcpu], MaxLen(8)]
    devices: dict[str, Device]
    mmds: Optional[str]
    ratio: float
    offset: int
    version: tuple[U8, U8, U8]
    tags: tuple[str, ...] = ()
    added_in_minor: U32 = 7  # an add-only field with a default: older files omit it


@dataclass
class Node:
    value: int
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Checked:
    lo: U32
    hi: U32

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError("lo must not exceed hi")


@dataclass
class Holder:
    ranges: list[Checked]


def make_vcpu(i: int) -> Vcpu:
    return Vcpu(
        mpidr=0x8000_0000 | i,
        x=[2**64 - 1 - r for r in range(31)],
        pc=0x4008_0000,
        v=[bytes(range(16)) for _ in range(32)],
        psci="on" if i == 0 else "off",
        sysregs=[(0xC000, 1), (0xC081, 2**63)],
    )


def make_vm() -> Vm:
    return Vm(
        mem_size=128 << 20,
        track_dirty_pages=True,
        vcpus=[make_vcpu(i) for i in range(4)],
        devices={"net0": Device("virtio-net", 1, b"\x00\x01"), "ttyS0": Device("serial", 0, b"")},
        mmds='{"latest": {}}',
        ratio=0.5,
        offset=-5,
        version=(1, 2, 3),
        tags=("a", "b"),
    )


def detail(exc: pytest.ExceptionInfo[EncodingError]) -> str:
    return str(exc.value)


def test_round_trip_through_msgpack() -> None:
    vm = make_vm()
    plain = to_plain(vm)
    decoded = msgpack.unpackb(msgpack.packb(plain, use_bin_type=True), raw=False, strict_map_key=True)
    assert from_plain(Vm, decoded) == vm


def test_plain_form_uses_only_msgpack_types() -> None:
    plain = to_plain(make_vm())
    assert plain["version"] == [1, 2, 3]
    assert plain["vcpus"][0]["sysregs"] == [[0xC000, 1], [0xC081, 2**63]]
    assert plain["devices"]["net0"] == {"kind": "virtio-net", "slot": 1, "blob": b"\x00\x01"}

    def walk(value: object) -> None:
        assert type(value) in (dict, list, int, str, bytes, bool, float, type(None))
        if isinstance(value, dict):
            assert all(type(k) is str for k in value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(plain)


def test_error_names_the_field_path() -> None:
    plain = to_plain(make_vm())
    plain["vcpus"][3]["x"][30] = -1
    with pytest.raises(EncodingError) as exc:
        from_plain(Vm, plain)
    assert detail(exc) == "invalid snapshot: vcpus[3].x[30]: expected int in 0..2**64-1, got -1"


def test_width_marker_bounds() -> None:
    plain = to_plain(make_vm())
    plain["devices"]["net0"]["slot"] = 256
    with pytest.raises(EncodingError, match=r"devices\['net0'\]\.slot: expected int in 0\.\.2\*\*8-1, got 256"):
        from_plain(Vm, plain)
    plain["devices"]["net0"]["slot"] = 255
    assert from_plain(Vm, plain).devices["net0"].slot == 255
    plain["mem_size"] = 2**64
    with pytest.raises(EncodingError, match=r"^invalid snapshot: mem_size: expected int in 0\.\.2\*\*64-1, got 18446744073709551616$"):
        from_plain(Vm, plain)


@pytest.mark.parametrize(
    ("field_name", "bad", "message"),
    [
        ("mem_size", True, "mem_size: expected int, got bool"),
        ("track_dirty_pages", 1, "track_dirty_pages: expected bool, got int"),
        ("ratio", 1, "ratio: expected float, got int"),
        ("mmds", b"x", "mmds: expected str, got bytes"),
        ("version", [1, 2], "version: expected exactly 3 items, got 2"),
        ("tags", "ab", "tags: expected list, got str"),
        ("vcpus", {}, "vcpus: expected list, got dict"),
        ("devices", [], "devices: expected dict, got list"),
        ("offset", 2**64, "offset: expected int in -2**63..2**64-1, got 18446744073709551616"),
    ],
)
def test_wrong_types_are_refused(field_name: str, bad: object, message: str) -> None:
    plain = to_plain(make_vm())
    plain[field_name] = bad
    with pytest.raises(EncodingError) as exc:
        from_plain(Vm, plain)
    assert detail(exc) == f"invalid snapshot: {message}"


def test_length_markers() -> None:
    plain = to_plain(make_vm())
    plain["vcpus"] = plain["vcpus"] * 3  # 12 > MaxLen(8)
    with pytest.raises(EncodingError, match=r"^invalid snapshot: vcpus: expected at most 8 items, got 12$"):
        from_plain(Vm, plain)
    plain = to_plain(make_vm())
    plain["vcpus"][1]["x"].append(0)
    with pytest.raises(EncodingError, match=r"vcpus\[1\]\.x: expected exactly 31 items, got 32"):
        from_plain(Vm, plain)
    plain = to_plain(make_vm())
    plain["vcpus"][0]["v"][5] = b"short"
    with pytest.raises(EncodingError, match=r"vcpus\[0\]\.v\[5\]: expected exactly 16 bytes, got 5"):
        from_plain(Vm, plain)


def test_literal_and_nested_tuple_paths() -> None:
    plain = to_plain(make_vm())
    plain["vcpus"][2]["psci"] = "sleeping"
    with pytest.raises(EncodingError, match=r"vcpus\[2\]\.psci: expected one of 'on', 'off', 'on-pending', got 'sleeping'"):
        from_plain(Vm, plain)
    plain = to_plain(make_vm())
    plain["vcpus"][0]["sysregs"][1][0] = 2**32
    with pytest.raises(EncodingError, match=r"vcpus\[0\]\.sysregs\[1\]\[0\]: expected int in 0\.\.2\*\*32-1"):
        from_plain(Vm, plain)


def test_missing_unknown_and_defaulted_fields() -> None:
    plain = to_plain(make_vm())
    del plain["added_in_minor"], plain["tags"]
    vm = from_plain(Vm, plain)
    assert vm.added_in_minor == 7 and vm.tags == ()

    del plain["mem_size"]
    with pytest.raises(EncodingError, match=r"^invalid snapshot: missing field 'mem_size' for Vm$"):
        from_plain(Vm, plain)

    plain = to_plain(make_vm())
    plain["vcpus"][0]["x99"] = 1
    with pytest.raises(EncodingError, match=r"^invalid snapshot: vcpus\[0\]: unknown field 'x99' for Vcpu$"):
        from_plain(Vm, plain)


def test_dict_keys_must_be_str_and_root_must_be_a_map() -> None:
    plain = to_plain(make_vm())
    plain["devices"] = {b"net0": plain["devices"]["net0"]}
    with pytest.raises(EncodingError, match=r"devices: expected str keys, got bytes key b'net0'"):
        from_plain(Vm, plain)
    with pytest.raises(EncodingError, match=r"^invalid snapshot: expected dict for Vm, got list$"):
        from_plain(Vm, [])
    with pytest.raises(EncodingError, match=r"^invalid snapshot: header: expected dict for Vm, got int$"):
        from_plain(Vm, 3, path="header")


def test_post_init_errors_become_encoding_errors() -> None:
    with pytest.raises(EncodingError, match=r"^invalid snapshot: ranges\[1\]: invalid Checked: lo must not exceed hi$"):
        from_plain(Holder, {"ranges": [{"lo": 1, "hi": 2}, {"lo": 3, "hi": 2}]})


def test_to_plain_validates_before_anything_is_saved() -> None:
    vm = make_vm()
    vm.vcpus[1].pc = -1
    with pytest.raises(EncodingError, match=r"vcpus\[1\]\.pc: expected int in 0\.\.2\*\*64-1, got -1"):
        to_plain(vm)
    vm = make_vm()
    vm.version = [1, 2, 3]  # type: ignore[assignment]
    with pytest.raises(EncodingError, match="version: expected tuple, got list"):
        to_plain(vm)
    vm = make_vm()
    vm.devices["net0"].blob = bytearray(b"ok")  # type: ignore[assignment]
    assert to_plain(vm)["devices"]["net0"]["blob"] == b"ok"
    with pytest.raises(TypeError):
        to_plain({"not": "a dataclass"})


class Psci(str, enum.Enum):
    ON = "on"


def test_subclasses_are_emitted_as_exact_plain_types() -> None:
    vm = make_vm()
    vm.ratio = np.float64(0.25)  # type: ignore[assignment]
    vm.mmds = Psci.ON  # str() of this would be "Psci.ON"
    vm.vcpus[0].psci = "on"
    plain = to_plain(vm)
    assert type(plain["ratio"]) is float and plain["ratio"] == 0.25
    assert type(plain["mmds"]) is str and plain["mmds"] == "on"
    vm.vcpus[0].pc = np.uint64(5)  # type: ignore[assignment]  # not an int subclass
    with pytest.raises(EncodingError, match=r"vcpus\[0\]\.pc: expected int, got uint64"):
        to_plain(vm)


def test_recursive_types_and_deep_data() -> None:
    tree = Node(1, [Node(2), Node(3, [Node(4)])])
    assert from_plain(Node, to_plain(tree)) == tree
    deep: dict[str, object] = {"value": 0, "children": []}
    for _ in range(5000):
        deep = {"value": 0, "children": [deep]}
    with pytest.raises(EncodingError, match="nests too deeply"):
        from_plain(Node, deep)


def test_unsupported_annotations_are_programming_errors() -> None:
    @dataclass
    class IntKeys:
        regs: dict[int, int]

    @dataclass
    class Union2:
        value: int | str

    for cls in (IntKeys, Union2):
        with pytest.raises(TypeError):
            from_plain(cls, {})
    with pytest.raises(ValueError):
        Width(65)


def test_messages_are_one_line() -> None:
    plain = to_plain(make_vm())
    plain["devices"] = {"a\nb": {"kind": "serial", "slot": 0, "blob": b"", "x": 1}}
    with pytest.raises(EncodingError) as exc:
        from_plain(Vm, plain)
    assert "\n" not in str(exc.value) and "unknown field 'x'" in str(exc.value)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=4) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(
    garbage=plain_values,
    where=st.sampled_from(["vcpus", "devices", "mmds", "version", "x", "v", "sysregs", "psci"]),
)
def test_arbitrary_plain_data_only_ever_raises_encoding_error(garbage: object, where: str) -> None:
    plain = to_plain(make_vm())
    if where in ("x", "v", "sysregs", "psci"):
        plain["vcpus"][1][where] = garbage
    else:
        plain[where] = garbage
    try:
        vm = from_plain(Vm, plain)
    except EncodingError as exc:
        assert "\n" not in str(exc)
    else:
        assert to_plain(vm) == plain  # anything accepted is exactly representable


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.integers(0, 2**64 - 1), min_size=31, max_size=31), pc=st.integers(0, 2**64 - 1))
def test_u64_registers_round_trip(xs: list[int], pc: int) -> None:
    vcpu = make_vcpu(0)
    vcpu.x, vcpu.pc = xs, pc
    assert from_plain(Vcpu, msgpack.unpackb(msgpack.packb(to_plain(vcpu)))) == vcpu


@dataclass
class Ranged:
    bpr: Annotated[int, Range(3, 7)]
    level: Annotated[int, Width(8), Range(1, 300)]  # both apply: 1..255
    words: list[U32]
    free: int = 0


@pytest.mark.parametrize(
    "field_, value, ok",
    [("bpr", 3, True), ("bpr", 7, True), ("bpr", 2, False), ("bpr", 8, False), ("bpr", 2**33, False),
     ("level", 255, True), ("level", 256, False), ("level", 0, False)],
)
def test_range_marker_bounds_ints_both_ways(field_: str, value: int, ok: bool) -> None:
    plain = {"bpr": 3, "level": 1, "words": [0], field_: value}
    if ok:
        assert getattr(from_plain(Ranged, plain), field_) == value
        assert to_plain(from_plain(Ranged, plain))[field_] == value
    else:
        with pytest.raises(EncodingError, match=rf"^invalid snapshot: {field_}: expected int in "):
            from_plain(Ranged, plain)
        with pytest.raises(EncodingError):
            to_plain(Ranged(**{"bpr": 3, "level": 1, "words": [0], field_: value}))


def test_range_marker_errors() -> None:
    with pytest.raises(ValueError):
        Range(5, 4)

    @dataclass
    class Empty:
        x: Annotated[int, Width(4), Range(100, 200)]

    with pytest.raises(TypeError, match="no valid value"):
        from_plain(Empty, {"x": 1})

    @dataclass
    class OnStr:
        s: Annotated[str, Range(0, 1)]

    with pytest.raises(TypeError, match="Range marker on non-int"):
        from_plain(OnStr, {"s": ""})


def test_int_bounds_lists_every_int_with_its_declared_range() -> None:
    plain = {"bpr": 4, "level": 9, "words": [1, 2], "free": -5}
    assert int_bounds(Ranged, plain) == [
        (("bpr",), 3, 7),
        (("level",), 1, 255),
        (("words", 0), 0, 2**32 - 1),
        (("words", 1), 0, 2**32 - 1),
        (("free",), -(2**63), 2**64 - 1),
    ]
