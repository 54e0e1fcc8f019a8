"""Loading a guest image into RAM: a flat binary or an AArch64 ELF executable.

An image file is untrusted input: its kind (regular file) and size are checked before a byte
is read, and the ELF work is bounded by the program-header table's size and by RAM (loadable
segments may not overlap, so together they write at most the RAM size).
"""
from __future__ import annotations

import io

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


def load_image(memory: GuestMemory, data: bytes, *, limit: int, name: str) -> int:
    """Copy `data` into RAM below guest physical `limit`; return the entry point.

    A flat binary goes to RAM_BASE + IMAGE_OFFSET (2 MiB aligned, Linux arm64 boot protocol)
    and is entered at its first byte. An ELF's PT_LOAD segments go to their physical
    addresses, which must lie in RAM below `limit`; the entry is e_entry.
    """
    if data[:4] == ELF_MAGIC:
        return _load_elf(memory, data, limit=limit, name=name)
    start = memory.base + layout.IMAGE_OFFSET
    if not data:
        raise ImageError(f"image {name} is empty")
    if start + len(data) > limit:
        raise ImageError(
            f"image {name} is {len(data)} bytes; at most {limit - start} fit below the device tree"
        )
    memory.write(start, data)
    return start


def _load_elf(memory: GuestMemory, data: bytes, *, limit: int, name: str) -> int:
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
    except ELFError as e:
        raise ImageError(f"image {name} is not a valid ELF file: {e}") from None
    if not memory.contains(entry, 4):
        raise ImageError(f"image {name}: entry point {entry:#x} is outside RAM")
    return int(entry)
