// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu DMA copy engines (docs/hw-spec.md §5-§8): the hardware side of a job.
 *
 * Each engine has
 *   - a ring of 64-byte descriptors, in dma_alloc_coherent() memory (SYS
 *     aperture) or, on request, in VRAM written through the BAR2 mapping;
 *   - a doorbell area in the BAR0 doorbell page (mapped with ioremap); the
 *     driver writes the descriptors, issues wmb(), stores the new TAIL there
 *     and, per §6.4, issues mb() and reads the engine's SLEEPING hint: only
 *     when it reads 1 does it also write RING_TAIL (one trapped access) to
 *     wake the engine at once;
 *   - a coherent page where the engine writes the driver's completion fence
 *     (a sequence number), FENCE values and TIMESTAMPs;
 *   - MSI-X vector ENGINE_VECTOR_BASE + i for completions (the handler only
 *     wakes waiters: no MMIO on the hot path) and the shared vector 0 for
 *     errors (the handler reads and acks ERR_CAUSE, reads STATUS and the
 *     ERROR_* registers of each engine whose bit is set, and wakes its
 *     waiters).
 *
 * A job is a list of descriptors.  vugpu_engine_run() writes them in
 * batches of at most (slots - 1), each followed by a FENCE of the next
 * sequence number, rings the doorbell and waits for the fence, by interrupt
 * or by polling the coherent page, bounded by dma_timeout_ms.  The ring is
 * empty whenever no job runs (jobs are serialised by engine->lock), so
 * there is no ring-full tracking.  An engine error leaves the engine
 * stopped in ERROR with its registers captured in the result; the next job
 * (or ENGINE_RESET) resets it.  A timeout resets the engine before
 * returning, so no engine touches the job's memory after the caller unmaps
 * it (CONTROL.RESET is answered only once the engine has stopped).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitops.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "vugpu_drv.h"

#define VUGPU_ENABLE_TIMEOUT_US		200000
#define VUGPU_POLL_SPIN_NS		200000	/* fence polling: spin this long, then sleep */
#define VUGPU_MISSED_IRQ_MS		250	/* interrupt waits look at the fence this often */

static u32 eng_rd(struct vugpu_engine *eng, u32 off)
{
	return ioread32(eng->regs + off);
}

static void eng_wr(struct vugpu_engine *eng, u32 off, u32 val)
{
	iowrite32(val, eng->regs + off);
}

static u32 eng_state(u32 status)
{
	return status & VUGPU_ENG_STATUS_STATE_MASK;
}

u64 vugpu_read_clock(struct vugpu_device *vdev)
{
	u32 lo = vugpu_rd(vdev, VUGPU_REG_CLOCK_LO);	/* latches CLOCK_HI */

	return (u64)vugpu_rd(vdev, VUGPU_REG_CLOCK_HI) << 32 | lo;
}

void vugpu_engine_read_regs(struct vugpu_engine *eng, struct vugpu_engine_regs *r)
{
	r->status = eng_rd(eng, VUGPU_ENG_STATUS);
	r->error_code = eng_rd(eng, VUGPU_ENG_ERROR_CODE);
	r->error_addr = (u64)eng_rd(eng, VUGPU_ENG_ERROR_ADDR_HI) << 32 |
			eng_rd(eng, VUGPU_ENG_ERROR_ADDR_LO);
	r->error_info = eng_rd(eng, VUGPU_ENG_ERROR_INFO);
	r->head = eng_rd(eng, VUGPU_ENG_RING_HEAD);
	r->tail = eng_rd(eng, VUGPU_ENG_RING_TAIL);
	r->control = eng_rd(eng, VUGPU_ENG_CONTROL);
}

void vugpu_desc_init(struct vugpu_hw_desc *d, u8 opcode, u32 dma_flags)
{
	memset(d, 0, sizeof(*d));
	d->opcode = opcode;
	if (dma_flags & VUGPU_DMA_NO_SNOOP)
		d->flags |= VUGPU_DESC_F_NO_SNOOP;
	if (dma_flags & VUGPU_DMA_RELAXED)
		d->flags |= VUGPU_DESC_F_RELAXED_ORDERING;
}

/* --- scratch buffer guards ------------------------------------------------ */

static u8 vugpu_canary(size_t i)
{
	return (u8)(0xa5 ^ (i * 7) ^ (i >> 8));
}

