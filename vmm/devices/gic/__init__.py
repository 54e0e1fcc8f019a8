"""The parts of the GICv3 model; `vmm.devices.gicv3.Gicv3` composes them (import from there).

Modules, one concept each:
- `registers`: the register map: INTID space, priority bits, GICD/GICR/ICC offsets and fields.
- `state`: the plain-data state (`Gicv3State` and its parts), the snapshot boundary.
- `mmio`: access-size rules and the `GicFrame` base of an MMIO window; `GicAccess` reports.
- `bank`: `IrqBank`, the per-INTID state and register arrays GICD and GICR SGI_base share.
- `distributor`: `Distributor`, the GICD window.
- `redistributor`: `Redistributors`, the GICR window (one redistributor per vCPU).
- `cpu_interface`: `CpuInterface`, one vCPU's ICC_* system registers.
"""
