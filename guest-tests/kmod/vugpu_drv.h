/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vugpu driver internals shared by vugpu_main.c (PCI binding, character
 * device, register/VRAM/reset ioctls), vugpu_engine.c (DMA engines: rings,
 * doorbells, completion, errors, engine reset) and vugpu_dma.c (DMA jobs:
 * user memory pinning and mapping, descriptor building, the DMA ioctls).
 *
 * Locking (outermost first):
 *   mmap_lock -> vdev->lock          mmap of BAR2 (fops_mmap)
 *   vdev->lock -> vdev->engines_rwsem (write)   FLR, sysfs reset, SOFT_RESET
 *   vdev->engines_rwsem (read) -> engine->lock  one DMA job
 * A DMA job never takes vdev->lock and never touches user memory while it
 * holds engines_rwsem: user pages are pinned (and raw descriptors copied)
 * before, and unpinned after, so the mmap_lock -> vdev->lock -> rwsem ->
 * mmap_lock cycle cannot form.  Resets and remove take engines_rwsem for
 * writing, so no job is in flight while an engine is reprogrammed or its
 * memory freed.
 */
#ifndef VUGPU_DRV_H
#define VUGPU_DRV_H

#include <linux/atomic.h>
#include <linux/build_bug.h>
#include <linux/completion.h>
#include <linux/interrupt.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>

#include "vugpu_hw.h"
#include "vugpu_uapi.h"

/* The ioctl ABI states the descriptor limit on its own; it must be the hardware's. */
static_assert(VUGPU_DMA_MAX_LEN == VUGPU_DESC_MAX_LENGTH);

#define VUGPU_DRIVER_NAME	"vugpu"

/* Rings: default size and the per-engine VRAM ring reservation. */
#define VUGPU_RING_SLOTS_DEFAULT	1024
#define VUGPU_VRAM_RING_SLOTS_MAX	1024
#define VUGPU_VRAM_RING_BYTES		(VUGPU_VRAM_RING_SLOTS_MAX * VUGPU_DESC_SIZE)

/* Scratch buffer: [guard][inner][guard], one coherent allocation. */
#define VUGPU_SCRATCH_GUARD		PAGE_SIZE
#define VUGPU_SCRATCH_INNER		(64 * 1024)

/* Per-engine coherent page: where the engine writes fences and timestamps. */
#define VUGPU_SLOT_SEQ			0	/* the driver's completion fence */
#define VUGPU_SLOT_FENCE		1	/* FENCE with VUGPU_MEM_NONE */
#define VUGPU_SLOT_TIMESTAMP		2	/* TIMESTAMP with VUGPU_MEM_NONE */
#define VUGPU_SLOTS			3

/* A hw-spec §7 descriptor as it sits in the ring. */
struct vugpu_hw_desc {
	u8	opcode;
	u8	flags;
	u8	src_aperture;
	u8	dst_aperture;
	__le16	context;	/* §9.5: MMU context of a VIRT aperture, else 0 */
	__le16	rsvd0;
	__le64	src;
	__le64	dst;
	__le64	length;
	__le64	value;
	__le64	rsvd1[3];
};
static_assert(sizeof(struct vugpu_hw_desc) == VUGPU_DESC_SIZE);
static_assert(sizeof(struct vugpu_desc) == VUGPU_DESC_SIZE);

struct vugpu_device;
struct vugpu_engine;
struct vugpu_hmm;
struct vugpu_vram;

/* One MSI-X vector: its handler's bookkeeping. */
struct vugpu_vector {
	struct vugpu_device	*vdev;
	struct vugpu_engine	*engine;	/* the engine completing here, or NULL */
	unsigned int		index;
	int			irq;
	atomic64_t		count;		/* interrupts handled */
	atomic_t		test_armed;	/* IRQ_TEST in flight: read/ack IRQ_STATUS */
	bool			mmu_fault;	/* FAULT_VECTOR (§9): threaded, no MMIO in hard IRQ */
	u64			stamp_ns;	/* ktime of the last interrupt */
	u32			status;		/* IRQ_STATUS the last interrupt saw */
	struct completion	done;
	char			name[32];
};

/* What one job did (filled by vugpu_engine_run). */
struct vugpu_job_result {
	u64			elapsed_ns;	/* doorbell to completion, all batches */
	u64			seq;		/* last driver fence */
	u32			descs;		/* data descriptors submitted */
	u32			fences;		/* driver fences submitted with them */
	u32			result;		/* VUGPU_DMA_DONE / _ENGINE_ERROR / _TIMEOUT */
	struct vugpu_engine_regs regs;	/* valid unless result == DONE (or @want_regs) */
};

