"""snapshot.envelope: the state file, its CRC trailer and the hostile-input checks."""
from __future__ import annotations

import os
import resource
import threading
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot.envelope import (
    CRC_SIZE,
    MAGIC_AARCH64,
    MAX_ARRAY_ITEMS,
    MAX_DECODED_CONTAINERS,
    MAX_MAP_ENTRIES,
    MAX_STATE_FILE_SIZE,
    SNAPSHOT_VERSION,
    Header,
    crc64,
    decode_state,
    encode_state,
    read_state_file,
)
from snapshot import errors
from snapshot.errors import (
    CrcMismatchError,
    EncodingError,
    InvalidPathError,
    MagicMismatchError,
    SizeLimitExceededError,
    SnapshotError,
    TooShortError,
    VersionMismatchError,
)

DATA = {"vcpus": [{"pc": 0x4008_0000, "x": [1, 2, 3]}], "blob": b"\x00\xff", "mmds": None}


def seal(payload: bytes) -> bytes:
    """`payload` with a valid CRC trailer, so decoding gets past the CRC check."""
    return payload + crc64(payload).to_bytes(CRC_SIZE, "little")


def envelope(header: object, data: object = None) -> bytes:
    return seal(msgpack.packb({"header": header, "data": {} if data is None else data}))


def test_crc64_is_jones_redis() -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64(b"") == 0


def test_layout_is_msgpack_then_le_crc() -> None:
    blob = encode_state(DATA)
    payload, trailer = blob[:-8], blob[-8:]
    assert int.from_bytes(trailer, "little") == crc64(payload)
    top = msgpack.unpackb(payload, raw=False)
    assert top == {"header": {"magic": MAGIC_AARCH64, "version": list(SNAPSHOT_VERSION)}, "data": DATA}
    assert decode_state(blob) == (Header(MAGIC_AARCH64, SNAPSHOT_VERSION), DATA)


def test_check_order() -> None:
    # Too large wins over everything, even a file that is all garbage.
    with pytest.raises(SizeLimitExceededError):
        decode_state(b"\x00" * (MAX_STATE_FILE_SIZE + 1))
    with pytest.raises(TooShortError, match=r"^snapshot too short \(7 bytes, need at least 8\)$"):
        decode_state(b"\x00" * 7)
    # CRC before decode: garbage with a wrong trailer is a CRC error, with a right one an
    # encoding error.
    with pytest.raises(CrcMismatchError):
        decode_state(b"\xc1garbage" + b"\x00" * 8)
    with pytest.raises(EncodingError):
        decode_state(seal(b"\xc1garbage"))
    # Header shape before magic, magic before version.
    with pytest.raises(EncodingError, match="header.version"):
        decode_state(envelope({"magic": 1, "version": [1, 0]}))
    with pytest.raises(MagicMismatchError):
        decode_state(envelope({"magic": 1, "version": [9, 0, 0]}))


def test_crc_mismatch_message_and_any_flipped_bit() -> None:
    blob = bytearray(encode_state(DATA))
    for bit in (0, 8 * len(blob) // 2, 8 * len(blob) - 1):
        damaged = bytearray(blob)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CrcMismatchError) as exc:
            decode_state(damaged)
        assert str(exc.value) == "snapshot CRC64 mismatch"


def test_magic_mismatch_message() -> None:
    blob = encode_state(DATA, magic=0x0710_1984_8664_0000)
    with pytest.raises(MagicMismatchError) as exc:
        decode_state(blob)
    assert str(exc.value) == (
        "snapshot magic mismatch (file: 0x0710198486640000, expected: 0x07101984aaaa0000)"
    )


