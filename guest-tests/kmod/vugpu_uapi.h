/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Private user API of the vugpu test driver (/dev/vugpuN).
 *
 * Shaped like lib/test_hmm_uapi.h: every ioctl takes the same command struct,
 * whose fields are marked (in) or (out).  The driver zeroes every (out) field
 * before dispatching and copies the struct back only when the command
 * succeeds.  Not a stable ABI: it is versioned with the module and the tests
 * that are built from the same tree.
 */
#ifndef VUGPU_UAPI_H
#define VUGPU_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/**
 * struct vugpu_cmd - argument of every VUGPU_IOCTL_*
 * @ptr:	(in) user buffer: data for VRAM transfers, or a struct
 *		vugpu_info / vugpu_regs to fill.
 * @size:	(in) size of @ptr in bytes.
 * @offset:	(in) BAR0 register offset (REG_*), VRAM byte offset (VRAM_*),
 *		or MSI-X vector number (IRQ_TEST).
 * @value:	(in) value for REG_WRITE; (out) value read by REG_READ, or the
 *		IRQ_STATUS bits the interrupt handler saw for IRQ_TEST.
 * @elapsed_ns:	(out) IRQ_TEST: trigger-to-handler latency; FLR/SOFT_RESET:
 *		duration of the reset; VRAM_*: duration of the copy.
 * @count:	(out) IRQ_TEST: interrupts handled on that vector since the
 *		driver bound; VRAM_*: bytes copied.
 */
struct vugpu_cmd {
	__u64 ptr;
	__u64 size;
	__u64 offset;
	__u64 value;
	__u64 elapsed_ns;
	__u64 count;
};

#define VUGPU_PCI_NAME_LEN	32

/**
 * struct vugpu_info - VUGPU_IOCTL_GET_INFO result (written to cmd.ptr)
 *
 * PCI identity comes from the kernel's pci_dev (config space as enumerated);
 * the register values are read from BAR0 at the time of the call.
 */
struct vugpu_info {
	__u16 vendor;
	__u16 device;
	__u16 subsystem_vendor;
	__u16 subsystem_device;
	__u32 class;			/* 24-bit class code */
	__u8 revision;
	__u8 pad0[3];
	__u32 id;			/* ID register */
	__u32 version;			/* VERSION register */
	__u32 caps;			/* CAPS register */
	__u32 num_vectors;		/* MSI-X vectors allocated by the driver */
	__u64 bar0_start;		/* bus/physical address of BAR0 */
	__u64 bar0_size;
	__u64 bar2_start;
	__u64 bar2_size;
	__u64 vram_size;		/* VRAM_SIZE_HI:VRAM_SIZE_LO */
	char pci_name[VUGPU_PCI_NAME_LEN];	/* e.g. "0000:01:00.0", NUL-terminated */
};

/**
 * struct vugpu_regs - register file snapshot (FLR / SOFT_RESET result)
 *
 * Read by the driver right after the reset completed and before any driver
 * state was restored, so it shows what the hardware reset left behind.
 */
struct vugpu_regs {
	__u32 id;
	__u32 version;
	__u32 caps;
	__u32 num_vectors;
	__u32 vram_size_lo;
	__u32 vram_size_hi;
	__u32 status;
	__u32 irq_status;
	__u32 scratch[4];
	__u32 vram_index_lo;
	__u32 vram_index_hi;
	__u32 irq_count;
	__u16 pci_command;		/* config space Command after the reset */
	__u16 pci_devctl;		/* PCIe Device Control after the reset */
	__u32 engine_count;		/* spec >= 0.2, else 0 (RsvdZ) */
	__u32 err_cause;		/* spec >= 0.2, else 0 (RsvdZ) */
};

_Static_assert(sizeof(struct vugpu_cmd) == 48, "struct vugpu_cmd layout changed");
_Static_assert(sizeof(struct vugpu_info) == 104, "struct vugpu_info layout changed");
_Static_assert(sizeof(struct vugpu_regs) == 72, "struct vugpu_regs layout changed");

