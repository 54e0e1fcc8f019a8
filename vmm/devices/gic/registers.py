"""The GICv3 register map as this model implements it: INTID space, priority bits, and the
offsets and fields of the GICD_*, GICR_* and ICC_* registers.

Source: IHI 0069 (Arm GIC Architecture Specification, GICv3 and GICv4), chapter 12
"Programmers' Model": 12.9 GICD_*, 12.10/12.11 GICR_* RD_base/SGI_base, 12.2 ICC_*.
Plain constants only (no other names, so `vmm.devices.gicv3` re-exports the module whole);
every part of the GIC (`vmm.devices.gic`) reads them from here.
"""
MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1

# --- INTID space (IHI 0069 2.2 "INTIDs") ---------------------------------------------------------
NUM_SGIS = 16  # SGIs are INTIDs 0-15
NUM_PRIVATE = 32  # SGIs and PPIs (16-31), banked per redistributor
SPI_FIRST = 32
MAX_SPIS = 960  # keeps SPI INTIDs below the special range 1020-1023 with a multiple of 32
INTID_SPURIOUS = 1023  # IHI 0069 2.2 special INTIDs (1020-1023): "no pending interrupt"

# --- Priorities (IHI 0069 4.8 "Interrupt prioritization") ------------------------------------------
PRIORITY_BITS = 5  # implemented priority bits [7:3]: 32 levels
PRIORITY_MASK = (0xFF << (8 - PRIORITY_BITS)) & 0xFF  # 0xF8
IDLE_PRIORITY = 0xFF  # ICC_RPR_EL1 with nothing active
BPR1_MIN = 8 - PRIORITY_BITS  # IHI 0069 4.8 + ICC_BPR1_EL1: minimum BPR0 (7 - bits) plus one
PREEMPTION_SHIFT = 8 - PRIORITY_BITS  # AP1R0 bit n <-> group priority n << 3

# --- Distributor (IHI 0069 12.9) ------------------------------------------------------------------
GICD_CTLR = 0x0000  # IHI 0069 12.9 GICD_CTLR
GICD_TYPER = 0x0004  # IHI 0069 12.9 GICD_TYPER
GICD_IIDR = 0x0008  # IHI 0069 12.9 GICD_IIDR
GICD_TYPER2 = 0x000C  # IHI 0069 12.9 GICD_TYPER2 (GICv3.1; RAZ here)
GICD_STATUSR = 0x0010  # IHI 0069 12.9 GICD_STATUSR (optional; RAZ/WI here)
GICD_ITARGETSR = 0x0800  # IHI 0069 12.9 GICD_ITARGETSR<n>: RES0 with affinity routing
GICD_ITARGETSR_END = 0x0C00
GICD_SGIR = 0x0F00  # IHI 0069 12.9 GICD_SGIR: RES0 with affinity routing
GICD_IROUTER = 0x6000  # IHI 0069 12.9 GICD_IROUTER<n> at 0x6000 + 8n, n = 32..1019
GICD_IROUTER_END = 0x7FE0
GICD_PIDR2 = 0xFFE8  # IHI 0069 12.9 GICD_PIDR2 (identification registers)

# GICD_CTLR bits, single Security state view (IHI 0069 12.9 GICD_CTLR, DS = 1).
GICD_CTLR_ENABLE_GRP1 = 1 << 1  # EnableGrp1 (EnableGrp1NS / EnableGrp1A in the 2-state views)
GICD_CTLR_ARE = 1 << 4  # ARE (ARE_NS in the 2-state views): RAO/WI
GICD_CTLR_DS = 1 << 6  # DS: RAO/WI, one Security state

# GICD_TYPER fields (IHI 0069 12.9 GICD_TYPER).
GICD_TYPER_IDBITS_SHIFT = 19  # IDbits [23:19]: INTID bits - 1
GICD_TYPER_RSS = 1 << 26  # SGI target Aff0 0-255 via ICC_SGI1R_EL1.RS
INTID_BITS = 16

# GICD_IROUTER<n> fields (IHI 0069 12.9 GICD_IROUTER<n>).
IROUTER_IRM = 1 << 31  # 1 of N routing
IROUTER_AFF_MASK = 0xFF_00FF_FFFF  # Aff3 [39:32], Aff2 [23:16], Aff1 [15:8], Aff0 [7:0]
IROUTER_WRITABLE = IROUTER_AFF_MASK | IROUTER_IRM

# Identification (IHI 0069 12.9 GICD_IIDR and GICD_PIDR2): implementer Arm (JEP106 0x43B), product 0.
IIDR_VALUE = 0x0000_043B
PIDR2_VALUE = 0x3B  # ArchRev [7:4] = 3 (GICv3), JEDEC [3] = 1, DES_1 [2:0] = 3

