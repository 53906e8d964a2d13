// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-mmu - device MMU tests (docs/hw-spec.md §9) through the driver's
 * HMM mirror, on the kernel's kselftest harness (vugpu_harness.h): fixture
 * "mmu", each test in a process of its own.
 *
 * Needs vugpu.ko loaded with dmirror=1 on a GPU with a device MMU: each case
 * opens /dev/hmm_dmirror0 (one MMU context mirroring this process) and makes
 * the device touch this process's memory through it: READ / WRITE are COPY
 * descriptors on device-virtual addresses (lib/test_hmm_uapi.h's ABI), the
 * driver's VUGPU_DMIRROR_ATOMIC runs a device fetch-and-add on a VA, and
 * VUGPU_DMIRROR_STATS returns the driver's and the device's MMU counters.
 *
 * Each case fails when the device or the driver gets its part wrong, in
 * particular with the server's fault injections:
 *   --inject mmu-stale-tlb          stale_tlb_after_munmap, stale_tlb_after_remap
 *   --inject mmu-ignore-atomic-perm atomic_needs_exclusive
 *   --inject mmu-no-fault-irq       every faulting case times out; fault_irq
 *                                   checks that faults arrived by interrupt
 *
 * The harness's -t NAME runs one test; --expect-overflow (with vugpu.ko
 * fault_ring_slots=1) makes concurrent_contexts require dropped fault records
 * and their recovery.
 *
 * Usage: vugpu-mmu [--dev N] [--expect-overflow] [HARNESS OPTIONS]
 * Exit status: 0 when no test failed, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"
#include "vugpu_hmm_uapi.h"

#define NPAGES		64
#define RATE_SECONDS	2

struct mmu_ctx {
	bool expect_overflow;	/* --expect-overflow: loaded with fault_ring_slots=1 */
	char node[64];
	char vugpu_node[64];
	long page;
};

static const char *err_str(int ret)
{
	return strerror(ret < 0 ? -ret : ret);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One test_hmm command: 0 or -errno. */
static int dmirror_cmd(int fd, unsigned long req, void *addr, void *buf, uint64_t npages,
		       struct hmm_dmirror_cmd *out)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)addr,
		.ptr = (uintptr_t)buf,
		.npages = npages,
	};
	int ret;

	do {
		ret = ioctl(fd, req, &cmd);
	} while (ret < 0 && errno == EINTR);
	if (out)
		*out = cmd;
	return ret < 0 ? -errno : 0;
}

static int dmirror_stats(int fd, struct vugpu_dmirror_stats *st)
{
	memset(st, 0, sizeof(*st));
	return ioctl(fd, VUGPU_DMIRROR_STATS, st) < 0 ? -errno : 0;
}

static int dmirror_atomic(int fd, void *addr, uint64_t value, uint64_t flags, uint64_t *old,
			  uint64_t *faults)
{
	struct vugpu_dmirror_atomic a = {
		.addr = (uintptr_t)addr, .value = value, .flags = flags,
	};
	int ret = ioctl(fd, VUGPU_DMIRROR_ATOMIC, &a) < 0 ? -errno : 0;

	if (old)
		*old = a.old;
	if (faults)
		*faults = a.faults;
	return ret;
}

static int open_mirror(struct __test_metadata *_metadata, struct mmu_ctx *c)
{
	int fd = open(c->node, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		FAIL_TEST("open %s: %s", c->node, strerror(errno));
	return fd;
}

static void *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void fill(void *p, size_t len, uint32_t seed)
{
	uint32_t *w = p;
	size_t i;

	for (i = 0; i < len / 4; i++)
		w[i] = seed * 2654435761u + (uint32_t)i;
}

static size_t first_diff(const void *a, const void *b, size_t len)
{
	const unsigned char *x = a, *y = b;
	size_t i;

	for (i = 0; i < len; i++)
		if (x[i] != y[i])
			return i;
	return len;
}

/* The device reads N pages: right data, one fault, N pages; again: no fault. */
static void read_costs_one_fault(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = NPAGES * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 1);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, NPAGES, &out);
	EXPECT_THAT(ret == 0, "READ %d pages: %s", NPAGES, err_str(ret));
	if (ret)
		goto out;
	EXPECT_THAT(out.cpages == NPAGES, "cpages %" PRIu64 ", expected %d", (uint64_t)out.cpages,
		    NPAGES);
	EXPECT_THAT(out.faults == 1, "faults %" PRIu64 " for one READ of %d unmapped pages, expected 1",
		    (uint64_t)out.faults, NPAGES);
	EXPECT_THAT(first_diff(buf, mirror, len) == len, "data differs at byte %zu",
		    first_diff(buf, mirror, len));
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, NPAGES, &out);
	EXPECT_THAT(ret == 0 && out.faults == 0,
		    "second READ: %s, faults %" PRIu64 " (expected 0: the pages stay mapped)",
		    err_str(ret), (uint64_t)out.faults);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/* The device writes N pages; the CPU sees them; one fault. */
