// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu device MMU (docs/hw-spec.md §9): contexts, page tables, TLB
 * invalidation, the fault ring and replay / cancel.
 *
 * Per GPU (struct vugpu_mmu, in vdev->hmm):
 *   - a context table of VUGPU_MMU_CTX_COUNT entries and a fault ring of
 *     fault_ring_slots records, both in dma_alloc_coherent() memory;
 *     context 0 is never handed out (a descriptor's context field is 0
 *     when it uses no VIRT aperture);
 *   - the last engine is reserved for MMU control: TLB_INVALIDATE and
 *     FAULT_REPLAY descriptors, which never wait on a fault (§9.4).  VIRT
 *     work runs on the other engines only;
 *   - FAULT_VECTOR has a threaded handler.  The hard-IRQ half (vugpu_main.c's
 *     handler) only counts and wakes the thread; the thread reads FAULT_PUT
 *     from the mmapped doorbell page, services each record and stores
 *     FAULT_GET there: no trapped MMIO on the fault path.
 *
 * Per mirror (struct vugpu_mirror, one context): 4-level page tables of 4 KiB
 * tables (dma_alloc_coherent), allocated on demand and freed when empty or
 * at teardown.  A leaf maps a 4 KiB page (level 0) or a 2 MiB page (level
 * 1) either to a SYS bus address (a system page's DMA mapping, shared with
 * every other PTE of this GPU that maps the page: struct vugpu_dma_ent) or
 * to a VRAM offset (a device-private page of this GPU).
 *
 * Unmapping is two-phase: leaves in the range lose VALID (the address and
 * the software bits stay: a "zombie"), the TLB is invalidated and waited
 * for, and only then are the zombies' DMA mappings undone and empty tables
 * freed, so the device never reaches memory the kernel took back.
 *
 * A VIRT job (vugpu_mmu_run_virt) is registered per engine while it runs.
 * A fault names the engine; the fault thread finds the job, faults the
 * mirrored range in with hmm_range_fault() from the faulting address to the
 * end of the job's range (so a job touching N unmapped pages costs one
 * fault, as test_hmm counts them), fills the PTEs and replays the context.
 * On failure it cancels: the engine stops with TRANSLATION and the job
 * returns the fault's error (-EFAULT, -EPERM, ... as test_hmm would).
 * A mirror runs one VIRT job at a time (mirror->job_lock), so a cancel,
 * which is per context, only ever stops that job.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/hash.h>
#include <linux/hmm.h>
#include <linux/huge_mm.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/log2.h>
#include <linux/memremap.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>
#include <linux/version.h>

#include "vugpu_drv.h"
#include "vugpu_hmm.h"

/* The driver's use of the PTE software bits (vugpu_hw.h: from VUGPU_PTE_SW_SHIFT, ignored by the device). */
#define VUGPU_PTE_SW_DMA	(1ULL << (VUGPU_PTE_SW_SHIFT + 0))	/* SYS page: holds a vugpu_dma_ent reference */
#define VUGPU_PTE_SW_EXCL	(1ULL << (VUGPU_PTE_SW_SHIFT + 1))	/* granted by make_device_exclusive */
#define VUGPU_PTE_SW_ZOMBIE	(1ULL << (VUGPU_PTE_SW_SHIFT + 2))	/* cleared, waiting for the TLB invalidation */

#define VUGPU_SZ_2M		(1UL << VUGPU_PAGE_SHIFT_2M)

static uint fault_ring_slots = 1024;
module_param(fault_ring_slots, uint, 0444);
MODULE_PARM_DESC(fault_ring_slots, "Device MMU fault ring records, a power of two 1-65536 (default 1024; fewer than the engines lets records overflow, for tests)");

static bool virt_wait_irq = true;
module_param(virt_wait_irq, bool, 0644);
MODULE_PARM_DESC(virt_wait_irq, "Device jobs on mirrored memory wait for the completion interrupt instead of polling the fence (default Y)");
#define VUGPU_FAULT_CHUNK	512	/* pages per hmm_range_fault call */
/* Past this many bytes an invalidation covers the whole context. */
#define VUGPU_INV_WHOLE		(1ULL << 32)

struct vugpu_pt {
	__le64			*cpu;
	dma_addr_t		dma;
	unsigned int		valid;		/* entries with VALID or ZOMBIE set */
	struct vugpu_pt		*child[];	/* levels 3..1: VUGPU_PT_ENTRIES */
};

struct vugpu_virt_job {
	struct vugpu_mirror	*m;
	unsigned long		start, end;	/* VA range the job touches */
	unsigned int		flags;		/* VUGPU_ACCESS_* */
	int			err;		/* first servicing error */
	u64			faults;
	unsigned int		users;		/* fault thread using it (ctx_lock) */
	bool			done;		/* unregistered */
};

static inline struct vugpu_mmu *vugpu_mmu(struct vugpu_device *vdev)
{
	return vdev->hmm ? &vdev->hmm->mmu : NULL;
}

/* --- page tables ------------------------------------------------------------- */

static void vugpu_pt_free(struct vugpu_device *vdev, struct vugpu_pt *pt)
{
	dma_free_coherent(&vdev->pdev->dev, VUGPU_PT_SIZE, pt->cpu, pt->dma);
	kfree(pt);
}

/* Every table has room for child pointers (only levels 3..1 use them). */
static struct vugpu_pt *vugpu_pt_alloc_gfp(struct vugpu_device *vdev, gfp_t gfp)
{
	size_t sz = sizeof(struct vugpu_pt) + VUGPU_PT_ENTRIES * sizeof(void *);
	struct vugpu_pt *pt = kzalloc(sz, gfp);

	if (!pt)
		return NULL;
	pt->cpu = dma_alloc_coherent(&vdev->pdev->dev, VUGPU_PT_SIZE, &pt->dma, gfp);
	if (!pt->cpu) {
		kfree(pt);
		return NULL;
	}
	return pt;
}

/*
 * A table for the page-table walk, which runs under m->mutex: that mutex
 * is taken by the interval notifier, which reclaim may call, so nothing
 * allocated under it may enter reclaim.  Take a table reserved beforehand
 * (vugpu_mirror_pt_reserve), else try without reclaim.
 */
static struct vugpu_pt *vugpu_pt_alloc(struct vugpu_mirror *m)
{
	lockdep_assert_held(&m->mutex);
	if (m->pt_pool_n) {
		struct vugpu_pt *pt = m->pt_pool[--m->pt_pool_n];

		memset(pt->cpu, 0, VUGPU_PT_SIZE);
		memset(pt->child, 0, VUGPU_PT_ENTRIES * sizeof(void *));
		pt->valid = 0;
		return pt;
	}
	return vugpu_pt_alloc_gfp(m->vdev, GFP_NOWAIT | __GFP_NOWARN);
}

/*
 * One DMA mapping of a system page (order 0) or of a PMD-mapped THP (order
 * 9) for this GPU.  Every PTE of every context that maps the page holds one
 * reference (valid and zombie PTEs alike), so the page has one streaming
 * mapping per device however often it is mirrored: the zero page behind
 * every read-faulted anonymous page, a page mirrored by two processes, a page
 * re-mapped while its zombie waits for the TLB_INVALIDATE fence.  (The DMA
 * API does not allow overlapping mappings of one buffer; DMA_API_DEBUG
 * reports them as "cacheline tracking EEXIST".)  A 4 KiB PTE of the first
 * page of a 2 MiB mapping shares that mapping (same bus address); a 2 MiB
 * PTE over a page mapped alone cannot, and is written as 4 KiB PTEs instead.
 * The other pages of a THP may have 4 KiB mappings of their own inside a 2
 * MiB one: distinct buffers that start on different cache lines, harmless
 * on the coherent, unbounced DMA path the MMU requires (vugpu_mmu_probe).
 *
 * Two GPUs mirroring one page (hmm-tests' double_map) still map it twice,
 * once per device, and DMA_API_DEBUG tracks cache lines across devices: the
 * mappings carry VUGPU_MIRROR_DMA_ATTRS, which tell the DMA API that the page
 * is shared with the CPU without ownership passes and cache maintenance.
 *
 * Entries are found by pfn when a PTE is written and by bus address when one
 * is released (a PTE holds only the bus address); both hashes and the
 * counts are under mmu->dma_lock, which also covers the dma_map / dma_unmap
 * calls, so a page is never mapped twice even for a moment.  Entries come
 * from the mirror's pool (filled where reclaim is allowed) because the map
 * and release paths run under m->mutex.
 */
struct vugpu_dma_ent {
	struct hlist_node	by_pfn;
	struct hlist_node	by_addr;
	unsigned long		pfn;		/* first page */
	dma_addr_t		dma;
	unsigned long		refs;		/* PTEs holding it */
	unsigned int		order;
};

#define VUGPU_DMA_HASH_BITS	14
static_assert(VUGPU_DMA_POOL >= VUGPU_FAULT_CHUNK, "a fault chunk of new mappings fits the pool");

