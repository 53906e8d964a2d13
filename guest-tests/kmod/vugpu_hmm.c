// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu HMM mirror: /dev/hmm_dmirrorN on the real device.
 *
 * With module parameter dmirror=1, each GPU whose device MMU works
 * (hw-spec §9) gets a misc device named like lib/test_hmm.c's
 * (/dev/hmm_dmirrorN, N = the GPU's index in probe order) speaking exactly
 * its ABI (vugpu_hmm_uapi.h), so tools/testing/selftests/mm/hmm-tests runs
 * unmodified against the device.  The names collide with test_hmm.ko's,
 * hence the parameter (default off).
 *
 * Each open is a mirror (struct vugpu_mirror): one MMU context whose page
 * tables follow the opener's address space through an
 * mmu_interval_notifier over all of it.  Unlike test_hmm, which reads and
 * writes pages with the CPU, READ and WRITE are done by the device: a COPY
 * between the mirror's device-virtual addresses (the process's VAs) and a
 * DMA bounce buffer.  Missing translations fault to the driver
 * (vugpu_mmu.c), which faults the range in with hmm_range_fault() and
 * replays; `faults` and `cpages` count as test_hmm counts them.  SNAPSHOT
 * reports hmm_range_fault() without faulting, EXCLUSIVE uses
 * make_device_exclusive() and maps the pages with the PTE ATOMIC bit,
 * CHECK_EXCLUSIVE looks for such PTEs, FLAGS stores the flags for the
 * device-memory side, MIGRATE_* and RELEASE go to it (vugpu_devmem.c).
 *
 * No page is pinned for longer than an ioctl: the page tables hold DMA
 * mappings without page references, and the notifier removes a mapping
 * (and waits for the device's TLB invalidation) before the kernel may
 * reuse the page.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "vugpu_drv.h"
#include "vugpu_hmm.h"

static bool dmirror;
module_param(dmirror, bool, 0444);
MODULE_PARM_DESC(dmirror, "Create /dev/hmm_dmirrorN (lib/test_hmm.c's ABI) for each GPU with a device MMU (default N: the names collide with test_hmm.ko)");

#define VUGPU_BOUNCE_MAX	(2UL << 20)	/* bytes moved per device job */
#define VUGPU_SNAP_CHUNK	64		/* pages per SNAPSHOT hmm_range_fault */

/* --- pages ---------------------------------------------------------------------- */

static struct dev_pagemap *vugpu_page_pgmap(struct page *page)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
	return page_pgmap(page);
#else
	return page->pgmap;
#endif
}

bool vugpu_hmm_page_is_local(struct vugpu_device *vdev, struct page *page)
{
	return is_device_private_page(page) && vugpu_page_pgmap(page)->owner == vdev;
}

/* --- bounce buffers ------------------------------------------------------------------ */

struct vugpu_bounce_seg {
	struct page	*page;
	unsigned int	order;
	dma_addr_t	dma;
};

struct vugpu_bounce {
	struct vugpu_device	*vdev;
	size_t			size;
	unsigned int		nseg;
	struct vugpu_bounce_seg	seg[VUGPU_BOUNCE_MAX >> PAGE_SHIFT];
};

static void vugpu_bounce_free(struct vugpu_bounce *b)
{
	struct device *dev = &b->vdev->pdev->dev;
	unsigned int i;

	for (i = 0; i < b->nseg; i++) {
		dma_unmap_page(dev, b->seg[i].dma, PAGE_SIZE << b->seg[i].order, DMA_BIDIRECTIONAL);
		__free_pages(b->seg[i].page, b->seg[i].order);
	}
	kfree(b);
}

/* A bounce buffer of @size bytes (<= VUGPU_BOUNCE_MAX), as few segments as memory allows. */
static struct vugpu_bounce *vugpu_bounce_alloc(struct vugpu_device *vdev, size_t size)
{
	struct device *dev = &vdev->pdev->dev;
	struct vugpu_bounce *b = kzalloc(sizeof(*b), GFP_KERNEL);
	size_t have = 0;
	unsigned int order;

