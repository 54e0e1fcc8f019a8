"""A minimal, independent reader of microvm-harness snapshots, written from
docs/snapshot-format.md alone: it imports nothing from the project, computes CRC-64/Jones with
its own table from the documented parameters and decodes LZ4 blocks itself. It uses msgpack
(state files), xxhash (digests and checksums) and, for encrypted snapshots, AES-256-GCM and
HKDF-SHA256 from `cryptography`, as the document names them.

    snap = read_snapshot("dir/s3.snap")   # follows the chain back to its full snapshot
    snap = read_snapshot("dir/e.snap", key=key)   # an encrypted one (section 8)
    snap.ram, snap.data["vcpus"][0]["pc"], snap.data["scheduler"]["clock"]

Any violation of the document raises FormatError.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import msgpack
import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# --- section 1: the state file -----------------------------------------------------------------
MAX_STATE_BYTES = 10_000_000
MAGIC = 0x0710_1984_AAAA_0000
READER_VERSION = (1, 2)  # the major.minor this reader implements
CRC_POLY = 0xAD93D23594C935A9  # CRC-64/Jones, reflected in and out, init 0, xorout 0
MAX_CHAIN = 64
DIFF_DOMAIN = b"microvm-harness/memfile/diff/v1\x00"


class FormatError(Exception):
    """The files break docs/snapshot-format.md."""


def _reflect64(value: int) -> int:
    return int(f"{value:064b}"[::-1], 2)


def _crc_table() -> list[int]:
    poly = _reflect64(CRC_POLY)  # a reflected CRC shifts right with the reversed polynomial
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc64_jones(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def read_state(path: str | os.PathLike[str]) -> tuple[dict, dict]:
    """(header, data) of a state file, after the document's checks in its order."""
    with open(path, "rb") as f:
        blob = f.read(MAX_STATE_BYTES + 1)
    if len(blob) > MAX_STATE_BYTES:
        raise FormatError("state file over 10,000,000 bytes")
    if len(blob) < 8:
        raise FormatError("state file shorter than its CRC trailer")
    payload, trailer = blob[:-8], blob[-8:]
    if crc64_jones(payload) != int.from_bytes(trailer, "little"):
        raise FormatError("CRC mismatch")
    try:
        top = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, max_ext_len=0,
            max_bin_len=len(payload), max_str_len=len(payload), max_array_len=len(payload), max_map_len=len(payload),
        )
    except Exception as exc:
        raise FormatError(f"msgpack: {exc}") from None
    if not isinstance(top, dict) or set(top) != {"header", "data"} or not isinstance(top["data"], dict):
        raise FormatError("the envelope is not {header, data}")
    header = top["header"]
    if not isinstance(header, dict) or set(header) != {"magic", "version"}:
        raise FormatError("bad header")
    if header["magic"] != MAGIC:
        raise FormatError(f"magic {header['magic']:#x}")
    version = header["version"]
    if not (isinstance(version, list) and len(version) == 3 and all(isinstance(v, int) for v in version)):
        raise FormatError("bad version")
    if version[0] != READER_VERSION[0] or version[1] > READER_VERSION[1]:
        raise FormatError(f"version {version} not readable by a {READER_VERSION} reader")
    return header, top["data"]