static void write_costs_one_fault(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = NPAGES * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *src = malloc(len);
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !src)
		goto out;
	fill(src, len, 2);
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, src, NPAGES, &out);
	EXPECT_THAT(ret == 0, "WRITE: %s", err_str(ret));
	if (ret)
		goto out;
	EXPECT_THAT(out.faults == 1 && out.cpages == NPAGES,
		    "faults %" PRIu64 " cpages %" PRIu64 ", expected 1 and %d", (uint64_t)out.faults,
		    (uint64_t)out.cpages, NPAGES);
	EXPECT_THAT(first_diff(buf, src, len) == len, "CPU sees different data at byte %zu",
		    first_diff(buf, src, len));
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(src);
}

/*
 * Faults serviced per second: a one-page READ after MADV_DONTNEED (the
 * notifier unmaps the page and invalidates the TLB) costs exactly one fault.
 */
static void faults_per_second(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct vugpu_dmirror_stats before, after;
	uint64_t n = 0, faults = 0;
	char *buf = map_anon(c->page, PROT_READ | PROT_WRITE), *mirror = malloc(c->page);
	double t0, dt;
	int fd = open_mirror(_metadata, c), ret = 0;

	if (fd < 0 || !buf || !mirror)
		goto out;
	ret = dmirror_stats(fd, &before);
	ASSERT_THAT(ret == 0, "STATS: %s", err_str(ret));
	t0 = now_s();
	do {
		struct hmm_dmirror_cmd out;

		buf[0] = (char)n;
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 1, &out);
		if (ret)
			break;
		faults += out.faults;
		if (mirror[0] != (char)n) {
			ret = -EIO;
			break;
		}
		n++;
		madvise(buf, c->page, MADV_DONTNEED);
	} while ((dt = now_s() - t0) < RATE_SECONDS);
	dt = now_s() - t0;
	EXPECT_THAT(ret == 0, "READ %" PRIu64 ": %s", n, err_str(ret));
	EXPECT_THAT(faults == n, "%" PRIu64 " faults for %" PRIu64 " one-page READs after MADV_DONTNEED",
		    faults, n);
	ret = dmirror_stats(fd, &after);
	EXPECT_THAT(ret == 0, "STATS: %s", err_str(ret));
	EXPECT_THAT(after.faults_serviced - before.faults_serviced >= n,
		    "driver serviced %" PRIu64 " faults for %" PRIu64 " READs",
		    (uint64_t)(after.faults_serviced - before.faults_serviced), n);
	EXPECT_THAT(after.hw[0] - before.hw[0] >= n,
		    "device FAULTS counter moved by %" PRIu64 " for %" PRIu64 " faults",
		    (uint64_t)(after.hw[0] - before.hw[0]), n);
	diag("faults serviced per second: %.0f (%" PRIu64 " faults in %.2f s, one-page READ + MADV_DONTNEED each; device invalidations %" PRIu64 ")",
		  n / dt, n, dt, (uint64_t)(after.hw[6] - before.hw[6]));
	if (n && after.ctl_runs > before.ctl_runs)
		diag("per fault: %.0f us in the fault thread; MMU control engine: %.1f submissions, %.0f us each",
			  (after.service_ns - before.service_ns) / 1e3 / n,
			  (double)(after.ctl_runs - before.ctl_runs) / n,
			  (after.ctl_ns - before.ctl_ns) / 1e3 / (after.ctl_runs - before.ctl_runs));
	EXPECT_THAT(n >= 10, "only %" PRIu64 " faults in %.1f s", n, dt);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, c->page);
	free(mirror);
}

