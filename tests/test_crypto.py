"""snapshot.crypto (the sealing scheme of encrypted snapshots; its wiring into the formats is
tests/test_encryption.py's): round trips, never a repeated (key, nonce), and each failure its own typed error."""
from __future__ import annotations

import os

import pytest

from snapshot.crypto import (
    HEADER_SIZE,
    KEY_SIZE,
    KIND_STATE,
    TAG_SIZE,
    KeyFileError,
    MissingKeyError,
    Sealer,
    TamperedError,
    WrongKeyError,
    is_sealed,
    load_key_file,
)
from snapshot.errors import SnapshotError

KEY = bytes(range(KEY_SIZE))
OTHER = bytes(KEY_SIZE)


def _file(key: bytes, frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    s = Sealer.create(key, "m.mem")
    return s.header, [s.seal(f, i, len(frames)) for i, f in enumerate(frames)]


def test_round_trip_and_layout() -> None:
    frames = [b"a" * 100, b"", os.urandom(5000)]
    header, sealed = _file(KEY, frames)
    assert len(header) == HEADER_SIZE and is_sealed(header) and not is_sealed(b"\x93" + header)
    assert [len(c) for c in sealed] == [len(f) + TAG_SIZE for f in frames]
    s = Sealer.open(KEY, header, "m.mem")
    assert [s.open_item(c, i, 3) for i, c in enumerate(sealed)] == frames
    assert b"a" * 16 not in sealed[0]


def test_state_payload_and_frames_are_told_apart() -> None:
    s = Sealer.create(KEY, "s.snap")
    c = s.seal(b"state", 0, 1, KIND_STATE)
    assert s.open_item(c, 0, 1, KIND_STATE) == b"state"
    with pytest.raises(TamperedError, match="frame 0 of 1"):
        s.open_item(c, 0, 1)


def test_nonces_never_repeat_for_a_key() -> None:
    """Two files sealed with one key get different file keys (random file ids): the same
    plaintext at the same index gives unrelated ciphertexts; within a file each index has its
    own nonce."""
    h1, c1 = _file(KEY, [b"x" * 64] * 3)
    h2, c2 = _file(KEY, [b"x" * 64] * 3)
    assert h1 != h2
    assert len({c[:64] for c in c1 + c2}) == 6
    # identical input, identical file id: identical output (what bit-identical parallel encoding needs)
    fid = os.urandom(16)
    a, b = Sealer.create(KEY, file_id=fid), Sealer.create(KEY, file_id=fid)
    assert a.seal(b"p", 1, 2) == b.seal(b"p", 1, 2) and a.header == b.header


def test_missing_and_wrong_keys_are_named() -> None:
    header, _ = _file(KEY, [b"x"])
    with pytest.raises(MissingKeyError, match="m.mem: the snapshot is encrypted"):
        Sealer.open(None, header, "m.mem")
    with pytest.raises(WrongKeyError, match="m.mem: wrong key"):
        Sealer.open(OTHER, header, "m.mem")
    for cls in (MissingKeyError, WrongKeyError, TamperedError, KeyFileError):
        assert issubclass(cls, SnapshotError)


@pytest.mark.parametrize("attack", ["flip", "swap", "move", "truncate", "other-file", "header-id"])
def test_tampering_is_detected(attack: str) -> None:
    frames = [b"frame-%d" % i * 50 for i in range(4)]
    header, sealed = _file(KEY, frames)
    count = len(frames)
    if attack == "flip":
        sealed[2] = sealed[2][:10] + bytes([sealed[2][10] ^ 1]) + sealed[2][11:]
    elif attack == "swap":
        sealed[1], sealed[2] = sealed[2], sealed[1]
    elif attack == "move":
        sealed[3] = sealed[0]
    elif attack == "truncate":
        count = 3  # a reader told there are 3 frames (the count is in every frame's AAD)
    elif attack == "other-file":
        _, foreign = _file(KEY, frames)
        sealed[1] = foreign[1]
    elif attack == "header-id":
        header = header[:-1] + bytes([header[-1] ^ 1])
    s = Sealer.open(KEY, header, "m.mem")
    with pytest.raises(TamperedError, match=r"m.mem: frame \d of \d fails authentication"):
        for i in range(count):
            s.open_item(sealed[i], i, count)


def test_a_malformed_header_is_tampering() -> None:
    header, _ = _file(KEY, [b"x"])
    with pytest.raises(TamperedError, match="encryption header"):
        Sealer.open(KEY, header[:-1], "m.mem")
    with pytest.raises(TamperedError, match="encryption header"):
        Sealer.open(KEY, b"MVMCRYPX" + header[8:], "m.mem")


def test_key_files(tmp_path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(KEY)
    hexed = tmp_path / "hex.key"
    hexed.write_text(KEY.hex() + "\n")
    assert load_key_file(raw) == load_key_file(hexed) == KEY
    bad = tmp_path / "bad.key"
    for content in (b"short", KEY + b"x", b"zz" * KEY_SIZE, b"ab" * KEY_SIZE * 10):
        bad.write_bytes(content)
        with pytest.raises(KeyFileError, match="expected 32 raw bytes or 64 hex digits"):
            load_key_file(bad)
    with pytest.raises(KeyFileError, match="key file"):
        load_key_file(tmp_path / "absent.key")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(fifo)
    with pytest.raises(KeyFileError, match="32 bytes"):
        Sealer.create(b"k" * 16)


def test_a_frame_style_is_bound_to_the_frame() -> None:
    """A sealed frame opened as another style (a changed clear index entry) fails."""
    from snapshot.crypto import frame_kind

    s = Sealer.create(KEY, "m.mem")
    sealed = s.seal(b"payload", 0, 1, frame_kind(0))
    assert s.open_item(sealed, 0, 1, frame_kind(0)) == b"payload"
    with pytest.raises(TamperedError, match="frame 0 of 1"):
        s.open_item(sealed, 0, 1, frame_kind(1))