@pytest.mark.parametrize(
    ("file_version", "ok"),
    [((1, 0, 0), True), ((1, 0, 9), True), ((1, 1, 0), True), ((1, 2, 0), True), ((1, 3, 0), False), ((2, 0, 0), False), ((0, 9, 0), False)],
)
def test_version_rules(file_version: tuple[int, int, int], ok: bool) -> None:
    blob = encode_state(DATA, version=file_version)
    if ok:
        assert decode_state(blob)[0].version == file_version
    else:
        with pytest.raises(VersionMismatchError, match=r"^snapshot version mismatch \(file: .*, supported: 1\.2\.0\)$"):
            decode_state(blob)
    # A reader at 1.3 reads older minors of its major.
    assert decode_state(encode_state(DATA, version=(1, 2, 0)), version=(1, 3, 0))[0].version == (1, 2, 0)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (msgpack.packb([1, 2]), "expected a map at the top level, got list"),
        (msgpack.packb({"header": {"magic": MAGIC_AARCH64, "version": [1, 0, 0]}}), "missing field 'data'"),
        (
            msgpack.packb({"header": {"magic": MAGIC_AARCH64, "version": [1, 0, 0]}, "data": {}, "x": 1}),
            "unknown field 'x'",
        ),
        (
            msgpack.packb({"header": {"magic": MAGIC_AARCH64, "version": [1, 0, 0]}, "data": [1]}),
            "data: expected dict, got list",
        ),
        (msgpack.packb({"header": {"magic": -1, "version": [1, 0, 0]}, "data": {}}), "header.magic"),
        (msgpack.packb({"header": {"magic": True, "version": [1, 0, 0]}, "data": {}}), "header.magic: expected int, got bool"),
        (msgpack.packb({1: 2}), "msgpack decode failed"),  # strict_map_key: only str keys
        (msgpack.packb({}) + b"\x00", "trailing bytes"),
        (msgpack.packb(msgpack.ExtType(5, b"abcd")), "msgpack decode failed"),
        (b"\xd6\xff\x00\x00\x00\x00", "msgpack decode failed"),  # timestamp extension
        (b"\xa3\xff\xfe\xfd", "msgpack decode failed"),  # str that is not UTF-8
    ],
)
def test_structurally_invalid_files(payload: bytes, message: str) -> None:
    with pytest.raises(EncodingError, match=message.replace(".", r"\.").replace("(", r"\(")):
        decode_state(seal(payload))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x91" * 100_000 + b"\xc0",  # arrays nested 100k deep
        b"\x81\xa1k" * 100_000 + b"\xc0",  # maps nested 100k deep
        b"\xdd\xff\xff\xff\xff",  # array32 declaring 4G items
        b"\xdf\xff\xff\xff\xff",  # map32 declaring 4G entries
        b"\xc6\xff\xff\xff\xff",  # bin32 declaring 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str32 declaring 4 GiB
        # 900 nested arrays each declaring 1M items, with enough bytes that 1M passes the
        # declared-length cap: must not preallocate 900 x 8 MB.
        (b"\xdd\x00\x10\x00\x00" * 900) + b"\x00" * ((1 << 20) + 10),
    ],
)
def test_msgpack_bombs_fail_fast(payload: bytes) -> None:
    with pytest.raises(EncodingError):
        decode_state(seal(payload))


@pytest.mark.parametrize("declared", [MAX_ARRAY_ITEMS + 1, 1_000_000])
def test_an_array_or_map_longer_than_any_state_has_is_refused_at_its_header(declared: int) -> None:
    """A flat flood (one container declaring ~1M items, 1 MB of input) is refused by the
    unpacker's length limit before one item is decoded, naming the limit."""
    for head, limit in ((b"\xdd", MAX_ARRAY_ITEMS), (b"\xdf", MAX_MAP_ENTRIES)):
        n = max(declared, limit + 1)
        blob = seal(head + n.to_bytes(4, "big") + b"\x90" * n)
        tracemalloc.start()
        try:
            with pytest.raises(EncodingError, match=f"declares {n} items in an? (array|map) \\(limit {limit}\\)"):
                decode_state(blob)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < len(blob) + (1 << 20)  # nothing decoded: no per-item objects


def test_container_flood_is_bounded_in_memory() -> None:
    """~10 MB of empty arrays, packed inside arrays short enough to pass the length limits,
    would decode to ~600 MB of lists; decoding must stop at the container budget and stay
    within 200 MB more address space than the process already has."""
    outer = MAX_ARRAY_ITEMS
    inner = (MAX_STATE_FILE_SIZE - 100) // outer - 3
    assert inner <= MAX_ARRAY_ITEMS and outer * inner > 100 * MAX_DECODED_CONTAINERS
    blob = seal(b"\xdd" + outer.to_bytes(4, "big") + (b"\xdc" + inner.to_bytes(2, "big") + b"\x90" * inner) * outer)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (mapped + (200 << 20), resource.RLIM_INFINITY))
            decode_state(blob)
            os._exit(1)
        except EncodingError as exc:
            os._exit(0 if f"more than {MAX_DECODED_CONTAINERS} maps and arrays" in str(exc) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_encode_refuses_what_could_not_load_back() -> None:
    with pytest.raises(EncodingError, match="not plain msgpack data"):
        encode_state({"x": object()})
    with pytest.raises(EncodingError, match="not plain msgpack data"):
        encode_state({"x": 2**64})
    with pytest.raises(EncodingError, match="expected dict"):
        encode_state([1])  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="version"):
        encode_state({}, version=(1, -1, 0))
    with pytest.raises(SizeLimitExceededError, match=r"limit 10000000 bytes"):
        encode_state({"blob": b"\x00" * MAX_STATE_FILE_SIZE})


