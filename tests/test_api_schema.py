"""The API speaks Firecracker's definition (#18): every supported endpoint's path, method, body
fields, JSON types, enums and required fields equal those in vmm/api/firecracker-api.json, the
part of Firecracker's published swagger definition this harness serves. Unknown fields, missing
required fields and wrong types are 400s, as in Firecracker."""
from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from vmm.api import config as bodies
from vmm.api.config import BodyError, field_types, parse_body, required_fields
from vmm.api.controller import ApiController
from vmm.api.resources import ApiError
from vmm.api.server import _EMPTY, FIRECRACKER_API_VERSION, ROUTES, route

SCHEMA = json.loads((Path(__file__).parent.parent / "vmm" / "api" / "firecracker-api.json").read_text())
DEFS = SCHEMA["definitions"]
JSON_TYPE = {str: "string", int: "integer", bool: "boolean", dict: "object", list: "array"}
# Body definitions served by a class of another name.
CLASS_OF = {("/machine-config", "patch"): bodies.MachineConfigurationPatch}


def _endpoints() -> list[tuple[str, str, str]]:
    return [(p, m, e["body"]) for p, ms in SCHEMA["paths"].items() for m, e in ms.items() if isinstance(e.get("body"), str)]


def _body_class(path: str, method: str, name: str) -> type:
    return CLASS_OF.get((path, method)) or getattr(bodies, name)


def _schema_of(tp: typing.Any) -> dict[str, typing.Any]:
    """The schema property a config.py field type stands for."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return {"type": "string", "enum": list(typing.get_args(tp))}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return {"$ref": tp.__name__}
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(tp)[1])}
    return {"type": JSON_TYPE[tp]}


def _resolve(prop: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """A schema property with a $ref to a plain type (CpuTemplate: a string enum) inlined."""
    if "$ref" in prop and DEFS[prop["$ref"]].get("type") != "object":
        ref = DEFS[prop["$ref"]]
        return {k: ref[k] for k in ("type", "enum") if k in ref}
    return {k: v for k, v in prop.items() if k not in ("minimum", "maximum")}


def test_routes_are_the_schema_paths_and_methods() -> None:
    served = {(p, m) for m, p in ROUTES}
    published = {(p, m.upper()) for p, ms in SCHEMA["paths"].items() for m in ms}
    assert served == published
    assert FIRECRACKER_API_VERSION == SCHEMA["firecracker_version"]


@pytest.mark.parametrize(("path", "method", "name"), _endpoints())
def test_body_fields_types_and_required_match_the_schema(path: str, method: str, name: str) -> None:
    definition = DEFS[name]
    if name == "MmdsContentsObject":  # any JSON object: passed to the MMDS store as is
        assert definition["type"] == "object" and "properties" not in definition
        return
    cls = _body_class(path, method, name)
    types = field_types(cls)
    assert set(types) == set(definition["properties"])
    for field, tp in types.items():
        assert _schema_of(tp) == _resolve(definition["properties"][field]), field
    required = [] if cls is bodies.MachineConfigurationPatch else definition.get("required", [])
    assert sorted(required_fields(cls)) == sorted(required)
    # Nested bodies match their own definitions too.
    for field, tp in types.items():
        ref = definition["properties"][field].get("$ref") or definition["properties"][field].get("items", {}).get("$ref")
        if ref and DEFS[ref].get("type") == "object":
            nested = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            assert set(field_types(nested)) == set(DEFS[ref]["properties"])
            assert sorted(required_fields(nested)) == sorted(DEFS[ref].get("required", []))


def _minimal(cls: type) -> dict[str, typing.Any]:
    """A body with only `cls`'s required fields, each a valid value of its type."""
    sample = {str: "x", int: 1, bool: False}
    out: dict[str, typing.Any] = {}
    for field in required_fields(cls):
        tp = field_types(cls)[field]
        if typing.get_origin(tp) is typing.Literal:
            out[field] = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is list:
            out[field] = []
        elif hasattr(tp, "__dataclass_fields__"):
            out[field] = _minimal(tp)
        else:
            out[field] = sample[tp]
    return out


@pytest.mark.parametrize(("path", "method", "name"), [e for e in _endpoints() if e[2] != "MmdsContentsObject"])
def test_unknown_missing_and_mistyped_fields_are_400(path: str, method: str, name: str) -> None:
    cls = _body_class(path, method, name)
    handler = route(method.upper(), path)
    controller = ApiController()
    minimal = _minimal(cls)
    parse_body(cls, minimal)  # the sample itself is well formed
    with pytest.raises(BodyError, match="unknown field `bogus`"):
        handler(controller, {**minimal, "bogus": 1})
    for field in required_fields(cls):
        with pytest.raises(BodyError, match=f"missing field `{field}`"):
            handler(controller, {k: v for k, v in minimal.items() if k != field})
    for field, tp in field_types(cls).items():
        wrong = 1.5 if tp is not int else "1"
        with pytest.raises(BodyError, match=f"`{field}`"):
            handler(controller, {**minimal, field: wrong})
    with pytest.raises(BodyError, match="empty"):
        handler(controller, _EMPTY)
    with pytest.raises(BodyError, match="JSON object"):
        handler(controller, [minimal])


def test_a_bool_is_not_an_integer_and_enums_are_checked() -> None:
    with pytest.raises(BodyError, match="`vcpu_count` must be an integer, got a boolean"):
        parse_body(bodies.MachineConfiguration, {"vcpu_count": True, "mem_size_mib": 128})
    with pytest.raises(BodyError, match="`state` must be one of 'Paused', 'Resumed'"):
        parse_body(bodies.Vm, {"state": "paused"})
    with pytest.raises(BodyError, match=r"`mem_backend`.`backend_type` must be one of"):
        parse_body(bodies.SnapshotLoadParams, {"snapshot_path": "s", "mem_backend": {"backend_type": "Disk", "backend_path": "m"}})


def test_vcpu_count_range_is_the_schemas() -> None:
    prop = DEFS["MachineConfiguration"]["properties"]["vcpu_count"]
    controller = ApiController()
    for count, ok in ((prop["minimum"] - 1, False), (prop["minimum"], True), (prop["maximum"], True), (prop["maximum"] + 1, False)):
        body = bodies.MachineConfiguration(vcpu_count=count, mem_size_mib=128)
        if ok:
            controller.put_machine_config(body)
        else:
            with pytest.raises(ApiError, match="vcpus"):
                controller.put_machine_config(body)