/* Transfers larger than this are rejected with -E2BIG. */
#define VUGPU_MAX_XFER		(16U << 20)

/*
 * nr	name			uses
 * 0	GET_INFO		ptr/size -> struct vugpu_info
 * 1	REG_READ		offset -> value
 * 2	REG_WRITE		offset, value
 * 3	IRQ_TEST		offset = vector -> value, elapsed_ns, count
 * 4	VRAM_READ		BAR2 (CPU view) -> ptr: offset, size
 * 5	VRAM_WRITE		ptr -> BAR2: offset, size
 * 6	VRAM_WINDOW_READ	VRAM_INDEX/VRAM_DATA (device view) -> ptr
 * 7	VRAM_WINDOW_WRITE	ptr -> VRAM_INDEX/VRAM_DATA
 * 8	FLR			pci_reset_function; ptr/size -> struct vugpu_regs
 * 9	SOFT_RESET		SOFT_RESET register; ptr/size -> struct vugpu_regs
 */
#define VUGPU_IOCTL_GET_INFO		_IOWR('V', 0x00, struct vugpu_cmd)
#define VUGPU_IOCTL_REG_READ		_IOWR('V', 0x01, struct vugpu_cmd)
#define VUGPU_IOCTL_REG_WRITE		_IOWR('V', 0x02, struct vugpu_cmd)
#define VUGPU_IOCTL_IRQ_TEST		_IOWR('V', 0x03, struct vugpu_cmd)
#define VUGPU_IOCTL_VRAM_READ		_IOWR('V', 0x04, struct vugpu_cmd)
#define VUGPU_IOCTL_VRAM_WRITE		_IOWR('V', 0x05, struct vugpu_cmd)
#define VUGPU_IOCTL_VRAM_WINDOW_READ	_IOWR('V', 0x06, struct vugpu_cmd)
#define VUGPU_IOCTL_VRAM_WINDOW_WRITE	_IOWR('V', 0x07, struct vugpu_cmd)
#define VUGPU_IOCTL_FLR			_IOWR('V', 0x08, struct vugpu_cmd)
#define VUGPU_IOCTL_SOFT_RESET		_IOWR('V', 0x09, struct vugpu_cmd)

/*
 * ---- DMA copy engines (hw-spec §6-§8) --------------------------------------
 *
 * Every engine job is submitted by the driver to one engine's ring, ended by
 * a driver FENCE descriptor (sequence number into coherent memory), and
 * waited for before the ioctl returns (5 s by default, module parameter
 * dma_timeout_ms): jobs on one engine are serialised, engines are
 * independent.  Memory operands are described by a type and an address:
 */
#define VUGPU_MEM_USER		0	/* user virtual address: pinned (FOLL_LONGTERM, or
					 * FOLL_PCI_P2PDMA with VUGPU_DMA_P2PDMA), dma_map_sg */
#define VUGPU_MEM_VRAM		1	/* VRAM byte offset (device view, whole VRAM) */
#define VUGPU_MEM_SCRATCH	2	/* offset into the driver's guarded coherent scratch buffer */
#define VUGPU_MEM_BUS		3	/* raw SYS bus address, unchecked (test driver: bad-address tests) */
#define VUGPU_MEM_NONE		4	/* FENCE / TIMESTAMP: the driver's own coherent slot */
#define VUGPU_MEM_TYPES		5

/* struct vugpu_dma.flags */
#define VUGPU_DMA_IRQ		(1U << 0)	/* wait for the completion interrupt (else poll the fence) */
#define VUGPU_DMA_NO_SNOOP	(1U << 1)	/* request No Snoop on the data descriptors */
#define VUGPU_DMA_RELAXED	(1U << 2)	/* request Relaxed Ordering on the data descriptors */
#define VUGPU_DMA_DB_REG	(1U << 3)	/* ring the doorbell through RING_TAIL (trapped) */
#define VUGPU_DMA_RESET_ON_ERROR (1U << 4)	/* reset the engine right after an error */
#define VUGPU_DMA_RING_VRAM	(1U << 5)	/* ENGINE_RESET: put the ring in VRAM */
#define VUGPU_DMA_DB_PAGE_ONLY	(1U << 6)	/* doorbell page store only, without the §6.4
						 * SLEEPING check (for comparisons) */
