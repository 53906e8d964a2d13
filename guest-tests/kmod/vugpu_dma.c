// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu DMA jobs: the ioctls that drive the copy engines (vugpu_uapi.h,
 * 0x10-0x1b), built on vugpu_engine.c.
 *
 * A job's memory operands (struct vugpu_mem) are
 *   USER	user memory: pinned with pin_user_pages_fast(FOLL_LONGTERM, plus
 *		FOLL_WRITE when the engine writes it) before any driver lock
 *		(with VUGPU_DMA_P2PDMA: FOLL_PCI_P2PDMA instead of FOLL_LONGTERM,
 *		so a peer's p2pmem may be the operand; a P2P range the p2pdma
 *		core refuses to map is bounced through system memory),
 *		mapped with sg_alloc_table_from_pages_segment() + dma_map_sgtable()
 *		while the device is known to be bound, one descriptor per DMA
 *		segment, unmapped after completion and unpinned (dirtied when
 *		written) after every lock is dropped;
 *	VRAM	a range of VRAM offsets (the device's view, up to VRAM_SIZE);
 *	SCRATCH	a range of the driver's guarded coherent scratch buffer;
 *	BUS	a raw SYS bus address, not checked: the test driver's way to
 *		point the engine at unmapped memory;
 *	NONE	FENCE / TIMESTAMP only: the engine's coherent slot page.
 * Outer helpers validate, pin and lock (vugpu_dma_copy() ...), the job
 * helpers build descriptors and run them (vugpu_do_*).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "vugpu_drv.h"

struct vugpu_mem {
	u32			type;		/* VUGPU_MEM_* */
	bool			device_writes;
	u64			addr;		/* user address, VRAM offset or bus address */
	u64			len;
	/* USER */
	bool			p2pdma;		/* VUGPU_DMA_P2PDMA: FOLL_PCI_P2PDMA */
	struct page		**pages;
	unsigned int		npages;		/* pinned */
	struct sg_table		sgt;
	bool			mapped;
	/* USER whose P2P pages the device may not reach: the bounce buffer it uses instead */
	void			*bounce;
	struct page		**bounce_pages;
	bool			copy_out;	/* the job completed: bounce -> P2P pages */
	bool			p2p_bus;	/* mapped to PCI bus addresses */
	unsigned long		peer_wins;	/* peer windows this operand uses (bit i) */
};

/* Walks a memory operand's DMA segments. */
struct vugpu_cursor {
	const struct vugpu_mem	*m;
	struct scatterlist	*sg;
	unsigned int		nents_left;
	u64			addr;		/* bus address or VRAM offset */
	u64			left;		/* bytes left in this segment */
};

static u8 vugpu_mem_aperture(const struct vugpu_mem *m)
{
	return m->type == VUGPU_MEM_VRAM ? VUGPU_APERTURE_VRAM : VUGPU_APERTURE_SYS;
}

/* Check an operand's range before anything is pinned or locked. */
static int vugpu_mem_check(struct vugpu_device *vdev, struct vugpu_mem *m, u32 type, u64 addr,
			   u64 len, unsigned int align, bool device_writes)
{
	u64 end;

	m->type = type;
	m->addr = addr;
	m->len = len;
	m->device_writes = device_writes;
	if (!len || check_add_overflow(addr, len, &end))
		return type == VUGPU_MEM_BUS && len ? 0 : -EINVAL;
	switch (type) {
	case VUGPU_MEM_USER:
		if (!addr || len > VUGPU_DMA_MAX_USER || end > TASK_SIZE)
			return len > VUGPU_DMA_MAX_USER ? -E2BIG : -EFAULT;
		break;
	case VUGPU_MEM_VRAM:
		if (end > vdev->vram_size)
			return -ERANGE;
		break;
	case VUGPU_MEM_SCRATCH:
		if (end > VUGPU_SCRATCH_INNER)
			return -ERANGE;
		break;
	case VUGPU_MEM_BUS:
		return 0;	/* unchecked on purpose: the device must refuse bad ones */
	default:
		return -EINVAL;
	}
	if (align > 1 && (addr % align || (align == VUGPU_FILL_ALIGN && len % align)))
		return -EINVAL;
	return 0;
}

/* Pin a USER operand (no driver lock held: this may fault pages in). */
static int vugpu_mem_pin(struct vugpu_mem *m)
{
	unsigned long start = m->addr & PAGE_MASK;
	/* The kernel refuses FOLL_LONGTERM with FOLL_PCI_P2PDMA (p2pmem may be unplugged). */
	unsigned int gup = (m->p2pdma ? FOLL_PCI_P2PDMA : FOLL_LONGTERM) |
			   (m->device_writes ? FOLL_WRITE : 0);
	unsigned long n;
	int ret;

	if (m->type != VUGPU_MEM_USER)
		return 0;
	n = ((m->addr + m->len - 1) >> PAGE_SHIFT) - (m->addr >> PAGE_SHIFT) + 1;
	m->pages = kvmalloc_array(n, sizeof(*m->pages), GFP_KERNEL);
	if (!m->pages)
		return -ENOMEM;
	while (m->npages < n) {
		ret = pin_user_pages_fast(start + ((unsigned long)m->npages << PAGE_SHIFT),
					  n - m->npages, gup, m->pages + m->npages);
		if (ret <= 0)
			return ret ?: -EFAULT;
		m->npages += ret;
	}
	return 0;
}

static void vugpu_mem_unpin(struct vugpu_mem *m)
{
	if (m->npages) {
		if (m->device_writes)
			unpin_user_pages_dirty_lock(m->pages, m->npages, true);
		else
			unpin_user_pages(m->pages, m->npages);
	}
	m->npages = 0;
	kvfree(m->pages);
	m->pages = NULL;
}

static enum dma_data_direction vugpu_mem_dir(const struct vugpu_mem *m)
{
	return m->device_writes ? DMA_FROM_DEVICE : DMA_TO_DEVICE;
}

/* Copy between a bounced operand's pinned pages and its bounce buffer. */
static void vugpu_p2p_copy(struct vugpu_mem *m, bool to_pages)
{
	u64 done = 0, off = offset_in_page(m->addr);
	unsigned int i;

	for (i = 0; i < m->npages && done < m->len; i++) {
		size_t n = min_t(u64, PAGE_SIZE - off, m->len - done);
		void *p = kmap_local_page(m->pages[i]);

		if (to_pages)
			memcpy(p + off, m->bounce + done, n);
		else
			memcpy(m->bounce + done, p + off, n);
		kunmap_local(p);
		done += n;
		off = 0;
	}
}

/* Whether dma_map_sgtable() gave any segment a PCI bus address (P2P below a switch). */
static bool vugpu_sgt_has_p2p(struct sg_table *sgt)
{
	struct scatterlist *sg;
	unsigned int i;

	for_each_sgtable_dma_sg(sgt, sg, i)
		if (sg_dma_is_bus_address(sg))
			return true;
	return false;
}

/*
 * The device may not reach this operand's P2P pages (pci_p2pdma refused the
 * path, e.g. no common switch and the host bridge is not whitelisted): give it
 * a system-memory bounce buffer of the same length instead.  A source is copied
 * in now; a destination is copied out by vugpu_mem_unbounce() after the job.
 */
static int vugpu_mem_bounce(struct vugpu_device *vdev, struct vugpu_mem *m)
{
	struct device *dev = &vdev->pdev->dev;
	unsigned int i, n = DIV_ROUND_UP(m->len, PAGE_SIZE);
	int ret;

	m->bounce = vmalloc(array_size(n, PAGE_SIZE));
	m->bounce_pages = kvmalloc_array(n, sizeof(*m->bounce_pages), GFP_KERNEL);
	if (!m->bounce || !m->bounce_pages)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		m->bounce_pages[i] = vmalloc_to_page(m->bounce + (size_t)i * PAGE_SIZE);
	if (!m->device_writes)
		vugpu_p2p_copy(m, false);
	ret = sg_alloc_table_from_pages_segment(&m->sgt, m->bounce_pages, n, 0, m->len,
						dma_get_max_seg_size(dev), GFP_KERNEL);
	if (ret)
		return ret;
	ret = dma_map_sgtable(dev, &m->sgt, vugpu_mem_dir(m), 0);
	if (ret) {
		sg_free_table(&m->sgt);
		return ret;
	}
	m->mapped = true;
	dev_info_ratelimited(dev, "%s: P2P %s %#llx+%#llx not reachable by this GPU (pci_p2pdma refused the path): bouncing through system memory\n",
			     vdev->name, m->device_writes ? "destination" : "source", m->addr, m->len);
	return 0;
}

/* Map a USER operand for the device; resolve SCRATCH to bus addresses. */
/* --- peer windows (hw-spec §6.10) -------------------------------------------- */

/*
 * A P2P operand's bus addresses lie in a peer's BAR.  A vugpu's BAR2 (this
 * GPU's or another's) is reached without help: the fabric of its server, or a
 * DMA_MAP window QEMU announces for it.  An emulated device's MMIO BAR (the
 * NVMe CMB) is announced to nobody, so the engine would take a bus error:
 * the driver opens a peer window over that BAR before the job rings the
 * doorbell, and the device sends the accesses to QEMU as DMA messages.
 * Windows stay open for the next job (reused while they cover the BAR; the
 * least recently used idle one is reprogrammed when all are taken), are
 * programmed again after FLR / SOFT_RESET and closed at remove.
 */

/* Program window @i from the driver's copy (0 size: just close it). */
static int vugpu_peer_win_program(struct vugpu_device *vdev, unsigned int i)
{
	const struct vugpu_peer_win *w = &vdev->peer_win[i];
	u32 r = VUGPU_PEER_WIN_REGS(i), ctl;

	vugpu_wr(vdev, r + VUGPU_PEER_WIN_CONTROL, 0);
	if (!w->size)
		return 0;
	vugpu_wr(vdev, r + VUGPU_PEER_WIN_BASE_LO, lower_32_bits(w->base));
	vugpu_wr(vdev, r + VUGPU_PEER_WIN_BASE_HI, upper_32_bits(w->base));
	vugpu_wr(vdev, r + VUGPU_PEER_WIN_SIZE_LO, lower_32_bits(w->size));
	vugpu_wr(vdev, r + VUGPU_PEER_WIN_SIZE_HI, upper_32_bits(w->size));
	vugpu_wr(vdev, r + VUGPU_PEER_WIN_CONTROL,
		 VUGPU_PEER_WIN_ENABLE | VUGPU_PEER_WIN_READ | VUGPU_PEER_WIN_WRITE);
	ctl = vugpu_rd(vdev, r + VUGPU_PEER_WIN_CONTROL);
	if (ctl == VUGPU_REG_BAD_READ || !(ctl & VUGPU_PEER_WIN_ENABLE)) {
		dev_err(&vdev->pdev->dev, "peer window %u %#llx+%#llx refused (CONTROL %#x)\n", i,
			w->base, w->size, ctl);
		return -EIO;
	}
	return 0;
}

/*
 * The memory BAR that holds the bus range [@bus, @bus + @len): its bus range
 * rounded out to the window granularity, and whether it belongs to a device
 * like this one (a vugpu, which needs no window).
 */
static int vugpu_peer_bar(struct vugpu_device *vdev, u64 bus, u64 len, u64 *base, u64 *size,
			  bool *vugpu, char *who, size_t who_len)
{
	struct pci_dev *p = NULL;
	int i;

	for_each_pci_dev(p) {
		for (i = 0; i < PCI_STD_NUM_BARS; i++) {
			u64 s = pci_bus_address(p, i), l = pci_resource_len(p, i), end;

			if (!(pci_resource_flags(p, i) & IORESOURCE_MEM) || !l || bus < s ||
			    bus - s >= l || len > l - (bus - s) || check_add_overflow(s, l, &end))
				continue;
			*base = round_down(s, VUGPU_PEER_WIN_ALIGN);
			*size = round_up(end, VUGPU_PEER_WIN_ALIGN) - *base;
			*vugpu = p->vendor == vdev->pdev->vendor && p->device == vdev->pdev->device;
			snprintf(who, who_len, "%s BAR%d", pci_name(p), i);
			pci_dev_put(p);
			return 0;
		}
	}
	return -ENOENT;
}

/* A window covering [@base, @base + @size): an open one, else a free or the LRU idle one. */
static int vugpu_peer_win_get(struct vugpu_device *vdev, u64 base, u64 size, const char *who)
{
	struct vugpu_peer_win *w;
	int i, pick = -1, ret;

	for (i = 0; i < vdev->peer_win_count; i++) {
		w = &vdev->peer_win[i];
		if (w->size && base >= w->base && base - w->base + size <= w->size) {
			w->last_use = ++vdev->peer_win_clock;
			return i;
		}
	}
	for (i = 0; i < vdev->peer_win_count; i++) {
		w = &vdev->peer_win[i];
		if (w->users)
			continue;
		if (!w->size) {
			pick = i;
			break;
		}
		if (pick < 0 || w->last_use < vdev->peer_win[pick].last_use)
			pick = i;
	}
	if (pick < 0)
		return -EBUSY;
	w = &vdev->peer_win[pick];
	w->base = base;
	w->size = size;
	w->last_use = ++vdev->peer_win_clock;
	ret = vugpu_peer_win_program(vdev, pick);
	if (ret) {
		w->size = 0;
		vugpu_peer_win_program(vdev, pick);
		return ret;
	}
	dev_info(&vdev->pdev->dev, "peer window %d: bus %#llx+%#llx (%s)\n", pick, base, size,
		 who);
	return pick;
}

/* Open (or reuse) the windows a bus-address-mapped USER operand needs; under engines_rwsem. */
static int vugpu_peer_wins_open(struct vugpu_device *vdev, struct vugpu_mem *m)
{
	struct scatterlist *sg;
	unsigned int i;
	int ret = 0;

	if (!vdev->peer_win_count)
		return 0;
	mutex_lock(&vdev->peer_win_lock);
	for_each_sgtable_dma_sg(&m->sgt, sg, i) {
		u64 base, size;
		bool vugpu;
		char who[32];
		int w;

		if (!sg_dma_is_bus_address(sg))
			continue;
		/* Nothing decodes it, or a vugpu BAR: the device routes (or refuses) it itself. */
		if (vugpu_peer_bar(vdev, sg_dma_address(sg), sg_dma_len(sg), &base, &size, &vugpu,
				   who, sizeof(who)) || vugpu)
			continue;
		w = vugpu_peer_win_get(vdev, base, size, who);
		if (w < 0) {
			ret = w;
			break;
		}
		if (!(m->peer_wins & BIT(w))) {
			m->peer_wins |= BIT(w);
			vdev->peer_win[w].users++;
		}
	}
	mutex_unlock(&vdev->peer_win_lock);
	return ret;
}

static void vugpu_peer_wins_release(struct vugpu_device *vdev, struct vugpu_mem *m)
{
	unsigned int i;

	if (!m->peer_wins)
		return;
	mutex_lock(&vdev->peer_win_lock);
	for (i = 0; i < vdev->peer_win_count; i++)
		if (m->peer_wins & BIT(i) && !WARN_ON(!vdev->peer_win[i].users))
			vdev->peer_win[i].users--;
	mutex_unlock(&vdev->peer_win_lock);
	m->peer_wins = 0;
}

/* After FLR / SOFT_RESET (which closed every window): open the driver's windows again. */
void vugpu_peer_wins_restore(struct vugpu_device *vdev)
{
	unsigned int i;

	mutex_lock(&vdev->peer_win_lock);
	for (i = 0; i < vdev->peer_win_count; i++) {
		if (vdev->peer_win[i].size && vugpu_peer_win_program(vdev, i)) {
			vdev->peer_win[i].size = 0;
			vugpu_peer_win_program(vdev, i);
		}
	}
	mutex_unlock(&vdev->peer_win_lock);
}

/* Remove: close every window (no job runs: engines_rwsem held for writing). */
void vugpu_peer_wins_close(struct vugpu_device *vdev)
{
	unsigned int i;

	mutex_lock(&vdev->peer_win_lock);
	for (i = 0; i < vdev->peer_win_count; i++) {
		vdev->peer_win[i] = (struct vugpu_peer_win){};
		vugpu_peer_win_program(vdev, i);
	}
	mutex_unlock(&vdev->peer_win_lock);
}

static int vugpu_mem_map(struct vugpu_device *vdev, struct vugpu_mem *m)
{
	struct device *dev = &vdev->pdev->dev;
	int ret;

	if (m->type == VUGPU_MEM_SCRATCH) {
		m->addr += vdev->scratch_dma + VUGPU_SCRATCH_GUARD;
		m->type = VUGPU_MEM_BUS;
		return 0;
	}
	if (m->type != VUGPU_MEM_USER)
		return 0;
	ret = sg_alloc_table_from_pages_segment(&m->sgt, m->pages, m->npages,
						offset_in_page(m->addr), m->len,
						dma_get_max_seg_size(dev), GFP_KERNEL);
	if (ret)
		return ret;
	ret = dma_map_sgtable(dev, &m->sgt, vugpu_mem_dir(m), 0);
	if (ret) {
		sg_free_table(&m->sgt);
		/* -EREMOTEIO: P2P pages on a path pci_p2pdma does not support. */
		if (ret == -EREMOTEIO && m->p2pdma)
			return vugpu_mem_bounce(vdev, m);
		return ret;
	}
	m->mapped = true;
	m->p2p_bus = m->p2pdma && vugpu_sgt_has_p2p(&m->sgt);
	return m->p2p_bus ? vugpu_peer_wins_open(vdev, m) : 0;
}

static void vugpu_mem_unmap(struct vugpu_device *vdev, struct vugpu_mem *m)
{
	vugpu_peer_wins_release(vdev, m);
	if (m->mapped) {
		dma_unmap_sgtable(&vdev->pdev->dev, &m->sgt, vugpu_mem_dir(m), 0);
		sg_free_table(&m->sgt);
		m->mapped = false;
	}
	if (m->bounce) {
		/* The device wrote the bounce buffer: hand the data to the P2P pages. */
		if (m->device_writes && m->copy_out)
			vugpu_p2p_copy(m, true);
		vfree(m->bounce);
		m->bounce = NULL;
	}
	kvfree(m->bounce_pages);
	m->bounce_pages = NULL;
}

static unsigned int vugpu_mem_segments(const struct vugpu_mem *m)
{
	return m->mapped ? m->sgt.nents : 1;
}

static void vugpu_cursor_init(struct vugpu_cursor *c, const struct vugpu_mem *m)
{
	c->m = m;
	if (m->mapped) {
		c->sg = m->sgt.sgl;
		c->nents_left = m->sgt.nents;
		c->addr = sg_dma_address(c->sg);
		c->left = sg_dma_len(c->sg);
	} else {
		c->sg = NULL;
		c->nents_left = 1;
		c->addr = m->addr;
		c->left = m->len;
	}
}

static void vugpu_cursor_advance(struct vugpu_cursor *c, u64 n)
{
	c->addr += n;
	c->left -= n;
	if (c->left || !c->sg || c->nents_left <= 1)
		return;
	c->nents_left--;
	c->sg = sg_next(c->sg);
	c->addr = sg_dma_address(c->sg);
	c->left = sg_dma_len(c->sg);
}

/* --- job plumbing ------------------------------------------------------------ */

/*
 * Take the engine for a job: engines_rwsem (read) keeps the device bound and
 * no reset in progress, engine->lock makes the job the engine's only one.
 */
static struct vugpu_engine *vugpu_job_begin(struct vugpu_device *vdev, u32 engine, bool prepare,
					    int *ret)
{
	struct vugpu_engine *eng;

	down_read(&vdev->engines_rwsem);
	if (vdev->engines_dead || !vdev->engines) {
		*ret = vdev->engines_dead ? -ENODEV : -EIO;
		goto err;
	}
	eng = &vdev->engines[engine];
	mutex_lock(&eng->lock);
	*ret = prepare ? vugpu_engine_prepare(eng) : 0;
	if (*ret) {
		mutex_unlock(&eng->lock);
		goto err;
	}
	return eng;
err:
	up_read(&vdev->engines_rwsem);
	return NULL;
}

static void vugpu_job_end(struct vugpu_device *vdev, struct vugpu_engine *eng)
{
	mutex_unlock(&eng->lock);
	up_read(&vdev->engines_rwsem);
}

static void vugpu_job_report(struct vugpu_dma *req, const struct vugpu_job_result *res)
{
	req->elapsed_ns += res->elapsed_ns;
	req->seq = res->seq;
	req->descs = res->descs;
	req->fences = res->fences;
	req->result = res->result;
	if (res->result != VUGPU_DMA_DONE)
		req->regs = res->regs;
}

/* --- COPY ------------------------------------------------------------------- */

static int vugpu_do_copy(struct vugpu_device *vdev, struct vugpu_engine *eng,
			 struct vugpu_dma *req, struct vugpu_mem *src, struct vugpu_mem *dst)
{
	struct vugpu_cursor s, d;
	struct vugpu_hw_desc *descs;
	struct vugpu_job_result res;
	unsigned int n = 0, max, run, runs = req->count ? req->count : 1;
	u64 left = req->length;
	int ret;

	max = vugpu_mem_segments(src) + vugpu_mem_segments(dst);
	descs = kvmalloc_array(max, sizeof(*descs), GFP_KERNEL);
	if (!descs)
		return -ENOMEM;
	vugpu_cursor_init(&s, src);
	vugpu_cursor_init(&d, dst);
	while (left && n < max) {
		u64 chunk = min3(s.left, d.left, left);
		struct vugpu_hw_desc *desc = &descs[n++];

		vugpu_desc_init(desc, VUGPU_OP_COPY, req->flags);
		desc->src_aperture = vugpu_mem_aperture(src);
		desc->dst_aperture = vugpu_mem_aperture(dst);
		desc->src = cpu_to_le64(s.addr);
		desc->dst = cpu_to_le64(d.addr);
		desc->length = cpu_to_le64(chunk);
		vugpu_cursor_advance(&s, chunk);
		vugpu_cursor_advance(&d, chunk);
		left -= chunk;
	}
	ret = left ? -EIO : 0;	/* the segments did not cover the length: a driver bug */
	for (run = 0; !ret && run < runs; run++) {
		ret = vugpu_engine_run(eng, descs, n, req->flags, &res);
		vugpu_job_report(req, &res);
		if (!ret && fatal_signal_pending(current))
			ret = -EINTR;
	}
	kvfree(descs);
	return ret;
}

static bool vugpu_ranges_overlap(u64 a, u64 b, u64 len)
{
	return a < b + len && b < a + len;
}

static int vugpu_dma_copy(struct vugpu_device *vdev, struct vugpu_dma *req)
{
	struct vugpu_mem src = {}, dst = {};
	struct vugpu_engine *eng;
	int ret;

	if (!req->length || req->length > VUGPU_DMA_MAX_LEN || req->count > VUGPU_COPY_REPEAT_MAX)
		return -EINVAL;
	if (req->src_type == VUGPU_MEM_NONE || req->dst_type == VUGPU_MEM_NONE)
		return -EINVAL;
	ret = vugpu_mem_check(vdev, &src, req->src_type, req->src, req->length, 1, false);
	if (!ret)
		ret = vugpu_mem_check(vdev, &dst, req->dst_type, req->dst, req->length, 1, true);
	if (ret)
		return ret;
	src.p2pdma = dst.p2pdma = req->flags & VUGPU_DMA_P2PDMA;
	/* The engine refuses overlapping ranges in one aperture (§7); say so early. */
	if (req->src_type == req->dst_type && req->src_type != VUGPU_MEM_BUS &&
	    vugpu_ranges_overlap(req->src, req->dst, req->length))
		return -EINVAL;

	ret = vugpu_mem_pin(&src);
	if (!ret)
		ret = vugpu_mem_pin(&dst);
	if (ret)
		goto out_unpin;
	eng = vugpu_job_begin(vdev, req->engine, true, &ret);
	if (!eng)
		goto out_unpin;
	ret = vugpu_mem_map(vdev, &src);
	if (!ret)
		ret = vugpu_mem_map(vdev, &dst);
	if (!ret)
		ret = vugpu_do_copy(vdev, eng, req, &src, &dst);
	dst.copy_out = !ret;
	if (src.bounce || dst.bounce)
		req->out_flags |= VUGPU_DMA_OUT_BOUNCED;
	if (src.p2p_bus || dst.p2p_bus)
		req->out_flags |= VUGPU_DMA_OUT_P2P_BUS;
	vugpu_mem_unmap(vdev, &dst);
	vugpu_mem_unmap(vdev, &src);
	vugpu_job_end(vdev, eng);
out_unpin:
	vugpu_mem_unpin(&dst);
	vugpu_mem_unpin(&src);
	return ret;
}

/* --- FILL ------------------------------------------------------------------- */

static int vugpu_do_fill(struct vugpu_engine *eng, struct vugpu_dma *req, struct vugpu_mem *dst)
{
	unsigned int n = 0, max = vugpu_mem_segments(dst);
	struct vugpu_hw_desc *descs;
	struct vugpu_job_result res;
	struct vugpu_cursor d;
	u64 left = req->length;
	int ret;

	descs = kvmalloc_array(max, sizeof(*descs), GFP_KERNEL);
	if (!descs)
		return -ENOMEM;
	vugpu_cursor_init(&d, dst);
	while (left && n < max) {
		u64 chunk = min(d.left, left);
		struct vugpu_hw_desc *desc = &descs[n++];

		vugpu_desc_init(desc, VUGPU_OP_FILL, req->flags);
		desc->dst_aperture = vugpu_mem_aperture(dst);
		desc->dst = cpu_to_le64(d.addr);
		desc->length = cpu_to_le64(chunk);
		desc->value = cpu_to_le64(req->value);
		vugpu_cursor_advance(&d, chunk);
		left -= chunk;
	}
	ret = left ? -EIO : vugpu_engine_run(eng, descs, n, req->flags, &res);
	if (!left)
		vugpu_job_report(req, &res);
	kvfree(descs);
	return ret;
}

static int vugpu_dma_fill(struct vugpu_device *vdev, struct vugpu_dma *req)
{
	struct vugpu_mem dst = {};
	struct vugpu_engine *eng;
	int ret;

	if (!req->length || req->length > VUGPU_DMA_MAX_LEN || req->value > U32_MAX ||
	    req->dst_type == VUGPU_MEM_NONE)
		return -EINVAL;
	ret = vugpu_mem_check(vdev, &dst, req->dst_type, req->dst, req->length,
			      VUGPU_FILL_ALIGN, true);
	if (ret)
		return ret;
	ret = vugpu_mem_pin(&dst);
	if (ret)
		goto out_unpin;
	eng = vugpu_job_begin(vdev, req->engine, true, &ret);
	if (!eng)
		goto out_unpin;
	ret = vugpu_mem_map(vdev, &dst);
	if (!ret)
		ret = vugpu_do_fill(eng, req, &dst);
	vugpu_mem_unmap(vdev, &dst);
	vugpu_job_end(vdev, eng);
out_unpin:
	vugpu_mem_unpin(&dst);
	return ret;
}

/* --- FENCE and TIMESTAMP (one 8-byte write) ---------------------------------- */

static int vugpu_do_write8(struct vugpu_device *vdev, struct vugpu_engine *eng,
			   struct vugpu_dma *req, u8 opcode, struct vugpu_mem *dst)
{
	unsigned int slot = opcode == VUGPU_OP_FENCE ? VUGPU_SLOT_FENCE : VUGPU_SLOT_TIMESTAMP;
	struct vugpu_job_result res;
	struct vugpu_hw_desc desc;
	u64 addr;
	int ret;

	vugpu_desc_init(&desc, opcode, req->flags);
	if (dst->type == VUGPU_MEM_NONE) {
		addr = eng->slot_dma + slot * sizeof(__le64);
		eng->slot[slot] = 0;
		wmb();
	} else {
		addr = dst->mapped ? sg_dma_address(dst->sgt.sgl) : dst->addr;
	}
	desc.dst_aperture = vugpu_mem_aperture(dst);
	desc.dst = cpu_to_le64(addr);
	if (opcode == VUGPU_OP_FENCE)
		desc.value = cpu_to_le64(req->value);

	req->clock_before = vugpu_read_clock(vdev);
	ret = vugpu_engine_run(eng, &desc, 1, req->flags, &res);
	req->clock_after = vugpu_read_clock(vdev);
	vugpu_job_report(req, &res);
	if (ret)
		return ret;

	/* Read back what the engine wrote (USER: by the caller, after unpinning). */
	switch (dst->type) {
	case VUGPU_MEM_NONE:
		req->value = le64_to_cpu(READ_ONCE(eng->slot[slot]));
		break;
	case VUGPU_MEM_BUS:	/* SCRATCH resolved to a bus address inside the buffer */
		if (req->dst_type == VUGPU_MEM_SCRATCH)
			req->value = le64_to_cpu(*(__le64 *)(vdev->scratch + VUGPU_SCRATCH_GUARD +
							     req->dst));
		break;
	case VUGPU_MEM_VRAM:
		if (dst->addr + sizeof(u64) <= vdev->vram_bar_len)
			req->value = (u64)ioread32(vdev->vram + dst->addr + 4) << 32 |
				     ioread32(vdev->vram + dst->addr);
		break;
	}
	return 0;
}

static int vugpu_dma_write8(struct vugpu_device *vdev, struct vugpu_dma *req, u8 opcode)
{
	struct vugpu_mem dst = { .type = VUGPU_MEM_NONE };
	struct vugpu_engine *eng;
	u64 __user *uptr;
	int ret;

	if (req->dst_type != VUGPU_MEM_NONE) {
		ret = vugpu_mem_check(vdev, &dst, req->dst_type, req->dst, sizeof(u64),
				      VUGPU_FENCE_ALIGN, true);
		if (ret)
			return ret;
	}
	if (opcode == VUGPU_OP_TIMESTAMP)
		req->value = 0;
	ret = vugpu_mem_pin(&dst);
	if (ret)
		goto out_unpin;
	eng = vugpu_job_begin(vdev, req->engine, true, &ret);
	if (!eng)
		goto out_unpin;
	ret = vugpu_mem_map(vdev, &dst);
	if (!ret)
		ret = vugpu_do_write8(vdev, eng, req, opcode, &dst);
	vugpu_mem_unmap(vdev, &dst);
	vugpu_job_end(vdev, eng);
out_unpin:
	vugpu_mem_unpin(&dst);
	if (!ret && req->dst_type == VUGPU_MEM_USER) {
		uptr = u64_to_user_ptr(req->dst);
		if (get_user(req->value, uptr))
			ret = -EFAULT;
	}
	return ret;
}

/* --- RAW_SUBMIT ------------------------------------------------------------- */

static int vugpu_dma_raw(struct vugpu_device *vdev, struct vugpu_dma *req)
{
	struct vugpu_hw_desc *descs;
	struct vugpu_job_result res;
	struct vugpu_engine *eng;
	int ret;

	if (!req->count || req->count > VUGPU_RAW_MAX || req->src_type != VUGPU_MEM_USER)
		return -EINVAL;
	descs = kvmalloc_array(req->count, sizeof(*descs), GFP_KERNEL);
	if (!descs)
		return -ENOMEM;
	/* Unchanged: struct vugpu_desc and the ring format are the same 64 bytes. */
	if (copy_from_user(descs, u64_to_user_ptr(req->src), req->count * sizeof(*descs))) {
		ret = -EFAULT;
		goto out_free;
	}
	eng = vugpu_job_begin(vdev, req->engine, true, &ret);
	if (!eng)
		goto out_free;
	ret = vugpu_engine_run(eng, descs, req->count, req->flags, &res);
	vugpu_job_report(req, &res);
	if (res.result == VUGPU_DMA_DONE)
		vugpu_engine_read_regs(eng, &req->regs);
	vugpu_job_end(vdev, eng);
out_free:
	kvfree(descs);
	return ret;
}

/* --- ENGINE_RESET ------------------------------------------------------------ */

static int vugpu_dma_engine_reset(struct vugpu_device *vdev, struct vugpu_dma *req)
{
	struct vugpu_engine *eng;
	u64 start;
	int ret;

	if (req->value > VUGPU_RING_SLOTS_MAX)
		return -EINVAL;
	eng = vugpu_job_begin(vdev, req->engine, false, &ret);
	if (!eng)
		return ret;
	start = ktime_get_ns();
	ret = vugpu_engine_reset(eng, req->value, req->flags & VUGPU_DMA_RING_VRAM);
	req->elapsed_ns = ktime_get_ns() - start;
	vugpu_engine_read_regs(eng, &req->regs);
	vugpu_job_end(vdev, eng);
	return ret;
}

long vugpu_dma_ioctl(struct vugpu_device *vdev, unsigned int command, void __user *uarg)
{
	struct vugpu_dma req;
	int ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;

	/* Common validation; (out) fields start at 0. */
	if (!vdev->engine_count)
		return -ENODEV;
	if (vdev->engines_init_err)
		return vdev->engines_init_err;
	if (req.engine >= vdev->engine_count || req.flags & ~VUGPU_DMA_FLAGS_ALL ||
	    req.src_type >= VUGPU_MEM_TYPES || req.dst_type >= VUGPU_MEM_TYPES)
		return -EINVAL;
	req.elapsed_ns = 0;
	req.seq = 0;
	req.clock_before = 0;
	req.clock_after = 0;
	req.descs = 0;
	req.fences = 0;
	req.out_flags = 0;
	req.result = VUGPU_DMA_DONE;
	memset(&req.regs, 0, sizeof(req.regs));

	switch (command) {
	case VUGPU_IOCTL_DMA_COPY:
		ret = vugpu_dma_copy(vdev, &req);
		break;
	case VUGPU_IOCTL_DMA_FILL:
		ret = vugpu_dma_fill(vdev, &req);
		break;
	case VUGPU_IOCTL_DMA_FENCE:
		ret = vugpu_dma_write8(vdev, &req, VUGPU_OP_FENCE);
		break;
	case VUGPU_IOCTL_DMA_TIMESTAMP:
		ret = vugpu_dma_write8(vdev, &req, VUGPU_OP_TIMESTAMP);
		break;
	case VUGPU_IOCTL_DMA_RAW_SUBMIT:
		ret = vugpu_dma_raw(vdev, &req);
		break;
	case VUGPU_IOCTL_ENGINE_RESET:
		ret = vugpu_dma_engine_reset(vdev, &req);
		break;
	default:
		return -ENOTTY;
	}
	/*
	 * Engine errors, timeouts and a function found gone (surprise removal:
	 * STATUS all ones) come back with the registers that explain them.
	 */
	if (ret && ret != -EIO && ret != -ETIMEDOUT && ret != -ENODEV)
		return ret;
	if (copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	return ret;
}

/* --- information ioctls (struct vugpu_cmd) ---------------------------------- */

/*
 * Take engines_rwsem for reading unless the engines are gone (device removed or
 * engine setup torn down): returns 0 with the lock held, or -ENODEV without it.
 */
static int vugpu_engines_read_lock(struct vugpu_device *vdev)
{
	down_read(&vdev->engines_rwsem);
	if (vdev->engines_dead) {
		up_read(&vdev->engines_rwsem);
		return -ENODEV;
	}
	return 0;
}

int vugpu_dma_info(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	struct vugpu_dma_info info;
	unsigned int i;
	int ret;

	if (cmd->size < sizeof(info) || cmd->value & ~VUGPU_DMA_INFO_REARM)
		return -EINVAL;
	memset(&info, 0, sizeof(info));
	ret = vugpu_engines_read_lock(vdev);
	if (ret)
		return ret;
	info.engine_count = vdev->engine_count;
	info.vector_base = vdev->vector_base;
	info.init_error = vdev->engines_init_err;
	for (i = 0; vdev->engines && i < vdev->engine_count; i++) {
		struct vugpu_engine *eng = &vdev->engines[i];

		info.ring_slots[i] = READ_ONCE(eng->slots);
		info.ring_base[i] = READ_ONCE(eng->ring_vram) ? eng->ring_vram_off : eng->ring_sys_dma;
		if (READ_ONCE(eng->ring_vram))
			info.ring_vram_mask |= BIT(i);
		if (READ_ONCE(eng->ready))
			info.ready_mask |= BIT(i);
	}
	info.timeout_ms = READ_ONCE(vugpu_dma_timeout_ms);
	info.vram_size = vdev->vram_size;
	info.vram_ring_base = vdev->vram_ring_base;
	info.vram_ring_size = vdev->vram_ring_size;
	if (vdev->scratch) {
		info.scratch_dma = vdev->scratch_dma + VUGPU_SCRATCH_GUARD;
		info.scratch_size = VUGPU_SCRATCH_INNER;
		info.guard_size = VUGPU_SCRATCH_GUARD;
		info.guard_bad = vugpu_scratch_guard_bad(vdev);
		if (cmd->value & VUGPU_DMA_INFO_REARM)
			vugpu_scratch_rearm(vdev);
	}
	up_read(&vdev->engines_rwsem);
	info.vec0_irqs = atomic64_read(&vdev->vec0_irqs);
	info.err_irqs = atomic64_read(&vdev->err_irqs);
	info.recoveries = atomic64_read(&vdev->recoveries);
	info.timeouts = atomic64_read(&vdev->timeouts);

	if (copy_to_user(u64_to_user_ptr(cmd->ptr), &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

int vugpu_engine_stats_ioctl(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	struct vugpu_engine_stats st;
	int ret;

	if (cmd->size < sizeof(st))
		return -EINVAL;
	if (cmd->offset >= vdev->engine_count)
		return vdev->engine_count ? -EINVAL : -ENODEV;
	memset(&st, 0, sizeof(st));
	ret = vugpu_engines_read_lock(vdev);
	if (ret)
		return ret;
	if (!vdev->engines) {
		up_read(&vdev->engines_rwsem);
		return -EIO;
	}
	vugpu_engine_stats(&vdev->engines[cmd->offset], &st);
	up_read(&vdev->engines_rwsem);
	if (copy_to_user(u64_to_user_ptr(cmd->ptr), &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

#define VUGPU_PCI_STATUS_ERRORS	(PCI_STATUS_DETECTED_PARITY | PCI_STATUS_SIG_SYSTEM_ERROR | \
				 PCI_STATUS_REC_MASTER_ABORT | PCI_STATUS_REC_TARGET_ABORT | \
				 PCI_STATUS_SIG_TARGET_ABORT | PCI_STATUS_PARITY)
#define VUGPU_DEVSTA_ERRORS	(PCI_EXP_DEVSTA_CED | PCI_EXP_DEVSTA_NFED | PCI_EXP_DEVSTA_FED | \
				 PCI_EXP_DEVSTA_URD)

static void vugpu_read_aer(struct pci_dev *pdev, struct vugpu_error_state *es)
{
	int pos = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_ERR);
	unsigned int i;

	es->aer_pos = pos;
	if (!pos)
		return;
	pci_read_config_dword(pdev, pos + PCI_ERR_UNCOR_STATUS, &es->aer_uncor_status);
	pci_read_config_dword(pdev, pos + PCI_ERR_UNCOR_MASK, &es->aer_uncor_mask);
	pci_read_config_dword(pdev, pos + PCI_ERR_UNCOR_SEVER, &es->aer_uncor_severity);
	pci_read_config_dword(pdev, pos + PCI_ERR_CAP, &es->aer_cap_ctrl);
	for (i = 0; i < ARRAY_SIZE(es->aer_header_log); i++)
		pci_read_config_dword(pdev, pos + PCI_ERR_HEADER_LOG + 4 * i,
				      &es->aer_header_log[i]);
}

int vugpu_error_state(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	struct pci_dev *pdev = vdev->pdev;
	struct vugpu_error_state es;
	unsigned int i;
	int ret;

	if (cmd->size < sizeof(es) || cmd->value & ~VUGPU_ERROR_STATE_CLEAR)
		return -EINVAL;
	memset(&es, 0, sizeof(es));
	ret = vugpu_engines_read_lock(vdev);
	if (ret)
		return ret;
	es.engine_count = vdev->engine_count;
	if (vdev->engine_count && vdev->engine_count <= VUGPU_ENGINE_MAX) {
		es.err_cause = vugpu_rd(vdev, VUGPU_REG_ERR_CAUSE);
		for (i = 0; vdev->engines && i < vdev->engine_count; i++)
			vugpu_engine_read_regs(&vdev->engines[i], &es.engine[i]);
	}
	vugpu_read_aer(pdev, &es);
	pcie_capability_read_word(pdev, PCI_EXP_DEVSTA, &es.devsta);
	pcie_capability_read_word(pdev, PCI_EXP_DEVCTL, &es.devctl);
	pci_read_config_word(pdev, PCI_STATUS, &es.pci_status);
	if (cmd->value & VUGPU_ERROR_STATE_CLEAR) {
		/* All three are write-1-to-clear: write back what was read. */
		if (es.aer_pos && es.aer_uncor_status)
			pci_write_config_dword(pdev, es.aer_pos + PCI_ERR_UNCOR_STATUS,
					       es.aer_uncor_status);
		if (es.devsta & VUGPU_DEVSTA_ERRORS)
			pcie_capability_write_word(pdev, PCI_EXP_DEVSTA,
						   es.devsta & VUGPU_DEVSTA_ERRORS);
		if (es.pci_status & VUGPU_PCI_STATUS_ERRORS)
			pci_write_config_word(pdev, PCI_STATUS,
					      es.pci_status & VUGPU_PCI_STATUS_ERRORS);
	}
	up_read(&vdev->engines_rwsem);
	es.vec0_irqs = atomic64_read(&vdev->vec0_irqs);
	es.err_irqs = atomic64_read(&vdev->err_irqs);

	if (copy_to_user(u64_to_user_ptr(cmd->ptr), &es, sizeof(es)))
		return -EFAULT;
	return 0;
}

/* SCRATCH_READ / SCRATCH_WRITE: bounced, so no user access under the rwsem. */
int vugpu_scratch_xfer(struct vugpu_device *vdev, struct vugpu_cmd *cmd, bool write)
{
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	void *buf;
	int ret = 0;

	if (!cmd->size)
		return -EINVAL;
	if (cmd->offset >= VUGPU_SCRATCH_INNER || cmd->size > VUGPU_SCRATCH_INNER - cmd->offset)
		return -ERANGE;
	buf = kvmalloc(cmd->size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (write && copy_from_user(buf, uptr, cmd->size)) {
		ret = -EFAULT;
		goto out;
	}
	down_read(&vdev->engines_rwsem);
	if (vdev->engines_dead || !vdev->scratch) {
		ret = vdev->engines_dead ? -ENODEV : -EOPNOTSUPP;
	} else if (write) {
		memcpy(vdev->scratch + VUGPU_SCRATCH_GUARD + cmd->offset, buf, cmd->size);
		wmb();
	} else {
		memcpy(buf, vdev->scratch + VUGPU_SCRATCH_GUARD + cmd->offset, cmd->size);
	}
	up_read(&vdev->engines_rwsem);
	if (!ret && !write && copy_to_user(uptr, buf, cmd->size))
		ret = -EFAULT;
	if (!ret)
		cmd->count = cmd->size;
out:
	kvfree(buf);
	return ret;
}
