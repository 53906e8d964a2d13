/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vugpu HMM: the internal interface between
 *
 *   MIRROR side (helper hmm-mirror): vugpu_mmu.c (hw-spec §9: context table,
 *     4-level page tables, TLB_INVALIDATE / FAULT_REPLAY on the reserved MMU
 *     control engine, fault ring consumer) and vugpu_hmm.c (/dev/hmm_dmirrorN
 *     with lib/test_hmm_uapi.h's ABI, one struct vugpu_mirror per open,
 *     mmu_interval_notifier, READ/WRITE/SNAPSHOT/EXCLUSIVE/CHECK_EXCLUSIVE/
 *     FLAGS/RELEASE dispatch), and
 *
 *   DEVMEM side (helper hmm-devmem): vugpu_devmem.c (VRAM allocator owning
 *     BAR2's VRAM, memremap_pages(MEMORY_DEVICE_PRIVATE), migrate_vma to and
 *     from VRAM with the copy engines, migrate_to_ram, folio_free / page_free,
 *     THP device folios, eviction at RELEASE, close and remove, fail-alloc).
 *
 * Every declaration below says who implements it: [MIRROR] or [DEVMEM].
 * Kbuild links vugpu_devmem.o when the file exists and then defines
 * VUGPU_HAVE_DEVMEM; without it the MIGRATE_* ioctls fail with -EOPNOTSUPP.
 *
 * Ownership conventions (both sides rely on them):
 *   - The dev_pagemap owner of this GPU's device-private pages, the
 *     migrate_vma pgmap_owner, the hmm_range dev_private_owner and the
 *     make_device_exclusive owner are all the struct vugpu_device pointer.
 *     vugpu_hmm_page_is_local() tests exactly that.
 *   - A mirror (one open of /dev/hmm_dmirrorN) is one MMU context.  Its page
 *     tables map user VAs either to a SYS bus address (a system page, DMA-mapped
 *     once per GPU by the MIRROR side and shared by all its PTEs) or to a VRAM offset (a device-private
 *     page of this GPU, offset from vugpu_devmem_vram_offset()).
 *   - Device-private pages of this GPU may be mapped by several mirrors; the
 *     mirror does not hold page references (like test_hmm): an
 *     mmu_interval_notifier invalidation, or the DEVMEM side through
 *     vugpu_hmm_unmap_all_mirrors(), removes a mapping before the page goes
 *     away.
 *   - The mirror's interval notifier SKIPS MMU_NOTIFY_MIGRATE ranges whose
 *     owner is this vdev (like test_hmm), and MMU_NOTIFY_EXCLUSIVE ones of
 *     this vdev (make_device_exclusive by the mirror, which maps the page
 *     with ATOMIC itself); the DEVMEM side must therefore
 *     update every mirror's PTEs itself when it migrates:
 *       to VRAM:   after migrate_vma_pages(), vugpu_mirror_map_page() the new
 *                  device pages into the mirror that asked (MIGRATE_TO_DEV);
 *       to system: before migrate_vma_pages() / migrate_device_pages(),
 *                  vugpu_hmm_unmap_all_mirrors(vdev, ...) for the VA range
 *                  (migrate_to_ram, MIGRATE_TO_SYS) - it clears the PTEs of
 *                  every mirror of the GPU and waits for TLB_INVALIDATE;
 *                  only the runs of pages that really migrate (pages of the
 *                  range that stay keep their mappings, as in test_hmm).
 *     Eviction without a VA (migrate_device_range / migrate_device_pfns at
 *     RELEASE, close, remove) unmaps through try_to_migrate(), which sends
 *     MMU_NOTIFY_CLEAR without an owner: the mirrors clear their PTEs by
 *     themselves there.
 *
 * Locking (outermost first):
 *   hmm->rwsem (read: ioctl, open, release; write: remove) -> mirror->job_lock
 *   -> engines_rwsem (read) -> data engine->lock: one VIRT job, which waits
 *   for the device while the fault thread (FAULT_VECTOR's irq thread,
 *   holding none of these) services its faults:
 *   mmap_lock -> hmm->lock -> mirror->mutex -> mmu->ctl_lock -> control
 *   engine->lock (TLB_INVALIDATE, FAULT_REPLAY); mirror->mutex -> mmu->dma_lock
 *   (the shared DMA mappings).
 *   mirror->mutex is taken by the interval notifier, which reclaim may call:
 *   nothing under it allocates with reclaim (page tables and DMA entries come
 *   from pools, vugpu_mirror_pt_reserve(), else GFP_NOWAIT), and nothing under
 *   it takes engines_rwsem, which FLR holds for writing across the PCI core's
 *   config restore (that takes the MSI descriptor mutex, which allocates with
 *   reclaim elsewhere).  Resets take engines_rwsem for writing, then mark the
 *   MMU "resetting" under ctl_lock (vugpu_mmu_reset_prepare), and do not
 *   wait for the fault thread.
 */