#define VUGPU_DMA_P2PDMA	(1U << 7)	/* COPY: USER operands may be PCI P2PDMA memory (a peer's
						 * p2pmem mapped by the process): pinned with
						 * FOLL_PCI_P2PDMA (not FOLL_LONGTERM, which the kernel
						 * refuses with it) and mapped to bus addresses when
						 * pci_p2pdma allows the path, else bounced through
						 * system memory (out_flags BOUNCED). Without the flag
						 * such memory is refused (-EREMOTEIO) */
#define VUGPU_DMA_FLAGS_ALL	0xffU

/* struct vugpu_dma.out_flags */
#define VUGPU_DMA_OUT_BOUNCED	(1U << 0)	/* a P2P operand the device may not reach directly
						 * (pci_p2pdma refused the path) went through a
						 * system-memory bounce buffer */
#define VUGPU_DMA_OUT_P2P_BUS	(1U << 1)	/* a P2P operand was mapped to PCI bus addresses
						 * (peer-to-peer below a switch) */

/* struct vugpu_dma.result */
#define VUGPU_DMA_DONE		0	/* every descriptor completed */
#define VUGPU_DMA_ENGINE_ERROR	1	/* the engine stopped in ERROR (ioctl: -EIO) */
#define VUGPU_DMA_TIMEOUT	2	/* no completion in time; engine reset (ioctl: -ETIMEDOUT),
					 * or none because the function is gone (-ENODEV) */

/**
 * struct vugpu_engine_regs - engine registers (hw-spec §6.3) as the driver
 * read them: after a failed job, or by ERROR_STATE.
 */
struct vugpu_engine_regs {
	__u32 status;		/* STATUS (state in bits 3:0) */
	__u32 error_code;	/* ERROR_CODE, §6.6 */
	__u64 error_addr;	/* ERROR_ADDR_HI:LO */
	__u32 error_info;	/* ERROR_INFO */
	__u32 head;		/* RING_HEAD */
	__u32 tail;		/* RING_TAIL (the doorbell word) */
	__u32 control;		/* CONTROL */
};

/**
 * struct vugpu_dma - argument of the DMA ioctls (0x11-0x16)
 * @engine:	(in) engine index (< ENGINE_COUNT).
 * @flags:	(in) VUGPU_DMA_*.
 * @src_type, @dst_type: (in) VUGPU_MEM_* of @src / @dst.
 * @src, @dst:	(in) addresses (COPY: both; FILL/FENCE/TIMESTAMP: @dst;
 *		RAW_SUBMIT: @src = user pointer to @count struct vugpu_desc).
 * @length:	(in) bytes (COPY, FILL).
 * @value:	(in) FILL pattern (32 bit), FENCE value, ENGINE_RESET ring
 *		slots (0: keep the current size); (out) FENCE / TIMESTAMP: the
 *		value read back from where the engine wrote it, when the driver
 *		can read it (NONE, SCRATCH, USER, VRAM inside BAR2); otherwise
 *		unchanged (FENCE: the requested value; TIMESTAMP: 0).
 * @count:	(in) COPY: number of times the job runs (0 or 1: once; each
 *		run is a separate fenced job, for job-rate measurements);
 *		RAW_SUBMIT: number of descriptors (1-VUGPU_RAW_MAX).
 * @elapsed_ns:	(out) doorbell to completion, summed over the runs.
 * @seq:	(out) sequence number of the job's last driver fence.
 * @clock_before, @clock_after: (out) TIMESTAMP: device CLOCK read by the
 *		driver before the doorbell and after completion.
 * @descs:	(out) data descriptors submitted, per run (one per contiguous DMA
 *		segment pair for COPY; RAW_SUBMIT: @count).
 * @fences:	(out) driver completion fences submitted with them, per run (one
 *		per batch of at most ring slots - 1 descriptors).
 * @result:	(out) VUGPU_DMA_DONE / _ENGINE_ERROR / _TIMEOUT.
 * @regs:	(out) engine registers after the job (read on error, on
 *		timeout before the reset, and always for RAW_SUBMIT).
 * @out_flags:	(out) VUGPU_DMA_OUT_*: how P2P operands were reached.
 *
 * The struct is copied back on success and also when the ioctl fails with
 * -EIO (engine error), -ETIMEDOUT or -ENODEV (the function is gone: surprise
 * removal, hw-spec §10; @regs as read, all ones), so the caller sees @result
 * and @regs.
 */