/* Write the canaries into both guards (DMA_INFO can re-arm them after a self-test). */
void vugpu_scratch_rearm(struct vugpu_device *vdev)
{
	u8 *p = vdev->scratch;
	size_t i;

	for (i = 0; i < VUGPU_SCRATCH_GUARD; i++) {
		p[i] = vugpu_canary(i);
		p[VUGPU_SCRATCH_GUARD + VUGPU_SCRATCH_INNER + i] = vugpu_canary(i + VUGPU_SCRATCH_GUARD);
	}
	wmb();
}

static void vugpu_scratch_init(struct vugpu_device *vdev)
{
	vugpu_scratch_rearm(vdev);
	memset(vdev->scratch + VUGPU_SCRATCH_GUARD, 0, VUGPU_SCRATCH_INNER);
}

u64 vugpu_scratch_guard_bad(struct vugpu_device *vdev)
{
	const u8 *p = vdev->scratch;
	u64 bad = 0;
	size_t i;

	if (!p)
		return 0;
	for (i = 0; i < VUGPU_SCRATCH_GUARD; i++) {
		bad += READ_ONCE(p[i]) != vugpu_canary(i);
		bad += READ_ONCE(p[VUGPU_SCRATCH_GUARD + VUGPU_SCRATCH_INNER + i]) !=
		       vugpu_canary(i + VUGPU_SCRATCH_GUARD);
	}
	return bad;
}

/* --- bring-up and reset ----------------------------------------------------- */

static u64 vugpu_ring_base(const struct vugpu_engine *eng)
{
	return eng->ring_vram ? eng->ring_vram_off : eng->ring_sys_dma;
}

/* Stop the engine: CONTROL.RESET is answered once it has stopped; the read orders it. */
static u32 vugpu_engine_hw_reset(struct vugpu_engine *eng)
{
	eng_wr(eng, VUGPU_ENG_CONTROL, VUGPU_ENG_CONTROL_RESET);
	return eng_rd(eng, VUGPU_ENG_STATUS);
}

/*
 * Reset the engine and program and enable its ring.  The caller owns the
 * engine (engine->lock, or engines_rwsem for writing).
 */
static int vugpu_engine_hw_init(struct vugpu_engine *eng)
{
	struct vugpu_device *vdev = eng->vdev;
	struct vugpu_engine_regs r;
	unsigned int waited = 0;
	u64 base = vugpu_ring_base(eng);
	u32 st;

	eng->ready = false;
	st = vugpu_engine_hw_reset(eng);
	if (st == VUGPU_REG_BAD_READ)
		return -ENODEV;
	eng->tail = 0;
	eng->need_reset = false;
	atomic_set(&eng->err_pending, 0);
	if (eng->ring_vram)
		memset_io(vdev->vram + eng->ring_vram_off, 0, (size_t)eng->slots * VUGPU_DESC_SIZE);
	else
		memset(eng->ring_sys, 0, (size_t)eng->slots * VUGPU_DESC_SIZE);
	wmb();

	eng_wr(eng, VUGPU_ENG_RING_BASE_LO, lower_32_bits(base));
	eng_wr(eng, VUGPU_ENG_RING_BASE_HI, upper_32_bits(base));
	eng_wr(eng, VUGPU_ENG_RING_SIZE, eng->slots);
	eng_wr(eng, VUGPU_ENG_RING_APERTURE,
	       eng->ring_vram ? VUGPU_APERTURE_VRAM : VUGPU_APERTURE_SYS);
	eng_wr(eng, VUGPU_ENG_CONTROL, VUGPU_ENG_CONTROL_ENABLE | VUGPU_ENG_CONTROL_IRQ_ENABLE);

	/* ENABLE latches and validates the ring; IDLE (HEAD == TAIL == 0) once it did. */
	for (;;) {
		st = eng_rd(eng, VUGPU_ENG_STATUS);
		if (st == VUGPU_REG_BAD_READ)
			return -ENODEV;
		if (eng_state(st) == VUGPU_ENG_STATE_IDLE)
			break;
		if (eng_state(st) == VUGPU_ENG_STATE_ERROR || waited >= VUGPU_ENABLE_TIMEOUT_US) {
			vugpu_engine_read_regs(eng, &r);
			dev_err(&vdev->pdev->dev,
				"engine %u: not IDLE after enable: STATUS %#x ERROR_CODE %u ERROR_ADDR %#llx (ring %s %#llx, %u slots)\n",
				eng->index, r.status, r.error_code, r.error_addr,
				eng->ring_vram ? "VRAM" : "SYS", base, eng->slots);
			vugpu_engine_hw_reset(eng);
			return -EIO;
		}
		usleep_range(50, 100);
		waited += 50;
	}
	eng->ready = true;
	return 0;
}

