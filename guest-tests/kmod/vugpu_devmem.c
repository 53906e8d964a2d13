// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu device-private memory (HMM): VRAM handed to the kernel as
 * MEMORY_DEVICE_PRIVATE pages, and migration between system memory and
 * VRAM with the DMA copy engines.
 *
 * Chunks.  Device memory grows on demand, up to devmem_limit (devmem_mb),
 * in chunks of at most 128 MiB: each chunk is a 2 MiB-aligned VRAM range
 * from the VRAM allocator (vugpu_vram.c) plus a struct-page range of the
 * same size carved from free iomem space (request_free_mem_region) and
 * registered with memremap_pages(MEMORY_DEVICE_PRIVATE).  Page i of a chunk
 * is backed by VRAM at chunk->vram_off + i * PAGE_SIZE; the pgmap owner is
 * the struct vugpu_device (vugpu_hmm.h), so hmm_range_fault() and
 * migrate_vma tell this GPU's pages from another GPU's.
 *
 * Free pages.  A chunk keeps a bitmap of free pages and a free count per
 * 2 MiB block.  A PMD-order folio takes a wholly free block; a single page
 * takes one from a partly used block first (the last one used, then any),
 * so blocks coalesce again as pages come back and THP allocations keep
 * finding whole blocks.  Pages are free at refcount 0 (the core calls
 * folio_free / page_free once per folio when the last reference goes) and
 * are handed out with zone_device_page_init(), which takes the pgmap
 * references and returns the page locked, as migrate_vma_pages() wants.
 * Mirrors map device pages by VRAM offset (vugpu_devmem_vram_offset) and
 * hold no references, and they skip the MMU_NOTIFY_MIGRATE invalidations
 * of this GPU's own migrations: so every migration unmaps the pages it
 * collected from every mirror of the GPU before copying
 * (vugpu_hmm_unmap_all_mirrors, run by run), pages that stay keep their
 * mappings; eviction relies on the MMU_NOTIFY_CLEAR that try_to_migrate()
 * sends.
 *
 * Copies.  Every migration builds one descriptor list for its whole range
 * (COPY SYS<->VRAM, FILL for holes), merging pages that are contiguous on
 * both sides into one descriptor, and runs it as one job on the devmem
 * engine.  System pages are DMA-mapped for the job and unmapped after it.
 * If the job fails, nothing of that range migrates: destination pages are
 * released and the sources stay where they were (the CPU fault path then
 * answers VM_FAULT_SIGBUS).
 *
 * CPU faults.  migrate_to_ram brings back the faulting page and the other
 * pages of this GPU in the aligned window of fault_around_pages around it
 * (within the VMA; default 16 pages = 64 KiB, the kernel's own
 * fault_around_bytes default; 1 = the faulting page only, as test_hmm in
 * 6.x and nouveau), in one migration: one unmap, one TLB invalidation and
 * one copy job for the window instead of one each per page, as drivers
 * that migrate ranges on CPU faults (amdgpu's SVM) do.  A PMD-mapped
 * device folio comes back whole.
 *
 * Eviction.  Releasing a mirror, HMM_DMIRROR_RELEASE and driver remove move
 * device pages back to system memory with migrate_device_range(), again
 * with the engines, before chunks are unregistered (memunmap_pages() waits
 * for every page to be free).
 *
 * Locking: dm->grow_lock (chunk array, growth, shrink, eviction) ->
 * dm->lock (spinlock: bitmaps and counters).  A copy job takes
 * engines_rwsem for reading and the engine's lock like any DMA job; it is
 * run with no page-table lock held, so migrate_to_ram may run it from a CPU
 * fault.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/huge_mm.h>
#include <linux/ioport.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/sched/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/version.h>

#include "vugpu_drv.h"
#include "vugpu_hmm.h"

/*
 * 6.12 has page_free(struct page *) and order-0 device-private pages only;
 * 7.x has folio_free(), compound device-private folios and
 * MIGRATE_VMA_SELECT_COMPOUND.  Only 6.12 and 7.3 are built and tested.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 0, 0)
#define VUGPU_DEVMEM_FOLIO	1
#else
#define VUGPU_DEVMEM_FOLIO	0
#endif

#define VUGPU_CHUNK_MAX		SZ_128M
#define VUGPU_BLOCK_PAGES	(SZ_2M >> PAGE_SHIFT)
#define VUGPU_BLOCK_ORDER	(21 - PAGE_SHIFT)
#define VUGPU_MAX_CHUNKS	1024
#define VUGPU_WINDOW_PAGES	(SZ_64M >> PAGE_SHIFT)	/* pages per migrate_vma call */

#if VUGPU_DEVMEM_FOLIO
#define VUGPU_SELECT_COMPOUND	MIGRATE_VMA_SELECT_COMPOUND
#define VUGPU_PFN_COMPOUND	MIGRATE_PFN_COMPOUND
#define VUGPU_PMD_ORDER		HPAGE_PMD_ORDER
#else
#define VUGPU_SELECT_COMPOUND	0
#define VUGPU_PFN_COMPOUND	0
#define VUGPU_PMD_ORDER		0
#endif
#define VUGPU_EVICT_TRIES	200

struct vugpu_devmem_chunk {
	struct dev_pagemap	pagemap;
	struct vugpu_devmem	*dm;
	struct resource		*res;
	u64			vram_off;	/* VRAM offset of the first page */
	unsigned long		pfn_first;
	unsigned long		npages;
	unsigned long		*free_map;	/* bit set: page free */
	u16			*blk_free;	/* free pages per 2 MiB block */
	unsigned int		nblocks;
	unsigned long		used;		/* pages handed out and not yet freed */
};

struct vugpu_devmem {
	struct vugpu_device	*vdev;
	struct mutex		grow_lock;
	spinlock_t		lock;
	struct vugpu_devmem_chunk *chunks[VUGPU_MAX_CHUNKS];
	unsigned int		nchunks;
	u64			size;		/* bytes in chunks */
	bool			dead;		/* remove: no more allocations */
	unsigned int		hint_chunk;	/* last block single pages came from */
	unsigned int		hint_blk;
	atomic64_t		to_dev;		/* pages migrated, by direction */
	atomic64_t		to_sys;
	atomic64_t		faults;		/* migrate_to_ram calls */
	atomic64_t		evicted;
	atomic64_t		copy_errors;
};

static const struct dev_pagemap_ops vugpu_devmem_ops;

/* Pages migrate_to_ram moves back per CPU fault (see "CPU faults" above). */
static unsigned int fault_around_pages = 16;

static int vugpu_fault_around_set(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int ret = kstrtouint(val, 0, &n);

	if (ret)
		return ret;
	if (!n || n > PTRS_PER_PTE || !is_power_of_2(n)) {
		pr_err("fault_around_pages=%u: must be a power of two from 1 to %lu\n", n,
		       (unsigned long)PTRS_PER_PTE);
		return -EINVAL;
	}
	WRITE_ONCE(fault_around_pages, n);
	return 0;
}

static const struct kernel_param_ops vugpu_fault_around_ops = {
	.set = vugpu_fault_around_set,
	.get = param_get_uint,
};
module_param_cb(fault_around_pages, &vugpu_fault_around_ops, &fault_around_pages, 0644);
MODULE_PARM_DESC(fault_around_pages,
		 "pages of this GPU migrate_to_ram brings back per CPU fault: the aligned window around the fault, a power of two 1-512 (default 16; 1 = the faulting page only)");

static struct vugpu_devmem *vugpu_dm(struct vugpu_device *vdev)
{
	return vdev->hmm ? vdev->hmm->devmem : NULL;
}

static struct dev_pagemap *vugpu_pgmap(struct page *page)
{
#if VUGPU_DEVMEM_FOLIO
	return page_pgmap(page);
#else
	return page->pgmap;
#endif
}

/* Only for pages handed out (a free page may still carry a stale compound head). */
static struct vugpu_devmem_chunk *vugpu_page_chunk(struct page *page)
{
	return container_of(vugpu_pgmap(page), struct vugpu_devmem_chunk, pagemap);
}

static u64 vugpu_page_vram(struct page *page)
{
	struct vugpu_devmem_chunk *c = vugpu_page_chunk(page);

	return c->vram_off + ((page_to_pfn(page) - c->pfn_first) << PAGE_SHIFT);
}

/* [DEVMEM] vugpu_hmm.h: the VRAM offset of a device-private page of this GPU. */
u64 vugpu_devmem_vram_offset(struct page *page)
{
	return vugpu_page_vram(page);
}

/* --- allocation ------------------------------------------------------------- */

static void vugpu_chunk_take(struct vugpu_devmem_chunk *c, unsigned long idx, unsigned int nr)
{
	bitmap_clear(c->free_map, idx, nr);
	c->blk_free[idx / VUGPU_BLOCK_PAGES] -= nr;
	c->used += nr;
}

/* Under dm->lock: a free page or wholly free block (and its chunk), or NULL. */
static struct page *vugpu_devmem_take(struct vugpu_devmem *dm, unsigned int order,
				      struct vugpu_devmem_chunk **chunk)
{
	unsigned int ci, b, pass;
	unsigned long idx;

	if (dm->dead)
		return NULL;
	if (order) {
		for (ci = 0; ci < dm->nchunks; ci++) {
			struct vugpu_devmem_chunk *c = dm->chunks[ci];

			for (b = 0; b < c->nblocks; b++) {
				if (c->blk_free[b] != VUGPU_BLOCK_PAGES)
					continue;
				idx = (unsigned long)b * VUGPU_BLOCK_PAGES;
				vugpu_chunk_take(c, idx, VUGPU_BLOCK_PAGES);
				*chunk = c;
				return pfn_to_page(c->pfn_first + idx);
			}
		}
		return NULL;
	}
	/* The hinted block, then partly used blocks, then whole ones. */
	if (dm->hint_chunk < dm->nchunks) {
		struct vugpu_devmem_chunk *c = dm->chunks[dm->hint_chunk];

		b = dm->hint_blk;
		if (b < c->nblocks && c->blk_free[b])
			goto found;
	}
	for (pass = 0; pass < 2; pass++) {
		for (ci = 0; ci < dm->nchunks; ci++) {
			struct vugpu_devmem_chunk *c = dm->chunks[ci];

			for (b = 0; b < c->nblocks; b++) {
				if (!c->blk_free[b] ||
				    (!pass && c->blk_free[b] == VUGPU_BLOCK_PAGES))
					continue;
				dm->hint_chunk = ci;
				dm->hint_blk = b;
				goto found;
			}
		}
	}
	return NULL;
found:
	{
		struct vugpu_devmem_chunk *c = dm->chunks[dm->hint_chunk];
		unsigned long start = (unsigned long)dm->hint_blk * VUGPU_BLOCK_PAGES;

		idx = find_next_bit(c->free_map, start + VUGPU_BLOCK_PAGES, start);
		if (WARN_ON_ONCE(idx >= start + VUGPU_BLOCK_PAGES))
			return NULL;
		vugpu_chunk_take(c, idx, 1);
		*chunk = c;
		return pfn_to_page(c->pfn_first + idx);
	}
}

static void vugpu_chunk_free(struct vugpu_devmem_chunk *c)
{
	kvfree(c->free_map);
	kvfree(c->blk_free);
	kfree(c);
}

/* Add one chunk (grow_lock held).  0, -ENOSPC at the limit, or an error. */
static int vugpu_devmem_grow(struct vugpu_devmem *dm)
{
	struct vugpu_device *vdev = dm->vdev;
	struct vugpu_devmem_chunk *c;
	u64 size, left;
	void *addr;
	unsigned int b;
	int ret;

	if (dm->dead)
		return -ENODEV;
	left = vdev->devmem_limit - dm->size;
	if (left < SZ_2M || dm->nchunks == VUGPU_MAX_CHUNKS)
		return -ENOSPC;
	size = min_t(u64, left, VUGPU_CHUNK_MAX);

	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return -ENOMEM;
	/* Take the biggest 2 MiB-aligned piece of VRAM up to size. */
	for (;;) {
		ret = vugpu_vram_alloc(vdev, size, SZ_2M, &c->vram_off);
		if (!ret || size <= SZ_2M)
			break;
		size = ALIGN_DOWN(size / 2, SZ_2M);
	}
	if (ret)
		goto err_free;
	c->npages = size >> PAGE_SHIFT;
	c->nblocks = size / SZ_2M;
	c->free_map = kvmalloc_array(BITS_TO_LONGS(c->npages), sizeof(long), GFP_KERNEL);
	c->blk_free = kvmalloc_array(c->nblocks, sizeof(u16), GFP_KERNEL);
	if (!c->free_map || !c->blk_free) {
		ret = -ENOMEM;
		goto err_vram;
	}
	bitmap_fill(c->free_map, c->npages);
	for (b = 0; b < c->nblocks; b++)
		c->blk_free[b] = VUGPU_BLOCK_PAGES;

	c->res = request_free_mem_region(&iomem_resource, size, dev_name(&vdev->pdev->dev));
	if (IS_ERR_OR_NULL(c->res)) {
		ret = c->res ? PTR_ERR(c->res) : -ENOMEM;
		c->res = NULL;
		goto err_vram;
	}
	c->dm = dm;
	c->pagemap.type = MEMORY_DEVICE_PRIVATE;
	c->pagemap.range.start = c->res->start;
	c->pagemap.range.end = c->res->end;
	c->pagemap.nr_range = 1;
	c->pagemap.ops = &vugpu_devmem_ops;
	c->pagemap.owner = vdev;	/* vugpu_hmm.h: the owner is the vugpu_device */
	addr = memremap_pages(&c->pagemap, dev_to_node(&vdev->pdev->dev));
	if (IS_ERR_OR_NULL(addr)) {
		ret = addr ? PTR_ERR(addr) : -EFAULT;
		goto err_region;
	}
	c->pfn_first = c->res->start >> PAGE_SHIFT;

	spin_lock(&dm->lock);
	dm->chunks[dm->nchunks++] = c;
	dm->size += size;
	spin_unlock(&dm->lock);
	dev_info(&vdev->pdev->dev,
		 "%s: device-private chunk %u: VRAM %#llx-%#llx, PFNs %#lx-%#lx (%llu of %llu MiB)\n",
		 vdev->name, dm->nchunks - 1, c->vram_off, c->vram_off + size - 1, c->pfn_first,
		 c->pfn_first + c->npages - 1, dm->size >> 20, vdev->devmem_limit >> 20);
	return 0;

err_region:
	release_mem_region(c->res->start, resource_size(c->res));
err_vram:
	vugpu_vram_free(vdev, c->vram_off, size);
err_free:
	vugpu_chunk_free(c);
	return ret;
}

/*
 * A locked device page (order 0) or PMD-order folio with one reference, or
 * NULL when the device memory is exhausted.
 */
static struct page *vugpu_devmem_alloc(struct vugpu_devmem *dm, unsigned int order)
{
	struct vugpu_devmem_chunk *c = NULL;
	struct page *page;
	int ret = 0;

	for (;;) {
		spin_lock(&dm->lock);
		page = vugpu_devmem_take(dm, order, &c);
		spin_unlock(&dm->lock);
		if (page || ret)
			break;
		mutex_lock(&dm->grow_lock);
		/* Someone may have grown it or freed pages meanwhile: one more look first. */
		spin_lock(&dm->lock);
		page = vugpu_devmem_take(dm, order, &c);
		spin_unlock(&dm->lock);
		if (!page)
			ret = vugpu_devmem_grow(dm);
		mutex_unlock(&dm->grow_lock);
		if (page)
			break;
		if (ret)
			return NULL;
		ret = 1;	/* grown: one last try */
	}
	if (!page)
		return NULL;
#if VUGPU_DEVMEM_FOLIO
	zone_device_page_init(page, &c->pagemap, order);
	if (order)
		folio_set_large_rmappable(page_folio(page));
#else
	zone_device_page_init(page);
#endif
	page->zone_device_data = NULL;
	return page;
}

/* Free @nr pages starting at @page (under no lock). */
static void vugpu_devmem_free_pages(struct page *page, unsigned int nr)
{
	struct vugpu_devmem_chunk *c = vugpu_page_chunk(page);
	struct vugpu_devmem *dm = c->dm;
	unsigned long idx = page_to_pfn(page) - c->pfn_first;

	page->zone_device_data = NULL;
	spin_lock(&dm->lock);
	if (!WARN_ON_ONCE(idx + nr > c->npages)) {
		bitmap_set(c->free_map, idx, nr);
		c->blk_free[idx / VUGPU_BLOCK_PAGES] += nr;
		c->used -= nr;
	}
	spin_unlock(&dm->lock);
}

#if VUGPU_DEVMEM_FOLIO
static void vugpu_devmem_folio_free(struct folio *folio)
{
	vugpu_devmem_free_pages(&folio->page, folio_nr_pages(folio));
}

/*
 * The core split a device folio (a partial unmap, or a migration to system
 * memory into 4 KiB pages): with this op it leaves the new folios' pgmap and
 * mapping to us.  The VRAM offset follows from the PFN, nothing else to do.
 */
static void vugpu_devmem_folio_split(struct folio *head, struct folio *tail)
{
	if (!tail)
		return;
	tail->page.zone_device_data = head->page.zone_device_data;
	tail->page.mapping = head->page.mapping;
	tail->pgmap = head->pgmap;
}
#else
static void vugpu_devmem_page_free(struct page *page)
{
	vugpu_devmem_free_pages(page, 1);
}
#endif

/* Give back a device page allocated for a migration that did not happen. */
static void vugpu_devmem_put_new(struct page *page)
{
	unlock_page(page);
	put_page(page);
}

/* --- copy jobs -------------------------------------------------------------- */

/* One migration's copies: a descriptor list and the DMA mappings it uses. */
struct vugpu_xfer {
	struct vugpu_device	*vdev;
	struct vugpu_hw_desc	*descs;
	unsigned int		n, max;
	struct vugpu_xfer_map {
		dma_addr_t	addr;
		u32		len;
	}			*maps;
	unsigned int		nmaps, maxmaps;
	enum dma_data_direction	dir;
	u64			bytes;
	int			err;
};

static int vugpu_xfer_init(struct vugpu_xfer *x, struct vugpu_device *vdev, unsigned long npages,
			   enum dma_data_direction dir)
{
	memset(x, 0, sizeof(*x));
	x->vdev = vdev;
	x->dir = dir;
	x->max = npages;
	x->maxmaps = npages;
	x->descs = kvmalloc_array(npages, sizeof(*x->descs), GFP_KERNEL);
	x->maps = kvmalloc_array(npages, sizeof(*x->maps), GFP_KERNEL);
	if (!x->descs || !x->maps) {
		kvfree(x->descs);
		kvfree(x->maps);
		return -ENOMEM;
	}
	return 0;
}

static void vugpu_xfer_fini(struct vugpu_xfer *x)
{
	struct device *dev = &x->vdev->pdev->dev;
	unsigned int i;

	for (i = 0; i < x->nmaps; i++)
		dma_unmap_page(dev, x->maps[i].addr, x->maps[i].len, x->dir);
	kvfree(x->descs);
	kvfree(x->maps);
}

/* Append (or merge into the last descriptor) a COPY or, with !sys_page, a FILL of VRAM with 0. */
static void vugpu_xfer_add(struct vugpu_xfer *x, struct page *sys_page, u64 vram, u32 len)
{
	struct vugpu_hw_desc *d = x->n ? &x->descs[x->n - 1] : NULL;
	bool to_vram = x->dir == DMA_TO_DEVICE;
	dma_addr_t sys = 0;
	u8 op = sys_page ? VUGPU_OP_COPY : VUGPU_OP_FILL;

	if (x->err)
		return;
	if (sys_page) {
		sys = dma_map_page(&x->vdev->pdev->dev, sys_page, 0, len, x->dir);
		if (dma_mapping_error(&x->vdev->pdev->dev, sys)) {
			x->err = -EIO;
			return;
		}
		if (x->nmaps < x->maxmaps) {
			x->maps[x->nmaps].addr = sys;
			x->maps[x->nmaps++].len = len;
		} else {
			dma_unmap_page(&x->vdev->pdev->dev, sys, len, x->dir);
			x->err = -EIO;
			return;
		}
	}
	x->bytes += len;
	if (d && d->opcode == op && le64_to_cpu(d->length) + len <= VUGPU_DESC_MAX_LENGTH) {
		u64 dl = le64_to_cpu(d->length);

		if (op == VUGPU_OP_FILL) {
			if (le64_to_cpu(d->dst) + dl == vram) {
				d->length = cpu_to_le64(dl + len);
				return;
			}
		} else if (to_vram ? le64_to_cpu(d->src) + dl == sys && le64_to_cpu(d->dst) + dl == vram :
				     le64_to_cpu(d->src) + dl == vram && le64_to_cpu(d->dst) + dl == sys) {
			d->length = cpu_to_le64(dl + len);
			return;
		}
	}
	if (x->n == x->max) {
		x->err = -EIO;	/* one descriptor per page at most: a driver bug */
		return;
	}
	d = &x->descs[x->n++];
	vugpu_desc_init(d, op, 0);
	d->length = cpu_to_le64(len);
	if (op == VUGPU_OP_FILL) {
		d->dst_aperture = VUGPU_APERTURE_VRAM;
		d->dst = cpu_to_le64(vram);
		d->value = 0;
	} else if (to_vram) {
		d->src_aperture = VUGPU_APERTURE_SYS;
		d->src = cpu_to_le64(sys);
		d->dst_aperture = VUGPU_APERTURE_VRAM;
		d->dst = cpu_to_le64(vram);
	} else {
		d->src_aperture = VUGPU_APERTURE_VRAM;
		d->src = cpu_to_le64(vram);
		d->dst_aperture = VUGPU_APERTURE_SYS;
		d->dst = cpu_to_le64(sys);
	}
}

/* Run the list as one job on a data engine. */
static int vugpu_xfer_run(struct vugpu_xfer *x)
{
	struct vugpu_device *vdev = x->vdev;
	int ret;

	if (x->err)
		return x->err;
	if (!x->n)
		return 0;
	ret = vugpu_hmm_run_descs(vdev, x->descs, x->n);
	if (ret) {
		atomic64_inc(&vugpu_dm(vdev)->copy_errors);
		dev_err_ratelimited(&vdev->pdev->dev,
				    "%s: device memory copy of %llu bytes (%u descriptors) failed: %d\n",
				    vdev->name, x->bytes, x->n, ret);
	}
	return ret;
}

/* --- migration -------------------------------------------------------------- */

/* HMM_DMIRROR_FLAG_FAIL_ALLOC: the next device allocation fails (test_hmm). */
static bool vugpu_take_fail_alloc(struct vugpu_mirror *m)
{
	u64 flags;

	if (!m)
		return false;
	flags = READ_ONCE(m->flags);
	if (!(flags & HMM_DMIRROR_FLAG_FAIL_ALLOC))
		return false;
	WRITE_ONCE(m->flags, flags & ~(u64)HMM_DMIRROR_FLAG_FAIL_ALLOC);
	return true;
}

/*
 * Undo the driver's half of a migration that must not happen: release every
 * destination page and clear MIGRATE, so that finalize restores the sources.
 */
static void vugpu_migrate_abort(unsigned long *src, unsigned long *dst, unsigned long npages,
				bool dst_is_device)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct page *dpage = migrate_pfn_to_page(dst[i]);

		src[i] &= ~MIGRATE_PFN_MIGRATE;
		dst[i] = 0;
		if (!dpage)
			continue;
		if (dst_is_device) {
			vugpu_devmem_put_new(dpage);
		} else {
			unlock_page(dpage);
			put_page(dpage);
		}
	}
}