	if (!b)
		return NULL;
	b->vdev = vdev;
	order = get_order(size);
	while (have < size) {
		struct vugpu_bounce_seg *s = &b->seg[b->nseg];

		while (order && (PAGE_SIZE << order) > size - have)
			order--;
		s->page = alloc_pages(GFP_KERNEL | (order ? __GFP_NORETRY | __GFP_NOWARN : 0), order);
		if (!s->page) {
			if (!order)
				goto err;
			order--;
			continue;
		}
		s->order = order;
		s->dma = dma_map_page(dev, s->page, 0, PAGE_SIZE << order, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(dev, s->dma)) {
			__free_pages(s->page, order);
			goto err;
		}
		b->nseg++;
		have += PAGE_SIZE << order;
	}
	b->size = size;
	return b;
err:
	vugpu_bounce_free(b);
	return NULL;
}

/* Copy between the bounce buffer and user memory: @to_user or from it. */
static int vugpu_bounce_user(struct vugpu_bounce *b, void __user *u, size_t len, bool to_user)
{
	unsigned int i;

	for (i = 0; i < b->nseg && len; i++) {
		size_t seg = min_t(size_t, len, PAGE_SIZE << b->seg[i].order), off;

		for (off = 0; off < seg; off += PAGE_SIZE) {
			struct page *p = b->seg[i].page + (off >> PAGE_SHIFT);
			size_t n = min_t(size_t, PAGE_SIZE, seg - off);
			void *k = kmap_local_page(p);
			unsigned long left;

			if (to_user)
				left = copy_to_user(u, k, n);
			else
				left = copy_from_user(k, u, n);
			kunmap_local(k);
			if (left)
				return -EFAULT;
			u += n;
		}
		len -= seg;
	}
	return 0;
}

/*
 * Build COPY descriptors between [va, va + len) of the mirror (VIRT) and
 * the bounce buffer (SYS): @to_dev = bounce -> VA (WRITE), else VA -> bounce.
 */
static unsigned int vugpu_bounce_descs(struct vugpu_bounce *b, struct vugpu_hw_desc *d,
				       unsigned long va, size_t len, bool to_dev)
{
	unsigned int i, n = 0;

	for (i = 0; i < b->nseg && len; i++, n++) {
		size_t seg = min_t(size_t, len, PAGE_SIZE << b->seg[i].order);

		vugpu_desc_init(&d[n], VUGPU_OP_COPY, 0);
		if (to_dev) {
			d[n].src_aperture = VUGPU_APERTURE_SYS;
			d[n].src = cpu_to_le64(b->seg[i].dma);
			d[n].dst_aperture = VUGPU_APERTURE_VIRT;
			d[n].dst = cpu_to_le64(va);
		} else {
			d[n].src_aperture = VUGPU_APERTURE_VIRT;
			d[n].src = cpu_to_le64(va);
			d[n].dst_aperture = VUGPU_APERTURE_SYS;
			d[n].dst = cpu_to_le64(b->seg[i].dma);
		}
		d[n].length = cpu_to_le64(seg);
		va += seg;
		len -= seg;
	}
	return n;
}

/* --- device READ / WRITE ------------------------------------------------------- */

/*
 * Move cmd->npages pages between the mirror's VAs and cmd->ptr through the
 * device, VUGPU_BOUNCE_MAX at a time.  A fault is serviced for the whole
 * rest of the request, so touching N unmapped pages costs one fault.
 */
static int vugpu_mirror_xfer(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd,
			     unsigned int flags, bool write)
{
	unsigned long start = cmd->addr, end = cmd->addr + (cmd->npages << PAGE_SHIFT), va;
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	struct vugpu_hw_desc *descs;
	struct vugpu_bounce *b;
	int ret = 0;

	if (end <= start)
		return end < start ? -EINVAL : 0;
	if (end > 1UL << VUGPU_VA_BITS)
		return -EFAULT;
	b = vugpu_bounce_alloc(m->vdev, min(end - start, VUGPU_BOUNCE_MAX));
	descs = kcalloc(VUGPU_BOUNCE_MAX >> PAGE_SHIFT, sizeof(*descs), GFP_KERNEL);
	if (!b || !descs) {
		ret = -ENOMEM;
		goto out;
	}
	for (va = start; va < end && !ret; va += b->size) {
		size_t len = min(end - va, (unsigned long)b->size);
		unsigned int n;
		u64 faults = 0;

		if (write && vugpu_bounce_user(b, uptr + (va - start), len, false)) {
			ret = -EFAULT;
			break;
		}
		n = vugpu_bounce_descs(b, descs, va, len, write);
		mutex_lock(&m->job_lock);
		if (m->dead)
			ret = -ENODEV;
		else
			ret = vugpu_mmu_run_virt(m, descs, n, va, end, flags, &faults);
		mutex_unlock(&m->job_lock);
		cmd->faults += faults;
		if (ret)
			break;
		if (!write && vugpu_bounce_user(b, uptr + (va - start), len, true)) {
			ret = -EFAULT;
			break;
		}
		cmd->cpages += len >> PAGE_SHIFT;
	}
out:
	kfree(descs);
	if (b)
		vugpu_bounce_free(b);
	return ret;
}