/* Recover an engine left in ERROR (or never brought up) before a job. */
int vugpu_engine_prepare(struct vugpu_engine *eng)
{
	int ret;

	if (vugpu_is_gone(eng->vdev))
		return -ENODEV;
	if (eng->ready && !eng->need_reset)
		return 0;
	ret = vugpu_engine_hw_init(eng);
	atomic64_inc(&eng->resets);
	atomic64_inc(&eng->vdev->recoveries);
	dev_dbg(&eng->vdev->pdev->dev, "engine %u: reset to recover: %d\n", eng->index, ret);
	return ret;
}

static int vugpu_ring_valid(struct vugpu_device *vdev, u32 slots, bool ring_vram)
{
	if (slots < 2 || slots > VUGPU_RING_SLOTS_MAX || !is_power_of_2(slots))
		return -EINVAL;
	if (ring_vram && (!vdev->vram_ring_size || slots > VUGPU_VRAM_RING_SLOTS_MAX))
		return -EOPNOTSUPP;
	return 0;
}

/* ENGINE_RESET: reset, optionally move or resize the ring, enable.  Caller holds engine->lock. */
int vugpu_engine_reset(struct vugpu_engine *eng, u32 slots, bool ring_vram)
{
	struct vugpu_device *vdev = eng->vdev;
	struct device *dev = &vdev->pdev->dev;
	int ret;

	if (!slots)
		slots = eng->slots;
	ret = vugpu_ring_valid(vdev, slots, ring_vram);
	if (ret)
		return ret;

	/* Stop the engine before its ring memory changes hands. */
	eng->ready = false;
	vugpu_engine_hw_reset(eng);
	if (!ring_vram && slots != eng->ring_sys_slots) {
		dma_addr_t dma;
		void *ring = dma_alloc_coherent(dev, (size_t)slots * VUGPU_DESC_SIZE, &dma,
						GFP_KERNEL);

		if (ring) {
			dma_free_coherent(dev, (size_t)eng->ring_sys_slots * VUGPU_DESC_SIZE,
					  eng->ring_sys, eng->ring_sys_dma);
			eng->ring_sys = ring;
			eng->ring_sys_dma = dma;
			eng->ring_sys_slots = slots;
		} else {
			ret = -ENOMEM;
		}
	}
	if (!ret) {
		eng->slots = slots;
		eng->ring_vram = ring_vram;
	}
	/* On -ENOMEM the old ring comes back. */
	atomic64_inc(&eng->resets);
	if (ret) {
		vugpu_engine_hw_init(eng);
		return ret;
	}
	return vugpu_engine_hw_init(eng);
}

/* --- interrupts ------------------------------------------------------------- */

void vugpu_engine_irq(struct vugpu_vector *vec)
{
	struct vugpu_engine *eng = vec->engine;

	atomic64_inc(&eng->completion_irqs);
	wake_up(&eng->wq);
}

/* Vector 0: ERR_CAUSE bit i says engine i stopped with an error (§5). */
void vugpu_error_irq(struct vugpu_device *vdev)
{
	struct vugpu_engine *engines = smp_load_acquire(&vdev->engines);
	unsigned long cause;
	unsigned int i;
	u32 c;

	atomic64_inc(&vdev->vec0_irqs);
	if (!vdev->engine_count)
		return;
	c = vugpu_rd(vdev, VUGPU_REG_ERR_CAUSE);
	if (!c || c == VUGPU_REG_BAD_READ)
		return;
	vugpu_wr(vdev, VUGPU_REG_ERR_CAUSE, c);
	cause = c;
	for_each_set_bit(i, &cause, VUGPU_ENGINE_MAX) {
		struct vugpu_engine_regs r = {};
		struct vugpu_engine *eng;

		atomic64_inc(&vdev->err_irqs);
		if (!engines || i >= vdev->engine_count)
			continue;
		eng = &engines[i];
		/* What stopped it (§6.6), for ENGINE_STATS: the waiter reads them again. */
		r.status = eng_rd(eng, VUGPU_ENG_STATUS);
		r.error_code = eng_rd(eng, VUGPU_ENG_ERROR_CODE);
		r.error_addr = (u64)eng_rd(eng, VUGPU_ENG_ERROR_ADDR_HI) << 32 |
			       eng_rd(eng, VUGPU_ENG_ERROR_ADDR_LO);
		r.error_info = eng_rd(eng, VUGPU_ENG_ERROR_INFO);
		spin_lock(&eng->irq_err_lock);
		eng->irq_err = r;
		spin_unlock(&eng->irq_err_lock);
		atomic64_inc(&eng->err_irqs);
		atomic_set(&eng->err_pending, 1);
		wake_up(&eng->wq);
	}
}

