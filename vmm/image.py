"""Loading a guest image into RAM: a Linux arm64 Image, a flat binary or an AArch64 ELF.

A Linux arm64 Image is recognised by its 64-byte header (Documentation/arch/arm64/booting.rst):
it is loaded at RAM_BASE + text_offset and occupies `image_size` bytes (BSS included), which
the initrd and the DTB must stay clear of. `unpack_kernel` turns a gzip or EFI-zboot vmlinuz
into the raw Image, bounded in memory.

An image file is untrusted input: its kind (regular file) and size are checked before a byte
is read, and the ELF work is bounded by the program-header table's size and by RAM (loadable
segments may not overlap, so together they write at most the RAM size).
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from vmm import layout
from vmm.errors import ImageError
from vmm.hostfile import read_bounded
from vmm.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
EM_AARCH64 = 183  # ELF machine number for AArch64 (ELF for the Arm 64-bit Architecture)
PT_LOAD = 1
# Linux's binfmt_elf refuses a program-header table larger than ELF_MIN_ALIGN (one 4 KiB
# page: at most 73 entries of 56 bytes); the same bound here (fs/binfmt_elf.c, load_elf_phdrs).
MAX_PHDR_TABLE_BYTES = 4096


def read_image_file(path: str, *, max_size: int) -> bytes:
    """The bytes of the image file `path`: a non-empty regular file of at most `max_size`
    bytes (vmm.hostfile: checked before reading). ImageError names the file."""
    data = read_bounded(path, max_size=max_size, what="image", why="it must fit in the guest's RAM", error=ImageError)
    if not data:
        raise ImageError(f"image {path} is empty")
    return data

# The arm64 Image header (booting.rst "Call the kernel image"): code0, code1, text_offset,
# image_size, flags, res2, res3, res4, magic "ARM\x64", res5.
ARM64_HEADER = struct.Struct("<IIQQQQQQII")
ARM64_MAGIC = 0x644D5241  # "ARM\x64"
ARM64_FLAG_BE = 1 << 0  # flags bit 0: kernel endianness, 1 = big-endian
GZIP_MAGIC = b"\x1f\x8b"
# EFI zboot (drivers/firmware/efi/libstub/zboot-header.S): "MZ", 2 bytes, "zimg", u32 payload
# offset, u32 payload size, 8 reserved bytes, then the compression type, a NUL-terminated string.
ZBOOT_MAGIC = b"zimg"
ZBOOT_HEADER = struct.Struct("<2s2s4sII8s32s")
MAX_KERNEL_SIZE = 512 * 1024 * 1024  # bytes: the bound on a decompressed Image


@dataclass(frozen=True)
class Arm64Header:
    """The fields of a Linux arm64 Image header the VMM uses."""

    text_offset: int  # bytes from a 2 MiB-aligned base
    image_size: int  # bytes of memory the kernel occupies from its load address (0: unknown)
    flags: int


def parse_arm64_header(data: bytes, *, name: str) -> Arm64Header | None:
    """The Image header of `data`, or None if it is not a Linux arm64 Image."""
    if len(data) < ARM64_HEADER.size:
        return None
    _c0, _c1, text_offset, image_size, flags, _r2, _r3, _r4, magic, _r5 = ARM64_HEADER.unpack_from(data)
    if magic != ARM64_MAGIC:
        return None
    if flags & ARM64_FLAG_BE:
        raise ImageError(f"image {name} is a big-endian arm64 kernel; only little-endian is supported")
    if text_offset % 4096 or text_offset >= layout.IMAGE_ALIGN:
        raise ImageError(f"image {name}: text_offset {text_offset:#x} is not a 4 KiB multiple below 2 MiB")
    if image_size > MAX_KERNEL_SIZE:
        raise ImageError(f"image {name}: image_size {image_size:#x} is over {MAX_KERNEL_SIZE:#x}")
    return Arm64Header(text_offset, image_size, flags)


def _gunzip(data: bytes, name: str) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, MAX_KERNEL_SIZE + 1)
    except zlib.error as e:
        raise ImageError(f"image {name}: bad gzip data: {e}") from None
    if len(out) > MAX_KERNEL_SIZE:
        raise ImageError(f"image {name}: decompresses to over {MAX_KERNEL_SIZE} bytes")
    return out


def unpack_kernel(data: bytes, *, name: str) -> bytes:
    """The raw arm64 Image from a vmlinuz that is a raw Image, gzip, or EFI zboot (gzip
    payload). Anything else, or a result that is not an Image, is an ImageError."""
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, name)
    elif data[4:8] == ZBOOT_MAGIC and len(data) >= ZBOOT_HEADER.size:
        _mz, _r, _magic, offset, size, _r2, comp = ZBOOT_HEADER.unpack_from(data)
        kind = comp.split(b"\0")[0].decode(errors="replace")
        if offset + size > len(data):
            raise ImageError(f"image {name}: EFI zboot payload [{offset:#x}, +{size:#x}) is past the file's end")
        if kind != "gzip":
            raise ImageError(f"image {name}: EFI zboot payload compressed with {kind!r}; only gzip is supported")
        data = _gunzip(data[offset : offset + size], name)
    if parse_arm64_header(data, name=name) is None:
        raise ImageError(f"image {name} is not a Linux arm64 Image (no ARM\\x64 magic at 0x38)")
    return data


@dataclass(frozen=True)
class LoadedImage:
    """Where an image went: its entry point, the end of the memory it claims (for placing the
    initrd), and whether it is a Linux kernel (boot protocol: x1..x3 = 0)."""

    entry: int
    end: int
    linux: bool


def load_kernel(memory: GuestMemory, data: bytes, *, limit: int, name: str) -> LoadedImage:
    """`load_image`, plus what the boot protocol needs to know about the result."""
    header = parse_arm64_header(data, name=name)
    if header is None:
        if data[:4] == ELF_MAGIC:
            entry, end = _load_elf(memory, data, limit=limit, name=name)
        else:
            entry = load_image(memory, data, limit=limit, name=name)
            end = entry + len(data)
        return LoadedImage(entry, end, linux=False)
    start = memory.base + header.text_offset  # RAM_BASE is 2 MiB aligned
    size = max(header.image_size, len(data))  # image_size 0: a kernel older than 3.17
    if start + size > limit:
        raise ImageError(f"image {name} needs {size} bytes of RAM; at most {limit - start} fit below the device tree")
    memory.write(start, data)
    return LoadedImage(start, start + size, linux=True)


def load_image(memory: GuestMemory, data: bytes, *, limit: int, name: str) -> int:
    """Copy `data` into RAM below guest physical `limit`; return the entry point.

    A flat binary goes to RAM_BASE + IMAGE_OFFSET (2 MiB aligned, Linux arm64 boot protocol)
    and is entered at its first byte. An ELF's PT_LOAD segments go to their physical
    addresses, which must lie in RAM below `limit`; the entry is e_entry.
    """
    if data[:4] == ELF_MAGIC:
        return _load_elf(memory, data, limit=limit, name=name)[0]
    start = memory.base + layout.IMAGE_OFFSET
    if not data:
        raise ImageError(f"image {name} is empty")
    if start + len(data) > limit:
        raise ImageError(
            f"image {name} is {len(data)} bytes; at most {limit - start} fit below the device tree"
        )
    memory.write(start, data)
    return start


def _load_elf(memory: GuestMemory, data: bytes, *, limit: int, name: str) -> tuple[int, int]:
    """(entry point, end of the highest segment)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_AARCH64":
            raise ImageError(f"image {name} is not a 64-bit AArch64 ELF ({elf['e_machine']}, ELF{elf.elfclass})")
        table = elf["e_phnum"] * elf["e_phentsize"]
        if table > MAX_PHDR_TABLE_BYTES:
            raise ImageError(f"image {name}: program-header table of {elf['e_phnum']} entries ({table} bytes) is larger than {MAX_PHDR_TABLE_BYTES}")
        segments = sorted(
            ((s["p_paddr"], s["p_filesz"], s["p_memsz"], s) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"] > 0),
            key=lambda t: t[0],
        )
        if not segments:
            raise ImageError(f"image {name} has no loadable segments")
        end = 0
        for pa, filesz, memsz, _ in segments:  # every check before any segment is read
            if filesz > memsz or not memory.contains(pa, memsz) or pa + memsz > limit:
                raise ImageError(
                    f"image {name}: segment at {pa:#x} (+{memsz:#x}) does not fit in RAM "
                    f"[{memory.base:#x}, {limit:#x})"
                )
            if pa < end:
                raise ImageError(f"image {name}: segment at {pa:#x} overlaps the one before it")
            end = pa + memsz
        for pa, filesz, memsz, seg in segments:
            body = seg.data()
            if len(body) != filesz:
                raise ImageError(f"image {name}: segment at {pa:#x} is truncated")
            memory.write(pa, body)
            if memsz > filesz:
                memory.write(pa + filesz, np.zeros(memsz - filesz, dtype=np.uint8))
        entry = elf["e_entry"]
        end = max(pa + memsz for pa, _, memsz, _ in segments)
    except ELFError as e:
        raise ImageError(f"image {name} is not a valid ELF file: {e}") from None
    if not memory.contains(entry, 4):
        raise ImageError(f"image {name}: entry point {entry:#x} is outside RAM")
    return int(entry), int(end)