#ifndef VUGPU_HMM_H
#define VUGPU_HMM_H

#include <linux/hmm.h>
#include <linux/interrupt.h>
#include <linux/wait.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/rwsem.h>
#include <linux/mm_types.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/version.h>

#include "vugpu_hw.h"
#include "vugpu_hmm_uapi.h"

struct vugpu_device;
struct vugpu_hw_desc;
struct vugpu_dma_ent;
struct vugpu_pt;
struct vugpu_virt_job;

/* --- [MIRROR] per-device MMU state (vugpu_mmu.c) ------------------------- */

#define VUGPU_MMU_CTX_COUNT		256	/* contexts the driver programs (0 unused) */

/* A 64-byte-aligned §9.4 fault record as it sits in the ring. */
struct vugpu_fault_rec {
	__le64	addr;
	__le16	context;
	u8	engine;
	u8	access;		/* VUGPU_FAULT_ACCESS_* */
	u8	reason;		/* VUGPU_FAULT_NOT_PRESENT ... */
	u8	level;
	__le16	rsvd0;
	__le64	timestamp;
	__le32	seq;
	__le32	rsvd1;
};

struct vugpu_mmu {
	struct vugpu_device	*vdev;
	bool			enabled;	/* MMU_STATUS.ENABLED after programming */
	unsigned int		ctl_engine;	/* engine reserved for TLB_INVALIDATE / FAULT_REPLAY */
	int			fault_irq;	/* Linux irq of FAULT_VECTOR */
	u32			fault_vector;

	__le64			*ctx_table;	/* VUGPU_MMU_CTX_COUNT * 16 bytes, coherent */
	dma_addr_t		ctx_table_dma;
	struct vugpu_fault_rec	*ring;		/* ring_slots records, coherent */
	u32			ring_slots;	/* module parameter fault_ring_slots */
	dma_addr_t		ring_dma;
	u32			fault_get;	/* records consumed (free-running), ctx_lock */
	u32			ring_gen;	/* bumped when a reset restarts the ring, ctx_lock */

	spinlock_t		ctx_lock;	/* ctx_mirror[], ctx ids, jobs[] */
	struct vugpu_mirror	*ctx_mirror[VUGPU_MMU_CTX_COUNT];
	struct vugpu_virt_job	*jobs[VUGPU_ENGINE_MAX];	/* VIRT job in flight per engine */
	unsigned long		ctx_used[BITS_TO_LONGS(VUGPU_MMU_CTX_COUNT)];

	/*
	 * The control engine's submissions (never engines_rwsem: see
	 * vugpu_mmu_reset_prepare).  Also guards resetting, stopped and (for
	 * vugpu_mmu_ctl_run) enabled.
	 */
	struct mutex		ctl_lock;
	bool			resetting;	/* FLR / SOFT_RESET between prepare and done */
	bool			stopped;	/* remove: never enabled again */
	wait_queue_head_t	job_wq;		/* a job's users dropped to 0 */
	atomic_t		next_engine;	/* data engine round robin */
	unsigned long		*fault_pfns;	/* the fault thread's hmm_pfns */

