"""Fan-out inputs (vmm.experiments.inputs) are untrusted JSON Lines: every field is checked and
bounded before it is decoded, and a bad line is an InputError naming the file and the line."""
from __future__ import annotations

import base64
import json
import os

import pytest

from vmm.experiments.inputs import (
    MAX_LINE_BYTES,
    MAX_WRITE_BYTES,
    MAX_WRITES,
    Input,
    InputError,
    MemoryWrite,
    RegisterValue,
    count_inputs,
    input_to_json,
    parse_line,
    read_inputs,
)


def test_every_field_is_read() -> None:
    line = json.dumps(
        {
            "id": "x",
            "uart": "hi\n",
            "mmds": {"latest": {"a": 1}},
            "writes": [{"gpa": "0x8000_1000", "hex": "00ff"}, {"gpa": 2147487744, "base64": base64.b64encode(b"abc").decode()}, {"gpa": 1, "text": "t"}],
            "registers": {"x0": 5, "pc": "0x80000000", "vcpu2.x30": 1},
            "budget": "1_000",
            "stop_at": {"hex": "4f4b"},
        }
    )
    assert parse_line(line) == Input(
        id="x",
        uart=b"hi\n",
        mmds={"latest": {"a": 1}},
        writes=(MemoryWrite(0x8000_1000, b"\x00\xff"), MemoryWrite(0x8000_1000, b"abc"), MemoryWrite(1, b"t")),
        registers=(RegisterValue(0, "x0", 5), RegisterValue(0, "pc", 0x8000_0000), RegisterValue(2, "x30", 1)),
        budget=1000,
        stop_at=b"OK",
    )


def test_input_to_json_reads_back() -> None:
    inp = Input(id="r", uart=b"\x00\x01", writes=(MemoryWrite(7, b"\xfe"),), registers=(RegisterValue(1, "x3", 9),), budget=5, stop_at=b"$")
    assert parse_line(json.dumps(input_to_json(inp))) == inp
    assert parse_line('{"id": "m"}') == Input(id="m")


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1], "expected a JSON object"),
        ({}, "id: expected a string"),
        ({"id": ""}, "id: expected a string"),
        ({"id": "a" * 129}, "id: expected a string"),
        ({"id": "a", "uart": 5}, "uart: expected a string"),
        ({"id": "a", "uart": {"hex": "zz"}}, "uart: not valid hex"),
        ({"id": "a", "uart": {"base64": "!!"}}, "uart: not valid base64"),
        ({"id": "a", "uart": {"rot13": "x"}}, "uart: expected \"hex\""),
        ({"id": "a", "uart": "\ud800"}, "uart: not valid text"),
        ({"id": "a", "uart": "x" * ((64 << 10) + 1)}, "uart: more than"),
        ({"id": "a", "uart": {"hex": "00" * ((64 << 10) + 1)}}, "uart: more than"),
        ({"id": "a", "writes": {}}, "writes: expected a list"),
        ({"id": "a", "writes": [{"gpa": 1}]}, "writes[0]: expected"),
        ({"id": "a", "writes": [{"gpa": -1, "hex": ""}]}, "writes[0].gpa: -0x1 is out of range"),
        ({"id": "a", "writes": [{"gpa": "0x" + "f" * 50, "hex": ""}]}, "a number of more than"),
        ({"id": "a", "writes": [{"gpa": True, "hex": ""}]}, "expected an integer"),
        ({"id": "a", "writes": [{"gpa": 1, "hex": ""}] * (MAX_WRITES + 1)}, "more than 256"),
        ({"id": "a", "writes": [{"gpa": 1, "hex": "00" * (MAX_WRITE_BYTES // 2)}] * 3}, "writes[2]: more than"),
        ({"id": "a", "registers": {"x31": 1}}, "'x31' is not x0..x30"),
        ({"id": "a", "registers": {"sp": 1}}, "'sp' is not"),
        ({"id": "a", "registers": {"x0": 2**64}}, "registers.x0"),
        ({"id": "a", "mmds": [1]}, "mmds: expected a JSON object"),
        ({"id": "a", "mmds": {"k": "x" * (64 << 10)}}, "mmds: more than"),
        ({"id": "a", "budget": 10**13}, "budget"),
        ({"id": "a", "stop_at": ""}, "stop_at: must not be empty"),
        ({"id": "a", "bogus": 1}, "unknown field 'bogus'"),
    ],
)
def test_a_bad_input_names_its_field(obj, message) -> None:
    with pytest.raises(InputError) as e:
        parse_line(json.dumps(obj), "in.jsonl", 7)
    assert str(e.value).startswith("in.jsonl:7: ") and message in str(e.value)


def test_bad_json_and_deep_nesting_are_input_errors() -> None:
    with pytest.raises(InputError, match="f:2: Expecting"):
        parse_line("{", "f", 2)
    with pytest.raises(InputError, match="nested too deeply"):
        parse_line('{"id": "a", "mmds": {"k": ' + "[" * 100_000 + "]" * 100_000 + "}}", "f", 1)


def test_a_file_is_read_line_by_line_with_line_numbers(tmp_path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"id": "a"}\n\n  \n{"id": "b"}\n{"id": 3}\n')
    stream = read_inputs(p)
    assert [next(stream).id, next(stream).id] == ["a", "b"]
    with pytest.raises(InputError, match=f"{p}:5: id"):
        next(stream)
    with pytest.raises(InputError, match=":5: "):
        count_inputs(p)
    p.write_text('{"id": "a"}\n{"id": "b"}')  # no final newline
    assert count_inputs(p) == 2


def test_an_overlong_line_is_refused_before_it_is_parsed(tmp_path) -> None:
    p = tmp_path / "in.jsonl"
    with open(p, "w") as f:
        f.write('{"id": "a"}\n')
        f.write('{"id": "b", "uart": "' + "x" * MAX_LINE_BYTES + '"}\n')
    with pytest.raises(InputError, match=f"{p}:2: line longer than {MAX_LINE_BYTES} bytes"):
        count_inputs(p)


def test_a_fifo_or_missing_file_is_refused(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that opening it to read does not block
    try:
        with pytest.raises(InputError, match="not a regular file"):
            count_inputs(fifo)
    finally:
        os.close(fd)
    with pytest.raises(InputError, match="cannot read inputs"):
        count_inputs(tmp_path / "absent.jsonl")
