/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The character-device ABI of the kernel's lib/test_hmm.c (/dev/hmm_dmirrorN),
 * which vugpu implements on the real device (vugpu_hmm.c) so that
 * tools/testing/selftests/mm/hmm-tests runs unmodified against it.  Written
 * from the ABI (lib/test_hmm_uapi.h of 6.12 and 7.3: same struct, ioctl
 * numbers 0x00-0x09, flags and protection bytes); vugpu_hmm.c checks it
 * against the kernel's own header when the build tree has one.
 *
 * Plus vugpu's own ioctls on the same node (numbers 0x40 and up, which
 * test_hmm does not use), for the native MMU tests (guest-tests/user/vugpu-mmu.c).
 */
#ifndef VUGPU_HMM_UAPI_H
#define VUGPU_HMM_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* test_hmm's command: addr/npages/ptr in, cpages/faults out. */
struct vugpu_hmm_dmirror_cmd {
	__u64		addr;
	__u64		ptr;
	__u64		npages;
	__u64		cpages;
	__u64		faults;
};

#define VUGPU_HMM_IOC(nr)	_IOWR('H', (nr), struct vugpu_hmm_dmirror_cmd)
#define VUGPU_HMM_READ			VUGPU_HMM_IOC(0x00)
#define VUGPU_HMM_WRITE			VUGPU_HMM_IOC(0x01)
#define VUGPU_HMM_MIGRATE_TO_DEV	VUGPU_HMM_IOC(0x02)
#define VUGPU_HMM_MIGRATE_TO_SYS	VUGPU_HMM_IOC(0x03)
#define VUGPU_HMM_SNAPSHOT		VUGPU_HMM_IOC(0x04)
#define VUGPU_HMM_EXCLUSIVE		VUGPU_HMM_IOC(0x05)
#define VUGPU_HMM_CHECK_EXCLUSIVE	VUGPU_HMM_IOC(0x06)
#define VUGPU_HMM_RELEASE		VUGPU_HMM_IOC(0x07)
#define VUGPU_HMM_FLAGS			VUGPU_HMM_IOC(0x08)
#define VUGPU_HMM_READ_UNLOCKED		VUGPU_HMM_IOC(0x09)
#define VUGPU_HMM_FLAG_FAIL_ALLOC	(1ULL << 0)

/* SNAPSHOT: one byte per page. */
#define VUGPU_HMM_PROT_ERROR			0xFF
#define VUGPU_HMM_PROT_NONE			0x00
#define VUGPU_HMM_PROT_READ			0x01
#define VUGPU_HMM_PROT_WRITE			0x02
#define VUGPU_HMM_PROT_PMD			0x04
#define VUGPU_HMM_PROT_PUD			0x08
#define VUGPU_HMM_PROT_ZERO			0x10
#define VUGPU_HMM_PROT_DEV_PRIVATE_LOCAL	0x20
#define VUGPU_HMM_PROT_DEV_PRIVATE_REMOTE	0x30
#define VUGPU_HMM_PROT_DEV_COHERENT_LOCAL	0x40
#define VUGPU_HMM_PROT_DEV_COHERENT_REMOTE	0x50

/*
 * test_hmm's own names, unless lib/test_hmm_uapi.h was included first (the
 * ABI check in vugpu_hmm_abi.c does that and compares the two).
 */
#ifndef _LIB_TEST_HMM_UAPI_H
#define hmm_dmirror_cmd			vugpu_hmm_dmirror_cmd
#define HMM_DMIRROR_READ		VUGPU_HMM_READ
#define HMM_DMIRROR_WRITE		VUGPU_HMM_WRITE
#define HMM_DMIRROR_MIGRATE_TO_DEV	VUGPU_HMM_MIGRATE_TO_DEV
#define HMM_DMIRROR_MIGRATE_TO_SYS	VUGPU_HMM_MIGRATE_TO_SYS
#define HMM_DMIRROR_SNAPSHOT		VUGPU_HMM_SNAPSHOT
#define HMM_DMIRROR_EXCLUSIVE		VUGPU_HMM_EXCLUSIVE
#define HMM_DMIRROR_CHECK_EXCLUSIVE	VUGPU_HMM_CHECK_EXCLUSIVE
#define HMM_DMIRROR_RELEASE		VUGPU_HMM_RELEASE
#define HMM_DMIRROR_FLAGS		VUGPU_HMM_FLAGS
#define HMM_DMIRROR_READ_UNLOCKED	VUGPU_HMM_READ_UNLOCKED
#define HMM_DMIRROR_FLAG_FAIL_ALLOC	VUGPU_HMM_FLAG_FAIL_ALLOC
#endif

/**
 * struct vugpu_dmirror_atomic - VUGPU_DMIRROR_ATOMIC: one device ATOMIC
 * (hw-spec §9.5 opcode 5, 64-bit fetch-and-add) on a VA of the mirror.
 * @addr:	(in) 8-byte aligned VA in the mirrored process.
 * @value:	(in) the addend.
 * @old:	(out) the value before the add.
 * @faults:	(out) faults serviced for it.
 * @flags:	(in) VUGPU_DMIRROR_NOFAULT: a fault is not serviced (the
 *		ioctl fails with -EFAULT).
 */
struct vugpu_dmirror_atomic {
	__u64		addr;
	__u64		value;
	__u64		old;
	__u64		faults;
	__u64		flags;
};
#define VUGPU_DMIRROR_NOFAULT		(1ULL << 0)

/**
 * struct vugpu_dmirror_stats - VUGPU_DMIRROR_STATS: MMU statistics of the GPU.
 * Driver counters first, then the device's §9.1 counters.
 */
struct vugpu_dmirror_stats {
	__u64		fault_irqs;	/* FAULT_VECTOR hard-IRQ runs */
	__u64		faults;		/* fault records consumed */
	__u64		faults_serviced;	/* answered with a replay */
	__u64		cancels;	/* answered with a cancel */
	__u64		overflows;	/* FAULT_OVERFLOW: all contexts replayed */
	__u64		invalidations;	/* TLB_INVALIDATE descriptors issued */
	__u64		stray;		/* records without a job: cancelled */
	__u64		mirror_faults;	/* faults of this mirror */
	__u64		mirror_mapped_pages;	/* 4 KiB pages this mirror maps now */
	__u32		ctx;		/* this mirror's context id */
	__u32		ctl_engine;	/* engine reserved for MMU control */
	__u64		hw[7];		/* FAULTS, FAULTS_DROPPED, REPLAYS, CANCELS, TLB_HITS, TLB_MISSES, INVALIDATIONS */
	__u64		service_ns;	/* fault thread: time servicing records (incl. replay) */
	__u64		ctl_runs;	/* MMU control engine submissions */
	__u64		ctl_ns;		/* their total time, submission to fence */
};

#define VUGPU_DMIRROR_ATOMIC		_IOWR('H', 0x40, struct vugpu_dmirror_atomic)
#define VUGPU_DMIRROR_STATS		_IOWR('H', 0x41, struct vugpu_dmirror_stats)

#endif /* VUGPU_HMM_UAPI_H */