int vugpu_mirror_read(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd, unsigned int flags)
{
	return vugpu_mirror_xfer(m, cmd, flags, false);
}

/* VUGPU_DMIRROR_ATOMIC: one device fetch-and-add on a VA of the mirror. */
static int vugpu_mirror_atomic(struct vugpu_mirror *m, struct vugpu_dmirror_atomic *a)
{
	struct vugpu_device *vdev = m->vdev;
	struct device *dev = &vdev->pdev->dev;
	struct vugpu_hw_desc d;
	dma_addr_t dma;
	__le64 *old;
	u64 faults = 0;
	int ret;

	if (a->addr % 8 || a->addr >= 1UL << VUGPU_VA_BITS || a->flags & ~VUGPU_DMIRROR_NOFAULT)
		return -EINVAL;
	old = dma_alloc_coherent(dev, sizeof(*old), &dma, GFP_KERNEL);
	if (!old)
		return -ENOMEM;
	vugpu_desc_init(&d, VUGPU_OP_ATOMIC, 0);
	/* The target is VIRT; the old value goes to SYS.  (Not both VIRT: one context.) */
	d.dst_aperture = VUGPU_APERTURE_VIRT;
	d.dst = cpu_to_le64(a->addr);
	d.src_aperture = VUGPU_APERTURE_SYS;
	d.src = cpu_to_le64(dma);
	d.length = cpu_to_le64(VUGPU_ATOMIC_LENGTH);
	d.value = cpu_to_le64(a->value);
	mutex_lock(&m->job_lock);
	if (m->dead)
		ret = -ENODEV;
	else
		ret = vugpu_mmu_run_virt(m, &d, 1, a->addr & PAGE_MASK, (a->addr & PAGE_MASK) + PAGE_SIZE,
					 a->flags & VUGPU_DMIRROR_NOFAULT ? VUGPU_ACCESS_NOFAULT : 0,
					 &faults);
	mutex_unlock(&m->job_lock);
	a->faults = faults;
	if (ret == -ENOENT)
		ret = -EFAULT;
	if (!ret)
		a->old = le64_to_cpu(READ_ONCE(*old));
	dma_free_coherent(dev, sizeof(*old), old, dma);
	return ret;
}

/* --- SNAPSHOT ------------------------------------------------------------------------ */

static u8 vugpu_snap_prot(struct vugpu_mirror *m, unsigned long e)
{
	struct page *page;
	u8 prot;

	if (e & HMM_PFN_ERROR)
		return VUGPU_HMM_PROT_ERROR;
	if (!(e & HMM_PFN_VALID))
		return VUGPU_HMM_PROT_NONE;
	page = hmm_pfn_to_page(e);
	if (is_device_private_page(page))
		prot = vugpu_hmm_page_is_local(m->vdev, page) ? VUGPU_HMM_PROT_DEV_PRIVATE_LOCAL :
								VUGPU_HMM_PROT_DEV_PRIVATE_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		prot = VUGPU_HMM_PROT_ZERO;
	else
		prot = VUGPU_HMM_PROT_NONE;
	prot |= (e & HMM_PFN_WRITE) ? VUGPU_HMM_PROT_WRITE : VUGPU_HMM_PROT_READ;
	if (hmm_pfn_to_map_order(e) + PAGE_SHIFT == PMD_SHIFT)
		prot |= VUGPU_HMM_PROT_PMD;
	else if (hmm_pfn_to_map_order(e) + PAGE_SHIFT == PUD_SHIFT)
		prot |= VUGPU_HMM_PROT_PUD;
	return prot;
}

