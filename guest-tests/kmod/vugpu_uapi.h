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
 * mmap(2) of /dev/vugpuN maps BAR2 (VRAM, write-combined); the file offset
 * is the byte offset into the BAR and must be page aligned.
 */

#endif /* VUGPU_UAPI_H */
