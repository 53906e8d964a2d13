/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vugpu hardware definitions, transcribed from docs/hw-spec.md (version 0.4:
 * §1-§3, §5 error reporting, §6 engine registers and doorbell words, §7
 * descriptors, §8.1 statistics counters and §9 the device MMU).
 *
 * This header describes the device, not the driver: PCI identity (hw-spec §1),
 * the BAR layout (§2) and the register file (§3).  It is shared by the kernel
 * module and the userspace tests, so it uses only fixed-width types and
 * preprocessor constants; the _Static_asserts check that the map is
 * self-consistent (e.g. the MSI-X table and PBA fit in BAR0 and do not
 * overlap the register file).
 */
#ifndef VUGPU_HW_H
#define VUGPU_HW_H

/* §1 PCI identity (defaults; the server can override vendor/device IDs). */
#define VUGPU_PCI_VENDOR_ID		0x1234
#define VUGPU_PCI_DEVICE_ID		0x5647
#define VUGPU_PCI_REVISION		0x01
#define VUGPU_PCI_CLASS			0x030200	/* 3D controller, prog-if 0 */
#define VUGPU_PCI_SUBSYS_VENDOR_ID	0x1234
#define VUGPU_PCI_SUBSYS_ID		0x0001
#define VUGPU_CONFIG_SPACE_SIZE		4096

/* §1.1 BAR numbers and sizes. */
#define VUGPU_BAR_REGS			0	/* 32-bit, non-prefetchable */
#define VUGPU_BAR_VRAM			2	/* 64-bit, prefetchable */
#define VUGPU_BAR0_SIZE			0x01000000	/* 16 MiB */
#define VUGPU_VRAM_BAR_MIN_SIZE		0x00100000	/* 1 MiB */

/* §1.2 standard capabilities: fixed offsets. */
#define VUGPU_CAP_PM_OFFSET		0x40
#define VUGPU_CAP_MSIX_OFFSET		0x50
#define VUGPU_CAP_EXP_OFFSET		0x60
#define VUGPU_MSIX_MAX_VECTORS		2048
#define VUGPU_MSIX_DEFAULT_VECTORS	16

/* §1.4 extended capabilities: fixed offsets. */
#define VUGPU_ECAP_AER_OFFSET		0x100
#define VUGPU_ECAP_REBAR_OFFSET		0x148
#define VUGPU_ECAP_DSN_OFFSET		0x154

/*
 * Writable bits of the config registers the guest OS owns (§1.1-§1.4); the
 * other bits of each are RO or RsvdZ.  The OS may write these registers at
 * any time (Linux 7.3's AER driver clears the Correctable Mask at boot), so
 * guest tests check them by write / read back / restore and never assert
 * their values; the reset values are host unit tests of the model
 * (guest-tests/README.md, "What guest tests may assert").
 */
#define VUGPU_PCI_COMMAND_RW		0x0546	/* Memory, Bus Master, PER, SERR#, INTx Dis. */
#define VUGPU_PCI_CACHE_LINE_RW		0xff
#define VUGPU_PMCSR_POWER_STATE		0x0003	/* RW D0/D3hot; D1/D2 writes ignored */
#define VUGPU_PMCSR_NO_SOFT_RESET	0x0008	/* RO 1 */
#define VUGPU_MSIX_CTRL_RW		0xc000	/* Enable, Function Mask */
#define VUGPU_DEVCTL_RW			0x78ff	/* bit 15: write 1 = FLR */
#define VUGPU_DEVCTL_FLR		0x8000
#define VUGPU_LNKCTL_RW			0x004b
#define VUGPU_DEVCTL2_RW		0x105f
#define VUGPU_LNKCTL2_RW		0x000f	/* Target Link Speed */
#define VUGPU_AER_UNCOR_BITS		0x005ff030	/* Mask, Severity RW; Status W1C */
#define VUGPU_AER_COR_BITS		0x0000f1c1	/* Mask RW; Status W1C */
#define VUGPU_REBAR_CTRL_SIZE		0x00003f00