struct vugpu_dma {
	__u32 engine;
	__u32 flags;
	__u32 src_type;
	__u32 dst_type;
	__u64 src;
	__u64 dst;
	__u64 length;
	__u64 value;
	__u64 count;
	__u64 elapsed_ns;
	__u64 seq;
	__u64 clock_before;
	__u64 clock_after;
	__u32 descs;
	__u32 result;
	struct vugpu_engine_regs regs;
	__u32 fences;
	__u32 out_flags;
};

/* A raw hw-spec §7 descriptor (RAW_SUBMIT copies it to the ring unchanged). */
struct vugpu_desc {
	__u8 opcode;
	__u8 flags;
	__u8 src_aperture;
	__u8 dst_aperture;
	__u32 rsvd0;
	__u64 src;
	__u64 dst;
	__u64 length;
	__u64 value;
	__u64 rsvd1[3];
};

#define VUGPU_DMA_INFO_REARM	1ULL	/* DMA_INFO cmd.value: rewrite the guard canaries after reading */
#define VUGPU_RAW_MAX		256	/* descriptors per RAW_SUBMIT */
#define VUGPU_DMA_MAX_LEN	(1ULL << 30)	/* bytes per COPY / FILL (a descriptor's limit) */
#define VUGPU_DMA_MAX_USER	(64ULL << 20)	/* bytes of user memory pinned per job */
#define VUGPU_COPY_REPEAT_MAX	100000

/**
 * struct vugpu_dma_info - DMA_INFO result (cmd.ptr)
 *
 * The scratch buffer is one dma_alloc_coherent() allocation laid out as
 * [guard][inner][guard]; the guards hold a canary the driver checks on
 * every DMA_INFO (@guard_bad: bytes that differ now).  Only the inner area
 * may be the target of an engine write (VUGPU_MEM_SCRATCH offsets, or raw
 * descriptors built from @scratch_dma).
 */
struct vugpu_dma_info {
	__u32 engine_count;	/* 0: no engines, every DMA ioctl fails with -ENODEV */
	__u32 vector_base;	/* engine i completes on MSI-X vector base + i */
	__u32 ring_slots[16];	/* per engine (0 beyond engine_count) */
	__u32 ring_vram_mask;	/* bit i: engine i's ring is in VRAM */
	__u32 timeout_ms;	/* the driver's wait bound */
	__s32 init_error;	/* 0, or -errno: the engines could not be brought up */
	__u32 ready_mask;	/* bit i: engine i is enabled and usable */
	__u64 vram_size;
	__u64 vram_ring_base;	/* VRAM [base, base + size) is reserved for VRAM rings */
	__u64 vram_ring_size;
	__u64 scratch_dma;	/* bus address of the inner area */
	__u64 scratch_size;	/* bytes of the inner area */
	__u64 guard_size;	/* bytes of each guard */
	__u64 guard_bad;	/* guard bytes that lost their canary (0: intact) */
	__u64 vec0_irqs;	/* vector 0 interrupts handled */
	__u64 err_irqs;		/* engine errors reported by vector 0 (ERR_CAUSE bits) */
	__u64 recoveries;	/* engine resets done by the driver to recover */
	__u64 timeouts;		/* jobs that timed out */
	__u64 ring_base[16];	/* per engine: RING_BASE (bus address, or VRAM offset) */
};