/*
 * System -> VRAM: allocate device pages for every collected source and queue
 * the copies (zero fills for holes).  PMD-order sources get a device folio,
 * or, when that allocation fails, 4 KiB device pages (the core then splits
 * the source, as with test_hmm).
 */
static void vugpu_to_dev_alloc(struct vugpu_devmem *dm, struct migrate_vma *args,
			       struct vugpu_mirror *m, struct vugpu_xfer *x)
{
	unsigned long npages = (args->end - args->start) >> PAGE_SHIFT, i = 0;

	while (i < npages) {
		unsigned long src = args->src[i], write = src & MIGRATE_PFN_WRITE;
		bool large = src & VUGPU_PFN_COMPOUND;
		struct page *spage, *dpage = NULL;
		unsigned int nr = 1, j;

		if (!(src & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		spage = migrate_pfn_to_page(src);
		if (spage && is_zone_device_page(spage)) {
			i++;
			continue;
		}
		if (large)
			nr = spage ? folio_nr_pages(page_folio(spage)) : 1U << VUGPU_PMD_ORDER;
		if (nr > npages - i) {	/* cannot happen: a compound entry covers its whole PMD */
			i++;
			continue;
		}
		if (!vugpu_take_fail_alloc(m))
			dpage = vugpu_devmem_alloc(dm, large ? VUGPU_PMD_ORDER : 0);
		if (dpage) {
			args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write |
				       (large ? VUGPU_PFN_COMPOUND : 0);
			vugpu_xfer_add(x, spage, vugpu_page_vram(dpage), nr << PAGE_SHIFT);
			i += nr;
			continue;
		}
		if (!large) {
			i++;
			continue;
		}
		for (j = 0; j < nr; j++) {
			dpage = vugpu_devmem_alloc(dm, 0);
			if (!dpage)
				break;
			args->dst[i + j] = migrate_pfn(page_to_pfn(dpage)) | write;
			vugpu_xfer_add(x, spage ? pfn_to_page(page_to_pfn(spage) + j) : NULL, vugpu_page_vram(dpage),
				       PAGE_SIZE);
		}
		i += nr;
	}
}

/*
 * VRAM -> system: allocate system pages (a folio of the same order for a
 * device folio, or 4 KiB pages when that fails or fail-alloc asks) and
 * queue the copies.  0 or -ENOMEM (then the caller aborts the range).
 */
static int vugpu_to_sys_alloc(struct migrate_vma *args, struct vugpu_mirror *m,
			      struct vugpu_xfer *x)
{
	unsigned long npages = (args->end - args->start) >> PAGE_SHIFT, i = 0;

	while (i < npages) {
		unsigned long src = args->src[i], write = src & MIGRATE_PFN_WRITE;
		unsigned long addr = args->start + (i << PAGE_SHIFT);
		struct page *spage = migrate_pfn_to_page(src), *dpage = NULL;
		unsigned int order = 0, nr, j;
		bool fail;

		if (!spage || !(src & MIGRATE_PFN_MIGRATE) || !is_device_private_page(spage)) {
			i++;
			continue;
		}
		if (src & VUGPU_PFN_COMPOUND)
			order = folio_order(page_folio(spage));
		nr = 1U << order;
		if (nr > npages - i)
			return -EINVAL;	/* cannot happen: a compound entry covers its folio */
		fail = vugpu_take_fail_alloc(m);
#if VUGPU_DEVMEM_FOLIO
		if (!fail && order) {
			struct folio *f = vma_alloc_folio(GFP_HIGHUSER_MOVABLE | __GFP_NOWARN, order,
							  args->vma, addr);

			dpage = f ? folio_page(f, 0) : NULL;
		}
#endif
		if (!fail && !order)
			dpage = alloc_page_vma(GFP_HIGHUSER_MOVABLE, args->vma, addr);
		if (dpage) {
			lock_page(dpage);
			args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write |
				       (order ? VUGPU_PFN_COMPOUND : 0);
			vugpu_xfer_add(x, dpage, vugpu_page_vram(spage), nr << PAGE_SHIFT);
			i += nr;
			continue;
		}
		if (!order)
			return -ENOMEM;	/* as test_hmm, also when fail-alloc asked for it */
		/* 4 KiB pages; the core splits the device folio. */
		for (j = 0; j < nr; j++) {
			dpage = alloc_page_vma(GFP_HIGHUSER_MOVABLE, args->vma, addr + (j << PAGE_SHIFT));
			if (!dpage)
				return -ENOMEM;
			lock_page(dpage);
			args->dst[i + j] = migrate_pfn(page_to_pfn(dpage)) | write;
			vugpu_xfer_add(x, dpage, vugpu_page_vram(spage) + (j << PAGE_SHIFT), PAGE_SIZE);
		}
		i += nr;
	}
	return 0;
}

static unsigned long vugpu_count_migrated(const struct migrate_vma *args)
{
	unsigned long npages = (args->end - args->start) >> PAGE_SHIFT, i, n = 0;

	for (i = 0; i < npages; i++)
		if ((args->src[i] & MIGRATE_PFN_VALID) && (args->src[i] & MIGRATE_PFN_MIGRATE))
			n++;
	return n;
}

/*
 * Clear the PTEs of every mirror of this GPU for the pages this migration
 * collected (runs of MIGRATE entries), and only those: pages that stay where
 * they are keep their device mappings.
 */
static void vugpu_unmap_collected(struct vugpu_device *vdev, struct migrate_vma *args)
{
	unsigned long npages = (args->end - args->start) >> PAGE_SHIFT, i = 0, run;

	while (i < npages) {
		if (!(args->src[i] & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		run = i;
		/* A compound entry (always PMD-sized) is followed by zero entries for its folio. */
		while (run < npages && (args->src[run] & MIGRATE_PFN_MIGRATE))
			run += args->src[run] & VUGPU_PFN_COMPOUND ? 1UL << VUGPU_PMD_ORDER : 1;
		run = min(run, npages);
		vugpu_hmm_unmap_all_mirrors(vdev, args->vma->vm_mm, args->start + (i << PAGE_SHIFT),
					    args->start + (run << PAGE_SHIFT));
		i = run;
	}
}

/* Map the pages that moved to VRAM into the mirror that asked (test_hmm's finalize_and_map). */
static int vugpu_to_dev_map(struct vugpu_mirror *m, struct migrate_vma *args)
{
	unsigned long npages = (args->end - args->start) >> PAGE_SHIFT, i = 0;
	bool refilled = false;
	int ret = 0;

	/* Page tables come from the mirror's pool under m->mutex (no reclaim there). */
	vugpu_mirror_pt_reserve(m);
	mutex_lock(&m->mutex);
	while (i < npages && !ret) {
		unsigned long dst = args->dst[i];
		struct page *dpage = migrate_pfn_to_page(dst);
		unsigned int order = 0;

		if (!(args->src[i] & MIGRATE_PFN_MIGRATE) || !dpage) {
			i++;
			continue;
		}
		if (dst & VUGPU_PFN_COMPOUND)
			order = VUGPU_PMD_ORDER;
		ret = vugpu_mirror_map_page(m, args->start + (i << PAGE_SHIFT), dpage, order,
					    VUGPU_MAP_READ |
					    (dst & MIGRATE_PFN_WRITE ? VUGPU_MAP_WRITE : 0));
		if (ret == -ENOMEM && !refilled) {
			/* The pool ran dry: refill it (may reclaim) outside the lock, retry once. */
			mutex_unlock(&m->mutex);
			vugpu_mirror_pt_reserve(m);
			mutex_lock(&m->mutex);
			refilled = true;
			ret = 0;
			continue;
		}
		refilled = false;
		i += 1UL << order;
	}
	mutex_unlock(&m->mutex);
	return ret;
}

/* One window of MIGRATE_TO_DEV: setup, allocate + copy, pages, map, finalize. */
static int vugpu_to_dev_window(struct vugpu_device *vdev, struct vugpu_mirror *m,
			       struct vm_area_struct *vma, unsigned long start, unsigned long end,
			       unsigned long *src, unsigned long *dst)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	struct migrate_vma args = {
		.vma = vma,
		.src = src,
		.dst = dst,
		.start = start,
		.end = end,
		.pgmap_owner = vdev,
		.flags = MIGRATE_VMA_SELECT_SYSTEM | VUGPU_SELECT_COMPOUND,
	};
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct vugpu_xfer x;
	int ret;

	memset(dst, 0, npages * sizeof(*dst));
	ret = migrate_vma_setup(&args);
	if (ret)
		return ret;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		return 0;
	}
	ret = vugpu_xfer_init(&x, vdev, npages, DMA_TO_DEVICE);
	if (ret)
		goto abort;
	/*
	 * The mirrors of this GPU skip the MIGRATE invalidation (it is ours):
	 * drop their mappings of the old system pages before those go away.
	 */
	vugpu_unmap_collected(vdev, &args);
	vugpu_to_dev_alloc(dm, &args, m, &x);
	ret = vugpu_xfer_run(&x);
	vugpu_xfer_fini(&x);
	if (ret)
		goto abort;
	migrate_vma_pages(&args);
	atomic64_add(vugpu_count_migrated(&args), &dm->to_dev);
	ret = vugpu_to_dev_map(m, &args);
	migrate_vma_finalize(&args);
	return ret;
abort:
	vugpu_migrate_abort(src, dst, npages, true);
	migrate_vma_finalize(&args);
	return ret;
}

/* One window of MIGRATE_TO_SYS; adds to *cpages. */
static int vugpu_to_sys_window(struct vugpu_device *vdev, struct vugpu_mirror *m,
			       struct vm_area_struct *vma, unsigned long start, unsigned long end,
			       unsigned long *src, unsigned long *dst, u64 *cpages)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	struct migrate_vma args = {
		.vma = vma,
		.src = src,
		.dst = dst,
		.start = start,
		.end = end,
		.pgmap_owner = vdev,
		.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE | VUGPU_SELECT_COMPOUND,
	};
	unsigned long npages = (end - start) >> PAGE_SHIFT, n;
	struct vugpu_xfer x;
	int ret;

	memset(dst, 0, npages * sizeof(*dst));
	ret = migrate_vma_setup(&args);
	if (ret)
		return ret;
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		return 0;
	}
	ret = vugpu_xfer_init(&x, vdev, npages, DMA_FROM_DEVICE);
	if (ret)
		goto abort;
	ret = vugpu_to_sys_alloc(&args, m, &x);
	if (!ret) {
		/* No device access to the old pages once the copy starts. */
		vugpu_unmap_collected(vdev, &args);
		ret = vugpu_xfer_run(&x);
	}
	vugpu_xfer_fini(&x);
	if (ret)
		goto abort;
	migrate_vma_pages(&args);
	n = vugpu_count_migrated(&args);
	*cpages += n;
	atomic64_add(n, &dm->to_sys);
	migrate_vma_finalize(&args);
	return 0;
abort:
	vugpu_migrate_abort(src, dst, npages, false);
	migrate_vma_finalize(&args);
	return ret;
}