/* §2 BAR0 layout. */
#define VUGPU_REGFILE_START		0x000000
#define VUGPU_REGFILE_SIZE		0x100000	/* §3 register file incl. RsvdZ */
#define VUGPU_DEVREGS_SIZE		0x001000	/* device registers (§3 table) */
#define VUGPU_ENGINE_REGS_BASE		0x001000	/* engine i at base + stride * i */
#define VUGPU_ENGINE_REGS_STRIDE	0x000100
#define VUGPU_ENGINE_MAX		16
#define VUGPU_REGFILE_RSVD_START	0x002000	/* 0x2000-0xfffff: RsvdZ */
#define VUGPU_MSIX_TABLE_OFFSET		0x100000
#define VUGPU_MSIX_TABLE_SIZE		0x008000	/* 16 bytes x 2048 vectors */
#define VUGPU_MSIX_PBA_OFFSET		0x108000
#define VUGPU_MSIX_PBA_SIZE		0x001000
#define VUGPU_MSIX_ENTRY_SIZE		16
#define VUGPU_DOORBELL_PAGE_OFFSET	0x200000	/* §6.4, mmappable */
#define VUGPU_DOORBELL_PAGE_SIZE	0x001000
/* §6.4 words of engine i's doorbell area (page offset DOORBELL_STRIDE * i + below). */
#define VUGPU_DB_TAIL			0x0	/* driver-written ring tail */
#define VUGPU_DB_SLEEPING		0x4	/* device-written sleep hint: read only */
#define VUGPU_REG_WIDTH			4	/* every register is 32 bits */
/* A register read that the device rejects (bad size/alignment). */
#define VUGPU_REG_BAD_READ		0xffffffffU

/* §3 register file. */
#define VUGPU_REG_ID			0x0000	/* RO */
#define VUGPU_REG_VERSION		0x0004	/* RO */
#define VUGPU_REG_CAPS			0x0008	/* RO */
#define VUGPU_REG_NUM_VECTORS		0x000c	/* RO */
#define VUGPU_REG_VRAM_SIZE_LO		0x0010	/* RO */
#define VUGPU_REG_VRAM_SIZE_HI		0x0014	/* RO */
#define VUGPU_REG_STATUS		0x0018	/* RO / W1C */
#define VUGPU_REG_SCRATCH0		0x0020	/* RW */
#define VUGPU_REG_SCRATCH1		0x0024	/* RW */
#define VUGPU_REG_SCRATCH2		0x0028	/* RW */
#define VUGPU_REG_SCRATCH3		0x002c	/* RW */
#define VUGPU_REG_VRAM_INDEX_LO		0x0030	/* RW */
#define VUGPU_REG_VRAM_INDEX_HI		0x0034	/* RW */
#define VUGPU_REG_VRAM_DATA		0x0038	/* RW, auto-increments VRAM_INDEX */
#define VUGPU_REG_SOFT_RESET		0x0040	/* WO */
#define VUGPU_REG_IRQ_TRIGGER		0x0080	/* WO */
#define VUGPU_REG_IRQ_STATUS		0x0084	/* W1C */
#define VUGPU_REG_IRQ_COUNT		0x0088	/* RO */
#define VUGPU_REG_ENGINE_COUNT		0x0090	/* RO */
#define VUGPU_REG_DOORBELL_OFFSET	0x0094	/* RO */
#define VUGPU_REG_DOORBELL_STRIDE	0x0098	/* RO */
#define VUGPU_REG_ENGINE_VECTOR_BASE	0x009c	/* RO */
#define VUGPU_REG_ERR_CAUSE		0x00a0	/* W1C */
#define VUGPU_REG_CLOCK_LO		0x00a8	/* RO, latches CLOCK_HI */
#define VUGPU_REG_CLOCK_HI		0x00ac	/* RO */
/* §6.10 peer windows: window i's block at VUGPU_PEER_WIN_REGS(i) + below. */
#define VUGPU_PEER_WIN_COUNT		4
#define VUGPU_PEER_WIN_REGS_BASE	0x0200
#define VUGPU_PEER_WIN_REGS_STRIDE	0x20
#define VUGPU_PEER_WIN_REGS(i)		(VUGPU_PEER_WIN_REGS_BASE + (i) * VUGPU_PEER_WIN_REGS_STRIDE)
#define VUGPU_PEER_WIN_BASE_LO		0x00	/* RW, bits 11:0 RO 0; locked while enabled */
#define VUGPU_PEER_WIN_BASE_HI		0x04	/* RW; locked while enabled */
#define VUGPU_PEER_WIN_SIZE_LO		0x08	/* RW, bits 11:0 RO 0; locked while enabled */
#define VUGPU_PEER_WIN_SIZE_HI		0x0c	/* RW; locked while enabled */
#define VUGPU_PEER_WIN_CONTROL		0x10	/* RW bits 2:0, RO bit 31 */
#define VUGPU_PEER_WIN_ENABLE		(1U << 0)
#define VUGPU_PEER_WIN_READ		(1U << 1)
#define VUGPU_PEER_WIN_WRITE		(1U << 2)
#define VUGPU_PEER_WIN_REFUSED		(1U << 31)	/* RO: last enable refused */
#define VUGPU_PEER_WIN_ALIGN		0x1000ULL
#define VUGPU_NUM_SCRATCH		4
#define VUGPU_REG_SCRATCH(n)		(VUGPU_REG_SCRATCH0 + (n) * VUGPU_REG_WIDTH)