/*
 * The DMA attributes of mirrored pages.  The CPU and the device use them at
 * the same time, so the mapping must need no cache maintenance and no bounce
 * buffer.  Kernels with DMA_ATTR_REQUIRE_COHERENT (7.x; what their own
 * hmm_dma_map_pfn() uses) fail such a mapping otherwise, and DMA_API_DEBUG
 * accepts overlapping mappings that all carry it.  6.12 has neither: the MMU
 * is only used where the path is coherent and unbounced (vugpu_mmu_probe),
 * where the CPU syncs are no-ops, so the mappings skip them, which is also
 * what 6.12's DMA_API_DEBUG accepts for overlapping mappings.
 */
#ifdef DMA_ATTR_REQUIRE_COHERENT
#define VUGPU_MIRROR_DMA_ATTRS	DMA_ATTR_REQUIRE_COHERENT
#else
#define VUGPU_MIRROR_DMA_ATTRS	DMA_ATTR_SKIP_CPU_SYNC
#endif

static struct hlist_head *vugpu_dma_bucket(struct hlist_head *tbl, unsigned long key)
{
	return &tbl[hash_long(key, VUGPU_DMA_HASH_BITS)];
}

/* Back to the pool, or freed.  Caller holds m->mutex. */
static void vugpu_dma_ent_free(struct vugpu_mirror *m, struct vugpu_dma_ent *e)
{
	if (m->dma_pool_n < VUGPU_DMA_POOL)
		m->dma_pool[m->dma_pool_n++] = e;
	else
		kfree(e);
}

/*
 * A reference to the DMA mapping of @page (@order 0 or 9) for @m's GPU,
 * mapping it if it has none: 0 and *@dma, -EXDEV (cannot be one 2 MiB
 * mapping: write 4 KiB PTEs), -ENOMEM.  Caller holds m->mutex.
 */
static int vugpu_dma_get(struct vugpu_mirror *m, struct page *page, unsigned int order,
			 dma_addr_t *dma)
{
	struct vugpu_mmu *mmu = vugpu_mmu(m->vdev);
	struct device *dev = &m->vdev->pdev->dev;
	unsigned long pfn = page_to_pfn(page);
	size_t size = PAGE_SIZE << order;
	struct vugpu_dma_ent *e;
	dma_addr_t addr;
	int ret = 0;

	lockdep_assert_held(&m->mutex);
	spin_lock(&mmu->dma_lock);
	hlist_for_each_entry(e, vugpu_dma_bucket(mmu->dma_by_pfn, pfn), by_pfn) {
		if (e->pfn != pfn)
			continue;
		if (e->order < order) {
			ret = -EXDEV;
		} else {
			e->refs++;
			*dma = e->dma;
		}
		goto out;
	}
	if (m->dma_pool_n)
		e = m->dma_pool[--m->dma_pool_n];
	else
		e = kmalloc(sizeof(*e), GFP_NOWAIT | __GFP_NOWARN);
	if (!e) {
		ret = -ENOMEM;
		goto out;
	}
	addr = dma_map_page_attrs(dev, page, 0, size, DMA_BIDIRECTIONAL, VUGPU_MIRROR_DMA_ATTRS);
	if (dma_mapping_error(dev, addr)) {
		vugpu_dma_ent_free(m, e);
		ret = -ENOMEM;
		goto out;
	}
	if (!IS_ALIGNED(addr, size)) {
		/* A 2 MiB leaf needs a 2 MiB-aligned bus address. */
		dma_unmap_page_attrs(dev, addr, size, DMA_BIDIRECTIONAL, VUGPU_MIRROR_DMA_ATTRS);
		vugpu_dma_ent_free(m, e);
		ret = order ? -EXDEV : -EINVAL;
		goto out;
	}
	e->pfn = pfn;
	e->dma = addr;
	e->order = order;
	e->refs = 1;
	hlist_add_head(&e->by_pfn, vugpu_dma_bucket(mmu->dma_by_pfn, pfn));
	hlist_add_head(&e->by_addr, vugpu_dma_bucket(mmu->dma_by_addr, addr >> PAGE_SHIFT));
	mmu->dma_maps++;
	*dma = addr;
out:
	spin_unlock(&mmu->dma_lock);
	return ret;
}

/* Drop a PTE's reference to the mapping at bus address @dma.  Caller holds m->mutex. */
static void vugpu_dma_put(struct vugpu_mirror *m, dma_addr_t dma)
{
	struct vugpu_mmu *mmu = vugpu_mmu(m->vdev);
	struct vugpu_dma_ent *e;

	lockdep_assert_held(&m->mutex);
	spin_lock(&mmu->dma_lock);
	hlist_for_each_entry(e, vugpu_dma_bucket(mmu->dma_by_addr, dma >> PAGE_SHIFT), by_addr) {
		if (e->dma != dma)
			continue;
		if (--e->refs) {
			spin_unlock(&mmu->dma_lock);
			return;
		}
		hlist_del(&e->by_pfn);
		hlist_del(&e->by_addr);
		mmu->dma_maps--;
		dma_unmap_page_attrs(&m->vdev->pdev->dev, dma, PAGE_SIZE << e->order,
				     DMA_BIDIRECTIONAL, VUGPU_MIRROR_DMA_ATTRS);
		spin_unlock(&mmu->dma_lock);
		vugpu_dma_ent_free(m, e);
		return;
	}
	spin_unlock(&mmu->dma_lock);
	/* A PTE with SW_DMA always holds a reference: this is a driver bug. */
	WARN_ONCE(1, "vugpu: no DMA mapping at %pad\n", &dma);
}

/*
 * Fill the mirror's pools (called without m->mutex, may reclaim): page
 * tables for a fault chunk or a 2 MiB mapping (3 new tables), DMA entries
 * for a fault chunk of pages mapped for the first time.
 */
void vugpu_mirror_pt_reserve(struct vugpu_mirror *m)
{
	for (;;) {
		struct vugpu_dma_ent *batch[16];
		unsigned int n, i;

		mutex_lock(&m->mutex);
		n = min_t(unsigned int, VUGPU_DMA_POOL - m->dma_pool_n, ARRAY_SIZE(batch));
		mutex_unlock(&m->mutex);
		if (!n)
			break;
		for (i = 0; i < n; i++) {
			batch[i] = kmalloc(sizeof(*batch[i]), GFP_KERNEL);
			if (!batch[i])
				break;
		}
		n = i;
		mutex_lock(&m->mutex);
		for (i = 0; i < n && m->dma_pool_n < VUGPU_DMA_POOL; i++)
			m->dma_pool[m->dma_pool_n++] = batch[i];
		mutex_unlock(&m->mutex);
		for (; i < n; i++)
			kfree(batch[i]);
		if (n < ARRAY_SIZE(batch))
			break;
	}
	for (;;) {
		struct vugpu_pt *pt;

		mutex_lock(&m->mutex);
		if (m->pt_pool_n >= VUGPU_PT_POOL) {
			mutex_unlock(&m->mutex);
			return;
		}
		mutex_unlock(&m->mutex);
		pt = vugpu_pt_alloc_gfp(m->vdev, GFP_KERNEL);
		if (!pt)
			return;
		mutex_lock(&m->mutex);
		if (m->pt_pool_n < VUGPU_PT_POOL) {
			m->pt_pool[m->pt_pool_n++] = pt;
			pt = NULL;
		}
		mutex_unlock(&m->mutex);
		if (pt) {
			vugpu_pt_free(m->vdev, pt);
			return;
		}
	}
}


static unsigned int vugpu_pt_index(unsigned long va, unsigned int level)
{
	return (va >> VUGPU_PT_LEVEL_SHIFT(level)) & (VUGPU_PT_ENTRIES - 1);
}

static u64 vugpu_pte_get(struct vugpu_pt *pt, unsigned int i)
{
	return le64_to_cpu(READ_ONCE(pt->cpu[i]));
}

static void vugpu_pte_set(struct vugpu_pt *pt, unsigned int i, u64 v)
{
	WRITE_ONCE(pt->cpu[i], cpu_to_le64(v));
}

static unsigned int vugpu_pte_perm(u64 pte)
{
	unsigned int perm = 0;

	if (pte & VUGPU_PTE_READ)
		perm |= VUGPU_MAP_READ;
	if (pte & VUGPU_PTE_WRITE)
		perm |= VUGPU_MAP_WRITE;
	if (pte & VUGPU_PTE_ATOMIC)
		perm |= VUGPU_MAP_ATOMIC;
	if (pte & VUGPU_PTE_SW_EXCL)
		perm |= VUGPU_MAP_EXCLUSIVE;
	return perm;
}

/* Drop the DMA mapping reference of a leaf (valid or zombie). */
static void vugpu_pte_release(struct vugpu_mirror *m, u64 pte)
{
	if (pte & VUGPU_PTE_SW_DMA)
		vugpu_dma_put(m, pte & VUGPU_PT_ADDR_MASK);
}

/*
 * Find (or, with @alloc, create) the table at @level covering @va; NULL if
 * absent (or out of memory) or if a 2 MiB leaf sits on the way.
 */