/**
 * struct vugpu_engine_stats - ENGINE_STATS result (cmd.offset = engine, cmd.ptr)
 * @hw:	the §8.1 counters in register order (JOBS ... IRQS), each read
 *	_LO then _HI (snapshot semantics).
 * The rest are the driver's own counts for this engine.
 */
struct vugpu_engine_stats {
	__u64 hw[14];
	__u64 jobs;		/* jobs completed */
	__u64 descs;		/* descriptors submitted */
	__u64 irq_waits;	/* jobs waited for by interrupt (missed_irqs of
				 * them completed by the missed-interrupt check) */
	__u64 poll_waits;	/* jobs completed by fence polling */
	__u64 completion_irqs;	/* engine vector interrupts handled */
	__u64 err_irqs;		/* ERR_CAUSE bits seen by vector 0 for this engine */
	__u64 errors;		/* jobs that ended in an engine error */
	__u64 timeouts;
	__u64 resets;		/* engine resets (ioctl, recovery, timeout) */
	__u64 doorbell_wakes;	/* doorbell-page submissions that also wrote RING_TAIL
				 * because SLEEPING read 1 (§6.4) */
	__u64 missed_irqs;	/* interrupt waits that found the fence written without
				 * an interrupt (a lost MSI-X message, hw-spec §10) */
	struct vugpu_engine_regs irq_error;	/* STATUS, ERROR_* as the vector 0 handler
						 * read them at the last error (head/tail/
						 * control not read: 0) */
};

/**
 * struct vugpu_error_state - ERROR_STATE result (cmd.ptr); cmd.value bit 0:
 * after reading, clear (W1C) the AER Uncorrectable Status, Device Status
 * error bits and the config Status error bits.
 */
struct vugpu_error_state {
	__u32 engine_count;
	__u32 err_cause;		/* ERR_CAUSE register now */
	struct vugpu_engine_regs engine[16];
	__u32 aer_uncor_status;
	__u32 aer_uncor_mask;
	__u32 aer_uncor_severity;
	__u32 aer_cap_ctrl;		/* First Error Pointer in bits 4:0 */
	__u32 aer_header_log[4];
	__u16 devsta;			/* PCIe Device Status */
	__u16 pci_status;		/* config Status (0x06) */
	__u16 devctl;			/* PCIe Device Control */
	__u16 aer_pos;			/* config offset of AER, 0 if absent */
	__u64 vec0_irqs;
	__u64 err_irqs;
};

#define VUGPU_ERROR_STATE_CLEAR	1ULL

_Static_assert(sizeof(struct vugpu_engine_regs) == 32, "struct vugpu_engine_regs layout changed");
_Static_assert(sizeof(struct vugpu_dma) == 136, "struct vugpu_dma layout changed");
_Static_assert(sizeof(struct vugpu_desc) == 64, "struct vugpu_desc is not a 64-byte descriptor");
_Static_assert(sizeof(struct vugpu_dma_info) == 304, "struct vugpu_dma_info layout changed");
_Static_assert(sizeof(struct vugpu_engine_stats) == 232,
	       "struct vugpu_engine_stats layout changed");
_Static_assert(sizeof(struct vugpu_error_state) == 576, "struct vugpu_error_state layout changed");