/* Reset values and field definitions. */
#define VUGPU_ID_VALUE			0x56475055U	/* "UPGV" little-endian */
#define VUGPU_VERSION_VALUE		0x00000004U	/* this document: 0.4 */
#define VUGPU_VERSION_MAJOR(v)		((v) >> 16)
#define VUGPU_VERSION_MINOR(v)		((v) & 0xffff)
#define VUGPU_VERSION_ENGINES		0x00000002U	/* first version with §3's engine registers */
#define VUGPU_CAPS_MSIX			(1U << 0)
#define VUGPU_CAPS_VRAM_MMAP		(1U << 1)
#define VUGPU_CAPS_ENGINES		(1U << 2)	/* ENGINE_COUNT > 0 */
#define VUGPU_CAPS_DOORBELL_MMAP	(1U << 3)
#define VUGPU_CAPS_PEER_WINDOWS		(1U << 4)	/* §6.10, with the engines */
#define VUGPU_CAPS_MMU			(1U << 5)	/* §9 device MMU (spec 0.4) */
#define VUGPU_CAPS_KNOWN		0x3fU
#define VUGPU_VERSION_MMU		0x00000004U	/* first version with §9 */
#define VUGPU_DOORBELL_STRIDE_VALUE	0x40U
#define VUGPU_ENGINE_VECTOR_BASE_VALUE	1U		/* vector 0: device/error vector */
#define VUGPU_STATUS_READY		(1U << 0)	/* RO */
#define VUGPU_STATUS_VRAM_INDEX_ERR	(1U << 1)	/* W1C */
#define VUGPU_STATUS_RESET		VUGPU_STATUS_READY
#define VUGPU_VRAM_INDEX_IGNORED_BITS	0x3U		/* VRAM_INDEX_LO bits 1:0: RO 0 */
#define VUGPU_VRAM_DATA_BAD		0xffffffffU	/* out-of-range VRAM_DATA read */
#define VUGPU_SOFT_RESET_MAGIC		0x52535421U	/* "!TSR" little-endian */
#define VUGPU_IRQ_STATUS_VECTORS	32		/* IRQ_STATUS covers vectors 0-31 */