typedef int (*vugpu_window_fn)(struct vugpu_device *vdev, struct vugpu_mirror *m,
			       struct vm_area_struct *vma, unsigned long start, unsigned long end,
			       unsigned long *src, unsigned long *dst, u64 *cpages);

static int vugpu_to_dev_window_fn(struct vugpu_device *vdev, struct vugpu_mirror *m,
				  struct vm_area_struct *vma, unsigned long start,
				  unsigned long end, unsigned long *src, unsigned long *dst,
				  u64 *cpages)
{
	return vugpu_to_dev_window(vdev, m, vma, start, end, src, dst);
}

/* Walk [addr, addr + npages pages) VMA by VMA in windows, as test_hmm does (all VMAs readable). */
static int vugpu_migrate_range(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd,
			       vugpu_window_fn fn, u64 *cpages)
{
	struct vugpu_device *vdev = m->vdev;
	struct mm_struct *mm = m->notifier.mm;
	unsigned long start = cmd->addr, end, addr, next;
	unsigned long *src, *dst;
	int ret = 0;

	if (!vugpu_dm(vdev))
		return -EOPNOTSUPP;
	if (!PAGE_ALIGNED(start) || cmd->npages > (ULONG_MAX >> PAGE_SHIFT) ||
	    check_add_overflow(start, (unsigned long)cmd->npages << PAGE_SHIFT, &end))
		return -EINVAL;
	if (!mmget_not_zero(mm))
		return -EINVAL;
	src = kvcalloc(VUGPU_WINDOW_PAGES, sizeof(*src), GFP_KERNEL);
	dst = kvcalloc(VUGPU_WINDOW_PAGES, sizeof(*dst), GFP_KERNEL);
	if (!src || !dst) {
		ret = -ENOMEM;
		goto out_free;
	}
	mmap_read_lock(mm);
	for (addr = start; addr < end; addr = next) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);

		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		next = min3(end, vma->vm_end, addr + ((unsigned long)VUGPU_WINDOW_PAGES << PAGE_SHIFT));
		ret = fn(vdev, m, vma, addr, next, src, dst, cpages);
		if (ret)
			break;
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
	}
	mmap_read_unlock(mm);
