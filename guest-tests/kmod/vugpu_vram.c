// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu VRAM allocator: one owner for the whole VRAM (VRAM_SIZE bytes, of
 * which BAR2 shows the first vram_bar_size to the CPU).
 *
 * Fixed reservations, made at probe (vugpu_vram_reserve):
 *   - "cpu-window": [0, vram_bar_len), the range user tests reach with the
 *     VRAM ioctls, mmap and raw VRAM descriptors; the engines' VRAM rings
 *     sit at its top (vram_ring_base, also a reservation of its own below);
 *   - "rings":      the VRAM ring reservation (inside the CPU window, so
 *     user tests that read DMA_INFO keep avoiding it);
 *   - "p2pmem":     the top p2pmem_mb of BAR2, owned by the p2pdma core.
 * Everything else is free: the devmem_mb range between the CPU window and
 * p2pmem, and the VRAM above BAR2 (device view only).  Device-private
 * memory (vugpu_devmem.c) takes 2 MiB-aligned chunks of it on demand, and
 * small allocations take 4 KiB granules.
 *
 * The free space is a gen_pool of 4 KiB granules; its addresses are VRAM
 * offsets plus VUGPU_VRAM_BIAS, because gen_pool_alloc() returns 0 for
 * failure and 0 is a valid VRAM offset.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/genalloc.h>
#include <linux/sizes.h>
#include <linux/slab.h>

#include "vugpu_drv.h"

#define VUGPU_VRAM_BIAS		SZ_1G

struct vugpu_vram_resv {
	const char	*name;
	u64		start;
	u64		size;
};

#define VUGPU_VRAM_RESV_MAX	8

static int vugpu_vram_reserve(struct vugpu_device *vdev, const char *name, u64 start, u64 size);

struct vugpu_vram {
	struct gen_pool		*pool;
	u64			size;		/* VRAM_SIZE */
	u64			managed;	/* bytes given to the pool */
	struct mutex		lock;		/* resv[] */
	unsigned int		nresv;
	struct vugpu_vram_resv	resv[VUGPU_VRAM_RESV_MAX];
};

static int vugpu_vram_init(struct vugpu_device *vdev)
{
	struct vugpu_vram *vm;

	vm = kzalloc(sizeof(*vm), GFP_KERNEL);
	if (!vm)
		return -ENOMEM;
	mutex_init(&vm->lock);
	vm->size = vdev->vram_size;
	vm->pool = gen_pool_create(PAGE_SHIFT, dev_to_node(&vdev->pdev->dev));
	if (!vm->pool) {
		kfree(vm);
		return -ENOMEM;
	}
	vdev->vram_alloc = vm;
	return 0;
}

/*
 * Probe, before BAR2 is mapped: decide how much VRAM device-private memory
 * may use (devmem_mb, 2 MiB granules) and shrink the CPU window
 * (vram_bar_len, which starts as "BAR2 below p2pmem") by what the VRAM above
 * BAR2 cannot provide.  The window keeps at least half of BAR2 below p2pmem.
 */
int vugpu_vram_layout(struct vugpu_device *vdev, unsigned int devmem_mb)
{
	u64 vram = (u64)vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_HI) << 32 |
		   vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_LO);
	u64 want = ALIGN_DOWN((u64)devmem_mb << 20, SZ_2M), above = 0, take;

	if (vram > vdev->vram_bar_size && vram != ~0ULL)
		above = ALIGN_DOWN(vram - vdev->vram_bar_size, SZ_2M);
	take = want > above ? want - above : 0;
	take = min_t(u64, ALIGN(take, SZ_2M), ALIGN_DOWN(vdev->vram_bar_len / 2, SZ_2M));
	vdev->vram_bar_len -= take;
	vdev->devmem_limit = min(want, above + take);
	if (want && vdev->devmem_limit < want)
		dev_warn(&vdev->pdev->dev, "devmem_mb=%u: only %llu MiB of VRAM can be device-private\n",
			 devmem_mb, vdev->devmem_limit >> 20);
	return 0;
}

/* Probe, after the registers were checked: the allocator with the fixed clients. */
int vugpu_vram_setup(struct vugpu_device *vdev)
{
	int ret = vugpu_vram_init(vdev);

	if (!ret)
		ret = vugpu_vram_reserve(vdev, "cpu-window", 0, vdev->vram_bar_len);
	if (!ret)
		ret = vugpu_vram_reserve(vdev, "p2pmem", vdev->p2p_off, vdev->p2p_size);
	if (ret)
		dev_err(&vdev->pdev->dev, "VRAM allocator: %d\n", ret);
	return ret;
}

