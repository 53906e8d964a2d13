// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu test driver: binds the vugpu PCIe GPU model (docs/hw-spec.md) and
 * exposes it to userspace tests through /dev/vugpuN.
 *
 * Shaped like lib/test_hmm.c: a private uapi header (vugpu_uapi.h) with one
 * command struct, common validation in unlocked_ioctl before the switch,
 * outer/do_ helper pairs (the outer one validates, allocates and locks, the
 * do_ one touches the hardware) and goto unwinding.
 *
 * Per device:
 *   - BAR0 register file mapped uncached, BAR2 (VRAM) mapped write-combined;
 *   - every MSI-X vector the device has, each with a handler that counts and
 *     completes a waiter; vector 0 also handles engine errors (ERR_CAUSE),
 *     engine vectors wake the engine's waiters (vugpu_engine.c); IRQ_STATUS
 *     is read and acked on vector 0, on vectors without an engine, and on
 *     any vector while IRQ_TEST waits for it;
 *   - /dev/vugpuN: register access, interrupt test, VRAM access through the
 *     BAR (CPU view) and through VRAM_INDEX/VRAM_DATA (device view), FLR and
 *     SOFT_RESET with a register snapshot, mmap of BAR2, and the DMA engine
 *     ioctls (vugpu_dma.c), plus Device Control No Snoop / Relaxed Ordering
 *     enables, Bus Master Enable (BUS_MASTER) and per-vector interrupt
 *     counts (IRQ_COUNTS).
 *
 * Locking: vdev->lock serialises every register sequence, reset and
 * mmap against remove; it is never held while touching user memory (the
 * ioctls bounce through kernel buffers), so mmap (called under mmap_lock)
 * may take it.  Order: device_lock -> vdev->lock -> engines_rwsem (see
 * vugpu_drv.h for the DMA side).  The FLR ioctl holds vdev->lock and
 * therefore only *tries* the device lock (pci_try_reset_function); a reset
 * started elsewhere (sysfs "reset") takes vdev->lock in reset_prepare and
 * drops it in reset_done.  Every reset holds engines_rwsem for writing from
 * prepare to done, so no DMA job runs across it, and programs the engines'
 * rings again afterwards.  The device MMU's control path (TLB_INVALIDATE,
 * FAULT_REPLAY) does not take engines_rwsem: it is told about the reset
 * instead (vugpu_mmu_reset_prepare / _done in vugpu_mmu.c).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bits.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/dma-mapping.h>

#include "vugpu_drv.h"
#include "vugpu_hmm.h"
#define VUGPU_READY_TIMEOUT_US	1000000
/* The driver uses only registers of spec 0.1; later minors add, never change. */
#define VUGPU_DRIVER_MIN_VERSION	0x00000001U

static ushort vendor = VUGPU_PCI_VENDOR_ID;
module_param(vendor, ushort, 0444);
MODULE_PARM_DESC(vendor, "PCI vendor ID to bind (default 0x1234)");

static ushort device = VUGPU_PCI_DEVICE_ID;
module_param(device, ushort, 0444);
MODULE_PARM_DESC(device, "PCI device ID to bind (default 0x5647)");

static uint irq_timeout_ms = 1000;
module_param(irq_timeout_ms, uint, 0644);
MODULE_PARM_DESC(irq_timeout_ms, "IRQ_TEST: how long to wait for the handler (default 1000)");

uint vugpu_dma_timeout_ms = 5000;
module_param_named(dma_timeout_ms, vugpu_dma_timeout_ms, uint, 0644);
MODULE_PARM_DESC(dma_timeout_ms, "DMA jobs: how long to wait for completion before resetting the engine (default 5000)");

uint vugpu_ring_slots = VUGPU_RING_SLOTS_DEFAULT;
module_param_named(ring_slots, vugpu_ring_slots, uint, 0444);
MODULE_PARM_DESC(ring_slots, "DMA engines: descriptors per ring, a power of two 2-65536 (default 1024)");

bool vugpu_ring_vram;
module_param_named(ring_vram, vugpu_ring_vram, bool, 0444);
MODULE_PARM_DESC(ring_vram, "DMA engines: put the rings in VRAM instead of system memory (default N)");

static uint p2pmem_mb;
module_param(p2pmem_mb, uint, 0444);
MODULE_PARM_DESC(p2pmem_mb, "Register the top N MiB of BAR2 (at most half of it) as peer-to-peer DMA memory and publish it (default 0: none)");

static uint devmem_mb;
module_param(devmem_mb, uint, 0444);
MODULE_PARM_DESC(devmem_mb, "Device-private (HMM) memory: up to N MiB of VRAM, taken from above BAR2 first, then from the top of the CPU window below p2pmem (default 0: none)");

static DEFINE_IDA(vugpu_ida);

static int vugpu_p2p_distance(struct vugpu_device *vdev, struct vugpu_cmd *cmd);

static void vugpu_release_device(struct kref *ref)
{
	struct vugpu_device *vdev = container_of(ref, struct vugpu_device, ref);

	mutex_destroy(&vdev->lock);
	kfree(vdev->vectors);
	kfree(vdev);
}

/*
 * Surprise removal (hw-spec §10): a function that left the bus answers every
 * read with all ones.  Called when a register read returned all ones where the
 * device never answers so; confirms it with ID and marks the device dead once.
 */
bool vugpu_check_gone(struct vugpu_device *vdev)
{
	if (vugpu_is_gone(vdev))
		return true;
	if (vugpu_rd(vdev, VUGPU_REG_ID) != VUGPU_REG_BAD_READ)
		return false;
	if (!atomic_xchg(&vdev->gone, 1))
		dev_err(&vdev->pdev->dev,
			"%s: not responding (ID reads all ones): surprise removal, device marked dead\n",
			vdev->name);
	return true;
}

void vugpu_get(struct vugpu_device *vdev)
{
	kref_get(&vdev->ref);
}

void vugpu_put(struct vugpu_device *vdev)
{
	kref_put(&vdev->ref, vugpu_release_device);
}

/* Take vdev->lock unless the device has been removed. */
static int vugpu_lock_live(struct vugpu_device *vdev)
{
	mutex_lock(&vdev->lock);
	if (vdev->dead) {
		mutex_unlock(&vdev->lock);
		return -ENODEV;
	}
	return 0;
}