/* A snapshot only needs the sequence: any invalidation restarts it. */
static bool vugpu_snap_invalidate(struct mmu_interval_notifier *mni,
				  const struct mmu_notifier_range *range, unsigned long cur_seq)
{
	mmu_interval_set_seq(mni, cur_seq);
	return true;
}

static const struct mmu_interval_notifier_ops vugpu_snap_ops = {
	.invalidate = vugpu_snap_invalidate,
};

static int vugpu_mirror_snapshot(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	struct mm_struct *mm = m->notifier.mm;
	unsigned long start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT), addr;
	u8 __user *uptr = u64_to_user_ptr(cmd->ptr);
	unsigned long pfns[VUGPU_SNAP_CHUNK];
	u8 prot[VUGPU_SNAP_CHUNK];
	int ret = 0;

	if (end < start)
		return -EINVAL;
	if (!mmget_not_zero(mm))
		return -EINVAL;
	for (addr = start; addr < end && !ret; ) {
		struct mmu_interval_notifier snap = {};
		struct hmm_range range = {
			.notifier = &snap,
			.hmm_pfns = pfns,
			.dev_private_owner = m->vdev,
			.start = addr,
			.end = min(end, addr + (VUGPU_SNAP_CHUNK << PAGE_SHIFT)),
		};
		unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT), i, n;

		/* Its own notifier: the mirror's is not told about ranges it does not map. */
		ret = mmu_interval_notifier_insert(&snap, mm, range.start, range.end - range.start,
						   &vugpu_snap_ops);
		if (ret)
			break;
		for (;;) {
			if (time_after(jiffies, timeout)) {
				ret = -EBUSY;
				break;
			}
			range.notifier_seq = mmu_interval_read_begin(&snap);
			mmap_read_lock(mm);
			ret = hmm_range_fault(&range);
			mmap_read_unlock(mm);
			if (ret == -EBUSY)
				continue;
			if (ret)
				break;
			n = (range.end - range.start) >> PAGE_SHIFT;
			for (i = 0; i < n; i++)
				prot[i] = vugpu_snap_prot(m, pfns[i]);
			if (mmu_interval_read_retry(&snap, range.notifier_seq))
				continue;
			break;
		}
		mmu_interval_notifier_remove(&snap);
		if (ret)
			break;
		n = (range.end - range.start) >> PAGE_SHIFT;
		if (copy_to_user(uptr, prot, n)) {
			ret = -EFAULT;
			break;
		}
		uptr += n;
		cmd->cpages += n;
		addr = range.end;
	}
	mmput(mm);
	return ret;
}

/* --- EXCLUSIVE ----------------------------------------------------------------------- */

static int vugpu_mirror_exclusive(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	unsigned long start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT);
	int ret;

	if (end < start)
		return -EINVAL;
	ret = vugpu_mirror_make_exclusive(m, start, end);
	if (ret)
		return ret;
	/* Return the data, read by the device through the atomic mappings. */
	return vugpu_mirror_read(m, cmd, VUGPU_ACCESS_NOFAULT);
}

static int vugpu_mirror_check_exclusive(struct vugpu_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	unsigned long start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT);
	bool excl;

	mutex_lock(&m->mutex);
	excl = vugpu_mirror_any_exclusive(m, start, end);
	mutex_unlock(&m->mutex);
	return excl ? -EPERM : 0;
}

/* --- the interval notifier ------------------------------------------------------------ */

static bool vugpu_mirror_invalidate(struct mmu_interval_notifier *mni,
				    const struct mmu_notifier_range *range, unsigned long cur_seq)
{
	struct vugpu_mirror *m = container_of(mni, struct vugpu_mirror, notifier);

	/*
	 * Our own migrations and exclusive grabs: the device-memory side and
	 * vugpu_mirror_make_exclusive() update the page tables themselves.
	 */
	if ((range->event == MMU_NOTIFY_MIGRATE || range->event == MMU_NOTIFY_EXCLUSIVE) &&
	    range->owner == m->vdev)
		return true;

	if (mmu_notifier_range_blockable(range)) {
		mutex_lock(&m->mutex);
	} else {
		if (!mutex_trylock(&m->mutex))
			return false;
		/* Clearing needs a TLB invalidation, which sleeps. */
		if (vugpu_mirror_any_mapped(m, range->start, range->end)) {
			mutex_unlock(&m->mutex);
			return false;
		}
	}
	mmu_interval_set_seq(mni, cur_seq);
	vugpu_mirror_unmap(m, range->start, range->end);
	mutex_unlock(&m->mutex);
	return true;
}