/* A fault the driver cannot service is cancelled: -EFAULT; the engine works after it. */
static void cancel_prot_none(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats before, after;
	struct hmm_dmirror_cmd out;
	void *none = map_anon(len, PROT_NONE), *good = map_anon(len, PROT_READ | PROT_WRITE);
	void *mirror = malloc(len);
	int fd = open_mirror(_metadata, c), ret, i;

	if (fd < 0 || !none || !good || !mirror)
		goto out;
	ASSERT_THAT(dmirror_stats(fd, &before) == 0, "STATS failed");
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, none, mirror, 4, NULL);
	EXPECT_THAT(ret == -EFAULT, "READ of PROT_NONE memory: %s, expected EFAULT", err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, none, mirror, 4, NULL);
	EXPECT_THAT(ret == -EFAULT, "WRITE to PROT_NONE memory: %s, expected EFAULT", err_str(ret));
	ASSERT_THAT(dmirror_stats(fd, &after) == 0, "STATS failed");
	EXPECT_THAT(after.cancels - before.cancels >= 2 && after.hw[3] - before.hw[3] >= 2,
		    "cancels: driver %" PRIu64 ", device %" PRIu64 ", expected >= 2 each",
		    (uint64_t)(after.cancels - before.cancels), (uint64_t)(after.hw[3] - before.hw[3]));
	/* The engines stopped with TRANSLATION were reset: the next jobs work. */
	for (i = 0; i < 4; i++) {
		fill(good, len, 10 + i);
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, good, mirror, 4, &out);
		EXPECT_THAT(ret == 0 && first_diff(good, mirror, len) == len,
			    "READ %d after the cancel: %s", i, err_str(ret));
	}
out:
	if (fd >= 0)
		close(fd);
	if (none)
		munmap(none, len);
	if (good)
		munmap(good, len);
	free(mirror);
}