/* --- submission and completion ---------------------------------------------- */

static void vugpu_ring_put(struct vugpu_engine *eng, const struct vugpu_hw_desc *d)
{
	size_t off = (size_t)(eng->tail & (eng->slots - 1)) * VUGPU_DESC_SIZE;

	if (eng->ring_vram)
		memcpy_toio(eng->vdev->vram + eng->ring_vram_off + off, d, sizeof(*d));
	else
		memcpy(eng->ring_sys + off, d, sizeof(*d));
	eng->tail++;
}

/*
 * Ring the doorbell (§6.4).  The recommended submission: store TAIL in the
 * doorbell page, full barrier, read SLEEPING; the engine sets SLEEPING, then
 * fences and reads TAIL once more before it sleeps, so a TAIL stored before
 * we read SLEEPING == 0 is always seen, and a sleeping engine (1) is woken
 * at once by the trapped RING_TAIL write instead of at its next poll.
 * VUGPU_DMA_DB_REG writes only RING_TAIL; VUGPU_DMA_DB_PAGE_ONLY only
 * stores TAIL (the engine finds it at its next poll).
 */
static void vugpu_ring_doorbell(struct vugpu_engine *eng, u32 flags)
{
	/* The descriptors (coherent or write-combined VRAM) before the TAIL store. */
	wmb();
	if (flags & VUGPU_DMA_DB_REG) {
		eng_wr(eng, VUGPU_ENG_RING_TAIL, eng->tail);
		return;
	}
	iowrite32(eng->tail, eng->doorbell + VUGPU_DB_TAIL);
	if (flags & VUGPU_DMA_DB_PAGE_ONLY)
		return;
	mb();
	if (ioread32(eng->doorbell + VUGPU_DB_SLEEPING) == 1) {
		eng_wr(eng, VUGPU_ENG_RING_TAIL, eng->tail);
		atomic64_inc(&eng->doorbell_wakes);
	}
}

static bool vugpu_fence_done(struct vugpu_engine *eng, u64 seq)
{
	return (s64)(le64_to_cpu(READ_ONCE(eng->slot[VUGPU_SLOT_SEQ])) - seq) >= 0;
}

static int vugpu_engine_failed(struct vugpu_engine *eng, u32 flags, struct vugpu_job_result *res)
{
	if (res->regs.error_code == VUGPU_ENG_ERR_POISONED)
		dev_err_ratelimited(&eng->vdev->pdev->dev,
				    "engine %u: uncorrectable VRAM error (POISONED) reading VRAM %#llx\n",
				    eng->index, res->regs.error_addr);
	res->result = VUGPU_DMA_ENGINE_ERROR;
	atomic64_inc(&eng->errors);
	eng->need_reset = true;
	if (flags & VUGPU_DMA_RESET_ON_ERROR) {
		atomic64_inc(&eng->resets);
		vugpu_engine_hw_init(eng);
	}
	return -EIO;
}

/*
 * Wait until the driver fence @seq lands, the engine reports an error
 * (vector 0), or the timeout passes.
 */
static int vugpu_engine_wait(struct vugpu_engine *eng, u64 seq, u32 flags,
			     struct vugpu_job_result *res)
{
	struct vugpu_device *vdev = eng->vdev;
	unsigned int ms = READ_ONCE(vugpu_dma_timeout_ms) ?: 1;
	u64 start = ktime_get_ns(), deadline_ns = start + (u64)ms * NSEC_PER_MSEC, now;
	bool irq = flags & VUGPU_DMA_IRQ;