/* §6.3 engine register block (BAR0 VUGPU_ENGINE_REGS(i) + offset). */
#define VUGPU_ENGINE_REGS(i)		(VUGPU_ENGINE_REGS_BASE + (i) * VUGPU_ENGINE_REGS_STRIDE)
#define VUGPU_ENG_RING_BASE_LO		0x00	/* RW, bits 5:0 must be 0 */
#define VUGPU_ENG_RING_BASE_HI		0x04	/* RW */
#define VUGPU_ENG_RING_SIZE		0x08	/* RW, power of two 1-65536 */
#define VUGPU_ENG_RING_APERTURE		0x0c	/* RW, bits 1:0 */
#define VUGPU_ENG_RING_HEAD		0x10	/* RO */
#define VUGPU_ENG_RING_TAIL		0x14	/* RW, the doorbell word */
#define VUGPU_ENG_CONTROL		0x18	/* RW */
#define VUGPU_ENG_STATUS		0x1c	/* RO */
#define VUGPU_ENG_ERROR_CODE		0x20	/* RO */
#define VUGPU_ENG_ERROR_ADDR_LO		0x24	/* RO */
#define VUGPU_ENG_ERROR_ADDR_HI		0x28	/* RO */
#define VUGPU_ENG_ERROR_INFO		0x2c	/* RO */
#define VUGPU_ENG_LAST_FENCE_LO		0x30	/* RO */
#define VUGPU_ENG_LAST_FENCE_HI		0x34	/* RO */
#define VUGPU_ENG_STATS_START		0x40	/* RO 64-bit counters to 0xaf (§8.1) */
#define VUGPU_ENG_STATS_END		0xb0
#define VUGPU_ENG_CONTROL_ENABLE	(1U << 0)
#define VUGPU_ENG_CONTROL_HALT		(1U << 1)
#define VUGPU_ENG_CONTROL_IRQ_ENABLE	(1U << 2)
#define VUGPU_ENG_CONTROL_RESET		(1U << 31)	/* WO */
#define VUGPU_ENG_STATUS_STATE_MASK	0xfU
#define VUGPU_ENG_STATE_DISABLED	0
#define VUGPU_ENG_STATE_IDLE		1
#define VUGPU_ENG_STATE_RUNNING		2
#define VUGPU_ENG_STATE_HALTED		3
#define VUGPU_ENG_STATE_ERROR		4
#define VUGPU_APERTURE_SYS		0
#define VUGPU_APERTURE_VRAM		1
#define VUGPU_APERTURE_PEER		2	/* reserved in 0.2 */
#define VUGPU_APERTURE_VIRT		3	/* §9.5: device-virtual, context in desc 0x04 */
#define VUGPU_ENG_INFO_APERTURE_MASK	0x3U
#define VUGPU_ENG_INFO_WRITE		(1U << 2)
#define VUGPU_ENG_INFO_FETCH		(1U << 3)
#define VUGPU_ENG_INFO_SLOT_SHIFT	16
/* §6.6 ERROR_CODE values */
#define VUGPU_ENG_ERR_NONE		0
#define VUGPU_ENG_ERR_RING_CONFIG	1
#define VUGPU_ENG_ERR_RING_OVERFLOW	2
#define VUGPU_ENG_ERR_BAD_OPCODE	3
#define VUGPU_ENG_ERR_BAD_DESCRIPTOR	4
#define VUGPU_ENG_ERR_SYS_UNMAPPED	5
#define VUGPU_ENG_ERR_SYS_PERMISSION	6
#define VUGPU_ENG_ERR_VRAM_RANGE	7
#define VUGPU_ENG_ERR_MSG_DMA_FAILED	8
#define VUGPU_ENG_ERR_TRANSLATION	9	/* §9.4: a cancelled fault; ERROR_ADDR virtual */