static const struct mmu_interval_notifier_ops vugpu_mirror_ops = {
	.invalidate = vugpu_mirror_invalidate,
};

void vugpu_hmm_unmap_all_mirrors(struct vugpu_device *vdev, struct mm_struct *mm,
				 unsigned long start, unsigned long end)
{
	struct vugpu_hmm *hmm = vdev->hmm;
	struct vugpu_mirror *m;

	if (!hmm)
		return;
	mutex_lock(&hmm->lock);
	list_for_each_entry(m, &hmm->mirrors, node) {
		if (mm && m->notifier.mm != mm)
			continue;
		mutex_lock(&m->mutex);
		vugpu_mirror_unmap(m, start, end);
		mutex_unlock(&m->mutex);
	}
	mutex_unlock(&hmm->lock);
}

/* --- the character device ------------------------------------------------------------- */

static void vugpu_hmm_release_kref(struct kref *ref)
{
	struct vugpu_hmm *hmm = container_of(ref, struct vugpu_hmm, ref);
	struct vugpu_device *vdev = hmm->vdev;

	mutex_destroy(&hmm->lock);
	kfree(hmm);
	vugpu_put(vdev);
}

static void vugpu_mirror_free(struct vugpu_mirror *m)
{
	struct vugpu_hmm *hmm = m->hmm;

	mutex_destroy(&m->mutex);
	mutex_destroy(&m->job_lock);
	kfree(m);
	kref_put(&hmm->ref, vugpu_hmm_release_kref);
}

static int vugpu_dmirror_open(struct inode *inode, struct file *filp)
{
	struct vugpu_hmm *hmm = container_of(filp->private_data, struct vugpu_hmm, misc);
	struct vugpu_mirror *m;
	int ret;

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	m->vdev = hmm->vdev;
	m->hmm = hmm;
	kref_get(&hmm->ref);
	mutex_init(&m->mutex);
	mutex_init(&m->job_lock);
	INIT_LIST_HEAD(&m->node);

	down_read(&hmm->rwsem);
	if (hmm->dead) {
		ret = -ENODEV;
		goto err;
	}
	ret = vugpu_mmu_ctx_alloc(m);
	if (ret)
		goto err;
	ret = mmu_interval_notifier_insert(&m->notifier, current->mm, 0, ULONG_MAX & PAGE_MASK,
					   &vugpu_mirror_ops);
	if (ret) {
		vugpu_mmu_ctx_free(m);
		goto err;
	}
	mutex_lock(&hmm->lock);
	list_add_tail(&m->node, &hmm->mirrors);
	mutex_unlock(&hmm->lock);
	up_read(&hmm->rwsem);
	filp->private_data = m;
	return 0;
err:
	up_read(&hmm->rwsem);
	vugpu_mirror_free(m);
	return ret;
}

/* Tear a live mirror down: no notifier, no context, off the list.  hmm->rwsem held. */
static void vugpu_mirror_teardown(struct vugpu_mirror *m)
{
	struct vugpu_hmm *hmm = m->hmm;

	mmu_interval_notifier_remove(&m->notifier);
	mutex_lock(&m->job_lock);
	mutex_lock(&m->mutex);
	vugpu_mmu_ctx_free(m);
	m->dead = true;
	mutex_unlock(&m->mutex);
	mutex_unlock(&m->job_lock);
	mutex_lock(&hmm->lock);
	list_del_init(&m->node);
	mutex_unlock(&hmm->lock);
}

static int vugpu_dmirror_release(struct inode *inode, struct file *filp)
{
	struct vugpu_mirror *m = filp->private_data;
	struct vugpu_hmm *hmm = m->hmm;

	down_read(&hmm->rwsem);
	if (!m->dead) {
#ifdef VUGPU_HAVE_DEVMEM
		vugpu_devmem_mirror_close(m);
#endif
		vugpu_mirror_teardown(m);
	}
	up_read(&hmm->rwsem);
	vugpu_mirror_free(m);
	return 0;
}