struct vugpu_engine {
	struct vugpu_device	*vdev;
	unsigned int		index;
	struct mutex		lock;		/* one job at a time on this engine */
	void __iomem		*regs;		/* engine register block */
	void __iomem		*doorbell;	/* this engine's words in the doorbell page */

	/* ring: SYS (coherent) or VRAM (through the BAR2 mapping) */
	u32			slots;
	bool			ring_vram;
	void			*ring_sys;
	dma_addr_t		ring_sys_dma;
	u32			ring_sys_slots;	/* size of the current coherent ring */
	u64			ring_vram_off;
	u32			tail;		/* descriptors made available (free-running) */
	bool			ready;		/* enabled, IDLE after the last job */
	bool			need_reset;	/* stopped in ERROR: reset before the next job */

	/* completion */
	__le64			*slot;		/* coherent page, VUGPU_SLOT_* */
	dma_addr_t		slot_dma;
	u64			seq;		/* last driver fence submitted */
	wait_queue_head_t	wq;
	atomic_t		err_pending;	/* vector 0 saw ERR_CAUSE bit i */
	spinlock_t		irq_err_lock;
	struct vugpu_engine_regs irq_err;	/* error registers read by vector 0 */

	/*
	 * The engine has one statistics latch (§8.1): a _LO read latches the
	 * counter's high half for the next _HI read.  Readers of the counters
	 * take this, so two never interleave their LO/HI pairs.
	 */
	struct mutex		stats_lock;

	/* driver statistics (struct vugpu_engine_stats) */
	atomic64_t		jobs;
	atomic64_t		descs;
	atomic64_t		irq_waits;
	atomic64_t		poll_waits;
	atomic64_t		completion_irqs;
	atomic64_t		err_irqs;
	atomic64_t		errors;
	atomic64_t		timeouts;
	atomic64_t		resets;
	atomic64_t		doorbell_wakes;
	atomic64_t		missed_irqs;
};

/*
 * A peer window (hw-spec §6.10) as the driver programmed it: the bus range of a
 * peer's memory BAR that QEMU never announced (e.g. an NVMe CMB), which the
 * engines reach with DMA messages.  size 0: free.
 */
struct vugpu_peer_win {
	u64			base;
	u64			size;
	u64			last_use;	/* vdev->peer_win_clock at the last job using it */
	unsigned int		users;		/* jobs using it now: not evicted */
};

struct vugpu_device {
	struct pci_dev		*pdev;
	struct kref		ref;		/* the PCI binding + each open file */
	struct mutex		lock;		/* see vugpu_main.c */
	bool			dead;		/* removed: no hardware access */
	atomic_t		gone;		/* surprise removal seen (reads all ones) */
	int			index;		/* N in /dev/vugpuN */
	char			name[16];
	struct miscdevice	misc;

	void __iomem		*regs;		/* BAR0 register file */
	void __iomem		*vram;		/* the CPU window of BAR2, write-combined */
	resource_size_t		vram_bar_start;
	resource_size_t		vram_bar_size;	/* all of BAR2 */
	resource_size_t		vram_bar_len;	/* the CPU window: BAR2 below p2pmem */
	resource_size_t		p2p_size;	/* top of BAR2 registered as p2pmem (p2pmem_mb) */
	resource_size_t		p2p_off;	/* where p2pmem starts in BAR2 */
	u64			devmem_limit;	/* device-private VRAM allowed (devmem_mb) */
	struct vugpu_vram	*vram_alloc;	/* the VRAM allocator (vugpu_vram.c) */
	u64			vram_size;	/* VRAM_SIZE register */
	u32			version;

	u32			num_vectors;
	struct vugpu_vector	*vectors;
	unsigned int		irqs_requested;

	/* FLR / SOFT_RESET bookkeeping */
	struct task_struct	*reset_owner;	/* task holding ->lock across a reset */
	bool			reset_took_lock;
	struct vugpu_regs	reset_regs;	/* snapshot taken in reset_done */
	int			reset_ready_err;

	/*
	 * Every open file uses the first opener's inode mapping, so all user
	 * mappings of BAR2 live in one address_space and remove can zap them.
	 */
	unsigned int		open_count;
	struct inode		*map_inode;

	/* DMA engines (vugpu_engine.c) */
	struct rw_semaphore	engines_rwsem;	/* read: a job; write: reset, remove */
	bool			engines_dead;	/* removed (under engines_rwsem write) */
	u32			engine_count;	/* ENGINE_COUNT (0 when unsupported) */
	u32			vector_base;	/* ENGINE_VECTOR_BASE */
	int			engines_init_err;
	struct vugpu_engine	*engines;
	void __iomem		*doorbells;	/* the BAR0 doorbell page */
	u32			doorbell_stride;
	u64			vram_ring_base;	/* VRAM reserved for VRAM rings */
	u64			vram_ring_size;
	void			*scratch;	/* guard + inner + guard */
	dma_addr_t		scratch_dma;
	atomic64_t		vec0_irqs;
	atomic64_t		err_irqs;
	atomic64_t		recoveries;
	atomic64_t		timeouts;

