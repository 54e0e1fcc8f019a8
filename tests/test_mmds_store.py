"""MMDS data store: put/patch/get, JSON merge patch, size limit, refusal of non-JSON values."""
from __future__ import annotations

import pytest

from vmm.devices.mmds import MmdsConfigError, MmdsDataTooLarge, MmdsInvalidData, MmdsNotFound, MmdsStore
from vmm.devices.mmds.store import MAX_DEPTH, canonical_json, merge_patch, pointer_tokens

DATA = {
    "latest": {
        "meta-data": {"ami-id": "ami-87654321", "reservation-id": "r-79054aef"},
        "list": ["a", {"b": "c"}],
    },
    "a/b": {"c~d": "escaped"},
}


def test_put_get_round_trip_and_copies() -> None:
    store = MmdsStore()
    src = {"k": {"v": [1, 2]}}
    store.put(src)
    src["k"]["v"].append(3)  # the store must not alias the caller's object
    got = store.get("/k")
    assert got == {"v": [1, 2]}
    got["v"].clear()
    assert store.get("/") == {"k": {"v": [1, 2]}}


def test_store_starts_empty_and_put_replaces() -> None:
    store = MmdsStore()
    assert store.get() == {} and store.size == 2
    store.put({"a": "1"})
    store.put({"b": "2"})
    assert store.get() == {"b": "2"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", DATA),
        ("", DATA),
        ("/latest/meta-data/ami-id", "ami-87654321"),
        ("/latest/meta-data/", DATA["latest"]["meta-data"]),
        ("//latest///meta-data//ami-id", "ami-87654321"),
        ("/latest/list/1/b", "c"),
        ("/a~1b/c~0d", "escaped"),
    ],
)
def test_get_paths(path: str, expected: object) -> None:
    store = MmdsStore()
    store.put(DATA)
    assert store.get(path) == expected


@pytest.mark.parametrize(
    "path", ["/missing", "/latest/list/2", "/latest/list/01", "/latest/list/-1", "/latest/list/+1",
             "latest", "/latest/meta-data/ami-id/x", "/latest/../latest", "/latest/%6Deta-data"]
)
def test_get_missing_raises_not_found(path: str) -> None:
    store = MmdsStore()
    store.put(DATA)
    with pytest.raises(MmdsNotFound, match="MMDS resource not found"):
        store.get(path)


def test_pointer_tokens_unescape_order() -> None:
    # RFC 6901: "~01" is "~1", not "/".
    assert pointer_tokens("/~01") == ["~1"]
    assert pointer_tokens("/a/") == ["a"]
    assert pointer_tokens("x") is None


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7396 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_patch_is_rfc7396(target: dict, patch: dict, result: dict) -> None:
    store = MmdsStore()
    store.put(target)
    store.patch(patch)
    assert store.get() == result
    assert merge_patch(target, patch) == result


def test_patch_does_not_modify_inputs() -> None:
    target = {"a": {"b": "c"}}
    merge_patch(target, {"a": {"b": None}})
    assert target == {"a": {"b": "c"}}


def test_size_limit_refuses_and_keeps_store() -> None:
    store = MmdsStore(limit=40)
    store.put({"k": "v"})
    with pytest.raises(MmdsDataTooLarge, match=r"would be \d+ bytes, over the limit of 40 bytes"):
        store.put({"k": "x" * 40})
    with pytest.raises(MmdsDataTooLarge):
        store.patch({"big": "y" * 40})
    assert store.get() == {"k": "v"}
    # The limit counts bytes of compact UTF-8 JSON: {"k":"<n chars>"} is 8 + n bytes.
    store.put({"k": "x" * 32})
    assert store.size == 40
    with pytest.raises(MmdsDataTooLarge):
        store.put({"k": "\u00e9" * 17})  # 34 bytes of UTF-8, 42 in all


def test_default_limit_is_firecrackers() -> None:
    store = MmdsStore()
    assert store.limit == 51_200
    store.put({"k": "x" * (51_200 - 8)})
    with pytest.raises(MmdsDataTooLarge):
        store.put({"k": "x" * (51_200 - 7)})


@pytest.mark.parametrize(
    "bad",
    [
        {"k": float("nan")},
        {"k": float("inf")},
        {"k": (1, 2)},
        {"k": b"bytes"},
        {"k": {1: "int key"}},
        {"k": {"a", "b"}},
        {"k": object()},
        {"k": "\ud800"},  # lone surrogate: not encodable as UTF-8
        {"k": 10**5000},  # too many digits for Python's int -> str
    ],
)
def test_non_json_values_refused(bad: dict) -> None:
    store = MmdsStore()
    store.put({"keep": "me"})
    with pytest.raises(MmdsInvalidData):
        store.put(bad)
    with pytest.raises(MmdsInvalidData):
        store.patch(bad)
    assert store.get() == {"keep": "me"}


def test_top_level_must_be_object() -> None:
    store = MmdsStore()
    for bad in (["a"], "s", 1, None):
        with pytest.raises(MmdsInvalidData, match="must be a JSON object"):
            store.put(bad)  # type: ignore[arg-type]
        with pytest.raises(MmdsInvalidData, match="must be a JSON object"):
            store.patch(bad)  # type: ignore[arg-type]


def test_nesting_limit() -> None:
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH - 1):
        node["d"] = {}
        node = node["d"]
    store = MmdsStore()
    store.put(deep)  # exactly MAX_DEPTH objects
    node["d"] = {}
    with pytest.raises(MmdsInvalidData, match="nests deeper"):
        store.put(deep)
    very_deep: list = []
    for _ in range(100_000):  # must not hit Python's recursion limit
        very_deep = [very_deep]
    with pytest.raises(MmdsInvalidData, match="nests deeper"):
        store.put({"k": very_deep})


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["\u00e9", 1.5, True, None]}) == '{"a":["é",1.5,true,null],"b":1}'.encode()


def test_json_text_round_trip_and_bad_limits() -> None:
    store = MmdsStore()
    store.put(DATA)
    other = MmdsStore()
    other.load_json(store.to_json())
    assert other.get() == DATA
    for text in ("[1]", "{", '{"a": NaN}', '{"a": 1e999}'):
        with pytest.raises(MmdsInvalidData):
            other.load_json(text)
    assert other.get() == DATA
    for limit in (0, 1, -5, 1.5, "100"):
        with pytest.raises(MmdsConfigError):
            MmdsStore(limit)  # type: ignore[arg-type]