static long vugpu_dmirror_ioctl(struct file *filp, unsigned int command, unsigned long arg)
{
	struct vugpu_mirror *m = filp->private_data;
	struct vugpu_hmm *hmm = m->hmm;
	void __user *uarg = (void __user *)arg;
	struct hmm_dmirror_cmd cmd;
	int ret;

	switch (command) {
	case VUGPU_DMIRROR_ATOMIC: {
		struct vugpu_dmirror_atomic a;

		if (copy_from_user(&a, uarg, sizeof(a)))
			return -EFAULT;
		a.old = 0;
		a.faults = 0;
		down_read(&hmm->rwsem);
		ret = m->dead ? -ENODEV : vugpu_mirror_atomic(m, &a);
		up_read(&hmm->rwsem);
		if (!ret && copy_to_user(uarg, &a, sizeof(a)))
			return -EFAULT;
		return ret;
	}
	case VUGPU_DMIRROR_STATS: {
		struct vugpu_dmirror_stats st = {};
		struct vugpu_mmu *mmu = &hmm->mmu;

		down_read(&hmm->rwsem);
		if (m->dead) {
			up_read(&hmm->rwsem);
			return -ENODEV;
		}
		st.fault_irqs = atomic64_read(&m->vdev->vectors[mmu->fault_vector].count);
		st.faults = atomic64_read(&mmu->faults);
		st.faults_serviced = atomic64_read(&mmu->faults_serviced);
		st.cancels = atomic64_read(&mmu->cancels);
		st.overflows = atomic64_read(&mmu->overflows);
		st.invalidations = atomic64_read(&mmu->invalidations);
		st.stray = atomic64_read(&mmu->stray);
		st.service_ns = atomic64_read(&mmu->service_ns);
		st.ctl_runs = atomic64_read(&mmu->ctl_runs);
		st.ctl_ns = atomic64_read(&mmu->ctl_ns);
		st.mirror_faults = atomic64_read(&m->faults);
		st.mirror_mapped_pages = atomic64_read(&m->mapped_pages);
		st.ctx = m->ctx;
		st.ctl_engine = mmu->ctl_engine;
		down_read(&m->vdev->engines_rwsem);
		if (!m->vdev->engines_dead)
			vugpu_mmu_read_stats(m->vdev, st.hw);
		up_read(&m->vdev->engines_rwsem);
		up_read(&hmm->rwsem);
		if (copy_to_user(uarg, &st, sizeof(st)))
			return -EFAULT;
		return 0;
	}
	}

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.addr & ~PAGE_MASK)
		return -EINVAL;
	if (cmd.npages > (ULONG_MAX >> PAGE_SHIFT) ||
	    cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT))
		return -EINVAL;
	cmd.cpages = 0;
	cmd.faults = 0;

	down_read(&hmm->rwsem);
	if (m->dead) {
		up_read(&hmm->rwsem);
		return -ENODEV;
	}
	switch (command) {
	case HMM_DMIRROR_READ:
		ret = vugpu_mirror_read(m, &cmd, 0);
		break;
	case HMM_DMIRROR_READ_UNLOCKED:
		ret = vugpu_mirror_read(m, &cmd, VUGPU_ACCESS_UNLOCKED);
		break;
	case HMM_DMIRROR_WRITE:
		ret = vugpu_mirror_xfer(m, &cmd, 0, true);
		break;
	case HMM_DMIRROR_SNAPSHOT:
		ret = vugpu_mirror_snapshot(m, &cmd);
		break;
	case HMM_DMIRROR_EXCLUSIVE:
		ret = vugpu_mirror_exclusive(m, &cmd);
		break;
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		ret = vugpu_mirror_check_exclusive(m, &cmd);
		break;
	case HMM_DMIRROR_FLAGS:
		WRITE_ONCE(m->flags, cmd.npages);
		ret = 0;
		break;
#ifdef VUGPU_HAVE_DEVMEM
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		ret = vugpu_devmem_migrate_to_dev(m, &cmd);
		break;
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		ret = vugpu_devmem_migrate_to_sys(m, &cmd);
		break;
	case HMM_DMIRROR_RELEASE:
		ret = vugpu_devmem_release(m->vdev);
		break;
#else
	case HMM_DMIRROR_MIGRATE_TO_DEV:
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		ret = -EOPNOTSUPP;
		break;
	case HMM_DMIRROR_RELEASE:
		ret = 0;	/* no device memory: nothing to release */
		break;
#endif
	default:
		ret = -EINVAL;
		break;
	}
	up_read(&hmm->rwsem);
	if (ret)
		return ret;
	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