static struct vugpu_pt *vugpu_pt_walk(struct vugpu_mirror *m, unsigned long va,
				      unsigned int level, bool alloc)
{
	struct vugpu_pt *pt = m->root;
	unsigned int l;

	for (l = VUGPU_PT_LEVELS - 1; l > level; l--) {
		unsigned int i = vugpu_pt_index(va, l);
		struct vugpu_pt *c = pt->child[i];

		if (!c) {
			u64 e = vugpu_pte_get(pt, i);

			if (!alloc || (e & (VUGPU_PTE_VALID | VUGPU_PTE_SW_ZOMBIE)))
				return NULL;
			c = vugpu_pt_alloc(m);
			if (!c)
				return NULL;
			pt->child[i] = c;
			pt->valid++;
			/* The new table is zeroed (coherent) before the device can see it. */
			wmb();
			vugpu_pte_set(pt, i, (c->dma & VUGPU_PT_ADDR_MASK) | VUGPU_PTE_VALID |
				      ((u64)VUGPU_APERTURE_SYS << VUGPU_PTE_APERTURE_SHIFT));
		}
		pt = c;
	}
	return pt;
}

static u64 vugpu_leaf_bits(unsigned int perm, unsigned int aperture, unsigned int order)
{
	u64 v = VUGPU_PTE_VALID | VUGPU_PTE_LEAF | ((u64)aperture << VUGPU_PTE_APERTURE_SHIFT);

	if (perm & VUGPU_MAP_READ)
		v |= VUGPU_PTE_READ;
	if (perm & VUGPU_MAP_WRITE)
		v |= VUGPU_PTE_WRITE;
	if (perm & VUGPU_MAP_ATOMIC)
		v |= VUGPU_PTE_ATOMIC;
	if (perm & VUGPU_MAP_EXCLUSIVE)
		v |= VUGPU_PTE_SW_EXCL;
	return v;
}

/* Free the (empty) subtree under entry @i of @pt at @level and clear the entry. */
static void vugpu_pt_free_tree(struct vugpu_mirror *m, struct vugpu_pt *pt, unsigned int level)
{
	unsigned int i;

	for (i = 0; i < VUGPU_PT_ENTRIES; i++) {
		u64 e = vugpu_pte_get(pt, i);

		if (level && pt->child[i]) {
			vugpu_pt_free_tree(m, pt->child[i], level - 1);
			pt->child[i] = NULL;
		} else if (e & (VUGPU_PTE_VALID | VUGPU_PTE_SW_ZOMBIE)) {
			vugpu_pte_release(m, e);
		}
	}
	vugpu_pt_free(m->vdev, pt);
}

/*
 * Set a leaf.  Returns 1 if a valid translation was replaced (the caller
 * invalidates the TLB before the device may rely on the new one), 0, or a
 * negative error.  The old leaf's DMA mapping is undone at once: callers
 * replace a valid leaf only with the same page (permission change) or after
 * invalidating.
 */
static int vugpu_set_leaf(struct vugpu_mirror *m, unsigned long va, u64 leaf, unsigned int order)
{
	unsigned int level = order ? 1 : 0;
	struct vugpu_pt *pt = vugpu_pt_walk(m, va, level, true);
	unsigned int i = vugpu_pt_index(va, level);
	int replaced = 0;
	u64 old;

	if (!pt) {
		/* A 2 MiB leaf above a 4 KiB one: drop it first (caller invalidates). */
		struct vugpu_pt *l1 = vugpu_pt_walk(m, va, 1, true);
		unsigned int j = vugpu_pt_index(va, 1);

		if (!l1)
			return -ENOMEM;
		old = vugpu_pte_get(l1, j);
		if (!(old & VUGPU_PTE_LEAF))
			return -ENOMEM;
		vugpu_pte_set(l1, j, 0);
		l1->valid--;
		vugpu_pte_release(m, old);
		if (old & VUGPU_PTE_VALID)
			atomic64_sub(VUGPU_PT_ENTRIES, &m->mapped_pages);
		replaced = 1;
		pt = vugpu_pt_walk(m, va, level, true);
		if (!pt)
			return -ENOMEM;
	}
	if (level == 1 && pt->child[i]) {
		/* 4 KiB leaves under a new 2 MiB one: free the level-0 table. */
		struct vugpu_pt *c = pt->child[i];
		unsigned int k;

		for (k = 0; k < VUGPU_PT_ENTRIES; k++)
			if (vugpu_pte_get(c, k) & VUGPU_PTE_VALID)
				atomic64_dec(&m->mapped_pages);
		vugpu_pte_set(pt, i, 0);
		pt->child[i] = NULL;
		pt->valid--;
		vugpu_pt_free_tree(m, c, 0);
		replaced = 1;
	}
	old = vugpu_pte_get(pt, i);
	if (old & (VUGPU_PTE_VALID | VUGPU_PTE_SW_ZOMBIE)) {
		vugpu_pte_release(m, old);
		if (old & VUGPU_PTE_VALID) {
			replaced = 1;
			atomic64_sub(level ? VUGPU_PT_ENTRIES : 1, &m->mapped_pages);
		}
	} else {
		pt->valid++;
	}
	vugpu_pte_set(pt, i, leaf);
	atomic64_add(level ? VUGPU_PT_ENTRIES : 1, &m->mapped_pages);
	return replaced;
}

static int vugpu_map_checked(struct vugpu_mirror *m, unsigned long va, unsigned int order)
{
	if (order != 0 && order != VUGPU_PAGE_SHIFT_2M - PAGE_SHIFT)
		return -EINVAL;
	if (!IS_ALIGNED(va, PAGE_SIZE << order) || va >= 1UL << VUGPU_VA_BITS)
		return -EINVAL;
	return 0;
}

/* Map and report whether a valid translation was replaced (1). */
static int vugpu_mirror_map_vram_r(struct vugpu_mirror *m, unsigned long va, u64 vram_off,
				   unsigned int order, unsigned int perm)
{
	int ret = vugpu_map_checked(m, va, order);

	if (ret)
		return ret;
	if (!IS_ALIGNED(vram_off, PAGE_SIZE << order) ||
	    vram_off + (PAGE_SIZE << order) > m->vdev->vram_size)
		return -EINVAL;
	return vugpu_set_leaf(m, va, (vram_off & VUGPU_PT_ADDR_MASK) |
			      vugpu_leaf_bits(perm, VUGPU_APERTURE_VRAM, order), order);
}

static int vugpu_mirror_map_page_r(struct vugpu_mirror *m, unsigned long va, struct page *page,
				   unsigned int order, unsigned int perm)
{
	struct vugpu_device *vdev = m->vdev;
	dma_addr_t dma;
	int ret;

	if (vugpu_hmm_page_is_local(vdev, page)) {
#ifdef VUGPU_HAVE_DEVMEM
		/* Device memory needs no ATOMIC bit (§9.2). */
		return vugpu_mirror_map_vram_r(m, va, vugpu_devmem_vram_offset(page), order, perm);
#else
		return -EOPNOTSUPP;
#endif
	}
	if (is_device_private_page(page))
		return -EREMOTE;	/* another device's memory: hmm faults it to RAM */
	ret = vugpu_map_checked(m, va, order);
	if (ret)
		return ret;
	ret = vugpu_dma_get(m, page, order, &dma);
	if (ret)
		return ret;
	ret = vugpu_set_leaf(m, va, (dma & VUGPU_PT_ADDR_MASK) | VUGPU_PTE_SW_DMA |
			     vugpu_leaf_bits(perm, VUGPU_APERTURE_SYS, order), order);
	if (ret < 0)
		vugpu_dma_put(m, dma);
	return ret;
}

int vugpu_mirror_map_page(struct vugpu_mirror *m, unsigned long va, struct page *page,
			  unsigned int order, unsigned int perm)
{
	int ret = vugpu_mirror_map_page_r(m, va, page, order, perm);

	if (ret == 1)
		return vugpu_mmu_invalidate(m, va, va + (PAGE_SIZE << order));
	return ret;
}

int vugpu_mirror_map_vram(struct vugpu_mirror *m, unsigned long va, u64 vram_off,
			  unsigned int order, unsigned int perm)
{
	int ret = vugpu_mirror_map_vram_r(m, va, vram_off, order, perm);

	if (ret == 1)
		return vugpu_mmu_invalidate(m, va, va + (PAGE_SIZE << order));
	return ret;
}

int vugpu_mirror_lookup(struct vugpu_mirror *m, unsigned long va, struct vugpu_mirror_lookup *out)
{
	struct vugpu_pt *pt = m->root;
	unsigned int l;

	if (!pt || va >= 1UL << VUGPU_VA_BITS)
		return -ENOENT;
	for (l = VUGPU_PT_LEVELS - 1;; l--) {
		unsigned int i = vugpu_pt_index(va, l);
		u64 e = vugpu_pte_get(pt, i);

		if (!(e & VUGPU_PTE_VALID))
			return -ENOENT;
		if (e & VUGPU_PTE_LEAF) {
			unsigned int shift = VUGPU_PT_LEVEL_SHIFT(l);

			out->addr = (e & VUGPU_PT_ADDR_MASK) + (va & ((1UL << shift) - 1) & PAGE_MASK);
			out->aperture = (e & VUGPU_PTE_APERTURE_MASK) >> VUGPU_PTE_APERTURE_SHIFT;
			out->order = l ? VUGPU_PAGE_SHIFT_2M - PAGE_SHIFT : 0;
			out->perm = vugpu_pte_perm(e);
			return 0;
		}
		if (!l || !pt->child[i])
			return -ENOENT;
		pt = pt->child[i];
	}
}