def test_read_state_file(tmp_path: Path) -> None:
    path = tmp_path / "vm.snap"
    path.write_bytes(encode_state(DATA))
    assert read_state_file(path)[1] == DATA


def test_read_state_file_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidPathError, match=r"ENOENT"):
        read_state_file(tmp_path / "missing.snap")
    with pytest.raises(InvalidPathError, match="not a regular file"):
        read_state_file(tmp_path)
    fifo = tmp_path / "fifo.snap"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(InvalidPathError, read_state_file, fifo).value))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it before failing, so the test run does not hang
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO blocked")
    assert "not a regular file" in str(result[0])


def test_read_state_file_never_reads_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.snap"
    with open(path, "wb") as f:
        f.truncate(4 * MAX_STATE_FILE_SIZE)  # sparse
    with pytest.raises(SizeLimitExceededError, match=r"more than 10000000 bytes"):
        read_state_file(path)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corruption_is_always_a_typed_error(data: st.DataObject) -> None:
    blob = bytearray(encode_state(DATA))
    offset = data.draw(st.integers(0, len(blob) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[offset]))
    blob[offset] = value
    with pytest.raises(CrcMismatchError):  # CRC-64 catches every single-byte error
        decode_state(blob)
    # Re-sealed corruption gets past the CRC: any outcome but an untyped exception is fine.
    payload = bytes(blob[:-8])
    try:
        decode_state(seal(payload))
    except SnapshotError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=200))
def test_random_payloads_are_typed_errors(payload: bytes) -> None:
    try:
        decode_state(seal(payload))
    except SnapshotError:
        pass


@pytest.mark.parametrize(
    "error",
    [
        errors.QuiesceTimeoutError(100),
        errors.MagicMismatchError(1, MAGIC_AARCH64),
        errors.VersionMismatchError((2, 0, 0), SNAPSHOT_VERSION),
        errors.CrcMismatchError(1, 2),
        errors.TooShortError(3, 8),
        errors.IncompatibleError("a\nb"),
        errors.AtomicCommitFailedError("/x/a\nb.snap", "writing: ENOSPC", committed=True),
        errors.AtomicCommitCrossFsError("/a\n", "/b"),
        errors.InvalidPathError("/a\r\nb", "reason"),
        errors.EncodingError("x\ny" * 1000),
        errors.SizeLimitExceededError(10, 11),
        errors.MemoryIoError("a\nb"),
        errors.SnapshotIoError("a\nb"),
        errors.MemoryFileMismatchError("/m\n", "digest", "a", "b"),
        errors.ParentMismatchError("a" * 32, "b" * 32),
        errors.MissingParentError("a" * 32),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_error_is_one_bounded_line(error: SnapshotError) -> None:
    text = str(error)
    assert isinstance(error, SnapshotError) and type(error).__doc__
    assert "\n" not in text and "\r" not in text and 0 < len(text) <= 1000


def test_os_errors_map_to_typed_errors_naming_the_errno() -> None:
    missing = errors.from_os_error(FileNotFoundError(2, "No such file or directory"), "opening", "/x")
    assert isinstance(missing, InvalidPathError) and missing.errno == 2
    assert str(missing) == "invalid snapshot path '/x': opening: ENOENT (No such file or directory)"
    full = errors.from_os_error(OSError(28, "No space left on device"), "writing", "/x", errors.MemoryIoError)
    assert isinstance(full, errors.MemoryIoError)
    assert str(full) == "snapshot memory file I/O error: writing '/x': ENOSPC (No space left on device)"
    for code, name in ((5, "EIO"), (30, "EROFS"), (13, "EACCES")):
        err = errors.from_os_error(OSError(code, os.strerror(code)), "writing", "/x")
        assert isinstance(err, errors.SnapshotIoError) and f": {name} (" in str(err)