/* §6.2 / §6.3 ring limits */
#define VUGPU_RING_SLOTS_MAX		65536
#define VUGPU_RING_ALIGN		64

/* §7 descriptors: 64 bytes, little-endian. */
#define VUGPU_DESC_SIZE			64
#define VUGPU_DESC_OFF_OPCODE		0x00
#define VUGPU_DESC_OFF_FLAGS		0x01
#define VUGPU_DESC_OFF_SRC_APERTURE	0x02
#define VUGPU_DESC_OFF_DST_APERTURE	0x03
#define VUGPU_DESC_OFF_RSVD0		0x04	/* 4 bytes, must be 0 */
#define VUGPU_DESC_OFF_SRC		0x08
#define VUGPU_DESC_OFF_DST		0x10
#define VUGPU_DESC_OFF_LENGTH		0x18
#define VUGPU_DESC_OFF_VALUE		0x20
#define VUGPU_DESC_OFF_RSVD1		0x28	/* 24 bytes, must be 0 */
#define VUGPU_OP_NOP			0
#define VUGPU_OP_COPY			1
#define VUGPU_OP_FILL			2
#define VUGPU_OP_FENCE			3
#define VUGPU_OP_TIMESTAMP		4
#define VUGPU_OP_ATOMIC			5	/* §9.5: 64-bit fetch-and-add at dst, old value to src */
#define VUGPU_OP_TLB_INVALIDATE		6	/* §9.5: context, dst = VA, length (0 = all) */
#define VUGPU_OP_FAULT_REPLAY		7	/* §9.5: context, value bit 0: 0 replay, 1 cancel */
#define VUGPU_DESC_OFF_CONTEXT		0x04	/* §9.5: u16 context of a VIRT aperture */
#define VUGPU_DESC_CONTEXT_ALL		0xffffU	/* TLB_INVALIDATE / FAULT_REPLAY: every context */
#define VUGPU_REPLAY_CANCEL		1ULL	/* FAULT_REPLAY value bit 0 */
#define VUGPU_ATOMIC_LENGTH		8
#define VUGPU_DESC_F_IRQ		(1U << 0)
#define VUGPU_DESC_F_NO_SNOOP		(1U << 1)
#define VUGPU_DESC_F_RELAXED_ORDERING	(1U << 2)
#define VUGPU_DESC_F_RSVD_MASK		0xf8U
#define VUGPU_DESC_MAX_LENGTH		0x40000000ULL	/* COPY / FILL: 1 GiB */
#define VUGPU_FILL_ALIGN		4
#define VUGPU_FENCE_ALIGN		8