/*
 * Phase 1 of an unmap: turn the leaves in [start, end) into zombies.
 * Returns the number of valid leaves it cleared; widens inv_start / inv_end
 * to whole 2 MiB leaves it cleared.
 */
static unsigned long vugpu_zap(struct vugpu_mirror *m, struct vugpu_pt *pt, unsigned int level,
			       unsigned long base, unsigned long start, unsigned long end,
			       unsigned long *inv_start, unsigned long *inv_end)
{
	unsigned long span = 1UL << VUGPU_PT_LEVEL_SHIFT(level), n = 0, va;
	unsigned int i = vugpu_pt_index(max(start, base), level);

	for (va = base + i * span; i < VUGPU_PT_ENTRIES && va < end; i++, va += span) {
		u64 e = vugpu_pte_get(pt, i);

		if (level && pt->child[i]) {
			n += vugpu_zap(m, pt->child[i], level - 1, va, start, end, inv_start, inv_end);
			continue;
		}
		if (!(e & VUGPU_PTE_VALID) || !(e & VUGPU_PTE_LEAF))
			continue;
		vugpu_pte_set(pt, i, (e & ~VUGPU_PTE_VALID) | VUGPU_PTE_SW_ZOMBIE);
		atomic64_sub(span >> PAGE_SHIFT, &m->mapped_pages);
		*inv_start = min(*inv_start, va);
		*inv_end = max(*inv_end, va + span);
		n++;
	}
	return n;
}

/* Phase 2: release zombies in [start, end) and free tables that became empty. */
static void vugpu_reap(struct vugpu_mirror *m, struct vugpu_pt *pt, unsigned int level,
		       unsigned long base, unsigned long start, unsigned long end)
{
	unsigned long span = 1UL << VUGPU_PT_LEVEL_SHIFT(level), va;
	unsigned int i = vugpu_pt_index(max(start, base), level);

	for (va = base + i * span; i < VUGPU_PT_ENTRIES && va < end; i++, va += span) {
		u64 e = vugpu_pte_get(pt, i);

		if (level && pt->child[i]) {
			struct vugpu_pt *c = pt->child[i];

			vugpu_reap(m, c, level - 1, va, start, end);
			if (!c->valid) {
				vugpu_pte_set(pt, i, 0);
				pt->child[i] = NULL;
				pt->valid--;
				vugpu_pt_free(m->vdev, c);
			}
			continue;
		}
		if (!(e & VUGPU_PTE_SW_ZOMBIE))
			continue;
		vugpu_pte_release(m, e);
		vugpu_pte_set(pt, i, 0);
		pt->valid--;
	}
}

int vugpu_mirror_unmap(struct vugpu_mirror *m, unsigned long start, unsigned long end)
{
	unsigned long inv_start = ULONG_MAX, inv_end = 0;
	int ret = 0;

	lockdep_assert_held(&m->mutex);
	if (!m->root || start >= end)
		return 0;
	end = min(end, 1UL << VUGPU_VA_BITS);
	if (start >= end)
		return 0;
	if (vugpu_zap(m, m->root, VUGPU_PT_LEVELS - 1, 0, start, end, &inv_start, &inv_end))
		ret = vugpu_mmu_invalidate(m, inv_start, inv_end);
	vugpu_reap(m, m->root, VUGPU_PT_LEVELS - 1, 0, min(start, inv_start), max(end, inv_end));
	return ret;
}

/*
 * Does any valid leaf in [start, end) have every bit of @bits set?  (VALID
 * alone: anything mapped, the cheap check of non-blocking invalidations;
 * VALID | SW_EXCL: CHECK_EXCLUSIVE.)
 */
static bool vugpu_any_leaf(struct vugpu_pt *pt, unsigned int level, unsigned long base,
			   unsigned long start, unsigned long end, u64 bits)
{
	unsigned long span = 1UL << VUGPU_PT_LEVEL_SHIFT(level), va;
	unsigned int i = vugpu_pt_index(max(start, base), level);

	for (va = base + i * span; i < VUGPU_PT_ENTRIES && va < end; i++, va += span) {
		u64 e = vugpu_pte_get(pt, i);

		if (level && pt->child[i]) {
			if (vugpu_any_leaf(pt->child[i], level - 1, va, start, end, bits))
				return true;
		} else if ((e & bits) == bits) {
			return true;
		}
	}
	return false;
}

static bool vugpu_mirror_any_leaf(struct vugpu_mirror *m, unsigned long start, unsigned long end,
				  u64 bits)
{
	end = min(end, 1UL << VUGPU_VA_BITS);
	return m->root && start < end &&
	       vugpu_any_leaf(m->root, VUGPU_PT_LEVELS - 1, 0, start, end, bits);
}

bool vugpu_mirror_any_mapped(struct vugpu_mirror *m, unsigned long start, unsigned long end)
{
	return vugpu_mirror_any_leaf(m, start, end, VUGPU_PTE_VALID);
}

bool vugpu_mirror_any_exclusive(struct vugpu_mirror *m, unsigned long start, unsigned long end)
{
	return vugpu_mirror_any_leaf(m, start, end, VUGPU_PTE_VALID | VUGPU_PTE_SW_EXCL);
}

/* --- control engine: TLB_INVALIDATE, FAULT_REPLAY -------------------------------- */

/*
 * Run MMU control descriptors on the reserved engine and wait (polling: they
 * complete at once).  Returns -EAGAIN during a reset and -ENODEV once the MMU
 * is stopped, without touching the device.
 *
 * This is the path of every invalidation, and the interval notifier runs it
 * under m->mutex, maybe from reclaim: so it takes mmu->ctl_lock and the
 * control engine's lock, never engines_rwsem, which an FLR holds for writing
 * across the PCI core's reset (see vugpu_mmu_reset_prepare), and it never
 * waits for a reset to end.  The engine needs no engines_rwsem here: resets
 * reprogram it only after vugpu_mmu_reset_prepare() (which waits for a run in
 * flight, under ctl_lock) and before vugpu_mmu_reset_done(); remove stops the
 * MMU (vugpu_mmu_stop) before it stops and frees the engines.  Nor does the
 * fault thread ever wait for a reset here: a VIRT job holds engines_rwsem for
 * reading while it waits for the thread, and a reset waits for that job.
 */
static int vugpu_mmu_ctl_run(struct vugpu_mmu *mmu, const struct vugpu_hw_desc *descs,
			     unsigned int n)
{
	struct vugpu_device *vdev = mmu->vdev;
	struct vugpu_job_result res;
	struct vugpu_engine *eng;
	u64 t0;
	int ret;

	mutex_lock(&mmu->ctl_lock);
	if (mmu->resetting) {
		ret = -EAGAIN;
		goto out;
	}
	if (!mmu->enabled || READ_ONCE(vdev->engines_dead) || !vdev->engines) {
		ret = -ENODEV;
		goto out;
	}
	eng = &vdev->engines[mmu->ctl_engine];
	mutex_lock(&eng->lock);
	t0 = ktime_get_ns();
	ret = vugpu_engine_prepare(eng);
	if (!ret)
		ret = vugpu_engine_run(eng, descs, n, VUGPU_DMA_RESET_ON_ERROR, &res);
	atomic64_add(ktime_get_ns() - t0, &mmu->ctl_ns);
	atomic64_inc(&mmu->ctl_runs);
	mutex_unlock(&eng->lock);
	if (ret)
		dev_warn_ratelimited(&vdev->pdev->dev,
				     "MMU control engine %u: %d (code %u, addr %#llx)\n",
				     mmu->ctl_engine, ret, res.regs.error_code, res.regs.error_addr);
out:
	mutex_unlock(&mmu->ctl_lock);
	return ret;
}

static void vugpu_desc_inv(struct vugpu_hw_desc *d, u16 ctx, u64 start, u64 len)
{
	vugpu_desc_init(d, VUGPU_OP_TLB_INVALIDATE, 0);
	d->context = cpu_to_le16(ctx);
	d->dst = cpu_to_le64(start);
	d->length = cpu_to_le64(len);
}

/* TLB_INVALIDATE [start, end) of @ctx and wait (0 for the whole context). */
static int vugpu_mmu_tlb_inv(struct vugpu_mmu *mmu, u16 ctx, unsigned long start,
			     unsigned long end)
{
	struct vugpu_hw_desc d;
	u64 len;

	start = ALIGN_DOWN(start, PAGE_SIZE);
	end = ALIGN(end, PAGE_SIZE);
	len = end - start;
	if (ctx == VUGPU_DESC_CONTEXT_ALL || len >= VUGPU_INV_WHOLE) {
		start = 0;
		len = 0;
	}
	vugpu_desc_inv(&d, ctx, start, len);
	atomic64_inc(&mmu->invalidations);
	return vugpu_mmu_ctl_run(mmu, &d, 1);
}