	/*
	 * DMA mappings of mirrored system pages: one per page (or 2 MiB THP)
	 * and GPU, shared by every PTE of every context that maps it
	 * (struct vugpu_dma_ent, vugpu_mmu.c), found by pfn when a PTE is
	 * written and by bus address when one is released.
	 */
	spinlock_t		dma_lock;
	struct hlist_head	*dma_by_pfn;
	struct hlist_head	*dma_by_addr;
	unsigned long		dma_maps;	/* live mappings (dma_lock) */
	/* driver statistics (VUGPU_DMIRROR_STATS) */
	atomic64_t		fault_irqs;	/* hard-IRQ handler runs on FAULT_VECTOR */
	atomic64_t		faults;		/* records consumed */
	atomic64_t		faults_serviced;	/* records answered with a replay */
	atomic64_t		cancels;	/* records answered with a cancel */
	atomic64_t		overflows;	/* FAULT_OVERFLOW seen: replayed all */
	atomic64_t		invalidations;	/* TLB_INVALIDATE descriptors issued */
	atomic64_t		stray;		/* records with no job in flight: cancelled */
	atomic64_t		service_ns;	/* fault thread: time spent servicing records */
	atomic64_t		ctl_runs;	/* control engine submissions */
	atomic64_t		ctl_ns;		/* ... and the time they took (doorbell to fence) */
};

/* --- [MIRROR] one mirror = one open of /dev/hmm_dmirrorN = one context ---- */

struct vugpu_mirror {
	struct vugpu_device	*vdev;
	struct vugpu_hmm	*hmm;		/* holds a reference */
	bool			dead;		/* torn down by remove (under job_lock + mutex) */
	struct mmu_interval_notifier notifier;	/* whole address space; notifier.mm */
	struct mutex		mutex;		/* page tables; taken by invalidate */
	struct mutex		job_lock;	/* one device (VIRT) job at a time */
	u16			ctx;		/* MMU context id, 1 .. VUGPU_MMU_CTX_COUNT-1 */
	struct vugpu_pt		*root;		/* level-3 table, allocated at open */
#define VUGPU_PT_POOL		4
	struct vugpu_pt		*pt_pool[VUGPU_PT_POOL];	/* reserved tables (m->mutex) */
	unsigned int		pt_pool_n;
#define VUGPU_DMA_POOL		512	/* a fault chunk (VUGPU_FAULT_CHUNK) of new mappings */
	struct vugpu_dma_ent	*dma_pool[VUGPU_DMA_POOL];	/* reserved DMA entries (m->mutex) */
	unsigned int		dma_pool_n;
	u64			flags;		/* HMM_DMIRROR_FLAG_* (FLAGS ioctl) */
	struct list_head	node;		/* vdev->hmm->mirrors, under hmm->lock */
	void			*devmem;	/* [DEVMEM] private per-mirror data, or NULL */

	/* statistics */
	atomic64_t		faults;		/* faults serviced for this mirror */
	atomic64_t		mapped_pages;	/* 4 KiB pages currently mapped */
};

/* Per-GPU HMM state, vdev->hmm. */
struct vugpu_hmm {
	struct vugpu_device	*vdev;		/* holds a reference */
	struct kref		ref;		/* the GPU binding + each mirror */
	struct rw_semaphore	rwsem;		/* read: an ioctl / open / release; write: remove */
	bool			dead;		/* removed (under rwsem write) */
	struct vugpu_mmu	mmu;
	struct miscdevice	misc;		/* /dev/hmm_dmirrorN, only with dmirror=1 */
	bool			misc_registered;
	char			name[24];
	struct mutex		lock;		/* mirrors */
	struct list_head	mirrors;
	void			*devmem;	/* [DEVMEM] per-GPU state, or NULL */
};

/* Permission bits of a mapping (vugpu_mirror_map_*, vugpu_mirror_lookup). */
#define VUGPU_MAP_READ		(1U << 0)
#define VUGPU_MAP_WRITE		(1U << 1)
#define VUGPU_MAP_ATOMIC	(1U << 2)	/* PTE ATOMIC: device atomics on a SYS page */
#define VUGPU_MAP_EXCLUSIVE	(1U << 3)	/* granted by make_device_exclusive (CHECK_EXCLUSIVE) */

/* What a VA maps to (vugpu_mirror_lookup). */
struct vugpu_mirror_lookup {
	u64		addr;		/* SYS bus address or VRAM offset of the VA's page */
	u8		aperture;	/* VUGPU_APERTURE_SYS / _VRAM */
	u8		order;		/* 0: 4 KiB entry, 9: 2 MiB entry */
	unsigned int	perm;		/* VUGPU_MAP_* */
};