/* §9.1 device MMU registers (BAR0 0x0300-0x03ff), present with CAPS bit 5. */
#define VUGPU_REG_MMU_CONTROL		0x0300	/* RW */
#define VUGPU_REG_MMU_STATUS		0x0304	/* RO / W1C */
#define VUGPU_REG_MMU_CTX_BASE_LO	0x0308	/* RW, bits 3:0 RO 0; latched at ENABLE */
#define VUGPU_REG_MMU_CTX_BASE_HI	0x030c
#define VUGPU_REG_MMU_CTX_COUNT		0x0310	/* RW, 1-4096 */
#define VUGPU_REG_MMU_CTX_APERTURE	0x0314	/* RW, 0 SYS / 1 VRAM */
#define VUGPU_REG_FAULT_RING_BASE_LO	0x0318	/* RW, bits 4:0 RO 0 */
#define VUGPU_REG_FAULT_RING_BASE_HI	0x031c
#define VUGPU_REG_FAULT_RING_SIZE	0x0320	/* RW, records, power of two 1-65536 */
#define VUGPU_REG_FAULT_RING_APERTURE	0x0324	/* RW */
#define VUGPU_REG_FAULT_PUT		0x0328	/* RO (doorbell page 0x800) */
#define VUGPU_REG_FAULT_GET		0x032c	/* RW (doorbell page 0x804) */
#define VUGPU_REG_FAULT_VECTOR		0x0330	/* RO, 1 + ENGINE_COUNT */
#define VUGPU_REG_MMU_STAT_FAULTS	0x0340	/* 64-bit counters, _LO latches _HI */
#define VUGPU_REG_MMU_STAT_FAULTS_DROPPED 0x0348
#define VUGPU_REG_MMU_STAT_REPLAYS	0x0350
#define VUGPU_REG_MMU_STAT_CANCELS	0x0358
#define VUGPU_REG_MMU_STAT_TLB_HITS	0x0360
#define VUGPU_REG_MMU_STAT_TLB_MISSES	0x0368
#define VUGPU_REG_MMU_STAT_INVALIDATIONS 0x0370
#define VUGPU_MMU_NUM_STATS		7
#define VUGPU_MMU_CONTROL_ENABLE	(1U << 0)
#define VUGPU_MMU_CONTROL_FAULT_IRQ	(1U << 1)
#define VUGPU_MMU_STATUS_ENABLED	(1U << 0)
#define VUGPU_MMU_STATUS_CONFIG_ERROR	(1U << 1)
#define VUGPU_MMU_STATUS_FAULT_OVERFLOW	(1U << 2)	/* W1C */
#define VUGPU_MMU_STATUS_WAITING	(1U << 3)
#define VUGPU_MMU_CTX_MAX		4096
#define VUGPU_FAULT_RING_MAX		65536
/* §9.4 doorbell page words of the fault ring. */
#define VUGPU_DB_FAULT_PUT		0x800	/* device-written */
#define VUGPU_DB_FAULT_GET		0x804	/* driver-written */

/* §9.2 context table entry (16 bytes) and page-table entries (8 bytes). */
#define VUGPU_CTX_ENTRY_SIZE		16
#define VUGPU_CTX_VALID			(1ULL << 0)
#define VUGPU_CTX_APERTURE_SHIFT	5		/* bits 6:5: root table aperture */
#define VUGPU_PT_ADDR_MASK		0x000ffffffffff000ULL	/* bits 51:12 */
#define VUGPU_PTE_VALID			(1ULL << 0)
#define VUGPU_PTE_LEAF			(1ULL << 1)
#define VUGPU_PTE_READ			(1ULL << 2)
#define VUGPU_PTE_WRITE			(1ULL << 3)
#define VUGPU_PTE_ATOMIC		(1ULL << 4)
#define VUGPU_PTE_APERTURE_SHIFT	5		/* bits 6:5 */
#define VUGPU_PTE_APERTURE_MASK		(3ULL << VUGPU_PTE_APERTURE_SHIFT)
#define VUGPU_PTE_SW_SHIFT		56		/* bits 63:56: ignored by the device */
#define VUGPU_PT_LEVELS			4		/* level 3 = root */
#define VUGPU_PT_ENTRIES		512
#define VUGPU_PT_SIZE			4096
#define VUGPU_VA_BITS			48
#define VUGPU_PAGE_SHIFT_4K		12
#define VUGPU_PAGE_SHIFT_2M		21
#define VUGPU_PT_LEVEL_SHIFT(l)		(12 + 9 * (l))	/* VA bits of level l: shift .. shift + 8 */

