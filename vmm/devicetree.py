"""The flattened device tree (DTB) handed to the guest in x0 at boot.

Built with the `fdt` package. Describes memory, the vCPUs (enable-method "psci"), PSCI with
the HVC conduit, the GICv3, the generic timer, the PL011 and the MMDS transport, following the
bindings in the Linux kernel's Documentation/devicetree/bindings. Guest parameters appear in
/chosen as `microvm,param-<name>` (64-bit big-endian cell pairs), next to the parameter block
that built-in guests read (see guests/README.md).
"""
from __future__ import annotations

from typing import Mapping

import fdt

from vmm import layout

GIC_PHANDLE = 1
CLK_PHANDLE = 2

# Interrupt specifier cell values for arm,gic-v3 (bindings/interrupt-controller/arm,gic-v3.yaml).
GIC_SPI = 0
GIC_PPI = 1
IRQ_TYPE_EDGE_RISING = 1
IRQ_TYPE_LEVEL_HIGH = 4


def _cells64(*values: int) -> list[int]:
    """Split 64-bit values into (high, low) 32-bit cells."""
    out: list[int] = []
    for v in values:
        out += [(v >> 32) & 0xFFFF_FFFF, v & 0xFFFF_FFFF]
    return out


def _node(name: str, *props: fdt.Property) -> fdt.Node:
    node = fdt.Node(name)
    for p in props:
        node.append(p)
    return node


def build_dtb(
    *,
    vcpus: int,
    mem_size: int,
    params: Mapping[str, int],
    with_gic: bool = True,
    with_mmds: bool = True,
    bootargs: str = "",
    initrd: tuple[int, int] | None = None,
    rng_seed: bytes = b"",
) -> bytes:
    """The DTB for a machine with `vcpus` vCPUs and `mem_size` bytes of RAM.

    /chosen gets `bootargs` (the kernel command line) if not empty, `linux,initrd-start/end`
    for `initrd` = (start, end) guest physical addresses, and `rng-seed` if given
    (bindings: dt-schema chosen.yaml)."""
    tree = fdt.FDT()
    root = tree.root
    root.append(fdt.PropStrings("compatible", "microvm-harness,virt", "linux,dummy-virt"))
    root.append(fdt.PropWords("#address-cells", 2))
    root.append(fdt.PropWords("#size-cells", 2))
    if with_gic:
        root.append(fdt.PropWords("interrupt-parent", GIC_PHANDLE))

    chosen = _node("chosen", fdt.PropStrings("stdout-path", f"/pl011@{layout.UART0_BASE:x}"))
    if bootargs:
        chosen.append(fdt.PropStrings("bootargs", bootargs))
    if initrd is not None:
        chosen.append(fdt.PropWords("linux,initrd-start", *_cells64(initrd[0])))
        chosen.append(fdt.PropWords("linux,initrd-end", *_cells64(initrd[1])))
    if rng_seed:
        chosen.append(fdt.PropBytes("rng-seed", data=rng_seed))
    for name, value in sorted(params.items()):
        chosen.append(fdt.PropWords(f"microvm,param-{name}", *_cells64(value)))
    tree.add_item(chosen)

    tree.add_item(
        _node(
            f"memory@{layout.RAM_BASE:x}",
            fdt.PropStrings("device_type", "memory"),
            fdt.PropWords("reg", *_cells64(layout.RAM_BASE, mem_size)),
        )
    )

    cpus = _node("cpus", fdt.PropWords("#address-cells", 1), fdt.PropWords("#size-cells", 0))
    for i in range(vcpus):
        cpus.append(
            _node(
                f"cpu@{i}",
                fdt.PropStrings("device_type", "cpu"),
                fdt.PropStrings("compatible", "arm,arm-v8"),
                fdt.PropStrings("enable-method", "psci"),
                fdt.PropWords("reg", i),
            )
        )
    tree.add_item(cpus)

    tree.add_item(
        _node("psci", fdt.PropStrings("compatible", "arm,psci-1.0", "arm,psci-0.2"), fdt.PropStrings("method", "hvc"))
    )

    tree.add_item(
        _node(
            "apb-pclk",
            fdt.PropStrings("compatible", "fixed-clock"),
            fdt.PropWords("#clock-cells", 0),
            fdt.PropWords("clock-frequency", 24_000_000),
            fdt.PropStrings("clock-output-names", "clk24mhz"),
            fdt.PropWords("phandle", CLK_PHANDLE),
        )
    )

    uart = _node(
        f"pl011@{layout.UART0_BASE:x}",
        fdt.PropStrings("compatible", "arm,pl011", "arm,primecell"),
        fdt.PropWords("reg", *_cells64(layout.UART0_BASE, layout.UART0_SIZE)),
        fdt.PropWords("clocks", CLK_PHANDLE, CLK_PHANDLE),
        fdt.PropStrings("clock-names", "uartclk", "apb_pclk"),
    )
    if with_gic:
        uart.append(fdt.PropWords("interrupts", GIC_SPI, layout.SPI_UART0 - layout.SPI_BASE, IRQ_TYPE_LEVEL_HIGH))
    tree.add_item(uart)

    if with_gic:
        tree.add_item(
            _node(
                f"intc@{layout.GICD_BASE:x}",
                fdt.PropStrings("compatible", "arm,gic-v3"),
                fdt.PropWords("#interrupt-cells", 3),
                fdt.Property("interrupt-controller"),
                fdt.PropWords(
                    "reg",
                    *_cells64(layout.GICD_BASE, layout.GICD_SIZE, layout.GICR_BASE, layout.gicr_region_size(vcpus)),
                ),
                fdt.PropWords("phandle", GIC_PHANDLE),
            )
        )
        # Generic timer PPIs: secure phys, non-secure phys, virtual, hyp (bindings/timer/arm,arch_timer.yaml).
        ppis = (29, layout.PPI_PHYS_TIMER_NS, layout.PPI_VIRTUAL_TIMER, 26)
        irqs: list[int] = []
        for ppi in ppis:
            irqs += [GIC_PPI, ppi - 16, IRQ_TYPE_LEVEL_HIGH]
        tree.add_item(
            _node(
                "timer",
                fdt.PropStrings("compatible", "arm,armv8-timer"),
                fdt.PropWords("interrupts", *irqs),
                fdt.Property("always-on"),
            )
        )

    if with_mmds:
        mmds = _node(
            f"mmds@{layout.MMDS_BASE:x}",
            fdt.PropStrings("compatible", "microvm-harness,mmds"),
            fdt.PropWords("reg", *_cells64(layout.MMDS_BASE, layout.MMDS_SIZE)),
        )
        if with_gic:
            mmds.append(fdt.PropWords("interrupts", GIC_SPI, layout.SPI_MMDS - layout.SPI_BASE, IRQ_TYPE_LEVEL_HIGH))
        tree.add_item(mmds)

    blob = tree.to_dtb(version=17)
    if len(blob) > layout.FDT_MAX_SIZE:
        raise ValueError(f"device tree is {len(blob)} bytes, over the {layout.FDT_MAX_SIZE}-byte limit")
    return blob