	/*
	 * The deadline is on the monotonic clock, in both modes: jiffies can lag it (a tick
	 * delivered late on a busy host) and a deadline taken from a stale jiffies ends early.
	 */
	for (;;) {
		if (irq) {
			long left, slice;
			s64 irqs;

			now = ktime_get_ns();
			left = now < deadline_ns ? (long)nsecs_to_jiffies(deadline_ns - now) + 1 : 0;
			slice = min_t(long, left, msecs_to_jiffies(VUGPU_MISSED_IRQ_MS));
			irqs = atomic64_read(&eng->completion_irqs);

			/*
			 * In slices: an interrupt that never comes (a lost MSI-X
			 * message, hw-spec §10) costs one slice, not the timeout.
			 * wait_event_timeout() returns 1 (not 0) when the
			 * condition holds only once the slice has run out: the
			 * fence was written and no completion interrupt woke us.
			 */
			if (left > 0 &&
			    wait_event_timeout(eng->wq, vugpu_fence_done(eng, seq) ||
					       atomic_read(&eng->err_pending), slice) <= 1 &&
			    vugpu_fence_done(eng, seq) &&
			    atomic64_read(&eng->completion_irqs) == irqs) {
				dma_rmb();
				/* An interrupt wait still (irq_waits), one that missed it. */
				atomic64_inc(&eng->missed_irqs);
				atomic64_inc(&eng->irq_waits);
				dev_warn_ratelimited(&vdev->pdev->dev,
						     "engine %u: fence %llu written but no interrupt within %u ms: completed by polling\n",
						     eng->index, seq, VUGPU_MISSED_IRQ_MS);
				return 0;
			}
		} else {
			while (!vugpu_fence_done(eng, seq) && !atomic_read(&eng->err_pending)) {
				now = ktime_get_ns();
				if (now >= deadline_ns)
					break;
				if (now - start < VUGPU_POLL_SPIN_NS)
					cpu_relax();
				else
					usleep_range(10, 20);
			}
		}
		if (vugpu_fence_done(eng, seq)) {
			/* The fence is the last write of the batch: later reads see the data. */
			dma_rmb();
			atomic64_inc(irq ? &eng->irq_waits : &eng->poll_waits);
			return 0;
		}
		if (atomic_xchg(&eng->err_pending, 0)) {
			vugpu_engine_read_regs(eng, &res->regs);
			if (eng_state(res->regs.status) == VUGPU_ENG_STATE_ERROR)
				return vugpu_engine_failed(eng, flags, res);
			/* A late vector 0 for an error from before the last reset. */
			continue;
		}
		if (ktime_get_ns() >= deadline_ns)
			break;
	}

	vugpu_engine_read_regs(eng, &res->regs);
	if (vugpu_fence_done(eng, seq)) {
		dma_rmb();
		atomic64_inc(irq ? &eng->irq_waits : &eng->poll_waits);
		return 0;
	}
	if (res->regs.status == VUGPU_REG_BAD_READ && vugpu_check_gone(vdev)) {
		/* Surprise removal: nothing to reset; the job and the device are lost. */
		res->result = VUGPU_DMA_TIMEOUT;
		atomic64_inc(&eng->timeouts);
		atomic64_inc(&vdev->timeouts);
		eng->ready = false;
		eng->need_reset = true;
		return -ENODEV;
	}
	if (eng_state(res->regs.status) == VUGPU_ENG_STATE_ERROR) {
		dev_warn_ratelimited(&vdev->pdev->dev,
				     "engine %u: in ERROR (code %u) but vector 0 did not report it within %u ms\n",
				     eng->index, res->regs.error_code, ms);
		return vugpu_engine_failed(eng, flags, res);
	}
	dev_warn_ratelimited(&vdev->pdev->dev,
			     "engine %u: fence %llu not reached within %u ms (STATUS %#x HEAD %u TAIL %u, driver tail %u); resetting the engine\n",
			     eng->index, seq, ms, res->regs.status, res->regs.head, res->regs.tail,
			     eng->tail);
	res->result = VUGPU_DMA_TIMEOUT;
	atomic64_inc(&eng->timeouts);
	atomic64_inc(&vdev->timeouts);
	atomic64_inc(&eng->resets);
	vugpu_engine_hw_init(eng);
	return -ETIMEDOUT;
}

/*
 * Run @n descriptors (0 is allowed: just a fence) on @eng and wait for them.
 * Caller holds engine->lock and engines_rwsem for reading, after
 * vugpu_engine_prepare() succeeded.
 */