/* §9.4 fault record (32 bytes). */
#define VUGPU_FAULT_REC_SIZE		32
#define VUGPU_FAULT_OFF_ADDR		0x00	/* u64 */
#define VUGPU_FAULT_OFF_CONTEXT		0x08	/* u16 */
#define VUGPU_FAULT_OFF_ENGINE		0x0a	/* u8 */
#define VUGPU_FAULT_OFF_ACCESS		0x0b	/* u8 */
#define VUGPU_FAULT_OFF_REASON		0x0c	/* u8 */
#define VUGPU_FAULT_OFF_LEVEL		0x0d	/* u8 */
#define VUGPU_FAULT_OFF_TIMESTAMP	0x10	/* u64 */
#define VUGPU_FAULT_OFF_SEQ		0x18	/* u32 */
#define VUGPU_FAULT_ACCESS_READ		0
#define VUGPU_FAULT_ACCESS_WRITE	1
#define VUGPU_FAULT_ACCESS_ATOMIC	2
#define VUGPU_FAULT_NOT_PRESENT		1
#define VUGPU_FAULT_PROTECTION		2
#define VUGPU_FAULT_BAD_PTE		3
#define VUGPU_FAULT_WALK_ERROR		4
#define VUGPU_FAULT_BAD_CONTEXT		5
#define VUGPU_FAULT_VA_RANGE		6

/* §8.1 per-engine 64-bit statistics counters (engine block offsets; _HI at +4). */
#define VUGPU_ENG_STAT_JOBS		0x40
#define VUGPU_ENG_STAT_BYTES_S2V	0x48
#define VUGPU_ENG_STAT_BYTES_V2S	0x50
#define VUGPU_ENG_STAT_BYTES_V2V	0x58
#define VUGPU_ENG_STAT_BYTES_S2S	0x60
#define VUGPU_ENG_STAT_BYTES_FILL	0x68
#define VUGPU_ENG_STAT_NS_REQUESTED	0x70
#define VUGPU_ENG_STAT_NS_USED		0x78
#define VUGPU_ENG_STAT_RO_REQUESTED	0x80
#define VUGPU_ENG_STAT_RO_USED		0x88
#define VUGPU_ENG_STAT_BYTES_NS		0x90
#define VUGPU_ENG_STAT_BYTES_RO		0x98
#define VUGPU_ENG_STAT_ERRORS		0xa0
#define VUGPU_ENG_STAT_IRQS		0xa8
#define VUGPU_ENG_NUM_STATS		((VUGPU_ENG_STATS_END - VUGPU_ENG_STATS_START) / 8)

/* §1.3 PCIe Device Control bits the engines honour (§7.1). */
#define VUGPU_DEVCTL_RELAX_EN		0x0010	/* bit 4 Enable Relaxed Ordering */
#define VUGPU_DEVCTL_NOSNOOP_EN		0x0800	/* bit 11 Enable No Snoop */

/* §1.1 Command bit 2: gates every memory request (engine DMA §6.7, MSI-X §3.1). */
#define VUGPU_PCI_COMMAND_MASTER	0x0004

/* §5 error reporting: config-space bits the device sets on engine errors. */
#define VUGPU_AER_UNCOR_CA		(1U << 15)	/* Completer Abort */
#define VUGPU_AER_UNCOR_UR		(1U << 20)	/* Unsupported Request */
#define VUGPU_AER_UNCOR_UIE		(1U << 22)	/* Uncorrectable Internal Error */
#define VUGPU_DEVSTA_CED		0x0001
#define VUGPU_DEVSTA_NFED		0x0002
#define VUGPU_DEVSTA_FED		0x0004
#define VUGPU_DEVSTA_URD		0x0008
#define VUGPU_PCI_STATUS_REC_TARGET_ABORT	0x1000	/* bit 12 */
#define VUGPU_PCI_STATUS_REC_MASTER_ABORT	0x2000	/* bit 13 */
#define VUGPU_PCI_STATUS_SIG_SYSTEM_ERROR	0x4000	/* bit 14 */

/* Layout checks: the map in §2 must be self-consistent. */
_Static_assert(VUGPU_REGFILE_START + VUGPU_REGFILE_SIZE <= VUGPU_MSIX_TABLE_OFFSET,
	       "register file overlaps the MSI-X table");
_Static_assert(VUGPU_MSIX_MAX_VECTORS * VUGPU_MSIX_ENTRY_SIZE == VUGPU_MSIX_TABLE_SIZE,
	       "MSI-X table size does not hold the maximum vector count");