/* After munmap the device must not reach the old page: the READ fails. */
static void stale_tlb_after_munmap(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats before, after;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 3);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	ASSERT_THAT(ret == 0, "READ: %s", err_str(ret));
	ASSERT_THAT(dmirror_stats(fd, &before) == 0, "STATS failed");
	munmap(buf, len);
	ASSERT_THAT(dmirror_stats(fd, &after) == 0, "STATS failed");
	EXPECT_THAT(after.hw[6] > before.hw[6],
		    "munmap of mapped pages issued no TLB_INVALIDATE (device counter %" PRIu64 ")",
		    (uint64_t)after.hw[6]);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	EXPECT_THAT(ret == -EFAULT,
		    "READ after munmap: %s, expected EFAULT (the device used a stale translation?)",
		    err_str(ret));
	buf = NULL;
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/* munmap + mmap at the same VA: the device reads the new pages, not the old. */
static void stale_tlb_after_remap(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len), *p;
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 4);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	ASSERT_THAT(ret == 0, "READ: %s", err_str(ret));
	/* The old pages go back to the allocator; new ones take the VA. */
	p = mmap(buf, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT_THAT(p == buf, "mmap MAP_FIXED: %s", strerror(errno));
	fill(buf, len, 5);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	EXPECT_THAT(ret == 0, "READ after remap: %s", err_str(ret));
	EXPECT_THAT(!ret && first_diff(buf, mirror, len) == len,
		    "device read old data after remap (differs at byte %zu)", first_diff(buf, mirror, len));
	EXPECT_THAT(!ret && out.faults == 1, "faults %" PRIu64 " after remap, expected 1",
		    (uint64_t)out.faults);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/*
 * Device atomics on system memory need the PTE ATOMIC bit: a page the
 * device may read and write is not enough; after EXCLUSIVE it works, and a
 * CPU access takes the page back.
 */
static void atomic_needs_exclusive(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	uint64_t *buf = map_anon(c->page, PROT_READ | PROT_WRITE), old = 0, faults = 0, v;
	struct hmm_dmirror_cmd out;
	void *mirror = malloc(c->page);
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	buf[0] = 100;
	/* Map the page readable and writable for the device. */
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, buf, 1, NULL);
	ASSERT_THAT(ret == 0, "WRITE: %s", err_str(ret));
	ret = dmirror_atomic(fd, buf, 5, VUGPU_DMIRROR_NOFAULT, &old, NULL);
	EXPECT_THAT(ret == -EFAULT,
		    "device ATOMIC on a read/write SYS page without ATOMIC permission: %s, expected EFAULT",
		    err_str(ret));
	EXPECT_THAT(buf[0] == 100, "value %" PRIu64 " after a refused atomic, expected 100", buf[0]);
	ret = dmirror_cmd(fd, HMM_DMIRROR_EXCLUSIVE, buf, mirror, 1, &out);
	ASSERT_THAT(ret == 0, "EXCLUSIVE: %s", err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, buf, NULL, 1, NULL);
	EXPECT_THAT(ret == -EPERM, "CHECK_EXCLUSIVE right after EXCLUSIVE: %s, expected EPERM",
		    err_str(ret));
	ret = dmirror_atomic(fd, buf, 5, VUGPU_DMIRROR_NOFAULT, &old, NULL);
	EXPECT_THAT(ret == 0 && old == 100, "ATOMIC after EXCLUSIVE: %s, old %" PRIu64,
		    err_str(ret), old);
	/* The CPU access revokes the exclusive entry and sees the device's add. */
	v = buf[0];
	EXPECT_THAT(v == 105, "CPU reads %" PRIu64 " after the device added 5 to 100", v);
	ret = dmirror_cmd(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, buf, NULL, 1, NULL);
	EXPECT_THAT(ret == 0, "CHECK_EXCLUSIVE after a CPU access: %s", err_str(ret));
	/* Faulting atomic: the driver makes the page exclusive itself. */
	ret = dmirror_atomic(fd, buf, 7, 0, &old, &faults);
	EXPECT_THAT(ret == 0 && old == 105 && faults >= 1,
		    "ATOMIC with fault service: %s, old %" PRIu64 ", faults %" PRIu64, err_str(ret), old,
		    faults);
	v = buf[0];
	EXPECT_THAT(v == 112, "CPU reads %" PRIu64 ", expected 112", v);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, c->page);
	free(mirror);
}

/* Faults reach the driver by the fault vector's interrupt. */
static void fault_irq(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 8 * c->page;
	struct vugpu_dmirror_stats before, after;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	double t0, dt;
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 6);
	ASSERT_THAT(dmirror_stats(fd, &before) == 0, "STATS failed");
	t0 = now_s();
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 8, &out);
	dt = now_s() - t0;
	EXPECT_THAT(ret == 0, "READ: %s after %.2f s (no fault interrupt?)", err_str(ret), dt);
	ASSERT_THAT(dmirror_stats(fd, &after) == 0, "STATS failed");
	EXPECT_THAT(after.fault_irqs > before.fault_irqs,
		    "fault vector interrupts %" PRIu64 " -> %" PRIu64 " across a faulting READ",
		    (uint64_t)before.fault_irqs, (uint64_t)after.fault_irqs);
	EXPECT_THAT(dt < 1.0, "faulting READ took %.2f s", dt);
	diag("faulting READ of 8 pages: %.0f us, ctx %u, MMU control engine %u",
		  dt * 1e6, after.ctx, after.ctl_engine);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/* A write to read-only memory: the fault is answered -EPERM (test_hmm's code). */
static void write_readonly_eperm(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 2 * c->page;
	void *buf = map_anon(len, PROT_READ), *src = calloc(1, len), *mirror = malloc(len);
	struct hmm_dmirror_cmd out;
	int fd = open_mirror(_metadata, c), ret;

	if (fd < 0 || !buf || !src || !mirror)
		goto out;
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 2, &out);
	EXPECT_THAT(ret == 0, "READ of read-only memory: %s", err_str(ret));
	memset(src, 0x5a, len);
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, src, 2, NULL);
	EXPECT_THAT(ret == -EPERM, "WRITE to read-only memory: %s, expected EPERM", err_str(ret));
	EXPECT_THAT(((unsigned char *)buf)[0] == 0, "read-only page changed by the device");
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(src);
	free(mirror);
}