out_free:
	kvfree(src);
	kvfree(dst);
	mmput(mm);
	return ret;
}

/* [DEVMEM] HMM_DMIRROR_MIGRATE_TO_DEV; cmd->cpages = pages the device reads back (test_hmm). */
int vugpu_devmem_migrate_to_dev(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	u64 unused = 0;
	int ret;

	cmd->cpages = 0;
	ret = vugpu_migrate_range(m, cmd, vugpu_to_dev_window_fn, &unused);
	if (ret)
		return ret;
	return vugpu_mirror_read(m, cmd, VUGPU_ACCESS_NOFAULT);
}

/* [DEVMEM] HMM_DMIRROR_MIGRATE_TO_SYS; cmd->cpages = pages migrated. */
int vugpu_devmem_migrate_to_sys(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	u64 cpages = 0;
	int ret;

	ret = vugpu_migrate_range(m, cmd, vugpu_to_sys_window, &cpages);
	cmd->cpages = cpages;
	return ret;
}

/*
 * dev_pagemap_ops.migrate_to_ram: a CPU touched a device page (vmf->page is
 * locked).  Migrates the device folio, or the fault_around_pages window.
 */
static vm_fault_t vugpu_devmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct page *page = vmf->page;
	struct vugpu_device *vdev = vugpu_pgmap(page)->owner;
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	struct vm_area_struct *vma = vmf->vma;
	unsigned long src_one, dst_one, *src = &src_one, *dst = &dst_one, npages, span;
	struct migrate_vma args = {
		.vma = vma,
		.pgmap_owner = vdev,
		.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		.fault_page = page,
	};
	struct vugpu_xfer x;
	vm_fault_t vret = 0;
	int ret;

	if (WARN_ON_ONCE(!dm))
		return VM_FAULT_SIGBUS;
	span = PAGE_SIZE * READ_ONCE(fault_around_pages);