int vugpu_mmu_invalidate(struct vugpu_mirror *m, unsigned long start, unsigned long end)
{
	struct vugpu_mmu *mmu = vugpu_mmu(m->vdev);
	int ret;

	if (!mmu || !mmu->enabled)
		return 0;	/* nothing can use a translation */
	ret = vugpu_mmu_tlb_inv(mmu, m->ctx, start, end);
	/*
	 * -EAGAIN: a reset is under way, and it empties the TLB before any
	 * engine can use a translation again (vugpu_mmu_reset_prepare).
	 * -ENODEV: the MMU is stopped (remove): no VIRT job runs any more.
	 */
	return ret == -ENODEV || ret == -EAGAIN ? 0 : ret;
}

static int vugpu_mmu_replay(struct vugpu_mmu *mmu, u16 ctx, bool cancel)
{
	struct vugpu_hw_desc d;

	vugpu_desc_init(&d, VUGPU_OP_FAULT_REPLAY, 0);
	d.context = cpu_to_le16(ctx);
	d.value = cpu_to_le64(cancel ? VUGPU_REPLAY_CANCEL : 0);
	return vugpu_mmu_ctl_run(mmu, &d, 1);
}

/* --- contexts --------------------------------------------------------------------- */

static void vugpu_ctx_write(struct vugpu_mmu *mmu, u16 ctx, u64 lo)
{
	WRITE_ONCE(mmu->ctx_table[2 * ctx + 1], 0);
	wmb();
	WRITE_ONCE(mmu->ctx_table[2 * ctx], cpu_to_le64(lo));
	wmb();
}

/* Give @m a context and a root table; its context entry goes live. */
int vugpu_mmu_ctx_alloc(struct vugpu_mirror *m)
{
	struct vugpu_mmu *mmu = vugpu_mmu(m->vdev);
	unsigned long c;

	if (!mmu || !mmu->ctx_table)
		return -EOPNOTSUPP;
	m->root = vugpu_pt_alloc_gfp(m->vdev, GFP_KERNEL);
	if (!m->root)
		return -ENOMEM;
	spin_lock(&mmu->ctx_lock);
	c = find_next_zero_bit(mmu->ctx_used, VUGPU_MMU_CTX_COUNT, 1);
	if (c >= VUGPU_MMU_CTX_COUNT) {
		spin_unlock(&mmu->ctx_lock);
		vugpu_pt_free(m->vdev, m->root);
		m->root = NULL;
		return -EBUSY;
	}
	__set_bit(c, mmu->ctx_used);
	mmu->ctx_mirror[c] = m;
	m->ctx = c;
	spin_unlock(&mmu->ctx_lock);
	vugpu_ctx_write(mmu, m->ctx, VUGPU_CTX_VALID | (m->root->dma & VUGPU_PT_ADDR_MASK) |
			((u64)VUGPU_APERTURE_SYS << VUGPU_CTX_APERTURE_SHIFT));
	return 0;
}

/*
 * Tear down @m's context: entry invalid, TLB (context entries included)
 * flushed, then every table and DMA mapping freed.  No job of @m runs.
 */
void vugpu_mmu_ctx_free(struct vugpu_mirror *m)
{
	struct vugpu_mmu *mmu = vugpu_mmu(m->vdev);

	if (!m->root)
		return;
	vugpu_ctx_write(mmu, m->ctx, 0);
	vugpu_mmu_tlb_inv(mmu, VUGPU_DESC_CONTEXT_ALL, 0, 0);
	vugpu_pt_free_tree(m, m->root, VUGPU_PT_LEVELS - 1);
	m->root = NULL;
	while (m->pt_pool_n)
		vugpu_pt_free(m->vdev, m->pt_pool[--m->pt_pool_n]);
	while (m->dma_pool_n)
		kfree(m->dma_pool[--m->dma_pool_n]);
	spin_lock(&mmu->ctx_lock);
	mmu->ctx_mirror[m->ctx] = NULL;
	__clear_bit(m->ctx, mmu->ctx_used);
	spin_unlock(&mmu->ctx_lock);
}

/* --- faults ------------------------------------------------------------------------ */

/*
 * Fault [start, end) of @m's mm in with hmm_range_fault() and map it.  @write:
 * ask for write access.  Returns 0 or the hmm error.  Called without
 * m->mutex (taken here), with or without mmap_lock according to @unlocked.
 */
static int vugpu_mirror_fault_range(struct vugpu_mirror *m, unsigned long start,
				    unsigned long end, bool write, bool unlocked,
				    unsigned long *pfns)
{
	struct mm_struct *mm = m->notifier.mm;
	unsigned long addr, next;
	int ret = 0;

	if (!mmget_not_zero(mm))
		return -EFAULT;
	for (addr = start; addr < end && !ret; addr = next) {
		struct hmm_range range = {
			.notifier = &m->notifier,
			.hmm_pfns = pfns,
			.default_flags = HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
			.dev_private_owner = m->vdev,
		};
		unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
		unsigned long inv_s = ULONG_MAX, inv_e = 0, i, n;

		/* Chunks end on 2 MiB boundaries so a PMD can become one leaf. */
		next = min(end, ALIGN(addr + 1, (unsigned long)VUGPU_FAULT_CHUNK << PAGE_SHIFT));
		range.start = addr;
		range.end = next;
		vugpu_mirror_pt_reserve(m);
		for (;;) {
			if (time_after(jiffies, timeout)) {
				ret = -EBUSY;
				break;
			}
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 3, 0)
			if (unlocked) {
				ret = hmm_range_fault_unlocked_timeout(&range, 0);
			} else
#endif
			{
				range.notifier_seq = mmu_interval_read_begin(range.notifier);
				mmap_read_lock(mm);
				ret = hmm_range_fault(&range);
				mmap_read_unlock(mm);
			}
			if (ret == -EBUSY)
				continue;
			if (ret)
				break;
			mutex_lock(&m->mutex);
			if (mmu_interval_read_retry(range.notifier, range.notifier_seq)) {
				mutex_unlock(&m->mutex);
				continue;
			}
			break;
		}
		if (ret)
			break;

		/* (Under m->mutex from here on: tables come from the pool.) */
		n = (next - addr) >> PAGE_SHIFT;
		for (i = 0; i < n && !ret;) {
			unsigned long va = addr + (i << PAGE_SHIFT), e = pfns[i];
			unsigned int perm = VUGPU_MAP_READ, order = 0;
			struct page *page = hmm_pfn_to_page(e);

			if (e & HMM_PFN_WRITE)
				perm |= VUGPU_MAP_WRITE;
			if (hmm_pfn_to_map_order(e) == VUGPU_PAGE_SHIFT_2M - PAGE_SHIFT &&
			    IS_ALIGNED(va, VUGPU_SZ_2M) && n - i >= VUGPU_PT_ENTRIES &&
			    IS_ALIGNED(page_to_pfn(page), VUGPU_PT_ENTRIES) &&
			    !vugpu_hmm_page_is_local(m->vdev, page))
				order = VUGPU_PAGE_SHIFT_2M - PAGE_SHIFT;
			ret = vugpu_mirror_map_page_r(m, va, page, order, perm);
			if (ret == -EXDEV && order) {
				/* The THP's first page has a 4 KiB mapping: 4 KiB PTEs. */
				order = 0;
				ret = vugpu_mirror_map_page_r(m, va, page, order, perm);
			}
			if (ret == 1) {
				inv_s = min(inv_s, va);
				inv_e = max(inv_e, va + (PAGE_SIZE << order));
				ret = 0;
			}
			i += 1UL << order;
		}
		if (!ret && inv_e)
			ret = vugpu_mmu_invalidate(m, inv_s, inv_e);
		mutex_unlock(&m->mutex);
	}
	mmput(mm);
	return ret;
}

/*
 * An atomic access to a system page: take it device-exclusive (the CPU's
 * PTE becomes a device-exclusive entry; a CPU access revokes it through
 * MMU_NOTIFY_CLEAR) and map it with ATOMIC.
 */
int vugpu_mirror_make_exclusive(struct vugpu_mirror *m, unsigned long start, unsigned long end)
{
	struct mm_struct *mm = m->notifier.mm;
	unsigned long addr;
	int ret = 0;

	if (!mmget_not_zero(mm))
		return -EINVAL;
	mmap_read_lock(mm);
	for (addr = start; !ret && addr < end; addr += PAGE_SIZE) {
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
		struct folio *folio;
		struct page *page = make_device_exclusive(mm, addr, m->vdev, &folio);

		if (IS_ERR(page)) {
			ret = PTR_ERR(page);
			break;
		}
		vugpu_mirror_pt_reserve(m);
		mutex_lock(&m->mutex);
		ret = vugpu_mirror_map_page(m, addr, page, 0, VUGPU_MAP_READ | VUGPU_MAP_WRITE |
					    VUGPU_MAP_ATOMIC | VUGPU_MAP_EXCLUSIVE);
		mutex_unlock(&m->mutex);
		folio_unlock(folio);
		folio_put(folio);
#else
		struct page *page = NULL;
		int n = make_device_exclusive_range(mm, addr, addr + PAGE_SIZE, &page, m->vdev);

		if (n != 1 || !page) {
			ret = n < 0 ? n : -EBUSY;
			if (n == 1 && !page)
				ret = -EBUSY;
			break;
		}
		vugpu_mirror_pt_reserve(m);
		mutex_lock(&m->mutex);
		ret = vugpu_mirror_map_page(m, addr, page, 0, VUGPU_MAP_READ | VUGPU_MAP_WRITE |
					    VUGPU_MAP_ATOMIC | VUGPU_MAP_EXCLUSIVE);
		mutex_unlock(&m->mutex);
		unlock_page(page);
		put_page(page);
#endif
	}
	mmap_read_unlock(mm);
	mmput(mm);
	return ret;
}