/* Two mirrors are two contexts: each faults on its own, both see the data. */
static void two_contexts(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats s1, s2;
	struct hmm_dmirror_cmd o1, o2;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *m1 = malloc(len), *m2 = malloc(len);
	int fd1 = open_mirror(_metadata, c), fd2 = open_mirror(_metadata, c), r1, r2;

	if (fd1 < 0 || fd2 < 0 || !buf || !m1 || !m2)
		goto out;
	fill(buf, len, 7);
	r1 = dmirror_cmd(fd1, HMM_DMIRROR_READ, buf, m1, 4, &o1);
	r2 = dmirror_cmd(fd2, HMM_DMIRROR_READ, buf, m2, 4, &o2);
	EXPECT_THAT(!r1 && !r2 && o1.faults == 1 && o2.faults == 1,
		    "READs: %s / %s, faults %" PRIu64 " / %" PRIu64 " (expected 1 each)", err_str(r1),
		    err_str(r2), (uint64_t)o1.faults, (uint64_t)o2.faults);
	EXPECT_THAT(first_diff(buf, m1, len) == len && first_diff(buf, m2, len) == len,
		    "data differs");
	ASSERT_THAT(!dmirror_stats(fd1, &s1) && !dmirror_stats(fd2, &s2), "STATS failed");
	EXPECT_THAT(s1.ctx != s2.ctx && s1.ctx && s2.ctx, "contexts %u and %u", s1.ctx, s2.ctx);
out:
	if (fd1 >= 0)
		close(fd1);
	if (fd2 >= 0)
		close(fd2);
	if (buf)
		munmap(buf, len);
	free(m1);
	free(m2);
}

/* After a reset the driver programs the MMU again: faults are serviced as before. */
static void works_after_reset(struct __test_metadata *_metadata, struct mmu_ctx *c, unsigned long req,
			      const char *what)
{
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	struct vugpu_regs regs;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(_metadata, c), vfd = -1, ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	vfd = open(c->vugpu_node, O_RDWR | O_CLOEXEC);
	ASSERT_THAT(vfd >= 0, "open %s: %s", c->vugpu_node, strerror(errno));
	fill(buf, len, 8);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	ASSERT_THAT(ret == 0, "READ before %s: %s", what, err_str(ret));
	ret = vugpu_reset(vfd, req, &regs, NULL);
	ASSERT_THAT(ret == 0, "%s: %s", what, err_str(ret));
	/* Mapped before the reset (the page tables survive it) and new pages. */
	fill(buf, len, 9);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	EXPECT_THAT(ret == 0 && first_diff(buf, mirror, len) == len, "READ after %s: %s", what,
		    err_str(ret));
	madvise(buf, len, MADV_DONTNEED);
	fill(buf, len, 10);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	EXPECT_THAT(ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
		    "faulting READ after %s: %s, faults %" PRIu64, what, err_str(ret),
		    (uint64_t)out.faults);
out:
	if (vfd >= 0)
		close(vfd);
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/*
 * Latency of the device path without faults: one-page READs of a mapped
 * page, and the bandwidth of a 2 MiB READ (printed; the data and the fault
 * count are checked).
 */
static void mapped_read_latency(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t big = 2UL << 20;
	struct hmm_dmirror_cmd out;
	char *buf = map_anon(big, PROT_READ | PROT_WRITE), *mirror = malloc(big);
	uint64_t faults = 0;
	double t0, one, bw;
	int fd = open_mirror(_metadata, c), ret, i, n = 200;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, big, 11);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, big / c->page, &out);
	ASSERT_THAT(ret == 0 && first_diff(buf, mirror, big) == big, "READ 2 MiB: %s",
		    err_str(ret));
	t0 = now_s();
	for (i = 0; i < n; i++) {
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 1, &out);
		if (ret)
			break;
		faults += out.faults;
	}
	one = (now_s() - t0) / n;
	EXPECT_THAT(ret == 0 && faults == 0, "mapped one-page READs: %s, %" PRIu64 " faults",
		    err_str(ret), faults);
	t0 = now_s();
	for (i = 0; i < 5; i++) {
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, big / c->page, &out);
		if (ret || out.faults)
			break;
	}
	bw = 5 * big / (now_s() - t0) / 1e6;
	EXPECT_THAT(ret == 0 && out.faults == 0 && first_diff(buf, mirror, big) == big,
		    "mapped 2 MiB READs: %s, faults %" PRIu64, err_str(ret), (uint64_t)out.faults);
	diag("mapped one-page READ: %.0f us; mapped 2 MiB READ: %.1f MB/s", one * 1e6, bw);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, big);
	free(mirror);
}