#if VUGPU_DEVMEM_FOLIO
	/* A PMD-mapped device folio arrives without a PTE: migrate it whole. */
	if (!vmf->pte) {
		span = PAGE_SIZE << folio_order(page_folio(page));
		args.flags |= VUGPU_SELECT_COMPOUND;
	}
#endif
	/* The aligned window around the fault, inside the VMA (a PMD folio is inside it). */
	args.start = max(ALIGN_DOWN(vmf->address, span), vma->vm_start);
	args.end = min(ALIGN_DOWN(vmf->address, span) + span, vma->vm_end);
	npages = (args.end - args.start) >> PAGE_SHIFT;
	if (npages > 1) {
		src = kcalloc(npages, sizeof(*src), GFP_KERNEL);
		dst = kcalloc(npages, sizeof(*dst), GFP_KERNEL);
		if (!src || !dst) {
			vret = VM_FAULT_OOM;
			goto out;
		}
	}
	args.src = src;
	args.dst = dst;
	memset(dst, 0, sizeof(*dst) * npages);
	if (migrate_vma_setup(&args)) {
		vret = VM_FAULT_SIGBUS;
		goto out;
	}
	atomic64_inc(&dm->faults);
	if (!args.cpages) {
		migrate_vma_finalize(&args);
		goto out;
	}
	ret = vugpu_xfer_init(&x, vdev, npages, DMA_FROM_DEVICE);
	if (ret) {
		vret = VM_FAULT_OOM;
		goto abort;
	}
	ret = vugpu_to_sys_alloc(&args, NULL, &x);
	if (!ret) {
		vugpu_unmap_collected(vdev, &args);
		ret = vugpu_xfer_run(&x);
		if (ret)
			vret = VM_FAULT_SIGBUS;
	} else {
		vret = VM_FAULT_OOM;
	}
	vugpu_xfer_fini(&x);
	if (ret)
		goto abort;
	migrate_vma_pages(&args);
	atomic64_add(vugpu_count_migrated(&args), &dm->to_sys);
	migrate_vma_finalize(&args);
	goto out;