/* Service one fault of @job: 0 (replay) or the error (cancel). */
static int vugpu_fault_service(struct vugpu_mmu *mmu, struct vugpu_virt_job *job,
			       const struct vugpu_fault_rec *rec)
{
	struct vugpu_mirror *m = job->m;
	unsigned long addr = ALIGN_DOWN(le64_to_cpu(rec->addr), PAGE_SIZE);
	unsigned long end = job->end;

	if (job->flags & VUGPU_ACCESS_NOFAULT)
		return -ENOENT;
	switch (rec->reason) {
	case VUGPU_FAULT_NOT_PRESENT:
	case VUGPU_FAULT_PROTECTION:
		break;
	default:
		dev_warn_ratelimited(&mmu->vdev->pdev->dev,
				     "MMU fault ctx %u addr %#llx reason %u level %u: cancelled\n",
				     le16_to_cpu(rec->context), le64_to_cpu(rec->addr), rec->reason,
				     rec->level);
		return -EFAULT;
	}
	if (addr < job->start || addr >= end) {
		/* Outside what the job said it touches: just that page. */
		end = addr + PAGE_SIZE;
	}
	if (rec->access == VUGPU_FAULT_ACCESS_ATOMIC) {
		struct vugpu_mirror_lookup lk;
		bool local;

		/* Device memory needs no ATOMIC bit: a plain write fault maps it. */
		mutex_lock(&m->mutex);
		local = !vugpu_mirror_lookup(m, addr, &lk) && lk.aperture == VUGPU_APERTURE_VRAM;
		mutex_unlock(&m->mutex);
		if (!local) {
			int ret = vugpu_mirror_fault_range(m, addr, addr + PAGE_SIZE, true,
							   job->flags & VUGPU_ACCESS_UNLOCKED,
							   mmu->fault_pfns);

			if (ret)
				return ret;
			mutex_lock(&m->mutex);
			local = !vugpu_mirror_lookup(m, addr, &lk) &&
				lk.aperture == VUGPU_APERTURE_VRAM;
			mutex_unlock(&m->mutex);
			if (!local)
				return vugpu_mirror_make_exclusive(m, addr, addr + PAGE_SIZE);
		}
		return vugpu_mirror_fault_range(m, addr, addr + PAGE_SIZE, true,
						job->flags & VUGPU_ACCESS_UNLOCKED, mmu->fault_pfns);
	}
	return vugpu_mirror_fault_range(m, addr, end, rec->access == VUGPU_FAULT_ACCESS_WRITE,
					job->flags & VUGPU_ACCESS_UNLOCKED, mmu->fault_pfns);
}

static void vugpu_fault_one(struct vugpu_mmu *mmu, const struct vugpu_fault_rec *rec)
{
	u16 ctx = le16_to_cpu(rec->context);
	struct vugpu_virt_job *job = NULL;
	bool ctx_busy = false;
	u64 t0 = ktime_get_ns();
	unsigned int i;
	int err;

	atomic64_inc(&mmu->faults);
	spin_lock(&mmu->ctx_lock);
	if (rec->engine < VUGPU_ENGINE_MAX) {
		job = mmu->jobs[rec->engine];
		if (job && (job->done || job->m->ctx != ctx))
			job = NULL;
		if (job)
			job->users++;
	}
	for (i = 0; !job && i < VUGPU_ENGINE_MAX; i++)
		if (mmu->jobs[i] && !mmu->jobs[i]->done && mmu->jobs[i]->m->ctx == ctx)
			ctx_busy = true;
	spin_unlock(&mmu->ctx_lock);

	if (!job) {
		atomic64_inc(&mmu->stray);
		if (ctx_busy) {
			/*
			 * A stale duplicate: an overflow recovery (replay of all
			 * contexts) let an engine fault again while its first
			 * record was still in the ring, and the job finished on
			 * the first.  The context has a new job, whose engine a
			 * cancel would stop: replay instead (a waiting engine
			 * faults again if it still misses, with a fresh record).
			 */
			vugpu_mmu_replay(mmu, ctx, false);
			return;
		}
		/* Nobody waits for this context on that engine: do not let it hang. */
		dev_warn_ratelimited(&mmu->vdev->pdev->dev,
				     "MMU fault ctx %u engine %u addr %#llx without a job: cancelled\n",
				     ctx, rec->engine, le64_to_cpu(rec->addr));
		/* Only that context: never cancel other contexts' work. */
		if (ctx != VUGPU_DESC_CONTEXT_ALL)
			vugpu_mmu_replay(mmu, ctx, true);
		atomic64_inc(&mmu->cancels);
		return;
	}

	err = vugpu_fault_service(mmu, job, rec);
	if (err) {
		if (!job->err)
			job->err = err;
		atomic64_inc(&mmu->cancels);
	} else {
		job->faults++;
		atomic64_inc(&job->m->faults);
		atomic64_inc(&mmu->faults_serviced);
	}
	vugpu_mmu_replay(mmu, ctx, err != 0);
	atomic64_add(ktime_get_ns() - t0, &mmu->service_ns);

	spin_lock(&mmu->ctx_lock);
	job->users--;
	spin_unlock(&mmu->ctx_lock);
	wake_up_all(&mmu->job_wq);
}

/* Publish records consumed (unless a reset restarted the ring meanwhile). */
static void vugpu_fault_ack(struct vugpu_mmu *mmu, u32 gen, u32 get)
{
	spin_lock(&mmu->ctx_lock);
	if (gen == mmu->ring_gen) {
		mmu->fault_get = get;
		iowrite32(get, mmu->vdev->doorbells + VUGPU_DB_FAULT_GET);
	}
	spin_unlock(&mmu->ctx_lock);
}

/*
 * The threaded half of FAULT_VECTOR: consume the ring.  It holds no lock
 * while it services a record (vugpu_mmu_ctl_run() takes ctl_lock for each
 * replay), and resets do not wait for it (vugpu_main.c quiesces this
 * vector with disable_irq_nosync): a reset restarts the ring (ring_gen), and
 * records read before it are answered harmlessly (the work they belonged
 * to was abandoned by the reset).
 */
irqreturn_t vugpu_mmu_irq_thread(int irq, void *data)
{
	struct vugpu_vector *vec = data;
	struct vugpu_device *vdev = vec->vdev;
	struct vugpu_hmm *hmm = READ_ONCE(vdev->hmm);
	struct vugpu_mmu *mmu;
	bool enabled, may_drop;
	u32 put, get, gen;

	if (!hmm)
		return IRQ_HANDLED;
	mmu = &hmm->mmu;
	/*
	 * An engine waits on its one fault, so records can only be dropped
	 * when the ring is smaller than the engines (or it was seen full):
	 * only then is the trapped MMU_STATUS read worth it.
	 */
	may_drop = mmu->ring_slots < vdev->engine_count;
	for (;;) {
		struct vugpu_fault_rec rec;

		spin_lock(&mmu->ctx_lock);
		gen = mmu->ring_gen;
		get = mmu->fault_get;
		enabled = mmu->enabled;
		spin_unlock(&mmu->ctx_lock);
		if (!enabled)
			break;
		put = ioread32(vdev->doorbells + VUGPU_DB_FAULT_PUT);
		if (put == get) {
			if (!may_drop ||
			    !(vugpu_rd(vdev, VUGPU_REG_MMU_STATUS) & VUGPU_MMU_STATUS_FAULT_OVERFLOW))
				break;
			/* Records were dropped: every waiting engine faults again. */
			vugpu_wr(vdev, VUGPU_REG_MMU_STATUS, VUGPU_MMU_STATUS_FAULT_OVERFLOW);
			atomic64_inc(&mmu->overflows);
			vugpu_mmu_replay(mmu, VUGPU_DESC_CONTEXT_ALL, false);
			continue;
		}
		if (put - get > mmu->ring_slots) {
			dev_err_ratelimited(&vdev->pdev->dev,
					    "FAULT_PUT %u is %u records past FAULT_GET %u (ring of %u)\n",
					    put, put - get, get, mmu->ring_slots);
			vugpu_fault_ack(mmu, gen, put);
			vugpu_mmu_replay(mmu, VUGPU_DESC_CONTEXT_ALL, false);
			continue;
		}
		if (put - get == mmu->ring_slots)
			may_drop = true;
		/* FAULT_PUT is stored after the record is visible. */
		dma_rmb();
		memcpy(&rec, &mmu->ring[get & (mmu->ring_slots - 1)], sizeof(rec));
		/* Free the slot before servicing: the device may refault at once. */
		vugpu_fault_ack(mmu, gen, get + 1);
		vugpu_fault_one(mmu, &rec);
	}
	return IRQ_HANDLED;
}