/* Record a fixed reservation; call before vugpu_vram_populate(). */
static int vugpu_vram_reserve(struct vugpu_device *vdev, const char *name, u64 start, u64 size)
{
	struct vugpu_vram *vm = vdev->vram_alloc;
	unsigned int i;
	int ret = 0;

	if (!size)
		return 0;
	if (start >= vm->size || size > vm->size - start)
		return -ERANGE;
	mutex_lock(&vm->lock);
	if (vm->managed) {
		ret = -EBUSY;
		goto out;
	}
	if (vm->nresv == VUGPU_VRAM_RESV_MAX) {
		ret = -ENOSPC;
		goto out;
	}
	for (i = 0; i < vm->nresv; i++) {
		const struct vugpu_vram_resv *r = &vm->resv[i];

		/* Nested reservations (the rings inside the CPU window) are fine; partial overlaps are not. */
		if (start < r->start + r->size && r->start < start + size &&
		    !(start >= r->start && start + size <= r->start + r->size) &&
		    !(r->start >= start && r->start + r->size <= start + size)) {
			ret = -EEXIST;
			goto out;
		}
	}
	vm->resv[vm->nresv++] = (struct vugpu_vram_resv){ name, start, size };
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static bool vugpu_vram_reserved(struct vugpu_vram *vm, u64 off, u64 *next)
{
	unsigned int i;

	for (i = 0; i < vm->nresv; i++) {
		const struct vugpu_vram_resv *r = &vm->resv[i];

		if (off >= r->start && off < r->start + r->size) {
			*next = r->start + r->size;
			return true;
		}
	}
	return false;
}

/* Give every unreserved page of VRAM to the pool. */
static int vugpu_vram_populate(struct vugpu_device *vdev)
{
	struct vugpu_vram *vm = vdev->vram_alloc;
	u64 off = 0, next, end = vm->size & PAGE_MASK;
	int ret = 0;

	mutex_lock(&vm->lock);
	while (off < end) {
		u64 start;
		unsigned int i;

		if (vugpu_vram_reserved(vm, off, &next)) {
			off = PAGE_ALIGN(next);
			continue;
		}
		/* A free run up to the next reservation. */
		start = off;
		next = end;
		for (i = 0; i < vm->nresv; i++)
			if (vm->resv[i].start > start && vm->resv[i].start < next)
				next = vm->resv[i].start;
		next &= PAGE_MASK;
		if (next > start) {
			ret = gen_pool_add(vm->pool, start + VUGPU_VRAM_BIAS, next - start,
					   dev_to_node(&vdev->pdev->dev));
			if (ret)
				break;
			vm->managed += next - start;
		}
		off = next > start ? next : start + PAGE_SIZE;
	}
	mutex_unlock(&vm->lock);
	if (!ret)
		dev_info(&vdev->pdev->dev, "%s: VRAM allocator: %llu MiB free of %llu MiB (%u reservations)\n",
			 vdev->name, vm->managed >> 20, vm->size >> 20, vm->nresv);
	return ret;
}

/*
 * Probe, after the engines: the VRAM rings are a client too; then the rest
 * of VRAM becomes allocatable (device-private memory, vugpu_devmem.c, grows
 * into it from vugpu_devmem_probe() on).
 */
int vugpu_vram_clients_ready(struct vugpu_device *vdev)
{
	int ret = vugpu_vram_reserve(vdev, "rings", vdev->vram_ring_base, vdev->vram_ring_size);

	if (!ret)
		ret = vugpu_vram_populate(vdev);
	if (ret)
		dev_err(&vdev->pdev->dev, "VRAM clients: %d\n", ret);
	return ret;
}

/*
 * Allocate @size bytes (a multiple of 4 KiB) aligned to @align (a power of
 * two, at least 4 KiB).  Returns 0 and the VRAM offset in *@off, or -ENOMEM.
 */
int vugpu_vram_alloc(struct vugpu_device *vdev, u64 size, u64 align, u64 *off)
{
	struct vugpu_vram *vm = vdev->vram_alloc;
	struct genpool_data_align data = { .align = max_t(u64, align, PAGE_SIZE) };
	unsigned long a;

	if (!vm || !size || !PAGE_ALIGNED(size) || !is_power_of_2(data.align))
		return -EINVAL;
	a = gen_pool_alloc_algo(vm->pool, size, gen_pool_first_fit_align, &data);
	if (!a)
		return -ENOMEM;
	*off = a - VUGPU_VRAM_BIAS;
	return 0;
}

void vugpu_vram_free(struct vugpu_device *vdev, u64 off, u64 size)
{
	struct vugpu_vram *vm = vdev->vram_alloc;

	if (vm && size)
		gen_pool_free(vm->pool, off + VUGPU_VRAM_BIAS, size);
}

u64 vugpu_vram_avail(struct vugpu_device *vdev)
{
	struct vugpu_vram *vm = vdev->vram_alloc;

	return vm ? gen_pool_avail(vm->pool) : 0;
}

/* Remove: every allocation must have been freed (gen_pool_destroy checks it). */
void vugpu_vram_fini(struct vugpu_device *vdev)
{
	struct vugpu_vram *vm = vdev->vram_alloc;

	if (!vm)
		return;
	vdev->vram_alloc = NULL;
	if (gen_pool_avail(vm->pool) != vm->managed)
		dev_err(&vdev->pdev->dev, "%s: VRAM allocator: %llu bytes still allocated at remove\n",
			vdev->name, vm->managed - (u64)gen_pool_avail(vm->pool));
	else
		gen_pool_destroy(vm->pool);
	mutex_destroy(&vm->lock);
	kfree(vm);
}