int vugpu_engine_run(struct vugpu_engine *eng, const struct vugpu_hw_desc *descs,
		     unsigned int n, u32 flags, struct vugpu_job_result *res)
{
	unsigned int batch = eng->slots - 1, done = 0, i, m;
	struct vugpu_hw_desc fence;
	u64 start;
	int ret;

	memset(res, 0, sizeof(*res));
	res->result = VUGPU_DMA_DONE;
	if (!eng->ready || eng->need_reset)
		return -EIO;

	do {
		m = min(n - done, batch);
		for (i = 0; i < m; i++)
			vugpu_ring_put(eng, &descs[done + i]);
		vugpu_desc_init(&fence, VUGPU_OP_FENCE, 0);
		if (flags & VUGPU_DMA_IRQ)
			fence.flags |= VUGPU_DESC_F_IRQ;
		fence.dst_aperture = VUGPU_APERTURE_SYS;
		fence.dst = cpu_to_le64(eng->slot_dma + VUGPU_SLOT_SEQ * sizeof(__le64));
		fence.value = cpu_to_le64(++eng->seq);
		vugpu_ring_put(eng, &fence);
		res->descs += m;
		res->fences++;
		res->seq = eng->seq;
		atomic64_add(m + 1, &eng->descs);

		start = ktime_get_ns();
		vugpu_ring_doorbell(eng, flags);
		ret = vugpu_engine_wait(eng, eng->seq, flags, res);
		res->elapsed_ns += ktime_get_ns() - start;
		if (ret)
			return ret;
		done += m;
	} while (done < n);
	atomic64_inc(&eng->jobs);
	return 0;
}

/* Caller holds engines_rwsem (read or write): the engine registers are mapped. */
void vugpu_engine_stats(struct vugpu_engine *eng, struct vugpu_engine_stats *st)
{
	unsigned int i;

	/* One latch per engine (§8.1): no other statistics read between LO and HI. */
	mutex_lock(&eng->stats_lock);
	for (i = 0; i < VUGPU_ENG_NUM_STATS; i++) {
		u32 off = VUGPU_ENG_STATS_START + VUGPU_COUNTER_SIZE * i;
		u32 lo = eng_rd(eng, off);	/* latches the counter's high half */

		st->hw[i] = (u64)eng_rd(eng, off + VUGPU_COUNTER_HI) << 32 | lo;
	}
	mutex_unlock(&eng->stats_lock);
	st->jobs = atomic64_read(&eng->jobs);
	st->descs = atomic64_read(&eng->descs);
	st->irq_waits = atomic64_read(&eng->irq_waits);
	st->poll_waits = atomic64_read(&eng->poll_waits);
	st->completion_irqs = atomic64_read(&eng->completion_irqs);
	st->err_irqs = atomic64_read(&eng->err_irqs);
	st->errors = atomic64_read(&eng->errors);
	st->timeouts = atomic64_read(&eng->timeouts);
	st->resets = atomic64_read(&eng->resets);
	st->doorbell_wakes = atomic64_read(&eng->doorbell_wakes);
	st->missed_irqs = atomic64_read(&eng->missed_irqs);
	spin_lock_irq(&eng->irq_err_lock);
	st->irq_error = eng->irq_err;
	spin_unlock_irq(&eng->irq_err_lock);
}

/* --- probe / remove ---------------------------------------------------------- */

static void vugpu_engines_free(struct vugpu_device *vdev, struct vugpu_engine *engines,
			       unsigned int count)
{
	struct device *dev = &vdev->pdev->dev;
	unsigned int i;

	for (i = 0; engines && i < count; i++) {
		struct vugpu_engine *eng = &engines[i];

		if (eng->ring_sys)
			dma_free_coherent(dev, (size_t)eng->ring_sys_slots * VUGPU_DESC_SIZE,
					  eng->ring_sys, eng->ring_sys_dma);
		if (eng->slot)
			dma_free_coherent(dev, PAGE_SIZE, eng->slot, eng->slot_dma);
		mutex_destroy(&eng->stats_lock);
		mutex_destroy(&eng->lock);
	}
	kfree(engines);
	if (vdev->scratch)
		dma_free_coherent(dev, 2 * VUGPU_SCRATCH_GUARD + VUGPU_SCRATCH_INNER, vdev->scratch,
				  vdev->scratch_dma);
	vdev->scratch = NULL;
	if (vdev->doorbells)
		iounmap(vdev->doorbells);
	vdev->doorbells = NULL;
}