abort:
	vugpu_migrate_abort(args.src, args.dst, npages, false);
	migrate_vma_finalize(&args);
out:
	if (npages > 1) {
		kfree(src);
		kfree(dst);
	}
	return vret;
}

static const struct dev_pagemap_ops vugpu_devmem_ops = {
#if VUGPU_DEVMEM_FOLIO
	.folio_free	= vugpu_devmem_folio_free,
	.folio_split	= vugpu_devmem_folio_split,
#else
	.page_free	= vugpu_devmem_page_free,
#endif
	.migrate_to_ram	= vugpu_devmem_migrate_to_ram,
};

/* --- eviction, probe, remove -------------------------------------------------- */

/*
 * Move every device page of [pfn, pfn + npages) (whole 2 MiB blocks) back to
 * system memory.  Returns how many pages moved.  When the device is dying and
 * a copy fails, the pages still move (zero-filled: the data is gone), since
 * memunmap_pages() waits for every page to be free.
 */
static unsigned long vugpu_evict_range(struct vugpu_device *vdev, unsigned long pfn,
				       unsigned long npages, bool dying)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	unsigned long *src, *dst, i = 0, moved = 0;
	struct vugpu_xfer x;
	int ret;

	src = kvcalloc(npages, sizeof(*src), GFP_KERNEL);
	dst = kvcalloc(npages, sizeof(*dst), GFP_KERNEL);
	if (!src || !dst || vugpu_xfer_init(&x, vdev, npages, DMA_FROM_DEVICE)) {
		kvfree(src);
		kvfree(dst);
		return 0;
	}
	migrate_device_range(src, pfn, npages);
	while (i < npages) {
		struct page *spage = migrate_pfn_to_page(src[i]), *dpage = NULL;
		unsigned int order = 0, nr;

		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE)) {
			i++;
			continue;
		}
		if (src[i] & VUGPU_PFN_COMPOUND)
			order = folio_order(page_folio(spage));
		nr = 1U << order;
		if (order) {
			struct folio *f = folio_alloc(GFP_HIGHUSER_MOVABLE | __GFP_NOWARN |
						      __GFP_RETRY_MAYFAIL |
						      (dying ? __GFP_ZERO : 0), order);

			dpage = f ? folio_page(f, 0) : NULL;
		} else {
			dpage = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL |
					   (dying ? __GFP_ZERO : 0));
		}
		if (dpage) {	/* else: not this time (no 2 MiB folio); the caller retries */
			lock_page(dpage);
			dst[i] = migrate_pfn(page_to_pfn(dpage)) | (src[i] & MIGRATE_PFN_WRITE) |
				 (order ? VUGPU_PFN_COMPOUND : 0);
			vugpu_xfer_add(&x, dpage, vugpu_page_vram(spage), nr << PAGE_SHIFT);
		}
		i += nr;
	}
	ret = vugpu_xfer_run(&x);
	vugpu_xfer_fini(&x);
	if (ret && !dying) {
		vugpu_migrate_abort(src, dst, npages, false);
	} else if (ret) {
		dev_err(&vdev->pdev->dev, "%s: eviction copy failed (%d): device memory contents lost\n",
			vdev->name, ret);
	}
	migrate_device_pages(src, dst, npages);
	for (i = 0; i < npages; i++)
		if ((src[i] & MIGRATE_PFN_MIGRATE) && dst[i])
			moved += src[i] & VUGPU_PFN_COMPOUND ?
				 folio_nr_pages(page_folio(migrate_pfn_to_page(dst[i]))) : 1;
	migrate_device_finalize(src, dst, npages);
	atomic64_add(moved, &dm->evicted);
	kvfree(src);
	kvfree(dst);
	return moved;
}