/*
 * test_hmm's mmap: fresh zeroed pages inserted into the VMA (a mixed map,
 * for hmm-tests' mixedmap case).
 */
static int vugpu_dmirror_mmap(struct file *filp, struct vm_area_struct *vma)
{
	unsigned long addr;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		int ret;

		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, addr, page);
		/* The mapping holds its own reference. */
		put_page(page);
		if (ret)
			return ret;
	}
	return 0;
}

static const struct file_operations vugpu_dmirror_fops = {
	.owner		= THIS_MODULE,
	.open		= vugpu_dmirror_open,
	.release	= vugpu_dmirror_release,
	.unlocked_ioctl	= vugpu_dmirror_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.mmap		= vugpu_dmirror_mmap,
	.llseek		= default_llseek,
};

/* --- probe / remove -------------------------------------------------------------------- */

int vugpu_hmm_probe(struct vugpu_device *vdev)
{
	struct vugpu_hmm *hmm;
	int ret;

	hmm = kzalloc(sizeof(*hmm), GFP_KERNEL);
	if (!hmm)
		return -ENOMEM;
	hmm->vdev = vdev;
	kref_init(&hmm->ref);
	vugpu_get(vdev);
	mutex_init(&hmm->lock);
	init_rwsem(&hmm->rwsem);
	INIT_LIST_HEAD(&hmm->mirrors);
	vdev->hmm = hmm;

	ret = vugpu_mmu_probe(vdev);
	if (ret) {
		vdev->hmm = NULL;
		kref_put(&hmm->ref, vugpu_hmm_release_kref);
		return ret == -EOPNOTSUPP ? 0 : ret;
	}
#ifdef VUGPU_HAVE_DEVMEM
	/* Without device memory (e.g. devmem_mb=0) MIGRATE_* fail; the mirror works. */
	ret = vugpu_devmem_probe(vdev);
	if (ret)
		dev_info(&vdev->pdev->dev, "no device memory for HMM migration: %d\n", ret);
#endif
	if (!dmirror)
		return 0;
	snprintf(hmm->name, sizeof(hmm->name), "hmm_dmirror%d", vdev->index);
	hmm->misc.minor = MISC_DYNAMIC_MINOR;
	hmm->misc.name = hmm->name;
	hmm->misc.fops = &vugpu_dmirror_fops;
	hmm->misc.parent = &vdev->pdev->dev;
	hmm->misc.mode = 0600;	/* like test_hmm's nodes: root only */
	ret = misc_register(&hmm->misc);
	if (ret) {
		dev_err(&vdev->pdev->dev, "/dev/%s: %d\n", hmm->name, ret);
		return 0;	/* the GPU works without it */
	}
	hmm->misc_registered = true;
	dev_info(&vdev->pdev->dev, "/dev/%s: HMM mirror on the device MMU\n", hmm->name);
	return 0;
}

/* Remove, before the engines stop: no mirror survives, device memory is evicted. */
void vugpu_hmm_remove(struct vugpu_device *vdev)
{
	struct vugpu_hmm *hmm = vdev->hmm;
	struct vugpu_mirror *m;

	if (!hmm)
		return;
	if (hmm->misc_registered)
		misc_deregister(&hmm->misc);
	down_write(&hmm->rwsem);
	hmm->dead = true;
	for (;;) {
		mutex_lock(&hmm->lock);
		m = list_first_entry_or_null(&hmm->mirrors, struct vugpu_mirror, node);
		mutex_unlock(&hmm->lock);
		if (!m)
			break;
		vugpu_mirror_teardown(m);
	}
#ifdef VUGPU_HAVE_DEVMEM
	vugpu_devmem_remove(vdev);
#endif
	vugpu_mmu_stop(vdev);
	WRITE_ONCE(vdev->hmm, NULL);
	/* The fault thread saw the MMU disabled or no hmm: it is done with it. */
	if (hmm->mmu.fault_vector < vdev->irqs_requested)
		synchronize_irq(vdev->vectors[hmm->mmu.fault_vector].irq);
	vugpu_mmu_free_mem(&hmm->mmu);
	up_write(&hmm->rwsem);
	kref_put(&hmm->ref, vugpu_hmm_release_kref);
}