/* Read and check the engine registers of §3; 0 with engine_count 0 if there are none. */
static int vugpu_engines_discover(struct vugpu_device *vdev, u32 *db_off)
{
	struct device *dev = &vdev->pdev->dev;
	u32 caps = vugpu_rd(vdev, VUGPU_REG_CAPS);
	u32 count;

	if (vdev->version < VUGPU_VERSION_ENGINES || !(caps & VUGPU_CAPS_ENGINES))
		return 0;
	count = vugpu_rd(vdev, VUGPU_REG_ENGINE_COUNT);
	vdev->engine_count = count;
	vdev->peer_win_count = count && (caps & VUGPU_CAPS_PEER_WINDOWS) ? VUGPU_PEER_WIN_COUNT : 0;
	if (!count)
		return 0;
	if (count > VUGPU_ENGINE_MAX) {
		dev_err(dev, "ENGINE_COUNT %u > %u\n", count, VUGPU_ENGINE_MAX);
		return -ENODEV;
	}
	vdev->vector_base = vugpu_rd(vdev, VUGPU_REG_ENGINE_VECTOR_BASE);
	if (vdev->vector_base == 0 || vdev->vector_base + count > vdev->num_vectors) {
		dev_err(dev, "ENGINE_VECTOR_BASE %u with %u engines but %u vectors\n",
			vdev->vector_base, count, vdev->num_vectors);
		return -ENODEV;
	}
	*db_off = vugpu_rd(vdev, VUGPU_REG_DOORBELL_OFFSET);
	vdev->doorbell_stride = vugpu_rd(vdev, VUGPU_REG_DOORBELL_STRIDE);
	if (!(caps & VUGPU_CAPS_DOORBELL_MMAP) || !PAGE_ALIGNED(*db_off) ||
	    *db_off < VUGPU_MSIX_PBA_OFFSET + VUGPU_MSIX_PBA_SIZE ||
	    *db_off > VUGPU_BAR0_SIZE - VUGPU_DOORBELL_PAGE_SIZE ||
	    vdev->doorbell_stride < 4 || vdev->doorbell_stride % 4 ||
	    (u64)vdev->doorbell_stride * count > VUGPU_DOORBELL_PAGE_SIZE) {
		dev_err(dev, "bad doorbell page: CAPS %#x DOORBELL_OFFSET %#x DOORBELL_STRIDE %#x\n",
			caps, *db_off, vdev->doorbell_stride);
		return -ENODEV;
	}
	return 0;
}

static int vugpu_engine_alloc(struct vugpu_device *vdev, struct vugpu_engine *eng, unsigned int i,
			      u32 slots, bool ring_vram)
{
	struct device *dev = &vdev->pdev->dev;

	eng->vdev = vdev;
	eng->index = i;
	mutex_init(&eng->lock);
	mutex_init(&eng->stats_lock);
	init_waitqueue_head(&eng->wq);
	spin_lock_init(&eng->irq_err_lock);
	eng->regs = vdev->regs + VUGPU_ENGINE_REGS(i);
	eng->doorbell = vdev->doorbells + vdev->doorbell_stride * i;
	eng->slots = slots;
	eng->ring_vram = ring_vram;
	eng->ring_vram_off = vdev->vram_ring_base + (u64)i * VUGPU_VRAM_RING_BYTES;
	eng->slot = dma_alloc_coherent(dev, PAGE_SIZE, &eng->slot_dma, GFP_KERNEL);
	eng->ring_sys = dma_alloc_coherent(dev, (size_t)slots * VUGPU_DESC_SIZE, &eng->ring_sys_dma,
					   GFP_KERNEL);
	eng->ring_sys_slots = slots;
	if (!eng->slot || !eng->ring_sys)
		return -ENOMEM;
	return 0;
}