/*
 * [MIRROR] Map @va (aligned to PAGE_SIZE << @order; order 0 or 9 =
 * HPAGE_PMD_ORDER) to @page with VUGPU_MAP_* @perm.  A device-private page of
 * this GPU (vugpu_hmm_page_is_local) is mapped to its VRAM offset
 * (vugpu_devmem_vram_offset); any other page is mapped to its SYS bus address
 * (the GPU's one DMA mapping of the page, taken for the PTE and dropped when
 * the PTE is cleared).  Replaces an
 * existing mapping (invalidating the TLB if it was valid).  Caller holds
 * m->mutex and has checked mmu_interval_read_retry() under it, or knows the
 * range cannot change (migration with the pages locked).
 */
int vugpu_mirror_map_page(struct vugpu_mirror *m, unsigned long va, struct page *page,
			  unsigned int order, unsigned int perm);

/*
 * [MIRROR] Reserve page tables for the next mappings.  Call it WITHOUT
 * m->mutex before a batch of vugpu_mirror_map_*() (which run under it and
 * must not enter reclaim: reclaim may call the mirror's notifier, which
 * takes m->mutex).  The map functions still work without it, allocating
 * with GFP_NOWAIT (they fail with -ENOMEM if that fails).
 */
void vugpu_mirror_pt_reserve(struct vugpu_mirror *m);

/* [MIRROR] Map @va to VRAM offset @vram_off directly (same rules). */
int vugpu_mirror_map_vram(struct vugpu_mirror *m, unsigned long va, u64 vram_off,
			  unsigned int order, unsigned int perm);

/*
 * [MIRROR] Clear every PTE in [start, end) (a 2 MiB entry that is only
 * partly covered is cleared whole), dma-unmap SYS pages, free page tables
 * that became empty, then TLB_INVALIDATE the range and wait for it: when this
 * returns the device no longer accesses the old pages.  Caller holds
 * m->mutex.  Returns 0, or -EIO if the invalidation could not be confirmed
 * (the device was reset; the TLB is empty then too).
 */
int vugpu_mirror_unmap(struct vugpu_mirror *m, unsigned long start, unsigned long end);

/* [MIRROR] What @va maps to: 0, or -ENOENT when not mapped.  Caller holds m->mutex. */
int vugpu_mirror_lookup(struct vugpu_mirror *m, unsigned long va,
			struct vugpu_mirror_lookup *out);

/*
 * [MIRROR] vugpu_mirror_unmap() of [start, end) in every mirror of the GPU
 * whose mm is @mm (NULL: every mirror).  Takes each mirror's mutex.
 */
void vugpu_hmm_unmap_all_mirrors(struct vugpu_device *vdev, struct mm_struct *mm,
				 unsigned long start, unsigned long end);

/*
 * [MIRROR] Read cmd->npages pages at cmd->addr through the device (COPY
 * from VIRT to a bounce buffer), copy them to cmd->ptr, set cmd->cpages.
 * With VUGPU_ACCESS_NOFAULT a fault is cancelled at once and the call
 * returns -ENOENT (test_hmm's read-back after MIGRATE_TO_DEV / EXCLUSIVE);
 * without it faults are serviced and counted in cmd->faults.  Takes
 * m->job_lock; must not be called with m->mutex held.
 */
#define VUGPU_ACCESS_NOFAULT	(1U << 0)
#define VUGPU_ACCESS_UNLOCKED	(1U << 1)	/* fault with hmm_range_fault_unlocked_timeout (7.3) */
int vugpu_mirror_read(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd, unsigned int flags);

/*
 * [MIRROR] Run @n descriptors (COPY / FILL between SYS and VRAM, no VIRT) on
 * one of the GPU's data engines (never the MMU control engine) and wait:
 * 0, -EIO (engine error: the engine is reset), -ETIMEDOUT, -ENODEV (removed).
 * Any number of descriptors (batched by the engine code).  May sleep; takes
 * engines_rwsem for reading.  Build descriptors with vugpu_desc_init().
 */
int vugpu_hmm_run_descs(struct vugpu_device *vdev, const struct vugpu_hw_desc *descs,
			unsigned int n);

/* [MIRROR] true if @page is a device-private page of this GPU (pgmap owner == vdev). */
bool vugpu_hmm_page_is_local(struct vugpu_device *vdev, struct page *page);

/* [MIRROR] the GPU whose device-private page this is, or NULL (any vugpu GPU). */
struct vugpu_device *vugpu_hmm_page_device(struct page *page);