/*
 * Evict every device page of the GPU (grow_lock held).  Pages can be busy
 * for a moment (locked by a migration in flight, or no 2 MiB folio free):
 * retry until the chunks are empty or the tries run out.  0 or -EBUSY.
 */
static int vugpu_evict_all(struct vugpu_device *vdev, bool dying)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	unsigned int tries, ci;

	for (tries = 0; tries < VUGPU_EVICT_TRIES; tries++) {
		unsigned long used = 0;

		for (ci = 0; ci < dm->nchunks; ci++) {
			struct vugpu_devmem_chunk *c = dm->chunks[ci];

			if (READ_ONCE(c->used))
				vugpu_evict_range(vdev, c->pfn_first, c->npages, dying);
		}
		spin_lock(&dm->lock);
		for (ci = 0; ci < dm->nchunks; ci++)
			used += dm->chunks[ci]->used;
		spin_unlock(&dm->lock);
		if (!used)
			return 0;
		if (tries)
			msleep(20);
	}
	dev_err(&vdev->pdev->dev, "%s: device pages still in use after %u eviction passes\n",
		vdev->name, VUGPU_EVICT_TRIES);
	return -EBUSY;
}

/* Unregister a chunk that has no page in use and give its VRAM back. */
static void vugpu_chunk_destroy(struct vugpu_device *vdev, struct vugpu_devmem_chunk *c)
{
	memunmap_pages(&c->pagemap);
	release_mem_region(c->res->start, resource_size(c->res));
	vugpu_vram_free(vdev, c->vram_off, c->npages << PAGE_SHIFT);
	vugpu_chunk_free(c);
}

