"""AES-256-GCM sealing of snapshot files: encryption at rest (`key=` on save and load,
`--encrypt-key-file` on the CLI).

Wired into the formats by snapshot.sealedstate (the state file's machine state, sealed as item 0
of 1) and snapshot.frames (an encrypted memory file is always a frames container whose every
frame is sealed); docs/snapshot-format.md gives the byte layout.

Scheme (AES-256-GCM from `cryptography`, NIST SP 800-38D):
- The user's key is 32 bytes (`load_key_file`: a file of 32 raw bytes or 64 hex digits).
- Each sealed file has a random 16-byte `file_id`. Its file key is
  HKDF-SHA256(key, salt=file_id, info=FILE_KEY_INFO) (RFC 5869), so no two files share a GCM
  key, whatever they hold.
- Item `index` of a file (the state payload is item 0 of its file; memory frame i is item i
  of its file) is sealed with nonce = 4 zero bytes || le64(index): unique within the file key,
  as each index is sealed once per file. Nonces therefore never repeat for a key.
- The associated data binds an item to its file, kind, place and count:
  AAD_DOMAIN || file_id || kind || le64(index) || le64(count), where kind is KIND_STATE (b"S")
  for a state payload and KIND_FRAME + the frame's style byte (b"F" + u8) for a memory frame. A frame moved to another index,
  swapped with another, taken from another file, or a file cut short fails its tag.
- The header (HEADER_MAGIC, version, a key check, file_id) goes in clear before the items.
  The key check is HKDF-SHA256(key, info=KEY_CHECK_INFO), 16 bytes: it tells a wrong key
  (WrongKeyError) from tampering (TamperedError) without revealing the key.

Errors are SnapshotError subclasses naming which failure: MissingKeyError, WrongKeyError,
TamperedError, KeyFileError.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from snapshot.errors import InvalidPathError, SnapshotError, SnapshotIoError, from_os_error, open_regular_readonly, show_path

KEY_SIZE = 32  # AES-256
FILE_ID_SIZE = 16
KEY_CHECK_SIZE = 16
NONCE_SIZE = 12  # GCM's 96-bit IV (SP 800-38D 8.2.1, deterministic construction)
TAG_SIZE = 16  # GCM tag appended to each sealed item
HEADER_MAGIC = b"MVMCRYPT"
CRYPTO_VERSION = 1
FILE_KEY_INFO = b"microvm-harness/snapshot-file-key/v1"
KEY_CHECK_INFO = b"microvm-harness/key-check/v1"
AAD_DOMAIN = b"microvm-harness/sealed/v1\x00"
KIND_STATE = b"S"
KIND_FRAME = b"F"  # followed by the frame's style byte (frame_kind)
MAX_KEY_FILE_BYTES = 2 * KEY_SIZE + 2  # 64 hex digits and a line break
_HEADER = struct.Struct(f"<8sH{KEY_CHECK_SIZE}s{FILE_ID_SIZE}s")
HEADER_SIZE = _HEADER.size
_U64 = struct.Struct("<Q")


class MissingKeyError(SnapshotError):
    """The file is encrypted and no key was given."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where}: the snapshot is encrypted; give its key (--encrypt-key-file, key=)")


class WrongKeyError(SnapshotError):
    """The key given is not the key the file was encrypted with."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where}: wrong key: the snapshot was encrypted with another key")


class TamperedError(SnapshotError):
    """An encrypted item fails its authentication: changed, moved, swapped or cut short."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what} fails authentication (changed, moved, swapped or truncated)")


class KeyFileError(SnapshotError):
    """The key file cannot be read or does not hold a 32-byte key."""


