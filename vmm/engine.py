"""Creating a Unicorn AArch64 engine with a deliberate host-memory footprint.

Unicorn reserves its translation buffer (TCG code cache) when an instance is first used: 1 GiB
of address space by default, and if the reservation fails it calls exit(1) from C ("Could not
allocate dynamic translator buffer"), ending the whole process. Here the buffer is sized
(UC_CTL_TCG_BUFFER_SIZE, before first use) and the address space is reserved and released
first, so that a host limit (ulimit -v) is a HostResourceError instead. docs/machine.md,
"Host memory per vCPU".
"""
from __future__ import annotations

import mmap

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn import arm64_const as a64

from vmm.errors import HostResourceError

# Translated-code buffer per engine. The built-in guests translate well under 1 MiB; a full
# buffer only makes QEMU flush all translations (tb_flush) and go on, so 32 MiB per vCPU keeps
# a 32-vCPU VM at 1 GiB of reservations instead of 32 GiB.
TB_BUFFER_SIZE = 32 << 20
# Address space an engine needs besides that buffer (CPU state, softmmu TLBs, TCG context):
# the probe reserves this margin too (a whole vCPU measured ~25 MiB of VSZ on unicorn 2.1.4).
ENGINE_OVERHEAD = 16 << 20

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux values (sys/mman.h); Python 3.11 lacks both
PROT_NONE = 0


def reserve_check(size: int = TB_BUFFER_SIZE + ENGINE_OVERHEAD) -> None:
    """Reserve `size` bytes of address space and release them; HostResourceError if the host
    refuses (an address-space limit): what Unicorn would otherwise die of."""
    try:
        probe = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, prot=PROT_NONE)
    except OSError as e:
        raise HostResourceError(
            f"cannot reserve {size >> 20} MiB of address space for a vCPU's emulator ({e.strerror}); "
            "raise the limit (ulimit -v) or use fewer vCPUs"
        ) from None
    probe.close()


def new_engine() -> Uc:
    """A Unicorn AArch64 engine (the `max` CPU: LSE atomics and v8.x features) with a
    TB_BUFFER_SIZE translation buffer. Raises HostResourceError if the host cannot give it
    the address space it needs."""
    reserve_check()
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_tcg_buffer_size(TB_BUFFER_SIZE)  # before the first use, which allocates it
    uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_MAX)
    return uc