/* [MIRROR] vugpu_mmu.c, called from vugpu_hmm.c / vugpu_main.c */
int vugpu_mmu_fault_vector(struct vugpu_device *vdev);	/* before the IRQs: -1 or the vector */
irqreturn_t vugpu_mmu_irq_thread(int irq, void *data);	/* FAULT_VECTOR's thread; data: vector */
int vugpu_mmu_probe(struct vugpu_device *vdev);		/* after the engines */
void vugpu_mmu_stop(struct vugpu_device *vdev);		/* remove: disable */
void vugpu_mmu_free_mem(struct vugpu_mmu *mmu);		/* remove: free memory */
/* FLR / SOFT_RESET, with engines_rwsem held for writing: before, and after (@ok: the device is READY) */
void vugpu_mmu_reset_prepare(struct vugpu_device *vdev);
void vugpu_mmu_reset_done(struct vugpu_device *vdev, bool ok);
bool vugpu_mmu_is_ctl_engine(struct vugpu_device *vdev, unsigned int engine);
/* [MIRROR] internal to vugpu_mmu.c / vugpu_hmm.c */
int vugpu_mmu_ctx_alloc(struct vugpu_mirror *m);
void vugpu_mmu_ctx_free(struct vugpu_mirror *m);
int vugpu_mmu_invalidate(struct vugpu_mirror *m, unsigned long start, unsigned long end);
bool vugpu_mirror_any_mapped(struct vugpu_mirror *m, unsigned long start, unsigned long end);
bool vugpu_mirror_any_exclusive(struct vugpu_mirror *m, unsigned long start, unsigned long end);
int vugpu_mirror_make_exclusive(struct vugpu_mirror *m, unsigned long start, unsigned long end);
int vugpu_mmu_run_virt(struct vugpu_mirror *m, struct vugpu_hw_desc *descs, unsigned int n,
		       unsigned long start, unsigned long end, unsigned int flags, u64 *faults);
struct vugpu_engine *vugpu_mmu_data_engine(struct vugpu_device *vdev);
void vugpu_mmu_read_stats(struct vugpu_device *vdev, u64 *hw);

/* [MIRROR] vugpu_hmm.c, called from vugpu_main.c probe / remove / reset */
int vugpu_hmm_probe(struct vugpu_device *vdev);
void vugpu_hmm_remove(struct vugpu_device *vdev);

/* --- [DEVMEM] hooks: vugpu_devmem.c (helper hmm-devmem) ------------------- */

#ifdef VUGPU_HAVE_DEVMEM
/*
 * [DEVMEM] Called by vugpu_hmm_probe() after the MMU is up and before
 * /dev/hmm_dmirrorN exists: register the device-private pgmap (owner = vdev)
 * for the VRAM the allocator owns.  Returning an error leaves the GPU
 * without device memory (MIGRATE_* then fail with that error); the mirror
 * still works.  Store per-GPU state in vdev->hmm->devmem.
 */
int vugpu_devmem_probe(struct vugpu_device *vdev);
/*
 * [DEVMEM] Called by vugpu_hmm_remove() after the dmirror node is gone and
 * every mirror is closed, with engines and MMU still running: migrate every
 * device page back to system memory and release the pgmap.
 */
void vugpu_devmem_remove(struct vugpu_device *vdev);
/* [DEVMEM] VRAM byte offset of a device-private page (any page of a folio) of this GPU. */
u64 vugpu_devmem_vram_offset(struct page *page);
/*
 * [DEVMEM] HMM_DMIRROR_MIGRATE_TO_DEV / _TO_SYS with test_hmm's semantics
 * (cmd->cpages; TO_DEV returns the data read back through the device with
 * vugpu_mirror_read(m, cmd, VUGPU_ACCESS_NOFAULT)).  Called with no lock held.
 * Fail-alloc: if (m->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC) the next device
 * allocation fails and the flag is cleared (as test_hmm does).
 */
int vugpu_devmem_migrate_to_dev(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd);
int vugpu_devmem_migrate_to_sys(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd);
/* [DEVMEM] HMM_DMIRROR_RELEASE: evict every device page of the GPU (test_hmm: remove chunks). */
int vugpu_devmem_release(struct vugpu_device *vdev);
/* [DEVMEM] A mirror's file is closing (test_hmm evicts the GPU's chunks on close). */
void vugpu_devmem_mirror_close(struct vugpu_mirror *m);
#endif

#endif /* VUGPU_HMM_H */