def _hkdf(key: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def key_check(key: bytes) -> bytes:
    """The key's public check value (HEADER's), from which the key cannot be recovered."""
    return _hkdf(key, None, KEY_CHECK_INFO, KEY_CHECK_SIZE)


def check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise KeyFileError(f"an encryption key is {KEY_SIZE} bytes, got {len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")
    return bytes(key)


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key in the file at `path`: 32 raw bytes, or 64 hex digits (optionally followed by a
    line break). Refuses a non-regular file and reads at most MAX_KEY_FILE_BYTES + 1 bytes."""
    try:
        fd = open_regular_readonly(path)
    except InvalidPathError as e:
        raise KeyFileError(f"key file {show_path(path)}: {e.reason}") from None
    except SnapshotIoError as e:
        raise KeyFileError(f"key file: {e}") from None
    try:
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"key file: {from_os_error(exc, 'reading', path)}") from None
    finally:
        os.close(fd)
    if len(data) == KEY_SIZE:
        return data
    text = data.rstrip(b"\r\n")
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyFileError(f"key file {os.fsdecode(path)!r}: expected {KEY_SIZE} raw bytes or {2 * KEY_SIZE} hex digits")


def frame_kind(style: int) -> bytes:
    """The AAD kind of a memory frame stored in `style` (snapshot.framelayout's STYLE_*): the style
    is bound to the frame, so a reader told another style (a changed clear index) fails."""
    return KIND_FRAME + bytes([style])


def is_sealed(prefix: bytes | memoryview) -> bool:
    """Whether bytes starting a file are a sealed file's header."""
    return bytes(prefix[: len(HEADER_MAGIC)]) == HEADER_MAGIC


@dataclass(frozen=True)
class Sealer:
    """Seals and opens the items of one file. Thread-safe (each call is independent), so
    frames can be sealed on the compression workers."""

    file_id: bytes
    _aead: AESGCM
    header: bytes
    where: str

    @classmethod
    def create(cls, key: bytes, where: str = "snapshot", *, file_id: bytes | None = None) -> Sealer:
        """A sealer for a new file, with a random file id (`file_id` only for tests that need
        identical output twice)."""
        key = check_key(key)
        fid = os.urandom(FILE_ID_SIZE) if file_id is None else file_id
        if len(fid) != FILE_ID_SIZE:
            raise ValueError(f"file_id must be {FILE_ID_SIZE} bytes")
        header = _HEADER.pack(HEADER_MAGIC, CRYPTO_VERSION, key_check(key), fid)
        return cls(fid, AESGCM(_hkdf(key, fid, FILE_KEY_INFO, KEY_SIZE)), header, where)

    @classmethod
    def open(cls, key: bytes | None, header: bytes | memoryview, where: str) -> Sealer:
        """The sealer of the file whose first HEADER_SIZE bytes are `header`: MissingKeyError
        without a key, WrongKeyError for another key, TamperedError for a malformed header."""
        if key is None:
            raise MissingKeyError(where)
        key = check_key(key)
        if len(header) < HEADER_SIZE:
            raise TamperedError(where, "the encryption header")
        magic, version, check, fid = _HEADER.unpack(bytes(header[:HEADER_SIZE]))
        if magic != HEADER_MAGIC or version != CRYPTO_VERSION:
            raise TamperedError(where, "the encryption header")
        if check != key_check(key):
            raise WrongKeyError(where)
        return cls(fid, AESGCM(_hkdf(key, fid, FILE_KEY_INFO, KEY_SIZE)), bytes(header[:HEADER_SIZE]), where)

    def _aad(self, kind: bytes, index: int, count: int) -> bytes:
        return AAD_DOMAIN + self.file_id + kind + _U64.pack(index) + _U64.pack(count)

    @staticmethod
    def _nonce(index: int) -> bytes:
        return bytes(4) + _U64.pack(index)

    def seal(self, plaintext: bytes | bytearray | memoryview, index: int, count: int, kind: bytes = KIND_FRAME) -> bytes:
        """Item `index` of `count` in this file, encrypted, with its tag (len + TAG_SIZE bytes).
        Each index must be sealed once per file (the nonce is the index)."""
        if not 0 <= index < count:
            raise ValueError(f"item {index} of {count}")
        return self._aead.encrypt(self._nonce(index), plaintext, self._aad(kind, index, count))

    def seal_into(
        self, plaintext: bytes | bytearray | memoryview, index: int, count: int, kind: bytes, out: memoryview
    ) -> None:
        """`seal`, written into `out` (exactly len(plaintext) + TAG_SIZE writable bytes)."""
        if not 0 <= index < count:
            raise ValueError(f"item {index} of {count}")
        if not hasattr(self._aead, "encrypt_into"):  # a cryptography release without encrypt_into
            out[:] = self.seal(plaintext, index, count, kind)
            return
        self._aead.encrypt_into(self._nonce(index), plaintext, self._aad(kind, index, count), out)

    def open_item(
        self, sealed: bytes | bytearray | memoryview, index: int, count: int, kind: bytes = KIND_FRAME
    ) -> bytes:
        """The plaintext of item `index` of `count`; TamperedError naming it if it fails."""
        try:
            return self._aead.decrypt(self._nonce(index), sealed, self._aad(kind, index, count))
        except InvalidTag:
            what = "the state payload" if kind == KIND_STATE else f"frame {index} of {count}"
            raise TamperedError(self.where, what) from None