_Static_assert(VUGPU_MSIX_TABLE_OFFSET + VUGPU_MSIX_TABLE_SIZE <= VUGPU_MSIX_PBA_OFFSET,
	       "MSI-X table overlaps the PBA");
_Static_assert(VUGPU_MSIX_MAX_VECTORS / 8 <= VUGPU_MSIX_PBA_SIZE,
	       "MSI-X PBA too small for the maximum vector count");
_Static_assert(VUGPU_MSIX_PBA_OFFSET + VUGPU_MSIX_PBA_SIZE <= VUGPU_BAR0_SIZE,
	       "MSI-X PBA outside BAR0");
_Static_assert((VUGPU_MSIX_TABLE_OFFSET & 7) == 0 && (VUGPU_MSIX_PBA_OFFSET & 7) == 0,
	       "MSI-X table/PBA offsets must be QWORD aligned (low 3 bits hold the BIR)");
_Static_assert(VUGPU_REG_IRQ_COUNT < VUGPU_REGFILE_SIZE, "register outside the register file");
_Static_assert(VUGPU_REG_SCRATCH(VUGPU_NUM_SCRATCH - 1) == VUGPU_REG_SCRATCH3,
	       "scratch registers are not contiguous");
_Static_assert((VUGPU_BAR0_SIZE & (VUGPU_BAR0_SIZE - 1)) == 0, "BAR0 size must be a power of two");
_Static_assert(VUGPU_REG_CLOCK_HI < VUGPU_DEVREGS_SIZE, "device register outside its block");
_Static_assert(VUGPU_ENGINE_REGS(VUGPU_ENGINE_MAX) == VUGPU_REGFILE_RSVD_START,
	       "engine blocks do not end where the RsvdZ range starts");
_Static_assert(VUGPU_ENG_STATS_END <= VUGPU_ENGINE_REGS_STRIDE, "engine block overflows its stride");
_Static_assert(VUGPU_DOORBELL_STRIDE_VALUE * VUGPU_ENGINE_MAX <= VUGPU_DOORBELL_PAGE_SIZE,
	       "doorbell words do not fit the doorbell page");
_Static_assert(VUGPU_MSIX_PBA_OFFSET + VUGPU_MSIX_PBA_SIZE <= VUGPU_DOORBELL_PAGE_OFFSET,
	       "doorbell page overlaps the MSI-X PBA");
_Static_assert(VUGPU_DOORBELL_PAGE_OFFSET + VUGPU_DOORBELL_PAGE_SIZE <= VUGPU_BAR0_SIZE,
	       "doorbell page outside BAR0");
_Static_assert(VUGPU_DESC_OFF_RSVD1 + 24 == VUGPU_DESC_SIZE,
	       "descriptor fields do not add up to 64 bytes");
_Static_assert(VUGPU_ENG_STAT_IRQS + 8 == VUGPU_ENG_STATS_END,
	       "statistics counters do not fill +0x40-+0xaf");
_Static_assert(VUGPU_ENG_NUM_STATS == 14, "§8.1 lists 14 counters");
_Static_assert(VUGPU_REG_MMU_STAT_INVALIDATIONS + 8 == VUGPU_REG_MMU_STAT_FAULTS + 8 * VUGPU_MMU_NUM_STATS,
	       "§9.1 counters are 0x340-0x377");
_Static_assert(VUGPU_DB_FAULT_GET + 4 <= VUGPU_DOORBELL_PAGE_SIZE &&
	       VUGPU_DOORBELL_STRIDE_VALUE * VUGPU_ENGINE_MAX <= VUGPU_DB_FAULT_PUT,
	       "fault ring words overlap the engines' doorbell words");
_Static_assert(VUGPU_PT_LEVEL_SHIFT(VUGPU_PT_LEVELS - 1) + 9 == VUGPU_VA_BITS,
	       "four levels of 512 entries translate 48 bits");

#endif /* VUGPU_HW_H */