# --- section 4: memory identity ----------------------------------------------------------------
@dataclass
class MemInfo:
    kind: str
    length: int
    page_size: int
    digest: str
    pages_written: int
    page_map: bytes
    parent_digest: str | None
    format: str
    frame_size: int
    file_size: int | None
    trailer: bool
    data_runs: bytes
    encryption_id: str

    @property
    def npages(self) -> int:
        return self.length // self.page_size

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of set bits of the page map (LSB first in each byte)."""
        out: list[tuple[int, int]] = []
        start = None
        for i in range(self.npages + 1):
            bit = i < self.npages and (self.page_map[i // 8] >> (i % 8)) & 1
            if bit and start is None:
                start = i
            elif not bit and start is not None:
                out.append((start, i - start))
                start = None
        return out

    def extents(self) -> list[tuple[int, int]]:
        """(offset, size) byte ranges the file records."""
        if self.kind == "full":
            return [(0, self.length)]
        return [(first * self.page_size, count * self.page_size) for first, count in self.runs()]


_MEM_DEFAULTS = {
    "page_map": b"", "parent_digest": None, "format": "raw", "frame_size": 0, "file_size": None, "trailer": False, "data_runs": b"",
    "encryption_id": "",
}
_MEM_FIELDS = ("kind", "length", "page_size", "digest", "pages_written", *_MEM_DEFAULTS)


def mem_info(record: dict) -> MemInfo:
    unknown = set(record) - set(_MEM_FIELDS)
    missing = {f for f in _MEM_FIELDS if f not in record and f not in _MEM_DEFAULTS}
    if unknown or missing:
        raise FormatError(f"memory: unknown {sorted(unknown)}, missing {sorted(missing)}")
    info = MemInfo(**{**_MEM_DEFAULTS, **record})
    if info.kind not in ("full", "diff") or info.format not in ("raw", "lz4", "frames"):
        raise FormatError("memory: bad kind or format")
    if info.encryption_id and info.format == "raw":
        raise FormatError("memory: an encrypted file is a frames container")
    if info.trailer is not False and (info.trailer is not True or info.format != "raw"):
        raise FormatError("memory: trailer is a bool, true only for raw files")
    if info.page_size < 512 or info.page_size & (info.page_size - 1) or info.length <= 0 or info.length % info.page_size:
        raise FormatError("memory: bad geometry")
    if info.kind == "diff":
        if len(info.page_map) != (info.npages + 7) // 8:
            raise FormatError("memory: page map length")
        if sum(bin(b).count("1") for b in info.page_map) != info.pages_written:
            raise FormatError("memory: pages_written is not the page map's bit count")
        if info.npages % 8 and info.page_map[-1] >> (info.npages % 8):
            raise FormatError("memory: page map padding bits set")
    elif info.page_map or info.parent_digest is not None:
        raise FormatError("memory: a full file has no page map or parent")
    return info


def content_digest(ram: bytes | bytearray | memoryview, info: MemInfo) -> str:
    """The document's content digest of `info`'s extents as they stand in `ram`."""
    view = memoryview(ram)
    if info.kind == "full":
        return xxhash.xxh3_128(view[: info.length]).hexdigest()
    assert info.parent_digest is not None
    h = xxhash.xxh3_128(
        DIFF_DOMAIN + struct.pack("<QQ", info.length, info.page_size) + bytes.fromhex(info.parent_digest)
    )
    for first, count in info.runs():
        h.update(struct.pack("<QQ", first, count))
        h.update(view[first * info.page_size : (first + count) * info.page_size])
    return h.hexdigest()


# --- section 5: memory file formats -------------------------------------------------------------
def lz4_block_decompress(src: bytes, size: int) -> bytes:
    """Decode one LZ4 block (lz4_Block_format.md) that must produce exactly `size` bytes."""
    out = bytearray()
    i, n = 0, len(src)
    try:
        while True:
            token = src[i]
            i += 1
            literals = token >> 4
            if literals == 15:
                while True:
                    literals += src[i]
                    i += 1
                    if src[i - 1] != 255:
                        break
            if i + literals > n:
                raise FormatError("LZ4: literals past the end of the block")
            out += src[i : i + literals]
            i += literals
            if i == n:  # the last sequence has literals only
                break
            offset = src[i] | src[i + 1] << 8
            i += 2
            if offset == 0 or offset > len(out):
                raise FormatError("LZ4: bad match offset")
            match = token & 15
            if match == 15:
                while True:
                    match += src[i]
                    i += 1
                    if src[i - 1] != 255:
                        break
            match += 4
            if len(out) + match > size:
                raise FormatError("LZ4: output past the expected size")
            start = len(out) - offset
            if offset >= match:
                out += out[start : start + match]
            else:  # overlapping copy: the last `offset` bytes repeat
                pattern = bytes(out[start:])
                whole, rest = divmod(match, offset)
                out += pattern * whole + pattern[:rest]
    except IndexError:
        raise FormatError("LZ4: block ends inside a sequence") from None
    if len(out) != size:
        raise FormatError(f"LZ4: {len(out)} bytes decoded, expected {size}")
    return bytes(out)


_ENTRY = struct.Struct("<QQIIB7sQ")  # 40 bytes
_FOOTER = struct.Struct("<8sIIQQQQQ16sQ")  # 80 bytes


def _frames(info: MemInfo) -> list[tuple[int, list[tuple[int, int]]]]:
    """(frame number, [(offset, size) of its payload's extents]) of each present frame."""
    frames: dict[int, list[tuple[int, int]]] = {}
    for offset, size in info.extents():
        end = offset + size
        while offset < end:
            number = offset // info.frame_size
            stop = min(end, (number + 1) * info.frame_size)
            frames.setdefault(number, []).append((offset, stop - offset))
            offset = stop
    return sorted(frames.items())


_TRAILER = struct.Struct("<8sIIQ16sQ")  # section 5, raw: the identity trailer


def _read_raw(f, info: MemInfo, ram: bytearray) -> None:
    if os.fstat(f.fileno()).st_size != info.length + (_TRAILER.size if info.trailer else 0):
        raise FormatError("raw memory file size is not the RAM length (plus its trailer)")
    if info.trailer:
        f.seek(info.length)
        raw = f.read(_TRAILER.size)
        magic, version, page_size, length, digest, checksum = _TRAILER.unpack(raw)
        if magic != b"MVMRAWID" or xxhash.xxh3_64_intdigest(raw[:40]) != checksum or version != 1:
            raise FormatError("raw: bad identity trailer")
        if (page_size, length, digest.hex()) != (info.page_size, info.length, info.digest):
            raise FormatError("raw: trailer does not match the state file")
    for offset, size in info.extents():
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise FormatError("raw memory file ended early")
        ram[offset : offset + size] = data


def _read_lz4(f, info: MemInfo, ram: bytearray, key: bytes | None) -> None:
    size = os.fstat(f.fileno()).st_size
    data_start = CRYPT_HEADER.size if info.encryption_id else 0
    if size != info.file_size or size < _FOOTER.size + data_start:
        raise FormatError("lz4 memory file size is not the recorded one")
    file_id, aead = b"", None
    if info.encryption_id:
        if key is None:
            raise FormatError("the memory file is encrypted: a key is needed")
        file_id, aead = open_crypt_header(f.read(CRYPT_HEADER.size), key)
        if file_id.hex() != info.encryption_id:
            raise FormatError("the memory file's file id is not the recorded encryption_id")
    f.seek(size - _FOOTER.size)
    raw_footer = f.read(_FOOTER.size)
    magic, version, codec, length, frame_size, count, index_at, index_sum, digest, footer_sum = _FOOTER.unpack(raw_footer)
    if magic != b"MVMFRAME" or xxhash.xxh3_64_intdigest(raw_footer[:72]) != footer_sum:
        raise FormatError("lz4: bad footer")
    if (version, codec) != (1, 1):
        raise FormatError("lz4: unknown version or codec")
    if (length, frame_size, digest.hex()) != (info.length, info.frame_size, info.digest):
        raise FormatError("lz4: footer does not match the state file")
    frames = _frames(info)
    if count != len(frames) or index_at + count * _ENTRY.size + _FOOTER.size != size:
        raise FormatError("lz4: index size")
    f.seek(index_at)
    index = f.read(count * _ENTRY.size)
    if xxhash.xxh3_64_intdigest(index) != index_sum:
        raise FormatError("lz4: index checksum")
    expected_offset = data_start
    tag = 16 if aead is not None else 0
    for k, (number, extents) in enumerate(frames):
        frame, offset, stored, payload_size, style, pad, checksum = _ENTRY.unpack_from(index, k * _ENTRY.size)
        if frame != number or payload_size != sum(n for _, n in extents) or offset != expected_offset or any(pad):
            raise FormatError(f"lz4: index entry {k}")
        expected_offset += stored
        f.seek(offset)
        data = f.read(stored)
        if aead is not None:  # section 8: item k of count, its style in the kind
            if checksum:
                raise FormatError(f"frames: encrypted frame {number} has a checksum")
            data = open_item(aead, file_id, b"F" + bytes([style]), k, count, data)
            stored -= tag
        if style == 2:  # ZERO
            if stored or checksum:
                raise FormatError(f"lz4: ZERO frame {number} stores bytes")
            payload = bytes(payload_size)
        else:
            if style == 0 and stored == payload_size:
                payload = data
            elif style == 1 and 0 < stored < payload_size and info.format == "lz4":
                payload = lz4_block_decompress(data, payload_size)
            else:
                raise FormatError(f"lz4: frame {number} style {style} with {stored} stored bytes")
            if aead is None and xxhash.xxh3_64_intdigest(payload) != checksum:
                raise FormatError(f"lz4: frame {number} checksum")
        pos = 0
        for at, n in extents:
            ram[at : at + n] = payload[pos : pos + n]
            pos += n
    if expected_offset != index_at:
        raise FormatError("lz4: frames do not end at the index")


# --- section 6: pairs and chains ----------------------------------------------------------------
def memory_path(state_path: Path, memory_file: str | None, info: MemInfo) -> Path:
    """The memory file a state file records (`data.memory_file`, 1.1), or its staged name."""
    if memory_file is None:
        memory_file = state_path.name[: -len(".snap")] + ".mem"
    elif not isinstance(memory_file, str) or not (os.path.isabs(memory_file) or "/" not in memory_file):
        raise FormatError("memory_file: not a bare name or an absolute path")
    final = state_path.parent / memory_file  # an absolute memory_file replaces the directory
    staged = final.with_name(f".{final.name}.staged-{info.digest}")
    return staged if staged.exists() else final


def lay_memory(state_path: Path, memory_file: str | None, info: MemInfo, ram: bytearray, key: bytes | None = None) -> None:
    """Read the memory file of `state_path` into `ram` at its extents and check its digest."""
    with open(memory_path(state_path, memory_file, info), "rb") as f:
        if info.format == "raw":
            _read_raw(f, info, ram)
        else:
            _read_lz4(f, info, ram, key)
    if content_digest(ram, info) != info.digest:
        raise FormatError(f"{state_path}: memory file digest mismatch")


@dataclass
class Snapshot:
    header: dict
    data: dict  # the last snapshot's state tree
    memory: MemInfo
    chain: list[Path]  # state files, full first
    ram: bytearray


def read_snapshot(path: str | os.PathLike[str], key: bytes | None = None) -> Snapshot:
    """The snapshot at `path` (a .snap file) with its RAM rebuilt from its chain; `key` opens
    encrypted links (section 8)."""
    links: list[tuple[Path, str | None, MemInfo]] = []
    current = Path(path)
    seen: set[Path] = set()
    while True:
        if current.resolve() in seen:
            raise FormatError("the chain loops")
        seen.add(current.resolve())
        if len(links) >= MAX_CHAIN:
            raise FormatError("chain longer than 64 snapshots")
        header, data = read_state(current)
        if "sealed" in data:
            data = open_sealed_state(data, key)
        info = mem_info(data["memory"])
        if info.length != data["vm"]["ram_size"]:
            raise FormatError("memory length is not the RAM size")
        links.append((current, data.get("memory_file"), info))
        if len(links) == 1:
            top_header, top_data = header, data
        parent = data.get("parent")
        if (parent is None) != (info.kind == "full"):
            raise FormatError("parent present exactly for a diff")
        if parent is None:
            break
        if parent["memory_digest"] != info.parent_digest:
            raise FormatError("parent link and parent_digest disagree")
        if not parent["state_name"] or "\0" in parent["state_name"]:
            raise FormatError("parent state_name is empty or holds a NUL byte")
        current = (current.parent / parent["state_name"]).resolve()
    links.reverse()
    for (_, _, older), (_, _, newer) in zip(links, links[1:]):
        if newer.parent_digest != older.digest or newer.length != older.length:
            raise FormatError("chain link does not match its parent")
    ram = bytearray(links[0][2].length)
    for state_path, memory_file, info in links:
        lay_memory(state_path, memory_file, info, ram, key)
    return Snapshot(top_header, top_data, links[-1][2], [p for p, _, _ in links], ram)


# --- section 8: encryption at rest --------------------------------------------------------------
CRYPT_HEADER = struct.Struct("<8sH16s16s")  # magic, version, key check, file id: 42 bytes
AAD_DOMAIN = b"microvm-harness/sealed/v1\x00"


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32 if salt else 16, salt=salt, info=info).derive(key)


def open_crypt_header(raw: bytes, key: bytes) -> tuple[bytes, AESGCM]:
    """(file id, the file key's AES-GCM) of a sealed file's clear header, checked against `key`."""
    if len(raw) != CRYPT_HEADER.size:
        raise FormatError("encryption header: short")
    magic, version, check, file_id = CRYPT_HEADER.unpack(raw)
    if magic != b"MVMCRYPT" or version != 1:
        raise FormatError("encryption header: bad magic or version")
    if check != _hkdf(key, None, b"microvm-harness/key-check/v1"):
        raise FormatError("encryption header: wrong key")
    return file_id, AESGCM(_hkdf(key, file_id, b"microvm-harness/snapshot-file-key/v1"))


def open_item(aead: AESGCM, file_id: bytes, kind: bytes, index: int, count: int, sealed: bytes) -> bytes:
    nonce = bytes(4) + struct.pack("<Q", index)
    aad = AAD_DOMAIN + file_id + kind + struct.pack("<QQ", index, count)
    try:
        return aead.decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise FormatError(f"sealed item {index} of {count} fails authentication") from None


def open_sealed_state(data: dict, key: bytes | None) -> dict:
    """The whole state tree of an encrypted state's data map, its clear fields checked."""
    if key is None:
        raise FormatError("the state file is encrypted: a key is needed")
    sealed = data["sealed"]
    if not isinstance(sealed, dict) or set(sealed) != {"header", "payload"}:
        raise FormatError("sealed: not {header, payload}")
    file_id, aead = open_crypt_header(sealed["header"], key)
    tree = msgpack.unpackb(open_item(aead, file_id, b"S", 0, 1, sealed["payload"]), raw=False, strict_map_key=True, max_ext_len=0)
    clear = {k: tree[k] for k in ("memory", "memory_file", "parent") if k in tree}
    clear["vm"] = {k: tree["vm"][k] for k in ("ram_base", "ram_size", "page_size")}
    if clear != {k: v for k, v in data.items() if k != "sealed"}:
        raise FormatError("sealed: the clear fields are not the sealed tree's")
    return tree