/* --- VIRT jobs ---------------------------------------------------------------------- */

/*
 * Run @n descriptors that use @m's context on a data engine and wait,
 * servicing faults for [start, end).  Caller holds m->job_lock (one VIRT job
 * per context) and not m->mutex.  Returns 0, the fault's error (the engine
 * was reset), -EIO / -ETIMEDOUT, or -ENODEV.  *faults: faults serviced.
 */
int vugpu_mmu_run_virt(struct vugpu_mirror *m, struct vugpu_hw_desc *descs, unsigned int n,
		       unsigned long start, unsigned long end, unsigned int flags, u64 *faults)
{
	struct vugpu_device *vdev = m->vdev;
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);
	struct vugpu_virt_job job = {
		.m = m, .start = start, .end = end, .flags = flags,
	};
	struct vugpu_job_result res;
	struct vugpu_engine *eng;
	unsigned int i;
	int ret;

	lockdep_assert_held(&m->job_lock);
	if (!mmu || !mmu->enabled)
		return -EOPNOTSUPP;
	for (i = 0; i < n; i++)
		descs[i].context = cpu_to_le16(m->ctx);

	down_read(&vdev->engines_rwsem);
	if (vdev->engines_dead || !vdev->engines || !mmu->enabled) {
		up_read(&vdev->engines_rwsem);
		return -ENODEV;
	}
	eng = vugpu_mmu_data_engine(vdev);
	ret = vugpu_engine_prepare(eng);
	if (ret)
		goto unlock;
	spin_lock(&mmu->ctx_lock);
	mmu->jobs[eng->index] = &job;
	spin_unlock(&mmu->ctx_lock);

	ret = vugpu_engine_run(eng, descs, n, VUGPU_DMA_RESET_ON_ERROR |
			       (READ_ONCE(virt_wait_irq) ? VUGPU_DMA_IRQ : 0), &res);

	spin_lock(&mmu->ctx_lock);
	mmu->jobs[eng->index] = NULL;
	job.done = true;
	spin_unlock(&mmu->ctx_lock);
	/* The fault thread may still be answering our last fault. */
	wait_event(mmu->job_wq, !READ_ONCE(job.users));

	if (ret == -EIO && res.regs.error_code == VUGPU_ENG_ERR_TRANSLATION)
		ret = job.err ?: -EFAULT;
	else if (ret == -EIO)
		dev_warn_ratelimited(&vdev->pdev->dev,
				     "VIRT job ctx %u engine %u: error %u at %#llx (info %#x)\n",
				     m->ctx, eng->index, res.regs.error_code, res.regs.error_addr,
				     res.regs.error_info);
unlock:
	mutex_unlock(&eng->lock);
	up_read(&vdev->engines_rwsem);
	if (faults)
		*faults = job.faults;
	return ret;
}

/*
 * Take a data engine's lock (never the control engine): a free one if there
 * is one, else the next in turn.  Caller holds engines_rwsem (read).
 */
struct vugpu_engine *vugpu_mmu_data_engine(struct vugpu_device *vdev)
{
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);
	unsigned int count = vdev->engine_count, i, first;

	if (mmu && mmu->enabled && count > 1)
		count = mmu->ctl_engine;	/* the last engine */
	first = (unsigned int)atomic_inc_return(&mmu->next_engine) % count;
	for (i = 0; i < count; i++) {
		struct vugpu_engine *eng = &vdev->engines[(first + i) % count];

		if (mutex_trylock(&eng->lock))
			return eng;
	}
	mutex_lock(&vdev->engines[first].lock);
	return &vdev->engines[first];
}

int vugpu_hmm_run_descs(struct vugpu_device *vdev, const struct vugpu_hw_desc *descs,
			unsigned int n)
{
	struct vugpu_job_result res;
	struct vugpu_engine *eng;
	int ret;

	if (!vdev->hmm)
		return -ENODEV;
	down_read(&vdev->engines_rwsem);
	if (vdev->engines_dead || !vdev->engines) {
		up_read(&vdev->engines_rwsem);
		return -ENODEV;
	}
	eng = vugpu_mmu_data_engine(vdev);
	ret = vugpu_engine_prepare(eng);
	if (!ret)
		ret = vugpu_engine_run(eng, descs, n, VUGPU_DMA_RESET_ON_ERROR, &res);
	if (ret == -EIO)
		dev_warn_ratelimited(&vdev->pdev->dev,
				     "engine %u: error %u at %#llx (info %#x)\n", eng->index,
				     res.regs.error_code, res.regs.error_addr, res.regs.error_info);
	mutex_unlock(&eng->lock);
	up_read(&vdev->engines_rwsem);
	return ret;
}

bool vugpu_mmu_is_ctl_engine(struct vugpu_device *vdev, unsigned int engine)
{
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);

	return mmu && mmu->enabled && engine == mmu->ctl_engine;
}

/* --- bring-up, reset, teardown ------------------------------------------------------ */

/* Program and enable the MMU (probe, and again after FLR / SOFT_RESET). */
static int vugpu_mmu_hw_init(struct vugpu_mmu *mmu)
{
	struct vugpu_device *vdev = mmu->vdev;
	u32 st, put;

	vugpu_wr(vdev, VUGPU_REG_MMU_CONTROL, 0);
	vugpu_wr(vdev, VUGPU_REG_MMU_CTX_BASE_LO, lower_32_bits(mmu->ctx_table_dma));
	vugpu_wr(vdev, VUGPU_REG_MMU_CTX_BASE_HI, upper_32_bits(mmu->ctx_table_dma));
	vugpu_wr(vdev, VUGPU_REG_MMU_CTX_COUNT, VUGPU_MMU_CTX_COUNT);
	vugpu_wr(vdev, VUGPU_REG_MMU_CTX_APERTURE, VUGPU_APERTURE_SYS);
	vugpu_wr(vdev, VUGPU_REG_FAULT_RING_BASE_LO, lower_32_bits(mmu->ring_dma));
	vugpu_wr(vdev, VUGPU_REG_FAULT_RING_BASE_HI, upper_32_bits(mmu->ring_dma));
	vugpu_wr(vdev, VUGPU_REG_FAULT_RING_SIZE, mmu->ring_slots);
	vugpu_wr(vdev, VUGPU_REG_FAULT_RING_APERTURE, VUGPU_APERTURE_SYS);
	vugpu_wr(vdev, VUGPU_REG_MMU_CONTROL, VUGPU_MMU_CONTROL_ENABLE | VUGPU_MMU_CONTROL_FAULT_IRQ);
	/* ENABLE 0->1 sets FAULT_PUT and FAULT_GET to 0 (§9.1): the ring starts over. */
	put = vugpu_rd(vdev, VUGPU_REG_FAULT_PUT);
	st = vugpu_rd(vdev, VUGPU_REG_MMU_STATUS);
	if (st == VUGPU_REG_BAD_READ || !(st & VUGPU_MMU_STATUS_ENABLED)) {
		dev_err(&vdev->pdev->dev, "MMU not enabled: MMU_STATUS %#x\n", st);
		return -EIO;
	}
	spin_lock(&mmu->ctx_lock);
	mmu->ring_gen++;
	mmu->fault_get = put;
	mmu->enabled = true;
	spin_unlock(&mmu->ctx_lock);
	return 0;
}

void vugpu_mmu_free_mem(struct vugpu_mmu *mmu)
{
	struct device *dev = &mmu->vdev->pdev->dev;

	/* Every context is gone, and with it every PTE's DMA reference. */
	if (mmu->dma_maps)
		dev_err(dev, "%lu DMA mappings of mirrored pages left at remove\n", mmu->dma_maps);
	kvfree(mmu->dma_by_pfn);
	mmu->dma_by_pfn = NULL;
	kvfree(mmu->dma_by_addr);
	mmu->dma_by_addr = NULL;

	if (mmu->ctx_table)
		dma_free_coherent(dev, VUGPU_MMU_CTX_COUNT * VUGPU_CTX_ENTRY_SIZE, mmu->ctx_table,
				  mmu->ctx_table_dma);
	mmu->ctx_table = NULL;
	if (mmu->ring)
		dma_free_coherent(dev, (size_t)mmu->ring_slots * VUGPU_FAULT_REC_SIZE, mmu->ring,
				  mmu->ring_dma);
	mmu->ring = NULL;
	kfree(mmu->fault_pfns);
	mmu->fault_pfns = NULL;
}

/*
 * The MSI-X vector of the fault ring, or -1 without a device MMU.  vugpu_main.c
 * asks before it requests the vectors and gives this one a threaded handler
 * (vugpu_mmu_irq_thread).
 */
int vugpu_mmu_fault_vector(struct vugpu_device *vdev)
{
	u32 caps = vugpu_rd(vdev, VUGPU_REG_CAPS), v;

	if (VUGPU_VERSION_MINOR(vdev->version) < VUGPU_VERSION_MINOR(VUGPU_VERSION_MMU) ||
	    caps == VUGPU_REG_BAD_READ || !(caps & VUGPU_CAPS_MMU))
		return -1;
	v = vugpu_rd(vdev, VUGPU_REG_FAULT_VECTOR);
	return v < vdev->num_vectors ? (int)v : -1;
}