irqreturn_t vugpu_irq_handler(int irq, void *data)
{
	struct vugpu_vector *vec = data;
	struct vugpu_device *vdev = vec->vdev;
	struct vugpu_engine *engine = READ_ONCE(vec->engine);
	u32 status = 0;

	/*
	 * Engine completions must not cost a trapped register read: IRQ_STATUS
	 * is only looked at where IRQ_TRIGGER may have set it.
	 */
	if (vec->index < VUGPU_IRQ_STATUS_VECTORS &&
	    ((!engine && !vec->mmu_fault) || atomic_read(&vec->test_armed))) {
		status = vugpu_rd(vdev, VUGPU_REG_IRQ_STATUS);
		/* Ack only our own cause bit: other vectors' handlers own theirs. */
		if (status != VUGPU_REG_BAD_READ && (status & BIT(vec->index)))
			vugpu_wr(vdev, VUGPU_REG_IRQ_STATUS, BIT(vec->index));
	}
	WRITE_ONCE(vec->status, status);
	WRITE_ONCE(vec->stamp_ns, ktime_get_ns());
	atomic64_inc(&vec->count);
	if (vec->index == 0)
		vugpu_error_irq(vdev);
	if (engine)
		vugpu_engine_irq(vec);
	complete(&vec->done);
	/* The fault ring is consumed in the thread (vugpu_mmu.c). */
	return vec->mmu_fault ? IRQ_WAKE_THREAD : IRQ_HANDLED;
}

/* Wait for STATUS.READY after a reset; 0 or -ETIMEDOUT. */
static int vugpu_wait_ready(struct vugpu_device *vdev)
{
	unsigned int waited_us = 0;
	u32 status;

	for (;;) {
		status = vugpu_rd(vdev, VUGPU_REG_STATUS);
		if (status != VUGPU_REG_BAD_READ && (status & VUGPU_STATUS_READY))
			return 0;
		if (waited_us >= VUGPU_READY_TIMEOUT_US)
			return -ETIMEDOUT;
		usleep_range(100, 200);
		waited_us += 100;
	}
}

static void vugpu_snapshot(struct vugpu_device *vdev, struct vugpu_regs *r)
{
	unsigned int i;

	memset(r, 0, sizeof(*r));
	r->id = vugpu_rd(vdev, VUGPU_REG_ID);
	r->version = vugpu_rd(vdev, VUGPU_REG_VERSION);
	r->caps = vugpu_rd(vdev, VUGPU_REG_CAPS);
	r->num_vectors = vugpu_rd(vdev, VUGPU_REG_NUM_VECTORS);
	r->vram_size_lo = vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_LO);
	r->vram_size_hi = vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_HI);
	r->status = vugpu_rd(vdev, VUGPU_REG_STATUS);
	r->irq_status = vugpu_rd(vdev, VUGPU_REG_IRQ_STATUS);
	for (i = 0; i < VUGPU_NUM_SCRATCH; i++)
		r->scratch[i] = vugpu_rd(vdev, VUGPU_REG_SCRATCH(i));
	r->vram_index_lo = vugpu_rd(vdev, VUGPU_REG_VRAM_INDEX_LO);
	r->vram_index_hi = vugpu_rd(vdev, VUGPU_REG_VRAM_INDEX_HI);
	r->irq_count = vugpu_rd(vdev, VUGPU_REG_IRQ_COUNT);
	r->engine_count = vugpu_rd(vdev, VUGPU_REG_ENGINE_COUNT);
	r->err_cause = vugpu_rd(vdev, VUGPU_REG_ERR_CAUSE);
	pci_read_config_word(vdev->pdev, PCI_COMMAND, &r->pci_command);
	pcie_capability_read_word(vdev->pdev, PCI_EXP_DEVCTL, &r->pci_devctl);
}

/* --- reset hooks (pci_reset_function and sysfs "reset") ------------------ */

static void vugpu_quiesce_irqs(struct vugpu_device *vdev)
{
	unsigned int i;

	/* The MMU fault thread never blocks a reset: it is not waited for (vugpu_mmu.c). */
	for (i = 0; i < vdev->irqs_requested; i++)
		if (vdev->vectors[i].mmu_fault)
			disable_irq_nosync(vdev->vectors[i].irq);
		else
			disable_irq(vdev->vectors[i].irq);
}

static void vugpu_resume_irqs(struct vugpu_device *vdev)
{
	unsigned int i;

	for (i = 0; i < vdev->irqs_requested; i++)
		enable_irq(vdev->vectors[i].irq);
}

static void vugpu_reset_prepare(struct pci_dev *pdev)
{
	struct vugpu_device *vdev = pci_get_drvdata(pdev);

	/* Our own FLR ioctl already holds the lock (see the top comment). */
	vdev->reset_took_lock = READ_ONCE(vdev->reset_owner) != current;
	if (vdev->reset_took_lock)
		mutex_lock(&vdev->lock);
	/*
	 * No DMA job across the reset: it stops the engines.  The MMU's
	 * invalidations do not wait for it (vugpu_mmu_reset_prepare): they may
	 * come from reclaim, which the PCI core's restore may wait for.
	 */
	down_write(&vdev->engines_rwsem);
	vugpu_mmu_reset_prepare(vdev);
	vugpu_quiesce_irqs(vdev);
}

static void vugpu_reset_done(struct pci_dev *pdev)
{
	struct vugpu_device *vdev = pci_get_drvdata(pdev);

	/* Config space has been restored; look at the registers before we touch them. */
	vdev->reset_ready_err = vugpu_wait_ready(vdev);
	vugpu_snapshot(vdev, &vdev->reset_regs);
	if (vdev->reset_ready_err)
		dev_err(&pdev->dev, "not READY after reset (STATUS %#x)\n",
			vdev->reset_regs.status);
	else if (vdev->reset_regs.id != VUGPU_ID_VALUE)
		dev_err(&pdev->dev, "bad ID %#x after reset\n", vdev->reset_regs.id);
	if (!vdev->reset_ready_err)
		vugpu_engines_reinit(vdev);
	vugpu_mmu_reset_done(vdev, !vdev->reset_ready_err);
	vugpu_resume_irqs(vdev);
	up_write(&vdev->engines_rwsem);
	if (vdev->reset_took_lock) {
		vdev->reset_took_lock = false;
		mutex_unlock(&vdev->lock);
	}
}

