"""The guest-facing constants of the microVM: physical address map, interrupt map and PSCI
function IDs, everything a guest program is built against.

A leaf module: it imports nothing from the project, so guests/ (and anything else) can use it
without pulling in the machine.

Addresses follow QEMU's `virt` board for devices and Firecracker's aarch64 layout for RAM
(RAM at 2 GiB). All values are guest physical addresses in bytes. docs/machine.md is the
user-facing copy of this table; keep the two in step.
"""
from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# --- RAM -------------------------------------------------------------------------------------
RAM_BASE = 0x8000_0000  # Firecracker aarch64: DRAM starts at 2 GiB.
RAM_MIN_SIZE = 16 * MIB
RAM_MAX_SIZE = 16 * GIB
RAM_SIZE_ALIGN = 2 * MIB
RAM_DEFAULT_SIZE = 128 * MIB

# The kernel/guest image is loaded at RAM_BASE + IMAGE_OFFSET (2 MiB aligned, Linux arm64 boot
# protocol, Documentation/arch/arm64/booting.rst). The DTB sits in the last 2 MiB of RAM.
IMAGE_OFFSET = 0
IMAGE_ALIGN = 2 * MIB
FDT_MAX_SIZE = 2 * MIB  # booting.rst: the DTB must not exceed 2 MiB.
# The parameter block for built-in guests lives 1 MiB into the DTB window (see guests/README).
PARAMS_OFFSET_IN_FDT_WINDOW = 1 * MIB

# --- MMIO ------------------------------------------------------------------------------------
GICD_BASE = 0x0800_0000  # GICv3 distributor, 64 KiB.
GICD_SIZE = 0x1_0000
GICR_BASE = 0x080A_0000  # GICv3 redistributors: RD_base + SGI_base, 128 KiB per vCPU.
GICR_STRIDE = 0x2_0000
UART0_BASE = 0x0900_0000  # PL011, 4 KiB.
UART0_SIZE = 0x1000
MMDS_BASE = 0x0901_0000  # MMDS transport, 4 KiB.
MMDS_SIZE = 0x1000
# A page owned by the VMM, outside RAM and never visible in the device tree. It holds the
# one-instruction CLREX stub run between slices (see vmm/vcpu.py).
VMM_STUB_BASE = 0x0FFF_F000
VMM_STUB_SIZE = 0x1000

MAX_VCPUS = 32

# --- Interrupts (GIC INTIDs) -----------------------------------------------------------------
PPI_VIRTUAL_TIMER = 27  # Arm BSA: EL1 virtual timer.
PPI_PHYS_TIMER_NS = 30  # Arm BSA: EL1 non-secure physical timer.
SPI_BASE = 32
SPI_UART0 = 33  # SPI 1
SPI_MMDS = 34  # SPI 2

# --- Firmware: PSCI function IDs (DEN0022 5.1, table 5), called with HVC; vmm/psci.py serves them.
PSCI_VERSION = 0x8400_0000
CPU_SUSPEND_32 = 0x8400_0001
CPU_SUSPEND_64 = 0xC400_0001
CPU_OFF = 0x8400_0002
CPU_ON_32 = 0x8400_0003
CPU_ON_64 = 0xC400_0003
AFFINITY_INFO_32 = 0x8400_0004
AFFINITY_INFO_64 = 0xC400_0004
MIGRATE_INFO_TYPE = 0x8400_0006
SYSTEM_OFF = 0x8400_0008
SYSTEM_RESET = 0x8400_0009
PSCI_FEATURES = 0x8400_000A


def gicr_region_size(vcpus: int) -> int:
    """Bytes of redistributor space for `vcpus` vCPUs."""
    return GICR_STRIDE * vcpus
