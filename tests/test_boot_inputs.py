"""Boot inputs for a Linux image: the Image header, initrd placement, /chosen, x0..x3, and
unpacking gzip / EFI-zboot kernels. A synthetic Image (a header and a loop) is enough."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import fdt
import pytest

from vmm import MicroVM, VmConfig
from vmm.errors import ImageError
from vmm.image import ARM64_HEADER, ARM64_MAGIC, ZBOOT_HEADER, parse_arm64_header, unpack_kernel
from vmm.layout import MIB, RAM_BASE

B_SELF = 0x1400_0000  # b .
IMAGE_SIZE = 3 * MIB  # the Image claims more memory than the file holds (BSS)


def synthetic_image(image_size: int = IMAGE_SIZE) -> bytes:
    header = ARM64_HEADER.pack(B_SELF, 0, 0, image_size, 0b1010, 0, 0, 0, ARM64_MAGIC, 0)
    return header + bytes(4096 - len(header))


def boot(tmp_path: Path, image: bytes, initrd: bytes | None, cmdline: str = "console=ttyAMA0 quiet") -> MicroVM:
    (tmp_path / "Image").write_bytes(image)
    initrd_path = None
    if initrd is not None:
        initrd_path = tmp_path / "initrd"
        initrd_path.write_bytes(initrd)
    return MicroVM(VmConfig(image=str(tmp_path / "Image"), initrd=str(initrd_path) if initrd_path else None, cmdline=cmdline, mem_size=64 * MIB))


def chosen(vm: MicroVM) -> dict[str, object]:
    dtb_addr = vm.vcpus[0].reg(0)
    tree = fdt.parse_dtb(bytes(vm.memory.view(dtb_addr, 64 * 1024)))
    node = tree.get_node("/chosen")
    return {p.name: p for p in node.props}


def test_linux_boot_protocol_registers_and_chosen(tmp_path) -> None:
    initrd = bytes(range(256)) * 40
    vm = boot(tmp_path, synthetic_image(), initrd)
    v = vm.vcpus[0]
    assert v.pc == RAM_BASE  # text_offset 0 from a 2 MiB-aligned base
    assert [v.reg(i) for i in (1, 2, 3)] == [0, 0, 0]  # booting.rst: reserved, zero
    props = chosen(vm)
    assert props["bootargs"].value == "console=ttyAMA0 quiet"
    start = (props["linux,initrd-start"].data[0] << 32) | props["linux,initrd-start"].data[1]
    end = (props["linux,initrd-end"].data[0] << 32) | props["linux,initrd-end"].data[1]
    assert end - start == len(initrd) and start % 4096 == 0
    assert start >= RAM_BASE + IMAGE_SIZE  # clear of the memory the Image claims
    assert end <= v.reg(0)  # and of the DTB
    assert bytes(vm.memory.view(start, len(initrd))) == initrd
    assert len(props["rng-seed"].data) == 16  # 64 bytes (read back as 32-bit cells)


def test_built_in_guests_still_get_the_parameter_block(tmp_path) -> None:
    vm = MicroVM(VmConfig(guest="hello"))
    assert vm.vcpus[0].reg(1) != 0


def test_initrd_that_does_not_fit_is_refused(tmp_path) -> None:
    with pytest.raises(ImageError, match=r"initrd .* 2,097,153 bytes; at most 2,097,152 are accepted"):
        boot(tmp_path, synthetic_image(image_size=60 * MIB), bytes(2 * MIB + 1))


def test_unpack_kernel_gzip_and_zboot() -> None:
    image = synthetic_image()
    assert unpack_kernel(image, name="raw") == image
    assert unpack_kernel(gzip.compress(image), name="gz") == image
    payload = gzip.compress(image)
    offset = 0x100
    head = ZBOOT_HEADER.pack(b"MZ", b"\0\0", b"zimg", offset, len(payload), bytes(8), b"gzip")
    zboot = head + bytes(offset - len(head)) + payload
    assert unpack_kernel(zboot, name="zboot") == image
    zstd = ZBOOT_HEADER.pack(b"MZ", b"\0\0", b"zimg", offset, len(payload), bytes(8), b"zstd") + bytes(offset) + payload
    with pytest.raises(ImageError, match="compressed with 'zstd'"):
        unpack_kernel(zstd, name="z")
    with pytest.raises(ImageError, match="not a Linux arm64 Image"):
        unpack_kernel(b"\0" * 4096, name="junk")
    big_endian = struct.pack("<IIQQQ", B_SELF, 0, 0, 0, 1) + bytes(24) + struct.pack("<II", ARM64_MAGIC, 0)
    with pytest.raises(ImageError, match="big-endian"):
        parse_arm64_header(big_endian, name="be")