static const struct pci_error_handlers vugpu_err_handlers = {
	.reset_prepare	= vugpu_reset_prepare,
	.reset_done	= vugpu_reset_done,
};

/* --- ioctl helpers: outer (validate, bounce, lock) / do_ (hardware) ------ */

static int vugpu_get_info(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	struct pci_dev *pdev = vdev->pdev;
	struct vugpu_info info;
	int ret;

	if (cmd->size < sizeof(info))
		return -EINVAL;

	memset(&info, 0, sizeof(info));
	info.vendor = pdev->vendor;
	info.device = pdev->device;
	info.subsystem_vendor = pdev->subsystem_vendor;
	info.subsystem_device = pdev->subsystem_device;
	info.class = pdev->class;
	info.revision = pdev->revision;
	info.num_vectors = vdev->num_vectors;
	info.bar0_start = pci_resource_start(pdev, VUGPU_BAR_REGS);
	info.bar0_size = pci_resource_len(pdev, VUGPU_BAR_REGS);
	info.bar2_start = vdev->vram_bar_start;
	info.bar2_size = vdev->vram_bar_size;
	strscpy(info.pci_name, pci_name(pdev), sizeof(info.pci_name));

	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	info.id = vugpu_rd(vdev, VUGPU_REG_ID);
	info.version = vugpu_rd(vdev, VUGPU_REG_VERSION);
	info.caps = vugpu_rd(vdev, VUGPU_REG_CAPS);
	info.vram_size = (u64)vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_HI) << 32 |
			 vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_LO);
	mutex_unlock(&vdev->lock);

	if (copy_to_user(u64_to_user_ptr(cmd->ptr), &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

/* A register access must be a 4-byte aligned dword inside the register file. */
static int vugpu_check_reg(u64 offset)
{
	if (offset >= VUGPU_REGFILE_SIZE || offset % VUGPU_REG_WIDTH)
		return -EINVAL;
	return 0;
}

static int vugpu_reg_read(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	int ret;

	ret = vugpu_check_reg(cmd->offset);
	if (ret)
		return ret;
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	cmd->value = vugpu_rd(vdev, cmd->offset);
	mutex_unlock(&vdev->lock);
	return 0;
}

static int vugpu_reg_write(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	int ret;

	ret = vugpu_check_reg(cmd->offset);
	if (ret)
		return ret;
	if (cmd->value > U32_MAX)
		return -EINVAL;
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	vugpu_wr(vdev, cmd->offset, cmd->value);
	mutex_unlock(&vdev->lock);
	return 0;
}

static int vugpu_do_irq_test(struct vugpu_device *vdev, struct vugpu_vector *vec,
			     struct vugpu_cmd *cmd)
{
	u64 before, start;
	unsigned long left;

	before = atomic64_read(&vec->count);
	reinit_completion(&vec->done);
	atomic_set(&vec->test_armed, 1);
	start = ktime_get_ns();
	vugpu_wr(vdev, VUGPU_REG_IRQ_TRIGGER, vec->index);
	left = wait_for_completion_timeout(&vec->done, msecs_to_jiffies(irq_timeout_ms));
	atomic_set(&vec->test_armed, 0);
	if (!left) {
		dev_warn_ratelimited(&vdev->pdev->dev, "vector %u: no interrupt within %u ms\n",
				     vec->index, irq_timeout_ms);
		return -ETIMEDOUT;
	}
	cmd->count = atomic64_read(&vec->count);
	if (cmd->count == before)
		return -EIO;
	cmd->value = READ_ONCE(vec->status);
	cmd->elapsed_ns = READ_ONCE(vec->stamp_ns) - start;
	return 0;
}

static int vugpu_irq_test(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	int ret;

	if (cmd->offset >= vdev->num_vectors)
		return -EINVAL;
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	ret = vugpu_do_irq_test(vdev, &vdev->vectors[cmd->offset], cmd);
	mutex_unlock(&vdev->lock);
	return ret;
}

enum vugpu_vram_op {
	VUGPU_VRAM_BAR_READ,
	VUGPU_VRAM_BAR_WRITE,
	VUGPU_VRAM_WINDOW_READ,
	VUGPU_VRAM_WINDOW_WRITE,
};

static bool vugpu_op_is_write(enum vugpu_vram_op op)
{
	return op == VUGPU_VRAM_BAR_WRITE || op == VUGPU_VRAM_WINDOW_WRITE;
}

static bool vugpu_op_is_window(enum vugpu_vram_op op)
{
	return op == VUGPU_VRAM_WINDOW_READ || op == VUGPU_VRAM_WINDOW_WRITE;
}

/* Point VRAM_INDEX at @offset and clear a stale VRAM_INDEX_ERR. */
static void vugpu_window_seek(struct vugpu_device *vdev, u64 offset)
{
	if (vugpu_rd(vdev, VUGPU_REG_STATUS) & VUGPU_STATUS_VRAM_INDEX_ERR)
		vugpu_wr(vdev, VUGPU_REG_STATUS, VUGPU_STATUS_VRAM_INDEX_ERR);
	vugpu_wr(vdev, VUGPU_REG_VRAM_INDEX_HI, upper_32_bits(offset));
	vugpu_wr(vdev, VUGPU_REG_VRAM_INDEX_LO, lower_32_bits(offset));
}

/* -EIO if the device flagged an out-of-range VRAM_DATA access (and clear it). */
static int vugpu_window_check(struct vugpu_device *vdev)
{
	u32 status = vugpu_rd(vdev, VUGPU_REG_STATUS);

	if (status == VUGPU_REG_BAD_READ)
		return -EIO;
	if (status & VUGPU_STATUS_VRAM_INDEX_ERR) {
		vugpu_wr(vdev, VUGPU_REG_STATUS, VUGPU_STATUS_VRAM_INDEX_ERR);
		return -EIO;
	}
	return 0;
}

static int vugpu_do_vram_window_read(struct vugpu_device *vdev, u64 offset, void *buf, size_t size)
{
	__le32 *p = buf;
	size_t i;

	vugpu_window_seek(vdev, offset);
	for (i = 0; i < size / sizeof(*p); i++)
		p[i] = cpu_to_le32(vugpu_rd(vdev, VUGPU_REG_VRAM_DATA));
	return vugpu_window_check(vdev);
}

static int vugpu_do_vram_window_write(struct vugpu_device *vdev, u64 offset, const void *buf,
				      size_t size)
{
	const __le32 *p = buf;
	size_t i;

	vugpu_window_seek(vdev, offset);
	for (i = 0; i < size / sizeof(*p); i++)
		vugpu_wr(vdev, VUGPU_REG_VRAM_DATA, le32_to_cpu(p[i]));
	return vugpu_window_check(vdev);
}

static int vugpu_do_vram_xfer(struct vugpu_device *vdev, enum vugpu_vram_op op, u64 offset,
			      void *buf, size_t size)
{
	switch (op) {
	case VUGPU_VRAM_BAR_READ:
		memcpy_fromio(buf, vdev->vram + offset, size);
		return 0;
	case VUGPU_VRAM_BAR_WRITE:
		memcpy_toio(vdev->vram + offset, buf, size);
		/* Push the write-combining buffers out before we report success. */
		wmb();
		return 0;
	case VUGPU_VRAM_WINDOW_READ:
		return vugpu_do_vram_window_read(vdev, offset, buf, size);
	case VUGPU_VRAM_WINDOW_WRITE:
		return vugpu_do_vram_window_write(vdev, offset, buf, size);
	}
	return -EINVAL;
}

static int vugpu_vram_xfer(struct vugpu_device *vdev, struct vugpu_cmd *cmd, enum vugpu_vram_op op)
{
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	u64 limit, start;
	void *buf;
	int ret;

	/*
	 * The BAR path is bounded by the BAR, the window by the VRAM size
	 * register.  The window moves whole dwords.
	 */
	if (vugpu_op_is_window(op)) {
		limit = vdev->vram_size;
		if (cmd->offset % 4 || cmd->size % 4)
			return -EINVAL;
	} else {
		limit = vdev->vram_bar_len;
	}
	if (!cmd->size)
		return -EINVAL;
	if (cmd->offset >= limit || cmd->size > limit - cmd->offset)
		return -ERANGE;

	buf = kvmalloc(cmd->size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;

	if (vugpu_op_is_write(op) && copy_from_user(buf, uptr, cmd->size)) {
		ret = -EFAULT;
		goto out_free;
	}

	ret = vugpu_lock_live(vdev);
	if (ret)
		goto out_free;
	start = ktime_get_ns();
	ret = vugpu_do_vram_xfer(vdev, op, cmd->offset, buf, cmd->size);
	cmd->elapsed_ns = ktime_get_ns() - start;
	mutex_unlock(&vdev->lock);
	if (ret)
		goto out_free;

	if (!vugpu_op_is_write(op) && copy_to_user(uptr, buf, cmd->size)) {
		ret = -EFAULT;
		goto out_free;
	}
	cmd->count = cmd->size;

out_free:
	kvfree(buf);
	return ret;
}

static int vugpu_do_flr(struct vugpu_device *vdev, struct vugpu_regs *regs)
{
	int ret;

	WRITE_ONCE(vdev->reset_owner, current);
	ret = pci_try_reset_function(vdev->pdev);
	WRITE_ONCE(vdev->reset_owner, NULL);
	if (ret)
		return ret;
	*regs = vdev->reset_regs;
	return vdev->reset_ready_err;
}

static int vugpu_do_soft_reset(struct vugpu_device *vdev, struct vugpu_regs *regs)
{
	int ret;

	down_write(&vdev->engines_rwsem);
	vugpu_mmu_reset_prepare(vdev);
	vugpu_quiesce_irqs(vdev);
	vugpu_wr(vdev, VUGPU_REG_SOFT_RESET, VUGPU_SOFT_RESET_MAGIC);
	ret = vugpu_wait_ready(vdev);
	vugpu_snapshot(vdev, regs);
	if (!ret)
		vugpu_engines_reinit(vdev);
	vugpu_mmu_reset_done(vdev, !ret);
	vugpu_resume_irqs(vdev);
	up_write(&vdev->engines_rwsem);
	return ret;
}

static int vugpu_reset(struct vugpu_device *vdev, struct vugpu_cmd *cmd, bool flr)
{
	struct vugpu_regs regs;
	u64 start;
	int ret;

	if (cmd->size < sizeof(regs))
		return -EINVAL;

	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	start = ktime_get_ns();
	if (flr)
		ret = vugpu_do_flr(vdev, &regs);
	else
		ret = vugpu_do_soft_reset(vdev, &regs);
	cmd->elapsed_ns = ktime_get_ns() - start;
	mutex_unlock(&vdev->lock);
	if (ret)
		return ret;

	dev_info(&vdev->pdev->dev, "%s done in %llu us\n", flr ? "FLR" : "SOFT_RESET",
		 cmd->elapsed_ns / NSEC_PER_USEC);
	if (copy_to_user(u64_to_user_ptr(cmd->ptr), &regs, sizeof(regs)))
		return -EFAULT;
	return 0;
}

/*
 * DEVCTL: set / clear Enable No Snoop and Enable Relaxed Ordering (hw-spec
 * §1.3, §7.1) with pcie_capability_set_word / clear_word.
 */
static int vugpu_devctl(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	const u64 allowed = PCI_EXP_DEVCTL_NOSNOOP_EN | PCI_EXP_DEVCTL_RELAX_EN;
	u16 set = cmd->offset & cmd->value, clear = cmd->offset & ~cmd->value;
	u16 devctl = 0;
	int ret;

	if (cmd->offset & ~allowed || cmd->value & ~cmd->offset)
		return -EINVAL;
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	if (set)
		ret = pcie_capability_set_word(vdev->pdev, PCI_EXP_DEVCTL, set);
	if (!ret && clear)
		ret = pcie_capability_clear_word(vdev->pdev, PCI_EXP_DEVCTL, clear);
	if (!ret)
		ret = pcie_capability_read_word(vdev->pdev, PCI_EXP_DEVCTL, &devctl);
	mutex_unlock(&vdev->lock);
	if (ret)
		return pcibios_err_to_errno(ret);
	cmd->count = devctl;
	return 0;
}

/*
 * BUS_MASTER: clear or set Bus Master Enable (hw-spec §1.1) the way a
 * driver does at unbind / bind.  While it is 0 the engines start nothing
 * and MSI-X messages are held (§3.1, §6.7); jobs submitted meanwhile
 * wait (bounded by dma_timeout_ms).  Command after the change in count.
 */
static int vugpu_bus_master(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	u16 command = 0;
	int ret;

	if (cmd->value > VUGPU_BUS_MASTER_QUERY)
		return -EINVAL;
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	if (cmd->value == VUGPU_BUS_MASTER_SET)
		pci_set_master(vdev->pdev);
	else if (cmd->value == VUGPU_BUS_MASTER_CLEAR)
		pci_clear_master(vdev->pdev);
	ret = pci_read_config_word(vdev->pdev, PCI_COMMAND, &command);
	mutex_unlock(&vdev->lock);
	if (ret)
		return pcibios_err_to_errno(ret);
	cmd->count = command;
	return 0;
}

/* IRQ_COUNTS: interrupts handled per vector (no hardware access, no trigger). */
static int vugpu_irq_counts(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	unsigned int i, n;
	u64 *counts;
	int ret = 0;

	if (cmd->size < sizeof(u64) || cmd->size % sizeof(u64))
		return -EINVAL;
	n = min_t(u64, cmd->size / sizeof(u64), vdev->num_vectors);
	counts = kcalloc(n, sizeof(*counts), GFP_KERNEL);
	if (!counts)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		counts[i] = atomic64_read(&vdev->vectors[i].count);
	if (copy_to_user(u64_to_user_ptr(cmd->ptr), counts, n * sizeof(*counts)))
		ret = -EFAULT;
	kfree(counts);
	cmd->count = vdev->num_vectors;
	return ret;
}

/* --- file operations ----------------------------------------------------- */

static int vugpu_fops_open(struct inode *inode, struct file *filp)
{
	struct miscdevice *misc = filp->private_data;
	struct vugpu_device *vdev = container_of(misc, struct vugpu_device, misc);
	int ret;

	/* misc_open holds misc_mtx, so vdev cannot be deregistered under us. */
	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	if (!vdev->map_inode) {
		vdev->map_inode = igrab(inode);
		if (!vdev->map_inode) {
			mutex_unlock(&vdev->lock);
			return -ENODEV;
		}
	}
	filp->f_mapping = vdev->map_inode->i_mapping;
	vdev->open_count++;
	kref_get(&vdev->ref);
	mutex_unlock(&vdev->lock);

	filp->private_data = vdev;
	return 0;
}

static int vugpu_fops_release(struct inode *inode, struct file *filp)
{
	struct vugpu_device *vdev = filp->private_data;
	struct inode *put = NULL;

	mutex_lock(&vdev->lock);
	if (--vdev->open_count == 0) {
		put = vdev->map_inode;
		vdev->map_inode = NULL;
	}
	mutex_unlock(&vdev->lock);
	iput(put);
	kref_put(&vdev->ref, vugpu_release_device);
	return 0;
}

static long vugpu_fops_unlocked_ioctl(struct file *filp, unsigned int command, unsigned long arg)
{
	struct vugpu_device *vdev = filp->private_data;
	void __user *uarg = (void __user *)arg;
	struct vugpu_cmd cmd;
	int ret;

	if (!vdev)
		return -EINVAL;
	/* A function that is gone (surprise removal) is not touched again. */
	if (vugpu_is_gone(vdev))
		return -ENODEV;
	switch (command) {
	case VUGPU_IOCTL_DMA_COPY:
	case VUGPU_IOCTL_DMA_FILL:
	case VUGPU_IOCTL_DMA_FENCE:
	case VUGPU_IOCTL_DMA_TIMESTAMP:
	case VUGPU_IOCTL_DMA_RAW_SUBMIT:
	case VUGPU_IOCTL_ENGINE_RESET:
		/* struct vugpu_dma, validated there */
		return vugpu_dma_ioctl(vdev, command, uarg);
	}
	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;

	/* Common validation: buffers are bounded, and (out) fields start at 0. */
	if (cmd.size > VUGPU_MAX_XFER)
		return -E2BIG;
	if (cmd.size && !cmd.ptr)
		return -EINVAL;
	cmd.elapsed_ns = 0;
	cmd.count = 0;

	switch (command) {
	case VUGPU_IOCTL_GET_INFO:
		ret = vugpu_get_info(vdev, &cmd);
		break;
	case VUGPU_IOCTL_REG_READ:
		cmd.value = 0;
		ret = vugpu_reg_read(vdev, &cmd);
		break;
	case VUGPU_IOCTL_REG_WRITE:
		ret = vugpu_reg_write(vdev, &cmd);
		break;
	case VUGPU_IOCTL_IRQ_TEST:
		cmd.value = 0;
		ret = vugpu_irq_test(vdev, &cmd);
		break;
	case VUGPU_IOCTL_VRAM_READ:
		ret = vugpu_vram_xfer(vdev, &cmd, VUGPU_VRAM_BAR_READ);
		break;
	case VUGPU_IOCTL_VRAM_WRITE:
		ret = vugpu_vram_xfer(vdev, &cmd, VUGPU_VRAM_BAR_WRITE);
		break;
	case VUGPU_IOCTL_VRAM_WINDOW_READ:
		ret = vugpu_vram_xfer(vdev, &cmd, VUGPU_VRAM_WINDOW_READ);
		break;
	case VUGPU_IOCTL_VRAM_WINDOW_WRITE:
		ret = vugpu_vram_xfer(vdev, &cmd, VUGPU_VRAM_WINDOW_WRITE);
		break;
	case VUGPU_IOCTL_FLR:
		ret = vugpu_reset(vdev, &cmd, true);
		break;
	case VUGPU_IOCTL_SOFT_RESET:
		ret = vugpu_reset(vdev, &cmd, false);
		break;
	case VUGPU_IOCTL_DMA_INFO:
		ret = vugpu_dma_info(vdev, &cmd);
		break;
	case VUGPU_IOCTL_ENGINE_STATS:
		ret = vugpu_engine_stats_ioctl(vdev, &cmd);
		break;
	case VUGPU_IOCTL_ERROR_STATE:
		ret = vugpu_error_state(vdev, &cmd);
		break;
	case VUGPU_IOCTL_DEVCTL:
		ret = vugpu_devctl(vdev, &cmd);
		break;
	case VUGPU_IOCTL_SCRATCH_READ:
		ret = vugpu_scratch_xfer(vdev, &cmd, false);
		break;
	case VUGPU_IOCTL_SCRATCH_WRITE:
		ret = vugpu_scratch_xfer(vdev, &cmd, true);
		break;
	case VUGPU_IOCTL_BUS_MASTER:
		ret = vugpu_bus_master(vdev, &cmd);
		break;
	case VUGPU_IOCTL_IRQ_COUNTS:
		ret = vugpu_irq_counts(vdev, &cmd);
		break;
	case VUGPU_IOCTL_P2P_DISTANCE:
		ret = vugpu_p2p_distance(vdev, &cmd);
		break;
	default:
		return -ENOTTY;
	}
	if (ret)
		return ret;

	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

static int vugpu_fops_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct vugpu_device *vdev = filp->private_data;
	int ret;

	/* A private (copy-on-write) mapping of device memory makes no sense. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;

	ret = vugpu_lock_live(vdev);
	if (ret)
		return ret;
	vma->vm_page_prot = pgprot_writecombine(vma->vm_page_prot);
	/* Bounds-checks vm_pgoff and the length against the BAR. */
	ret = vm_iomap_memory(vma, vdev->vram_bar_start, vdev->vram_bar_len);
	mutex_unlock(&vdev->lock);
	return ret;
}

static const struct file_operations vugpu_fops = {
	.owner		= THIS_MODULE,
	.open		= vugpu_fops_open,
	.release	= vugpu_fops_release,
	.unlocked_ioctl	= vugpu_fops_unlocked_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.mmap		= vugpu_fops_mmap,
	.llseek		= noop_llseek,
};

/* --- probe / remove ------------------------------------------------------ */

static void vugpu_free_irqs(struct vugpu_device *vdev)
{
	while (vdev->irqs_requested) {
		struct vugpu_vector *vec = &vdev->vectors[--vdev->irqs_requested];

		free_irq(vec->irq, vec);
	}
}

static int vugpu_setup_irqs(struct vugpu_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;
	int fault_vector = vugpu_mmu_fault_vector(vdev);
	unsigned int i;
	int ret;

	vdev->vectors = kcalloc(vdev->num_vectors, sizeof(*vdev->vectors), GFP_KERNEL);
	if (!vdev->vectors)
		return -ENOMEM;

	ret = pci_alloc_irq_vectors(pdev, vdev->num_vectors, vdev->num_vectors, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(&pdev->dev, "cannot allocate %u MSI-X vectors: %d\n",
			vdev->num_vectors, ret);
		return ret;
	}

	for (i = 0; i < vdev->num_vectors; i++) {
		struct vugpu_vector *vec = &vdev->vectors[i];

		vec->vdev = vdev;
		vec->index = i;
		atomic64_set(&vec->count, 0);
		atomic_set(&vec->test_armed, 0);
		init_completion(&vec->done);
		snprintf(vec->name, sizeof(vec->name), "%s-%u", vdev->name, i);
		vec->irq = pci_irq_vector(pdev, i);
		if (vec->irq < 0) {
			ret = vec->irq;
			goto err_free_irqs;
		}
		if ((int)i == fault_vector) {
			/* The device MMU's fault ring: consumed in a thread (vugpu_mmu.c). */
			vec->mmu_fault = true;
			ret = request_threaded_irq(vec->irq, vugpu_irq_handler, vugpu_mmu_irq_thread,
						   IRQF_ONESHOT, vec->name, vec);
		} else {
			ret = request_irq(vec->irq, vugpu_irq_handler, 0, vec->name, vec);
		}
		if (ret) {
			dev_err(&pdev->dev, "request_irq vector %u: %d\n", i, ret);
			goto err_free_irqs;
		}
		vdev->irqs_requested++;
	}
	return 0;

err_free_irqs:
	vugpu_free_irqs(vdev);
	pci_free_irq_vectors(pdev);
	return ret;
}

static void vugpu_teardown_irqs(struct vugpu_device *vdev)
{
	vugpu_free_irqs(vdev);
	pci_free_irq_vectors(vdev->pdev);
}

/* Check the BARs' types and sizes against hw-spec §1.1. */
static int vugpu_check_bars(struct pci_dev *pdev)
{
	unsigned long f0 = pci_resource_flags(pdev, VUGPU_BAR_REGS);
	unsigned long f2 = pci_resource_flags(pdev, VUGPU_BAR_VRAM);
	resource_size_t len2 = pci_resource_len(pdev, VUGPU_BAR_VRAM);

	if (!(f0 & IORESOURCE_MEM) || pci_resource_len(pdev, VUGPU_BAR_REGS) < VUGPU_BAR0_SIZE) {
		dev_err(&pdev->dev, "BAR0 is not a 16 MiB memory BAR: %pR\n",
			&pdev->resource[VUGPU_BAR_REGS]);
		return -ENODEV;
	}
	if (!(f2 & IORESOURCE_MEM) || !(f2 & IORESOURCE_MEM_64) || !(f2 & IORESOURCE_PREFETCH) ||
	    len2 < VUGPU_VRAM_BAR_MIN_SIZE || !is_power_of_2(len2)) {
		dev_err(&pdev->dev, "BAR2 is not a 64-bit prefetchable VRAM BAR: %pR\n",
			&pdev->resource[VUGPU_BAR_VRAM]);
		return -ENODEV;
	}
	return 0;
}

/* P2P_DISTANCE: what the p2pdma core says about a provider -> this GPU path. */
static int vugpu_p2p_distance(struct vugpu_device *vdev, struct vugpu_cmd *cmd)
{
	struct pci_dev *provider;
	u64 a = cmd->offset;

	if (a >> 32)
		return -EINVAL;
	provider = pci_get_domain_bus_and_slot(a >> 16, (a >> 8) & 0xff, a & 0xff);
	if (!provider)
		return -ENODEV;
	cmd->value = (u64)(s64)pci_p2pdma_distance(provider, &vdev->pdev->dev, true);
	pci_dev_put(provider);
	return 0;
}

/*
 * Register the top p2p_size bytes of BAR2 with the p2pdma core and publish
 * them: /sys/bus/pci/devices/<bdf>/p2pmem/ appears, userspace can mmap
 * p2pmem/allocate, and pci_p2pmem_find_many() can hand the memory to other
 * drivers (NVMe, RDMA).  The pages are devres-managed: the core unmaps them
 * when the driver unbinds, before our BAR mappings and regions go.
 */
static int vugpu_p2pmem_setup(struct vugpu_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;
	int ret;

	if (!vdev->p2p_size)
		return 0;
	ret = pci_p2pdma_add_resource(pdev, VUGPU_BAR_VRAM, vdev->p2p_size, vdev->p2p_off);
	if (ret) {
		dev_err(&pdev->dev, "p2pmem_mb=%u: cannot register BAR2 [+%#llx, %llu MiB] as p2pmem: %d\n",
			p2pmem_mb, (u64)vdev->p2p_off, (u64)vdev->p2p_size >> 20, ret);
		return ret;
	}
	pci_p2pmem_publish(pdev, true);
	dev_info(&pdev->dev, "%s: BAR2 [+%#llx, %llu MiB] published as p2pmem (VRAM offsets %#llx-%#llx)\n",
		 vdev->name, (u64)vdev->p2p_off, (u64)vdev->p2p_size >> 20,
		 (u64)vdev->p2p_off, (u64)(vdev->vram_bar_size - 1));
	return 0;
}

/* Check ID, VERSION, NUM_VECTORS and VRAM_SIZE against hw-spec §3. */
static int vugpu_check_regs(struct vugpu_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;
	u32 id = vugpu_rd(vdev, VUGPU_REG_ID);
	u32 version = vugpu_rd(vdev, VUGPU_REG_VERSION);
	int msix;

	if (id != VUGPU_ID_VALUE) {
		dev_err(&pdev->dev, "ID register %#010x, expected %#010x\n", id, VUGPU_ID_VALUE);
		return -ENODEV;
	}
	if (VUGPU_VERSION_MAJOR(version) != VUGPU_VERSION_MAJOR(VUGPU_DRIVER_MIN_VERSION) ||
	    VUGPU_VERSION_MINOR(version) < VUGPU_VERSION_MINOR(VUGPU_DRIVER_MIN_VERSION)) {
		dev_err(&pdev->dev, "unsupported VERSION %#010x (driver needs %u.%u or a later %u.x)\n",
			version, VUGPU_VERSION_MAJOR(VUGPU_DRIVER_MIN_VERSION),
			VUGPU_VERSION_MINOR(VUGPU_DRIVER_MIN_VERSION),
			VUGPU_VERSION_MAJOR(VUGPU_DRIVER_MIN_VERSION));
		return -ENODEV;
	}

	vdev->version = version;
	vdev->num_vectors = vugpu_rd(vdev, VUGPU_REG_NUM_VECTORS);
	msix = pci_msix_vec_count(pdev);
	if (msix < 0 || vdev->num_vectors == 0 || vdev->num_vectors != (u32)msix) {
		dev_err(&pdev->dev, "NUM_VECTORS %u but MSI-X table size %d\n", vdev->num_vectors,
			msix);
		return -ENODEV;
	}

	vdev->vram_size = (u64)vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_HI) << 32 |
			  vugpu_rd(vdev, VUGPU_REG_VRAM_SIZE_LO);
	if (vdev->vram_size < vdev->vram_bar_size) {
		dev_err(&pdev->dev, "VRAM_SIZE %#llx smaller than BAR2 (%pa)\n", vdev->vram_size,
			&vdev->vram_bar_size);
		return -ENODEV;
	}
	return 0;
}

static int vugpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vugpu_device *vdev;
	int ret;

	vdev = kzalloc(sizeof(*vdev), GFP_KERNEL);
	if (!vdev)
		return -ENOMEM;
	vdev->pdev = pdev;
	kref_init(&vdev->ref);
	mutex_init(&vdev->lock);
	init_rwsem(&vdev->engines_rwsem);
	mutex_init(&vdev->peer_win_lock);
	atomic64_set(&vdev->vec0_irqs, 0);
	atomic64_set(&vdev->err_irqs, 0);
	atomic64_set(&vdev->recoveries, 0);
	atomic64_set(&vdev->timeouts, 0);

	vdev->index = ida_alloc(&vugpu_ida, GFP_KERNEL);
	if (vdev->index < 0) {
		ret = vdev->index;
		goto err_free;
	}
	snprintf(vdev->name, sizeof(vdev->name), VUGPU_DRIVER_NAME "%d", vdev->index);

	/*
	 * Managed (pcim/devm) resources: they are released after remove() in
	 * reverse order, so the p2pdma pages registered last go first, before
	 * the mappings, the regions and the enable count.
	 */
	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_ida;
	ret = vugpu_check_bars(pdev);
	if (ret)
		goto err_ida;
	ret = pcim_request_region(pdev, VUGPU_BAR_REGS, VUGPU_DRIVER_NAME);
	if (!ret)
		ret = pcim_request_region(pdev, VUGPU_BAR_VRAM, VUGPU_DRIVER_NAME);
	if (ret)
		goto err_ida;

	/* Only the register file: the MSI-X table/PBA belong to the PCI core. */
	vdev->regs = devm_ioremap(&pdev->dev, pci_resource_start(pdev, VUGPU_BAR_REGS),
				  VUGPU_REGFILE_SIZE);
	if (!vdev->regs) {
		ret = -ENOMEM;
		goto err_ida;
	}
	vdev->vram_bar_start = pci_resource_start(pdev, VUGPU_BAR_VRAM);
	vdev->vram_bar_size = pci_resource_len(pdev, VUGPU_BAR_VRAM);
	if (p2pmem_mb)
		vdev->p2p_size = min_t(resource_size_t, (resource_size_t)p2pmem_mb << 20,
				       vdev->vram_bar_size / 2);
	/* The CPU window: BAR2 below the p2pmem range (which the p2pdma core maps itself). */
	vdev->p2p_off = vdev->vram_bar_size - vdev->p2p_size;
	vdev->vram_bar_len = vdev->p2p_off;
	ret = vugpu_vram_layout(vdev, devmem_mb);
	if (ret)
		goto err_ida;
	vdev->vram = devm_ioremap_wc(&pdev->dev, vdev->vram_bar_start, vdev->vram_bar_len);
	if (!vdev->vram) {
		ret = -ENOMEM;
		goto err_ida;
	}

	ret = vugpu_check_regs(vdev);
	if (ret)
		goto err_ida;
	ret = vugpu_vram_setup(vdev);
	if (ret)
		goto err_ida;

	pci_set_master(pdev);
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		dev_err(&pdev->dev, "no 64-bit DMA: %d\n", ret);
		goto err_clear_master;
	}
	/* A descriptor moves up to 1 GiB: let DMA segments be that long. */
	dma_set_max_seg_size(&pdev->dev, VUGPU_DESC_MAX_LENGTH);

	ret = vugpu_setup_irqs(vdev);
	if (ret)
		goto err_clear_master;

	/*
	 * Engines that do not come up leave the rest of the device usable: the
	 * DMA ioctls then fail with the error (DMA_INFO reports it).
	 */
	vdev->engines_init_err = vugpu_engines_probe(vdev);
	if (vdev->engines_init_err)
		dev_err(&pdev->dev, "DMA engines unusable: %d\n", vdev->engines_init_err);
	ret = vugpu_vram_clients_ready(vdev);
	if (ret)
		goto err_engines;

	pci_set_drvdata(pdev, vdev);
	vdev->misc.minor = MISC_DYNAMIC_MINOR;
	vdev->misc.name = vdev->name;
	vdev->misc.fops = &vugpu_fops;
	vdev->misc.parent = &pdev->dev;
	vdev->misc.mode = 0600;
	ret = misc_register(&vdev->misc);
	if (ret)
		goto err_irqs;

	ret = vugpu_p2pmem_setup(vdev);
	if (ret)
		goto err_misc;

	/* Device MMU, HMM mirror and device memory: the GPU works without them. */
	ret = vugpu_hmm_probe(vdev);
	if (ret)
		dev_err(&pdev->dev, "device MMU / HMM unusable: %d\n", ret);

	dev_info(&pdev->dev,
		 "%s: %04x:%04x (sub %04x:%04x) rev %02x, VERSION %#x, BAR0 %pR, BAR2 %pR, VRAM %llu MiB, %u MSI-X vectors, %u DMA engines\n",
		 vdev->name, pdev->vendor, pdev->device, pdev->subsystem_vendor,
		 pdev->subsystem_device, pdev->revision, vugpu_rd(vdev, VUGPU_REG_VERSION),
		 &pdev->resource[VUGPU_BAR_REGS], &pdev->resource[VUGPU_BAR_VRAM],
		 vdev->vram_size >> 20, vdev->num_vectors, vdev->engine_count);
	return 0;

err_misc:
	misc_deregister(&vdev->misc);
err_irqs:
	pci_set_drvdata(pdev, NULL);
err_engines:
	vugpu_engines_stop(vdev);
	vugpu_teardown_irqs(vdev);
	vugpu_engines_remove(vdev);
err_clear_master:
	pci_clear_master(pdev);
err_ida:
	vugpu_vram_fini(vdev);
	ida_free(&vugpu_ida, vdev->index);
err_free:
	kref_put(&vdev->ref, vugpu_release_device);
	return ret;
}