	/*
	 * Peer windows (vugpu_dma.c): under peer_win_lock, which nests inside
	 * engines_rwsem (jobs hold it for reading, resets and remove for
	 * writing while they restore or close the windows).
	 */
	struct mutex		peer_win_lock;
	unsigned int		peer_win_count;	/* 0: the device has none (CAPS bit 4) */
	u64			peer_win_clock;
	struct vugpu_peer_win	peer_win[VUGPU_PEER_WIN_COUNT];

	/* Device MMU and HMM mirror / device memory (vugpu_hmm.h), or NULL. */
	struct vugpu_hmm	*hmm;
};

/* The function was seen gone (surprise removal, hw-spec §10): no MMIO is worth it. */
static inline bool vugpu_is_gone(struct vugpu_device *vdev)
{
	return atomic_read(&vdev->gone);
}

bool vugpu_check_gone(struct vugpu_device *vdev);

static inline u32 vugpu_rd(struct vugpu_device *vdev, u32 reg)
{
	return ioread32(vdev->regs + reg);
}

static inline void vugpu_wr(struct vugpu_device *vdev, u32 reg, u32 val)
{
	iowrite32(val, vdev->regs + reg);
}

/* vugpu_main.c */
irqreturn_t vugpu_irq_handler(int irq, void *data);
void vugpu_get(struct vugpu_device *vdev);
void vugpu_put(struct vugpu_device *vdev);

/* module parameters (vugpu_main.c) */
extern uint vugpu_dma_timeout_ms;
extern uint vugpu_ring_slots;
extern bool vugpu_ring_vram;

/* vugpu_engine.c */
int vugpu_engines_probe(struct vugpu_device *vdev);
void vugpu_engines_stop(struct vugpu_device *vdev);
void vugpu_engines_remove(struct vugpu_device *vdev);
void vugpu_engines_reinit(struct vugpu_device *vdev);
/* vugpu_dma.c: peer windows, with engines_rwsem held for writing */
void vugpu_peer_wins_restore(struct vugpu_device *vdev);
void vugpu_peer_wins_close(struct vugpu_device *vdev);
void vugpu_engine_irq(struct vugpu_vector *vec);
void vugpu_error_irq(struct vugpu_device *vdev);
void vugpu_engine_read_regs(struct vugpu_engine *eng, struct vugpu_engine_regs *r);
int vugpu_engine_reset(struct vugpu_engine *eng, u32 slots, bool ring_vram);
int vugpu_engine_prepare(struct vugpu_engine *eng);
int vugpu_engine_run(struct vugpu_engine *eng, const struct vugpu_hw_desc *descs,
		     unsigned int n, u32 flags, struct vugpu_job_result *res);
void vugpu_engine_stats(struct vugpu_engine *eng, struct vugpu_engine_stats *st);
u64 vugpu_read_clock(struct vugpu_device *vdev);
u64 vugpu_scratch_guard_bad(struct vugpu_device *vdev);
void vugpu_scratch_rearm(struct vugpu_device *vdev);
void vugpu_desc_init(struct vugpu_hw_desc *d, u8 opcode, u32 dma_flags);

/* vugpu_dma.c */
long vugpu_dma_ioctl(struct vugpu_device *vdev, unsigned int command, void __user *uarg);
int vugpu_dma_info(struct vugpu_device *vdev, struct vugpu_cmd *cmd);
int vugpu_engine_stats_ioctl(struct vugpu_device *vdev, struct vugpu_cmd *cmd);
int vugpu_error_state(struct vugpu_device *vdev, struct vugpu_cmd *cmd);
int vugpu_scratch_xfer(struct vugpu_device *vdev, struct vugpu_cmd *cmd, bool write);

/* vugpu_vram.c: the VRAM allocator (probe order: layout, setup, clients_ready) */
int vugpu_vram_layout(struct vugpu_device *vdev, unsigned int devmem_mb);
int vugpu_vram_setup(struct vugpu_device *vdev);
int vugpu_vram_clients_ready(struct vugpu_device *vdev);
void vugpu_vram_fini(struct vugpu_device *vdev);
int vugpu_vram_alloc(struct vugpu_device *vdev, u64 size, u64 align, u64 *off);
void vugpu_vram_free(struct vugpu_device *vdev, u64 off, u64 size);
u64 vugpu_vram_avail(struct vugpu_device *vdev);

#endif /* VUGPU_DRV_H */