/* Called from probe after the MSI-X vectors are set up and before /dev/vugpuN exists. */
int vugpu_engines_probe(struct vugpu_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;
	struct vugpu_engine *engines;
	u32 db_off = 0, slots = vugpu_ring_slots;
	bool ring_vram;
	unsigned int i;
	int ret;

	ret = vugpu_engines_discover(vdev, &db_off);
	if (ret || !vdev->engine_count)
		return ret;

	/* The top of the CPU-visible VRAM holds the VRAM rings (if it is big enough). */
	vdev->vram_ring_size = (u64)vdev->engine_count * VUGPU_VRAM_RING_BYTES;
	if (vdev->vram_ring_size > vdev->vram_bar_len / 4)
		vdev->vram_ring_size = 0;
	else
		vdev->vram_ring_base = vdev->vram_bar_len - vdev->vram_ring_size;
	ring_vram = vugpu_ring_vram && vdev->vram_ring_size;
	if (vugpu_ring_valid(vdev, slots, ring_vram)) {
		dev_warn(&pdev->dev, "ring_slots=%u is not usable; using %u\n", slots,
			 VUGPU_RING_SLOTS_DEFAULT);
		slots = VUGPU_RING_SLOTS_DEFAULT;
		if (ring_vram && slots > VUGPU_VRAM_RING_SLOTS_MAX)
			slots = VUGPU_VRAM_RING_SLOTS_MAX;
	}

	vdev->doorbells = ioremap(pci_resource_start(pdev, VUGPU_BAR_REGS) + db_off,
				  VUGPU_DOORBELL_PAGE_SIZE);
	if (!vdev->doorbells)
		return -ENOMEM;
	vdev->scratch = dma_alloc_coherent(&pdev->dev,
					   2 * VUGPU_SCRATCH_GUARD + VUGPU_SCRATCH_INNER,
					   &vdev->scratch_dma, GFP_KERNEL);
	if (!vdev->scratch) {
		ret = -ENOMEM;
		goto err_free;
	}
	vugpu_scratch_init(vdev);

	engines = kcalloc(vdev->engine_count, sizeof(*engines), GFP_KERNEL);
	if (!engines) {
		ret = -ENOMEM;
		goto err_free;
	}
	for (i = 0; i < vdev->engine_count; i++) {
		ret = vugpu_engine_alloc(vdev, &engines[i], i, slots, ring_vram);
		if (ret)
			goto err_engines;
	}
	for (i = 0; i < vdev->engine_count; i++) {
		ret = vugpu_engine_hw_init(&engines[i]);
		if (ret)
			goto err_stop;
	}
	/* Publish: the interrupt handlers may use the engines from now on. */
	for (i = 0; i < vdev->engine_count; i++)
		WRITE_ONCE(vdev->vectors[vdev->vector_base + i].engine, &engines[i]);
	smp_store_release(&vdev->engines, engines);
	dev_info(&pdev->dev, "%u DMA engines, %u-slot rings in %s, doorbells at BAR0+%#x\n",
		 vdev->engine_count, slots, ring_vram ? "VRAM" : "system memory", db_off);
	return 0;

err_stop:
	for (i = 0; i < vdev->engine_count; i++)
		vugpu_engine_hw_reset(&engines[i]);
err_engines:
	vugpu_engines_free(vdev, engines, vdev->engine_count);
	return ret;
err_free:
	vugpu_engines_free(vdev, NULL, 0);
	return ret;
}

/*
 * Remove, part 1 (interrupts still live): no job runs after this and every
 * engine is stopped.
 */
void vugpu_engines_stop(struct vugpu_device *vdev)
{
	unsigned int i;

	down_write(&vdev->engines_rwsem);
	vdev->engines_dead = true;
	for (i = 0; vdev->engines && i < vdev->engine_count; i++) {
		vugpu_engine_hw_reset(&vdev->engines[i]);
		vdev->engines[i].ready = false;
	}
	/* No window may point at a peer after the driver is gone. */
	vugpu_peer_wins_close(vdev);
	up_write(&vdev->engines_rwsem);
}

/* Remove, part 2 (interrupts freed): release the engines' memory. */
void vugpu_engines_remove(struct vugpu_device *vdev)
{
	struct vugpu_engine *engines = vdev->engines;
	unsigned int i;

	for (i = 0; engines && i < vdev->engine_count; i++)
		WRITE_ONCE(vdev->vectors[vdev->vector_base + i].engine, NULL);
	WRITE_ONCE(vdev->engines, NULL);
	vugpu_engines_free(vdev, engines, engines ? vdev->engine_count : 0);
}

/* After FLR / SOFT_RESET (engines_rwsem held for writing): program the rings and peer windows again. */
void vugpu_engines_reinit(struct vugpu_device *vdev)
{
	unsigned int i;

	vugpu_peer_wins_restore(vdev);
	for (i = 0; vdev->engines && i < vdev->engine_count; i++) {
		struct vugpu_engine *eng = &vdev->engines[i];
		int ret = vugpu_engine_hw_init(eng);

		if (ret)
			dev_err(&vdev->pdev->dev, "engine %u: cannot re-enable after reset: %d\n",
				i, ret);
	}
}