static void vugpu_remove(struct pci_dev *pdev)
{
	struct vugpu_device *vdev = pci_get_drvdata(pdev);

	/* Mirrors, device memory and the MMU go first, while the engines run. */
	vugpu_hmm_remove(vdev);
	/* No new opens; files already open see ->dead and stop. */
	misc_deregister(&vdev->misc);
	mutex_lock(&vdev->lock);
	vdev->dead = true;
	if (vdev->map_inode)
		unmap_mapping_range(vdev->map_inode->i_mapping, 0, 0, 1);
	mutex_unlock(&vdev->lock);

	/* Engines stop before their interrupts go and before their memory is freed. */
	vugpu_engines_stop(vdev);
	vugpu_teardown_irqs(vdev);
	pci_clear_master(pdev);
	vugpu_engines_remove(vdev);
	/* The p2pmem pages, mappings, regions and enable count are devres: released after this. */
	if (vdev->p2p_size)
		pci_p2pmem_publish(pdev, false);
	vugpu_vram_fini(vdev);
	ida_free(&vugpu_ida, vdev->index);
	pci_set_drvdata(pdev, NULL);
	dev_info(&pdev->dev, "%s removed\n", vdev->name);
	kref_put(&vdev->ref, vugpu_release_device);
}

/* Not const: the module parameters pick the IDs at load time. */
static struct pci_device_id vugpu_pci_ids[] = {
	{ PCI_DEVICE(VUGPU_PCI_VENDOR_ID, VUGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vugpu_pci_ids);

static struct pci_driver vugpu_pci_driver = {
	.name		= VUGPU_DRIVER_NAME,
	.id_table	= vugpu_pci_ids,
	.probe		= vugpu_probe,
	.remove		= vugpu_remove,
	.err_handler	= &vugpu_err_handlers,
};

static int __init vugpu_init(void)
{
	vugpu_pci_ids[0].vendor = vendor;
	vugpu_pci_ids[0].device = device;
	return pci_register_driver(&vugpu_pci_driver);
}

static void __exit vugpu_exit(void)
{
	pci_unregister_driver(&vugpu_pci_driver);
	ida_destroy(&vugpu_ida);
}

module_init(vugpu_init);
module_exit(vugpu_exit);
MODULE_DESCRIPTION("vugpu test driver: registers, MSI-X, VRAM BAR, FLR, DMA copy engines");
MODULE_LICENSE("GPL");