static void works_after_flr(struct __test_metadata *_metadata, void *ctx)
{
	works_after_reset(_metadata, ctx, VUGPU_IOCTL_FLR, "FLR");
}

static void works_after_soft_reset(struct __test_metadata *_metadata, void *ctx)
{
	works_after_reset(_metadata, ctx, VUGPU_IOCTL_SOFT_RESET, "SOFT_RESET");
}

struct reset_arg {
	struct mmu_ctx *c;
	int fd;
	volatile int stop;
	uint64_t ok, failed, bad;
	int last_err;
};

static void *reset_reader(void *p)
{
	struct reset_arg *a = p;
	size_t len = 4 * a->c->page;
	char *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	uint32_t i = 0;

	while (buf && mirror && !a->stop) {
		int ret;

		fill(buf, len, 500 + i++);
		ret = dmirror_cmd(a->fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
		if (ret) {
			a->failed++;
			a->last_err = ret;
		} else if (first_diff(buf, mirror, len) != len) {
			a->bad++;
		} else {
			a->ok++;
		}
		madvise(buf, len, MADV_DONTNEED);
	}
	if (buf)
		munmap(buf, len);
	free(mirror);
	return NULL;
}

/*
 * FLRs while another thread keeps faulting: the resets finish, jobs caught
 * by a reset fail (never with wrong data), and the MMU works after them.
 */
static void reset_while_faulting(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct reset_arg a = { .c = c };
	struct vugpu_regs regs;
	pthread_t th;
	double t0;
	int vfd, i, ret, resets = 0;

	a.fd = open_mirror(_metadata, c);
	if (a.fd < 0)
		return;
	vfd = open(c->vugpu_node, O_RDWR | O_CLOEXEC);
	if (vfd < 0) {
		FAIL_TEST("open %s: %s", c->vugpu_node, strerror(errno));
		close(a.fd);
		return;
	}
	if (pthread_create(&th, NULL, reset_reader, &a)) {
		FAIL_TEST("pthread_create failed");
		goto out;
	}
	t0 = now_s();
	for (i = 0; i < 3; i++) {
		usleep(300000);
		ret = vugpu_reset(vfd, i & 1 ? VUGPU_IOCTL_SOFT_RESET : VUGPU_IOCTL_FLR, &regs, NULL);
		EXPECT_THAT(ret == 0, "reset %d: %s", i, err_str(ret));
		resets += !ret;
	}
	usleep(300000);
	a.stop = 1;
	pthread_join(th, NULL);
	EXPECT_THAT(a.bad == 0, "%" PRIu64 " READs returned wrong data", a.bad);
	EXPECT_THAT(a.ok > 0, "no READ succeeded across %d resets (last error %s)", resets,
		    err_str(a.last_err));
	diag("%d resets in %.1f s while faulting: %" PRIu64 " READs ok, %" PRIu64 " failed (last: %s)",
		  resets, now_s() - t0, a.ok, a.failed, a.failed ? err_str(a.last_err) : "-");
	/* Afterwards everything works again. */
	a.stop = 0;
	a.ok = a.failed = 0;
	{
		size_t len = 4 * c->page;
		char *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
		struct hmm_dmirror_cmd out;

		if (buf && mirror) {
			fill(buf, len, 77);
			ret = dmirror_cmd(a.fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
			EXPECT_THAT(ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
				    "READ after the resets: %s, faults %" PRIu64, err_str(ret),
				    (uint64_t)out.faults);
		}
		if (buf)
			munmap(buf, len);
		free(mirror);
	}
out:
	close(vfd);
	close(a.fd);
}

/* Wait up to 5 s for @path to exist (or not). */
static bool wait_path(const char *path, bool exist)
{
	int i;

	for (i = 0; i < 500; i++) {
		if ((access(path, F_OK) == 0) == exist)
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * Unbinding the GPU while a mirror is open: the mirror's ioctls fail with
 * ENODEV (its context and page tables are gone), closing it is fine, and
 * after a rebind a new mirror works.
 */
static void unbind_with_mirror_open(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	char link[256], bdf[256], *slash;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	ssize_t n;
	int fd = open_mirror(_metadata, c), fd2 = -1, ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	n = readlink("/sys/class/misc/hmm_dmirror0/device", link, sizeof(link) - 1);
	ASSERT_THAT(n > 0, "readlink /sys/class/misc/hmm_dmirror0/device: %s", strerror(errno));
	link[n] = 0;
	slash = strrchr(link, '/');
	snprintf(bdf, sizeof(bdf), "%s", slash ? slash + 1 : link);
	fill(buf, len, 12);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	ASSERT_THAT(ret == 0, "READ: %s", err_str(ret));
	ret = vugpu_write_file(VUGPU_SYSFS_DRIVER "/unbind", bdf);
	ASSERT_THAT(ret == 0, "unbind %s: %s", bdf, err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	EXPECT_THAT(ret == -ENODEV, "READ on a mirror of an unbound GPU: %s, expected ENODEV",
		    err_str(ret));
	/* The CPU side keeps working: the notifier is gone, not the memory. */
	munmap(buf, len);
	buf = map_anon(len, PROT_READ | PROT_WRITE);
	close(fd);
	fd = -1;
	ret = vugpu_write_file(VUGPU_SYSFS_DRIVER "/bind", bdf);
	ASSERT_THAT(ret == 0, "bind %s: %s", bdf, err_str(ret));
	ASSERT_THAT(wait_path(c->node, true), "%s did not come back", c->node);
	fd2 = open_mirror(_metadata, c);
	ASSERT_THAT(fd2 >= 0 && buf, "reopen");
	fill(buf, len, 13);
	ret = dmirror_cmd(fd2, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	EXPECT_THAT(ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
		    "READ after rebind: %s, faults %" PRIu64, err_str(ret), (uint64_t)out.faults);
out:
	if (fd >= 0)
		close(fd);
	if (fd2 >= 0)
		close(fd2);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

#define CONC_THREADS	3
#define CONC_ROUNDS	40

struct conc_arg {
	struct mmu_ctx *c;
	int fd, ret, bad;
	uint64_t faults, rounds;
};

/* One context per thread: READs of fresh pages, so the engines fault together. */
static void *conc_thread(void *p)
{
	struct conc_arg *a = p;
	size_t len = 8 * a->c->page;
	char *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int i;

	if (!buf || !mirror) {
		a->ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < CONC_ROUNDS; i++) {
		struct hmm_dmirror_cmd out;

		fill(buf, len, 100 + i + 1000 * a->fd);
		a->ret = dmirror_cmd(a->fd, HMM_DMIRROR_READ, buf, mirror, 8, &out);
		if (a->ret)
			break;
		a->faults += out.faults;
		a->bad += first_diff(buf, mirror, len) != len;
		a->rounds++;
		madvise(buf, len, MADV_DONTNEED);
	}
out:
	if (buf)
		munmap(buf, len);
	free(mirror);
	return NULL;
}

/*
 * Several contexts fault at the same time on several engines: every fault
 * is serviced for its own context (and, with a fault ring smaller than the
 * engines, dropped records are recovered by replaying all contexts).
 */
static void concurrent_contexts(struct __test_metadata *_metadata, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct conc_arg a[CONC_THREADS] = { 0 };
	struct vugpu_dmirror_stats before, after;
	pthread_t th[CONC_THREADS];
	int i, started = 0;

	for (i = 0; i < CONC_THREADS; i++) {
		a[i].c = c;
		a[i].fd = open_mirror(_metadata, c);
		if (a[i].fd < 0)
			goto out;
	}
	ASSERT_THAT(dmirror_stats(a[0].fd, &before) == 0, "STATS failed");
	for (i = 0; i < CONC_THREADS; i++, started++)
		if (pthread_create(&th[i], NULL, conc_thread, &a[i]))
			break;
	for (i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	EXPECT_THAT(started == CONC_THREADS, "started %d threads", started);
	for (i = 0; i < started; i++) {
		EXPECT_THAT(a[i].ret == 0 && a[i].rounds == CONC_ROUNDS,
			    "thread %d: %s after %" PRIu64 " rounds", i, err_str(a[i].ret), a[i].rounds);
		EXPECT_THAT(a[i].bad == 0, "thread %d: %d READs returned wrong data", i, a[i].bad);
		EXPECT_THAT(a[i].faults >= a[i].rounds,
			    "thread %d: %" PRIu64 " faults in %" PRIu64 " READs of fresh pages", i,
			    a[i].faults, a[i].rounds);
	}
	ASSERT_THAT(dmirror_stats(a[0].fd, &after) == 0, "STATS failed");
	EXPECT_THAT(!c->expect_overflow ||
		    (after.hw[1] > before.hw[1] && after.overflows > before.overflows),
		    "a 1-record fault ring and %d faulting contexts: %" PRIu64 " records dropped, %" PRIu64 " overflow recoveries",
		    CONC_THREADS, (uint64_t)(after.hw[1] - before.hw[1]),
		    (uint64_t)(after.overflows - before.overflows));
	diag("%d contexts x %d faulting READs: device faults %" PRIu64 ", dropped %" PRIu64 ", driver overflow recoveries %" PRIu64 ", stray %" PRIu64,
			  CONC_THREADS, CONC_ROUNDS, (uint64_t)(after.hw[0] - before.hw[0]),
			  (uint64_t)(after.hw[1] - before.hw[1]),
			  (uint64_t)(after.overflows - before.overflows),
			  (uint64_t)(after.stray - before.stray));
out:
	for (i = 0; i < CONC_THREADS; i++)
		if (a[i].fd > 0)
			close(a[i].fd);
}

/* The options, filled in by main() before the tests run. */
static struct mmu_ctx opts;

/* Each case opens the mirrors it needs itself. */
FIXTURE(mmu) {
	struct mmu_ctx c;
};

FIXTURE_SETUP(mmu)
{
	self->c = opts;
}

FIXTURE_TEARDOWN(mmu)
{
}

/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 300 s boot timeout, so a hung fault costs its
 * own result only; all 16 tests took 4.6 s together here (TCG).
 */
#define MMU_TIMEOUT 60

/* The tests, in this order. */
#define MMU_TEST(name)								\
	TEST_F_TIMEOUT(mmu, name, MMU_TIMEOUT)					\
	{									\
		name(_metadata, &self->c);					\
	}

MMU_TEST(read_costs_one_fault)
MMU_TEST(write_costs_one_fault)
MMU_TEST(write_readonly_eperm)
MMU_TEST(fault_irq)
MMU_TEST(faults_per_second)
MMU_TEST(mapped_read_latency)
MMU_TEST(cancel_prot_none)
MMU_TEST(stale_tlb_after_munmap)
MMU_TEST(stale_tlb_after_remap)
MMU_TEST(atomic_needs_exclusive)
MMU_TEST(two_contexts)
MMU_TEST(concurrent_contexts)
MMU_TEST(works_after_flr)
MMU_TEST(works_after_soft_reset)
MMU_TEST(reset_while_faulting)
MMU_TEST(unbind_with_mirror_open)

static uint64_t opt_dev;

static int option(const char *opt, const char *val)
{
	if (!strcmp(opt, "--expect-overflow")) {
		opts.expect_overflow = true;
		return 1;
	}
	if (!strcmp(opt, "--dev") && val && !vugpu_parse_u64(val, &opt_dev) && opt_dev <= 15)
		return 2;
	return 0;
}

int main(int argc, char **argv)
{
	char **rest;
	int n = vugpu_harness_opts(argc, argv, option, "[--dev N] [--expect-overflow]", &rest);

	if (n < 0)
		return 2;
	opts.page = sysconf(_SC_PAGESIZE);
	snprintf(opts.node, sizeof(opts.node), "/dev/hmm_dmirror%" PRIu64, opt_dev);
	snprintf(opts.vugpu_node, sizeof(opts.vugpu_node), "/dev/vugpu%" PRIu64, opt_dev);
	return test_harness_run(n, rest);
}