# --- Redistributor (IHI 0069 12.10 RD_base, 12.11 SGI_base) --------------------------------------
GICR_SGI_BASE = 0x1_0000  # SGI_base frame, 64 KiB after RD_base
GICR_CTLR = 0x0000  # IHI 0069 12.10 GICR_CTLR (no LPIs: RAZ/WI)
GICR_IIDR = 0x0004  # IHI 0069 12.10 GICR_IIDR
GICR_TYPER = 0x0008  # IHI 0069 12.10 GICR_TYPER (64-bit)
GICR_WAKER = 0x0014  # IHI 0069 12.10 GICR_WAKER
GICR_PIDR2 = 0xFFE8  # IHI 0069 12.10 GICR_PIDR2 (identification registers)

GICR_TYPER_LAST = 1 << 4  # IHI 0069 12.10 GICR_TYPER.Last
GICR_TYPER_PROCNUM_SHIFT = 8  # Processor_Number [23:8]
GICR_TYPER_AFF_SHIFT = 32  # Affinity_Value [63:32] = Aff3.Aff2.Aff1.Aff0

GICR_WAKER_PROCESSOR_SLEEP = 1 << 1  # IHI 0069 12.10 GICR_WAKER.ProcessorSleep
GICR_WAKER_CHILDREN_ASLEEP = 1 << 2  # GICR_WAKER.ChildrenAsleep (RO)

# --- Register bank shared by GICD and GICR SGI_base (IHI 0069 12.9 / 12.11, same offsets) ---------
IGROUPR = 0x0080  # 1 bit per INTID, RAO/WI here (all Group 1)
ISENABLER = 0x0100  # 1 bit per INTID, write 1 to enable
ICENABLER = 0x0180  # 1 bit per INTID, write 1 to disable
ISPENDR = 0x0200  # 1 bit per INTID, write 1 to set the pending latch
ICPENDR = 0x0280  # 1 bit per INTID, write 1 to clear the pending latch
ISACTIVER = 0x0300  # 1 bit per INTID, write 1 to activate
ICACTIVER = 0x0380  # 1 bit per INTID, write 1 to deactivate
IPRIORITYR = 0x0400  # 8 bits per INTID, byte-accessible
ICFGR = 0x0C00  # 2 bits per INTID: Int_config[1] = 1 edge-triggered, 0 level-sensitive
IGRPMODR = 0x0D00  # 1 bit per INTID, RAZ/WI (no Secure groups)
NSACR = 0x0E00  # 2 bits per INTID, RAZ/WI
BIT_ARRAY_BYTES = 0x80  # 1024 INTIDs / 8
PRIORITY_ARRAY_BYTES = 0x400
CFG_ARRAY_BYTES = 0x100
SGI_CONFIG_EDGE = (1 << NUM_SGIS) - 1  # IHI 0069 12.11 GICR_ICFGR0: SGIs edge, not writable

# --- CPU interface register fields (IHI 0069 12.2) ------------------------------------------------
ICC_SRE_VALUE = 0x7  # IHI 0069 12.2 ICC_SRE_EL1: SRE, DFB, DIB all RAO/WI
ICC_CTLR_EOIMODE = 1 << 1  # IHI 0069 12.2 ICC_CTLR_EL1.EOImode
ICC_CTLR_PRIBITS_SHIFT = 8  # PRIbits [10:8] = priority bits - 1
ICC_CTLR_RSS = 1 << 18  # RSS: SGI Aff0 targets 0-255
ICC_IGRPEN1_ENABLE = 1 << 0  # IHI 0069 12.2 ICC_IGRPEN1_EL1.Enable
INTID_FIELD_MASK = (1 << 24) - 1  # INTID field [23:0] of IAR/EOIR/DIR/HPPIR
# ICC_SGI1R_EL1 fields (IHI 0069 12.2 ICC_SGI1R_EL1).
SGI1R_TARGETLIST_MASK = 0xFFFF  # [15:0]
SGI1R_AFF1_SHIFT = 16  # Aff1 [23:16]
SGI1R_INTID_SHIFT = 24  # INTID [27:24]
SGI1R_AFF2_SHIFT = 32  # Aff2 [39:32]
SGI1R_IRM = 1 << 40  # 1: all PEs but self
SGI1R_RS_SHIFT = 44  # RS [47:44]: TargetList covers Aff0 16*RS .. 16*RS + 15
SGI1R_AFF3_SHIFT = 48  # Aff3 [55:48]