int vugpu_mmu_probe(struct vugpu_device *vdev)
{
	struct vugpu_mmu *mmu = &vdev->hmm->mmu;
	struct device *dev = &vdev->pdev->dev;
	u32 caps = vugpu_rd(vdev, VUGPU_REG_CAPS);
	int ret;

	mmu->vdev = vdev;
	spin_lock_init(&mmu->ctx_lock);
	mutex_init(&mmu->ctl_lock);
	spin_lock_init(&mmu->dma_lock);
	init_waitqueue_head(&mmu->job_wq);
	if (VUGPU_VERSION_MINOR(vdev->version) < VUGPU_VERSION_MINOR(VUGPU_VERSION_MMU) ||
	    !(caps & VUGPU_CAPS_MMU)) {
		dev_info(dev, "no device MMU (VERSION %#x, CAPS %#x)\n", vdev->version, caps);
		return -EOPNOTSUPP;
	}
	if (vdev->engines_init_err || vdev->engine_count < 2 || !vdev->engines) {
		dev_warn(dev, "device MMU unused: needs 2 working engines (have %u)\n",
			 vdev->engine_count);
		return -EOPNOTSUPP;
	}
	/*
	 * A mirrored page is used by the CPU and the device at once, with no
	 * point where ownership could pass (as hmm_dma_map_alloc() demands on
	 * newer kernels): a bounce buffer or cache maintenance would break it.
	 */
	if (!dev_is_dma_coherent(dev) || is_swiotlb_force_bounce(dev) ||
	    dma_addressing_limited(dev)) {
		dev_warn(dev, "device MMU unused: DMA to system memory is not coherent and direct\n");
		return -EOPNOTSUPP;
	}
	mmu->ctl_engine = vdev->engine_count - 1;
	mmu->fault_vector = vugpu_rd(vdev, VUGPU_REG_FAULT_VECTOR);
	if (mmu->fault_vector >= vdev->irqs_requested ||
	    !READ_ONCE(vdev->vectors[mmu->fault_vector].mmu_fault)) {
		dev_err(dev, "FAULT_VECTOR %u has no threaded handler (%u vectors)\n",
			mmu->fault_vector, vdev->num_vectors);
		return -ENODEV;
	}
	mmu->ctx_table = dma_alloc_coherent(dev, VUGPU_MMU_CTX_COUNT * VUGPU_CTX_ENTRY_SIZE,
					    &mmu->ctx_table_dma, GFP_KERNEL);
	mmu->ring_slots = fault_ring_slots;
	if (!mmu->ring_slots || mmu->ring_slots > VUGPU_FAULT_RING_MAX ||
	    !is_power_of_2(mmu->ring_slots)) {
		dev_warn(dev, "fault_ring_slots=%u is not usable; using 1024\n", fault_ring_slots);
		mmu->ring_slots = 1024;
	}
	mmu->ring = dma_alloc_coherent(dev, (size_t)mmu->ring_slots * VUGPU_FAULT_REC_SIZE,
				       &mmu->ring_dma, GFP_KERNEL);
	mmu->fault_pfns = kcalloc(VUGPU_FAULT_CHUNK, sizeof(*mmu->fault_pfns), GFP_KERNEL);
	mmu->dma_by_pfn = kvcalloc(1U << VUGPU_DMA_HASH_BITS, sizeof(struct hlist_head), GFP_KERNEL);
	mmu->dma_by_addr = kvcalloc(1U << VUGPU_DMA_HASH_BITS, sizeof(struct hlist_head),
				    GFP_KERNEL);
	if (!mmu->ctx_table || !mmu->ring || !mmu->fault_pfns || !mmu->dma_by_pfn ||
	    !mmu->dma_by_addr) {
		ret = -ENOMEM;
		goto err;
	}
	down_write(&vdev->engines_rwsem);
	ret = vugpu_mmu_hw_init(mmu);
	up_write(&vdev->engines_rwsem);
	if (ret)
		goto err;
	dev_info(dev, "device MMU: %u contexts, %u-record fault ring on vector %u, engine %u for MMU control\n",
		 VUGPU_MMU_CTX_COUNT, mmu->ring_slots, mmu->fault_vector, mmu->ctl_engine);
	return 0;

err:
	vugpu_mmu_free_mem(mmu);
	return ret;
}

/* Remove, with interrupts still live and no mirror left: disable the MMU. */
void vugpu_mmu_stop(struct vugpu_device *vdev)
{
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);

	if (!mmu || !mmu->ctx_table)
		return;
	down_write(&vdev->engines_rwsem);
	mutex_lock(&mmu->ctl_lock);
	if (mmu->enabled && !vdev->engines_dead)
		vugpu_wr(vdev, VUGPU_REG_MMU_CONTROL, 0);
	spin_lock(&mmu->ctx_lock);
	mmu->enabled = false;
	spin_unlock(&mmu->ctx_lock);
	mmu->stopped = true;
	mutex_unlock(&mmu->ctl_lock);
	up_write(&vdev->engines_rwsem);
	/* The fault thread sees !enabled; main's teardown frees the vector. */
}

/*
 * FLR / SOFT_RESET, before the device is reset.  The caller holds
 * engines_rwsem for writing: no job runs (the last one has finished or was
 * stopped by its timeout) and none can start until vugpu_mmu_reset_done().
 *
 * An FLR holds engines_rwsem across the PCI core's reset, and the core's
 * config restore takes the MSI descriptor mutex, which is held elsewhere
 * while allocating with reclaim; reclaim may invalidate a mirror.  So the
 * invalidation path (m->mutex, then vugpu_mmu_ctl_run) must neither take
 * engines_rwsem nor wait for the reset to end (either would close that
 * cycle: lockdep reported the first).  Instead, from here until
 * vugpu_mmu_reset_done() every TLB_INVALIDATE is skipped and reported done,
 * and that keeps the guarantee that no device access uses a translation the
 * kernel has taken back, because:
 *   - an invalidation only needs to stop accesses that could use the old
 *     translation after it returns; every such access is made by an engine
 *     running a VIRT job (the MMU translates nothing else), and no job runs
 *     from here on: the caller drained them and blocks new ones, and
 *     FAULT_REPLAY is skipped too, so no stalled engine resumes;
 *   - the reset flushes the TLB and stops every engine (hw-spec §9.1: FLR,
 *     SOFT_RESET and DEVICE_RESET return the MMU to its reset value), and
 *     vugpu_mmu_reset_done() enables the MMU again, which flushes it again
 *     (ENABLE 0->1), before any job can run; if the device does not come
 *     back READY, the MMU stays disabled and no VIRT job is submitted;
 *   - the page tables live in system memory and survive the reset, already
 *     without the cleared PTEs (the notifier clears them before it asks for
 *     the invalidation), so the first walk after the reset sees the new state.
 * The zombie PTEs' DMA mappings are released at once, as after a completed
 * invalidation: no engine runs that could still use them.
 * Taking ctl_lock here waits for a control submission already in flight.
 */
void vugpu_mmu_reset_prepare(struct vugpu_device *vdev)
{
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);

	lockdep_assert_held_write(&vdev->engines_rwsem);
	if (!mmu || !mmu->ctx_table)
		return;
	mutex_lock(&mmu->ctl_lock);
	mmu->resetting = true;
	mutex_unlock(&mmu->ctl_lock);
}

/*
 * After FLR / SOFT_RESET (engines_rwsem still held for writing, engines
 * reprogrammed if @ok): program and enable the MMU again, or, if the device
 * is not READY, leave it disabled.  Then invalidations run again.
 */
void vugpu_mmu_reset_done(struct vugpu_device *vdev, bool ok)
{
	struct vugpu_mmu *mmu = vugpu_mmu(vdev);

	lockdep_assert_held_write(&vdev->engines_rwsem);
	if (!mmu || !mmu->ctx_table)
		return;
	mutex_lock(&mmu->ctl_lock);
	if (!mmu->stopped) {
		spin_lock(&mmu->ctx_lock);
		mmu->enabled = false;
		spin_unlock(&mmu->ctx_lock);
		if (!ok)
			dev_err(&vdev->pdev->dev, "device MMU disabled: the device did not come back from the reset\n");
		else if (vugpu_mmu_hw_init(mmu))
			dev_err(&vdev->pdev->dev, "device MMU: cannot re-enable after reset\n");
	}
	mmu->resetting = false;
	mutex_unlock(&mmu->ctl_lock);
}

void vugpu_mmu_read_stats(struct vugpu_device *vdev, u64 *hw)
{
	unsigned int i;

	for (i = 0; i < VUGPU_MMU_NUM_STATS; i++) {
		u32 off = VUGPU_REG_MMU_STAT_FAULTS + VUGPU_COUNTER_SIZE * i;
		u32 lo = vugpu_rd(vdev, off);

		hw[i] = (u64)vugpu_rd(vdev, off + VUGPU_COUNTER_HI) << 32 | lo;
	}
}