/*
 * nr	name			argument
 * 0x10	DMA_INFO		vugpu_cmd: ptr/size -> struct vugpu_dma_info; value
 *				VUGPU_DMA_INFO_REARM re-arms the guard canaries
 * 0x11	DMA_COPY		vugpu_dma: src -> dst, length [, count repeats]
 * 0x12	DMA_FILL		vugpu_dma: dst, length, value (32-bit pattern)
 * 0x13	DMA_FENCE		vugpu_dma: FENCE value at dst (or the driver's slot)
 * 0x14	DMA_TIMESTAMP		vugpu_dma: TIMESTAMP at dst (or the driver's slot)
 * 0x15	DMA_RAW_SUBMIT		vugpu_dma: src = user array of count raw descriptors
 * 0x16	ENGINE_RESET		vugpu_dma: engine; flags RING_VRAM, value = ring slots
 * 0x17	ENGINE_STATS		vugpu_cmd: offset = engine, ptr/size -> struct vugpu_engine_stats
 * 0x18	ERROR_STATE		vugpu_cmd: ptr/size -> struct vugpu_error_state, value CLEAR
 * 0x19	DEVCTL			vugpu_cmd: offset = mask (NOSNOOP_EN | RELAX_EN), value = new
 *				bits under the mask (pcie_capability_set/clear_word);
 *				(out) count = Device Control after
 * 0x1a	SCRATCH_READ		vugpu_cmd: inner scratch [offset, offset + size) -> ptr
 * 0x1b	SCRATCH_WRITE		vugpu_cmd: ptr -> inner scratch
 * 0x1c	BUS_MASTER		vugpu_cmd: value VUGPU_BUS_MASTER_* (pci_clear_master /
 *				pci_set_master / nothing); (out) count = PCI Command after
 * 0x1e	P2P_DISTANCE		vugpu_cmd: offset = provider's PCI address (domain << 16 |
 *				bus << 8 | devfn) -> value = pci_p2pdma_distance(provider,
 *				this GPU) as a signed 64-bit number (< 0: refused)
 * 0x1d	IRQ_COUNTS		vugpu_cmd: ptr/size -> __u64 per MSI-X vector: interrupts
 *				handled since the driver bound (min(size / 8, vectors)
 *				entries); (out) count = number of vectors
 */
#define VUGPU_IOCTL_DMA_INFO		_IOWR('V', 0x10, struct vugpu_cmd)
#define VUGPU_IOCTL_DMA_COPY		_IOWR('V', 0x11, struct vugpu_dma)
#define VUGPU_IOCTL_DMA_FILL		_IOWR('V', 0x12, struct vugpu_dma)
#define VUGPU_IOCTL_DMA_FENCE		_IOWR('V', 0x13, struct vugpu_dma)
#define VUGPU_IOCTL_DMA_TIMESTAMP	_IOWR('V', 0x14, struct vugpu_dma)
#define VUGPU_IOCTL_DMA_RAW_SUBMIT	_IOWR('V', 0x15, struct vugpu_dma)
#define VUGPU_IOCTL_ENGINE_RESET	_IOWR('V', 0x16, struct vugpu_dma)
#define VUGPU_IOCTL_ENGINE_STATS	_IOWR('V', 0x17, struct vugpu_cmd)
#define VUGPU_IOCTL_ERROR_STATE		_IOWR('V', 0x18, struct vugpu_cmd)
#define VUGPU_IOCTL_DEVCTL		_IOWR('V', 0x19, struct vugpu_cmd)
#define VUGPU_IOCTL_SCRATCH_READ	_IOWR('V', 0x1a, struct vugpu_cmd)
#define VUGPU_IOCTL_SCRATCH_WRITE	_IOWR('V', 0x1b, struct vugpu_cmd)
#define VUGPU_IOCTL_BUS_MASTER		_IOWR('V', 0x1c, struct vugpu_cmd)
#define VUGPU_IOCTL_IRQ_COUNTS		_IOWR('V', 0x1d, struct vugpu_cmd)
#define VUGPU_IOCTL_P2P_DISTANCE	_IOWR('V', 0x1e, struct vugpu_cmd)

/* BUS_MASTER cmd.value: Command bit 2, Bus Master Enable (hw-spec §1.1, §3.1, §6.7) */
#define VUGPU_BUS_MASTER_CLEAR	0	/* pci_clear_master() */
#define VUGPU_BUS_MASTER_SET	1	/* pci_set_master() */
#define VUGPU_BUS_MASTER_QUERY	2	/* only read Command */

/*
 * mmap(2) of /dev/vugpuN maps BAR2 (VRAM, write-combined); the file offset
 * is the byte offset into the BAR and must be page aligned.
 */

#endif /* VUGPU_UAPI_H */