/* Drop every chunk with no page in use (grow_lock held). */
static void vugpu_devmem_shrink(struct vugpu_device *vdev)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	unsigned int ci = 0;

	while (ci < dm->nchunks) {
		struct vugpu_devmem_chunk *c = dm->chunks[ci];

		spin_lock(&dm->lock);
		if (c->used) {
			spin_unlock(&dm->lock);
			ci++;
			continue;
		}
		dm->chunks[ci] = dm->chunks[--dm->nchunks];
		dm->size -= c->npages << PAGE_SHIFT;
		dm->hint_chunk = dm->hint_blk = 0;
		spin_unlock(&dm->lock);
		vugpu_chunk_destroy(vdev, c);
	}
}

/* [DEVMEM] HMM_DMIRROR_RELEASE: evict every device page and drop the chunks (test_hmm). */
int vugpu_devmem_release(struct vugpu_device *vdev)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	int ret;

	if (!dm)
		return 0;	/* no device memory: nothing to release */
	mutex_lock(&dm->grow_lock);
	ret = vugpu_evict_all(vdev, false);
	vugpu_devmem_shrink(vdev);
	mutex_unlock(&dm->grow_lock);
	return ret;
}

/* [DEVMEM] A mirror's file is closing: test_hmm evicts the GPU's device memory then. */
void vugpu_devmem_mirror_close(struct vugpu_mirror *m)
{
	struct vugpu_devmem *dm = vugpu_dm(m->vdev);

	if (!dm)
		return;
	mutex_lock(&dm->grow_lock);
	vugpu_evict_all(m->vdev, false);
	mutex_unlock(&dm->grow_lock);
}

/* [DEVMEM] vugpu_hmm_probe(): per-GPU state; chunks come on demand. */
int vugpu_devmem_probe(struct vugpu_device *vdev)
{
	struct vugpu_devmem *dm;

	if (!vdev->hmm)
		return -EINVAL;
	if (vdev->devmem_limit < SZ_2M) {
		dev_info(&vdev->pdev->dev, "%s: no device-private memory (module parameter devmem_mb=0)\n",
			 vdev->name);
		return -ENOSPC;
	}
	dm = kzalloc(sizeof(*dm), GFP_KERNEL);
	if (!dm)
		return -ENOMEM;
	dm->vdev = vdev;
	mutex_init(&dm->grow_lock);
	spin_lock_init(&dm->lock);
	atomic64_set(&dm->to_dev, 0);
	atomic64_set(&dm->to_sys, 0);
	atomic64_set(&dm->faults, 0);
	atomic64_set(&dm->evicted, 0);
	atomic64_set(&dm->copy_errors, 0);
	vdev->hmm->devmem = dm;
	dev_info(&vdev->pdev->dev, "%s: device-private memory: up to %llu MiB of VRAM (%s)\n",
		 vdev->name, vdev->devmem_limit >> 20,
		 VUGPU_DEVMEM_FOLIO && thp_migration_supported() ? "with 2 MiB folios" :
		 "4 KiB pages");
	return 0;
}

/*
 * [DEVMEM] vugpu_hmm_remove(): every mirror is closed and the engines still
 * run.  Evict everything, then unregister the chunks.
 */
void vugpu_devmem_remove(struct vugpu_device *vdev)
{
	struct vugpu_devmem *dm = vugpu_dm(vdev);
	unsigned int ci;

	if (!dm)
		return;
	mutex_lock(&dm->grow_lock);
	spin_lock(&dm->lock);
	dm->dead = true;
	spin_unlock(&dm->lock);
	vugpu_evict_all(vdev, true);
	for (ci = 0; ci < dm->nchunks; ci++)
		vugpu_chunk_destroy(vdev, dm->chunks[ci]);
	dm->nchunks = 0;
	mutex_unlock(&dm->grow_lock);
	dev_info(&vdev->pdev->dev,
		 "%s: device-private memory removed: %lld pages to VRAM, %lld to system (%lld CPU faults), %lld evicted, %lld copy errors\n",
		 vdev->name, (s64)atomic64_read(&dm->to_dev), (s64)atomic64_read(&dm->to_sys),
		 (s64)atomic64_read(&dm->faults), (s64)atomic64_read(&dm->evicted),
		 (s64)atomic64_read(&dm->copy_errors));
	vdev->hmm->devmem = NULL;
	mutex_destroy(&dm->grow_lock);
	kfree(dm);
}
