// SPDX-License-Identifier: GPL-2.0
/*
 * Build-time check: vugpu_hmm_uapi.h (the ABI /dev/hmm_dmirrorN speaks) must
 * match the kernel's lib/test_hmm_uapi.h, which hmm-tests is built with.
 * Kbuild compiles this only when the kernel tree has that header; it holds
 * no code.
 */
#include <linux/build_bug.h>
#include <linux/stddef.h>

#include VUGPU_TEST_HMM_UAPI	/* the kernel's lib/test_hmm_uapi.h */
#include "vugpu_hmm_uapi.h"

#define VUGPU_SAME_FIELD(f) \
	static_assert(offsetof(struct hmm_dmirror_cmd, f) == \
		      offsetof(struct vugpu_hmm_dmirror_cmd, f) && \
		      sizeof(((struct hmm_dmirror_cmd *)0)->f) == \
		      sizeof(((struct vugpu_hmm_dmirror_cmd *)0)->f))

static_assert(sizeof(struct hmm_dmirror_cmd) == sizeof(struct vugpu_hmm_dmirror_cmd));
VUGPU_SAME_FIELD(addr);
VUGPU_SAME_FIELD(ptr);
VUGPU_SAME_FIELD(npages);
VUGPU_SAME_FIELD(cpages);
VUGPU_SAME_FIELD(faults);

static_assert(HMM_DMIRROR_READ == VUGPU_HMM_READ);
static_assert(HMM_DMIRROR_WRITE == VUGPU_HMM_WRITE);
static_assert(HMM_DMIRROR_MIGRATE_TO_DEV == VUGPU_HMM_MIGRATE_TO_DEV);
static_assert(HMM_DMIRROR_MIGRATE_TO_SYS == VUGPU_HMM_MIGRATE_TO_SYS);
static_assert(HMM_DMIRROR_SNAPSHOT == VUGPU_HMM_SNAPSHOT);
static_assert(HMM_DMIRROR_EXCLUSIVE == VUGPU_HMM_EXCLUSIVE);
static_assert(HMM_DMIRROR_CHECK_EXCLUSIVE == VUGPU_HMM_CHECK_EXCLUSIVE);
static_assert(HMM_DMIRROR_RELEASE == VUGPU_HMM_RELEASE);
#ifdef HMM_DMIRROR_FLAGS		/* 6.12 has neither FLAGS nor READ_UNLOCKED */
static_assert(HMM_DMIRROR_FLAGS == VUGPU_HMM_FLAGS);
static_assert(HMM_DMIRROR_FLAG_FAIL_ALLOC == VUGPU_HMM_FLAG_FAIL_ALLOC);
#endif
#ifdef HMM_DMIRROR_READ_UNLOCKED
static_assert(HMM_DMIRROR_READ_UNLOCKED == VUGPU_HMM_READ_UNLOCKED);
#endif

static_assert(HMM_DMIRROR_PROT_ERROR == VUGPU_HMM_PROT_ERROR);
static_assert(HMM_DMIRROR_PROT_NONE == VUGPU_HMM_PROT_NONE);
static_assert(HMM_DMIRROR_PROT_READ == VUGPU_HMM_PROT_READ);
static_assert(HMM_DMIRROR_PROT_WRITE == VUGPU_HMM_PROT_WRITE);
static_assert(HMM_DMIRROR_PROT_PMD == VUGPU_HMM_PROT_PMD);
static_assert(HMM_DMIRROR_PROT_PUD == VUGPU_HMM_PROT_PUD);
static_assert(HMM_DMIRROR_PROT_ZERO == VUGPU_HMM_PROT_ZERO);
static_assert(HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL == VUGPU_HMM_PROT_DEV_PRIVATE_LOCAL);
static_assert(HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE == VUGPU_HMM_PROT_DEV_PRIVATE_REMOTE);
static_assert(HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL == VUGPU_HMM_PROT_DEV_COHERENT_LOCAL);
static_assert(HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE == VUGPU_HMM_PROT_DEV_COHERENT_REMOTE);
