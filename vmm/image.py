"""Loading a guest image into RAM: a flat binary or an AArch64 ELF executable."""
from __future__ import annotations

import io

from vmm import layout
from vmm.errors import ImageError
from vmm.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
EM_AARCH64 = 183  # ELF machine number for AArch64 (ELF for the Arm 64-bit Architecture)
PT_LOAD = 1


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
        segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"] > 0]
        if not segments:
            raise ImageError(f"image {name} has no loadable segments")
        for seg in segments:
            pa, filesz, memsz = seg["p_paddr"], seg["p_filesz"], seg["p_memsz"]
            if filesz > memsz or not memory.contains(pa, memsz) or pa + memsz > limit:
                raise ImageError(
                    f"image {name}: segment at {pa:#x} (+{memsz:#x}) does not fit in RAM "
                    f"[{memory.base:#x}, {limit:#x})"
                )
            body = seg.data()
            if len(body) != filesz:
                raise ImageError(f"image {name}: segment at {pa:#x} is truncated")
            memory.write(pa, body + bytes(memsz - filesz))
        entry = elf["e_entry"]
    except ELFError as e:
        raise ImageError(f"image {name} is not a valid ELF file: {e}") from None
    if not memory.contains(entry, 4):
        raise ImageError(f"image {name}: entry point {entry:#x} is outside RAM")
    return int(entry)
