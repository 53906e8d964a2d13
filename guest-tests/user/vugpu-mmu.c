// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-mmu - device MMU tests (docs/hw-spec.md §9) through the driver's
 * HMM mirror, as KTAP.
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
 * --case NAME runs one case; --expect-overflow (with vugpu.ko fault_ring_slots=1)
 * makes concurrent_contexts require dropped fault records and their recovery.
 *
 * Usage: vugpu-mmu [--dev N] [--first N] [--no-header] [--count] [--list]
 *                  [--case NAME] [--expect-overflow]
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

#include "ktap.h"
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

static int open_mirror(struct ktap_test *t, struct mmu_ctx *c)
{
	int fd = open(c->node, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		ktap_fail_at(t, KTAP_FILE, __LINE__, "open %s: %s", c->node, strerror(errno));
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
static void read_costs_one_fault(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = NPAGES * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 1);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, NPAGES, &out);
	KTAP_EXPECT(t, ret == 0, "READ %d pages: %s", NPAGES, err_str(ret));
	if (ret)
		goto out;
	KTAP_EXPECT(t, out.cpages == NPAGES, "cpages %" PRIu64 ", expected %d", (uint64_t)out.cpages,
		    NPAGES);
	KTAP_EXPECT(t, out.faults == 1, "faults %" PRIu64 " for one READ of %d unmapped pages, expected 1",
		    (uint64_t)out.faults, NPAGES);
	KTAP_EXPECT(t, first_diff(buf, mirror, len) == len, "data differs at byte %zu",
		    first_diff(buf, mirror, len));
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, NPAGES, &out);
	KTAP_EXPECT(t, ret == 0 && out.faults == 0,
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
static void write_costs_one_fault(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = NPAGES * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *src = malloc(len);
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !src)
		goto out;
	fill(src, len, 2);
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, src, NPAGES, &out);
	KTAP_EXPECT(t, ret == 0, "WRITE: %s", err_str(ret));
	if (ret)
		goto out;
	KTAP_EXPECT(t, out.faults == 1 && out.cpages == NPAGES,
		    "faults %" PRIu64 " cpages %" PRIu64 ", expected 1 and %d", (uint64_t)out.faults,
		    (uint64_t)out.cpages, NPAGES);
	KTAP_EXPECT(t, first_diff(buf, src, len) == len, "CPU sees different data at byte %zu",
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
static void faults_per_second(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct vugpu_dmirror_stats before, after;
	uint64_t n = 0, faults = 0;
	char *buf = map_anon(c->page, PROT_READ | PROT_WRITE), *mirror = malloc(c->page);
	double t0, dt;
	int fd = open_mirror(t, c), ret = 0;

	if (fd < 0 || !buf || !mirror)
		goto out;
	ret = dmirror_stats(fd, &before);
	KTAP_ASSERT(t, ret == 0, "STATS: %s", err_str(ret));
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
	KTAP_EXPECT(t, ret == 0, "READ %" PRIu64 ": %s", n, err_str(ret));
	KTAP_EXPECT(t, faults == n, "%" PRIu64 " faults for %" PRIu64 " one-page READs after MADV_DONTNEED",
		    faults, n);
	ret = dmirror_stats(fd, &after);
	KTAP_EXPECT(t, ret == 0, "STATS: %s", err_str(ret));
	KTAP_EXPECT(t, after.faults_serviced - before.faults_serviced >= n,
		    "driver serviced %" PRIu64 " faults for %" PRIu64 " READs",
		    (uint64_t)(after.faults_serviced - before.faults_serviced), n);
	KTAP_EXPECT(t, after.hw[0] - before.hw[0] >= n,
		    "device FAULTS counter moved by %" PRIu64 " for %" PRIu64 " faults",
		    (uint64_t)(after.hw[0] - before.hw[0]), n);
	ktap_diag("faults serviced per second: %.0f (%" PRIu64 " faults in %.2f s, one-page READ + MADV_DONTNEED each; device invalidations %" PRIu64 ")",
		  n / dt, n, dt, (uint64_t)(after.hw[6] - before.hw[6]));
	if (n && after.ctl_runs > before.ctl_runs)
		ktap_diag("per fault: %.0f us in the fault thread; MMU control engine: %.1f submissions, %.0f us each",
			  (after.service_ns - before.service_ns) / 1e3 / n,
			  (double)(after.ctl_runs - before.ctl_runs) / n,
			  (after.ctl_ns - before.ctl_ns) / 1e3 / (after.ctl_runs - before.ctl_runs));
	KTAP_EXPECT(t, n >= 10, "only %" PRIu64 " faults in %.1f s", n, dt);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, c->page);
	free(mirror);
}

/* A fault the driver cannot service is cancelled: -EFAULT; the engine works after it. */
static void cancel_prot_none(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats before, after;
	struct hmm_dmirror_cmd out;
	void *none = map_anon(len, PROT_NONE), *good = map_anon(len, PROT_READ | PROT_WRITE);
	void *mirror = malloc(len);
	int fd = open_mirror(t, c), ret, i;

	if (fd < 0 || !none || !good || !mirror)
		goto out;
	KTAP_ASSERT(t, dmirror_stats(fd, &before) == 0, "STATS failed");
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, none, mirror, 4, NULL);
	KTAP_EXPECT(t, ret == -EFAULT, "READ of PROT_NONE memory: %s, expected EFAULT", err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, none, mirror, 4, NULL);
	KTAP_EXPECT(t, ret == -EFAULT, "WRITE to PROT_NONE memory: %s, expected EFAULT", err_str(ret));
	KTAP_ASSERT(t, dmirror_stats(fd, &after) == 0, "STATS failed");
	KTAP_EXPECT(t, after.cancels - before.cancels >= 2 && after.hw[3] - before.hw[3] >= 2,
		    "cancels: driver %" PRIu64 ", device %" PRIu64 ", expected >= 2 each",
		    (uint64_t)(after.cancels - before.cancels), (uint64_t)(after.hw[3] - before.hw[3]));
	/* The engines stopped with TRANSLATION were reset: the next jobs work. */
	for (i = 0; i < 4; i++) {
		fill(good, len, 10 + i);
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, good, mirror, 4, &out);
		KTAP_EXPECT(t, ret == 0 && first_diff(good, mirror, len) == len,
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
static void stale_tlb_after_munmap(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats before, after;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 3);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_ASSERT(t, ret == 0, "READ: %s", err_str(ret));
	KTAP_ASSERT(t, dmirror_stats(fd, &before) == 0, "STATS failed");
	munmap(buf, len);
	KTAP_ASSERT(t, dmirror_stats(fd, &after) == 0, "STATS failed");
	KTAP_EXPECT(t, after.hw[6] > before.hw[6],
		    "munmap of mapped pages issued no TLB_INVALIDATE (device counter %" PRIu64 ")",
		    (uint64_t)after.hw[6]);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_EXPECT(t, ret == -EFAULT,
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
static void stale_tlb_after_remap(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len), *p;
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 4);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_ASSERT(t, ret == 0, "READ: %s", err_str(ret));
	/* The old pages go back to the allocator; new ones take the VA. */
	p = mmap(buf, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	KTAP_ASSERT(t, p == buf, "mmap MAP_FIXED: %s", strerror(errno));
	fill(buf, len, 5);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	KTAP_EXPECT(t, ret == 0, "READ after remap: %s", err_str(ret));
	KTAP_EXPECT(t, !ret && first_diff(buf, mirror, len) == len,
		    "device read old data after remap (differs at byte %zu)", first_diff(buf, mirror, len));
	KTAP_EXPECT(t, !ret && out.faults == 1, "faults %" PRIu64 " after remap, expected 1",
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
static void atomic_needs_exclusive(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	uint64_t *buf = map_anon(c->page, PROT_READ | PROT_WRITE), old = 0, faults = 0, v;
	struct hmm_dmirror_cmd out;
	void *mirror = malloc(c->page);
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	buf[0] = 100;
	/* Map the page readable and writable for the device. */
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, buf, 1, NULL);
	KTAP_ASSERT(t, ret == 0, "WRITE: %s", err_str(ret));
	ret = dmirror_atomic(fd, buf, 5, VUGPU_DMIRROR_NOFAULT, &old, NULL);
	KTAP_EXPECT(t, ret == -EFAULT,
		    "device ATOMIC on a read/write SYS page without ATOMIC permission: %s, expected EFAULT",
		    err_str(ret));
	KTAP_EXPECT(t, buf[0] == 100, "value %" PRIu64 " after a refused atomic, expected 100", buf[0]);
	ret = dmirror_cmd(fd, HMM_DMIRROR_EXCLUSIVE, buf, mirror, 1, &out);
	KTAP_ASSERT(t, ret == 0, "EXCLUSIVE: %s", err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, buf, NULL, 1, NULL);
	KTAP_EXPECT(t, ret == -EPERM, "CHECK_EXCLUSIVE right after EXCLUSIVE: %s, expected EPERM",
		    err_str(ret));
	ret = dmirror_atomic(fd, buf, 5, VUGPU_DMIRROR_NOFAULT, &old, NULL);
	KTAP_EXPECT(t, ret == 0 && old == 100, "ATOMIC after EXCLUSIVE: %s, old %" PRIu64,
		    err_str(ret), old);
	/* The CPU access revokes the exclusive entry and sees the device's add. */
	v = buf[0];
	KTAP_EXPECT(t, v == 105, "CPU reads %" PRIu64 " after the device added 5 to 100", v);
	ret = dmirror_cmd(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, buf, NULL, 1, NULL);
	KTAP_EXPECT(t, ret == 0, "CHECK_EXCLUSIVE after a CPU access: %s", err_str(ret));
	/* Faulting atomic: the driver makes the page exclusive itself. */
	ret = dmirror_atomic(fd, buf, 7, 0, &old, &faults);
	KTAP_EXPECT(t, ret == 0 && old == 105 && faults >= 1,
		    "ATOMIC with fault service: %s, old %" PRIu64 ", faults %" PRIu64, err_str(ret), old,
		    faults);
	v = buf[0];
	KTAP_EXPECT(t, v == 112, "CPU reads %" PRIu64 ", expected 112", v);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, c->page);
	free(mirror);
}

/* Faults reach the driver by the fault vector's interrupt. */
static void fault_irq(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 8 * c->page;
	struct vugpu_dmirror_stats before, after;
	struct hmm_dmirror_cmd out;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	double t0, dt;
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, len, 6);
	KTAP_ASSERT(t, dmirror_stats(fd, &before) == 0, "STATS failed");
	t0 = now_s();
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 8, &out);
	dt = now_s() - t0;
	KTAP_EXPECT(t, ret == 0, "READ: %s after %.2f s (no fault interrupt?)", err_str(ret), dt);
	KTAP_ASSERT(t, dmirror_stats(fd, &after) == 0, "STATS failed");
	KTAP_EXPECT(t, after.fault_irqs > before.fault_irqs,
		    "fault vector interrupts %" PRIu64 " -> %" PRIu64 " across a faulting READ",
		    (uint64_t)before.fault_irqs, (uint64_t)after.fault_irqs);
	KTAP_EXPECT(t, dt < 1.0, "faulting READ took %.2f s", dt);
	ktap_diag("faulting READ of 8 pages: %.0f us, ctx %u, MMU control engine %u",
		  dt * 1e6, after.ctx, after.ctl_engine);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(mirror);
}

/* A write to read-only memory: the fault is answered -EPERM (test_hmm's code). */
static void write_readonly_eperm(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 2 * c->page;
	void *buf = map_anon(len, PROT_READ), *src = calloc(1, len), *mirror = malloc(len);
	struct hmm_dmirror_cmd out;
	int fd = open_mirror(t, c), ret;

	if (fd < 0 || !buf || !src || !mirror)
		goto out;
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 2, &out);
	KTAP_EXPECT(t, ret == 0, "READ of read-only memory: %s", err_str(ret));
	memset(src, 0x5a, len);
	ret = dmirror_cmd(fd, HMM_DMIRROR_WRITE, buf, src, 2, NULL);
	KTAP_EXPECT(t, ret == -EPERM, "WRITE to read-only memory: %s, expected EPERM", err_str(ret));
	KTAP_EXPECT(t, ((unsigned char *)buf)[0] == 0, "read-only page changed by the device");
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, len);
	free(src);
	free(mirror);
}

/* Two mirrors are two contexts: each faults on its own, both see the data. */
static void two_contexts(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct vugpu_dmirror_stats s1, s2;
	struct hmm_dmirror_cmd o1, o2;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *m1 = malloc(len), *m2 = malloc(len);
	int fd1 = open_mirror(t, c), fd2 = open_mirror(t, c), r1, r2;

	if (fd1 < 0 || fd2 < 0 || !buf || !m1 || !m2)
		goto out;
	fill(buf, len, 7);
	r1 = dmirror_cmd(fd1, HMM_DMIRROR_READ, buf, m1, 4, &o1);
	r2 = dmirror_cmd(fd2, HMM_DMIRROR_READ, buf, m2, 4, &o2);
	KTAP_EXPECT(t, !r1 && !r2 && o1.faults == 1 && o2.faults == 1,
		    "READs: %s / %s, faults %" PRIu64 " / %" PRIu64 " (expected 1 each)", err_str(r1),
		    err_str(r2), (uint64_t)o1.faults, (uint64_t)o2.faults);
	KTAP_EXPECT(t, first_diff(buf, m1, len) == len && first_diff(buf, m2, len) == len,
		    "data differs");
	KTAP_ASSERT(t, !dmirror_stats(fd1, &s1) && !dmirror_stats(fd2, &s2), "STATS failed");
	KTAP_EXPECT(t, s1.ctx != s2.ctx && s1.ctx && s2.ctx, "contexts %u and %u", s1.ctx, s2.ctx);
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
static void works_after_reset(struct ktap_test *t, struct mmu_ctx *c, unsigned long req,
			      const char *what)
{
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	struct vugpu_regs regs;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	int fd = open_mirror(t, c), vfd = -1, ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	vfd = open(c->vugpu_node, O_RDWR | O_CLOEXEC);
	KTAP_ASSERT(t, vfd >= 0, "open %s: %s", c->vugpu_node, strerror(errno));
	fill(buf, len, 8);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_ASSERT(t, ret == 0, "READ before %s: %s", what, err_str(ret));
	ret = vugpu_reset(vfd, req, &regs, NULL);
	KTAP_ASSERT(t, ret == 0, "%s: %s", what, err_str(ret));
	/* Mapped before the reset (the page tables survive it) and new pages. */
	fill(buf, len, 9);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	KTAP_EXPECT(t, ret == 0 && first_diff(buf, mirror, len) == len, "READ after %s: %s", what,
		    err_str(ret));
	madvise(buf, len, MADV_DONTNEED);
	fill(buf, len, 10);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	KTAP_EXPECT(t, ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
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
static void mapped_read_latency(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t big = 2UL << 20;
	struct hmm_dmirror_cmd out;
	char *buf = map_anon(big, PROT_READ | PROT_WRITE), *mirror = malloc(big);
	uint64_t faults = 0;
	double t0, one, bw;
	int fd = open_mirror(t, c), ret, i, n = 200;

	if (fd < 0 || !buf || !mirror)
		goto out;
	fill(buf, big, 11);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, big / c->page, &out);
	KTAP_ASSERT(t, ret == 0 && first_diff(buf, mirror, big) == big, "READ 2 MiB: %s",
		    err_str(ret));
	t0 = now_s();
	for (i = 0; i < n; i++) {
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 1, &out);
		if (ret)
			break;
		faults += out.faults;
	}
	one = (now_s() - t0) / n;
	KTAP_EXPECT(t, ret == 0 && faults == 0, "mapped one-page READs: %s, %" PRIu64 " faults",
		    err_str(ret), faults);
	t0 = now_s();
	for (i = 0; i < 5; i++) {
		ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, big / c->page, &out);
		if (ret || out.faults)
			break;
	}
	bw = 5 * big / (now_s() - t0) / 1e6;
	KTAP_EXPECT(t, ret == 0 && out.faults == 0 && first_diff(buf, mirror, big) == big,
		    "mapped 2 MiB READs: %s, faults %" PRIu64, err_str(ret), (uint64_t)out.faults);
	ktap_diag("mapped one-page READ: %.0f us; mapped 2 MiB READ: %.1f MB/s", one * 1e6, bw);
out:
	if (fd >= 0)
		close(fd);
	if (buf)
		munmap(buf, big);
	free(mirror);
}

static void works_after_flr(struct ktap_test *t, void *ctx)
{
	works_after_reset(t, ctx, VUGPU_IOCTL_FLR, "FLR");
}

static void works_after_soft_reset(struct ktap_test *t, void *ctx)
{
	works_after_reset(t, ctx, VUGPU_IOCTL_SOFT_RESET, "SOFT_RESET");
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
static void reset_while_faulting(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct reset_arg a = { .c = c };
	struct vugpu_regs regs;
	pthread_t th;
	double t0;
	int vfd, i, ret, resets = 0;

	a.fd = open_mirror(t, c);
	if (a.fd < 0)
		return;
	vfd = open(c->vugpu_node, O_RDWR | O_CLOEXEC);
	if (vfd < 0) {
		ktap_fail_at(t, KTAP_FILE, __LINE__, "open %s: %s", c->vugpu_node, strerror(errno));
		close(a.fd);
		return;
	}
	if (pthread_create(&th, NULL, reset_reader, &a)) {
		ktap_fail_at(t, KTAP_FILE, __LINE__, "pthread_create failed");
		goto out;
	}
	t0 = now_s();
	for (i = 0; i < 3; i++) {
		usleep(300000);
		ret = vugpu_reset(vfd, i & 1 ? VUGPU_IOCTL_SOFT_RESET : VUGPU_IOCTL_FLR, &regs, NULL);
		KTAP_EXPECT(t, ret == 0, "reset %d: %s", i, err_str(ret));
		resets += !ret;
	}
	usleep(300000);
	a.stop = 1;
	pthread_join(th, NULL);
	KTAP_EXPECT(t, a.bad == 0, "%" PRIu64 " READs returned wrong data", a.bad);
	KTAP_EXPECT(t, a.ok > 0, "no READ succeeded across %d resets (last error %s)", resets,
		    err_str(a.last_err));
	ktap_diag("%d resets in %.1f s while faulting: %" PRIu64 " READs ok, %" PRIu64 " failed (last: %s)",
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
			KTAP_EXPECT(t, ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
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
static void unbind_with_mirror_open(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	size_t len = 4 * c->page;
	struct hmm_dmirror_cmd out;
	char link[256], bdf[256], *slash;
	void *buf = map_anon(len, PROT_READ | PROT_WRITE), *mirror = malloc(len);
	ssize_t n;
	int fd = open_mirror(t, c), fd2 = -1, ret;

	if (fd < 0 || !buf || !mirror)
		goto out;
	n = readlink("/sys/class/misc/hmm_dmirror0/device", link, sizeof(link) - 1);
	KTAP_ASSERT(t, n > 0, "readlink /sys/class/misc/hmm_dmirror0/device: %s", strerror(errno));
	link[n] = 0;
	slash = strrchr(link, '/');
	snprintf(bdf, sizeof(bdf), "%s", slash ? slash + 1 : link);
	fill(buf, len, 12);
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_ASSERT(t, ret == 0, "READ: %s", err_str(ret));
	ret = vugpu_write_file(VUGPU_SYSFS_DRIVER "/unbind", bdf);
	KTAP_ASSERT(t, ret == 0, "unbind %s: %s", bdf, err_str(ret));
	ret = dmirror_cmd(fd, HMM_DMIRROR_READ, buf, mirror, 4, NULL);
	KTAP_EXPECT(t, ret == -ENODEV, "READ on a mirror of an unbound GPU: %s, expected ENODEV",
		    err_str(ret));
	/* The CPU side keeps working: the notifier is gone, not the memory. */
	munmap(buf, len);
	buf = map_anon(len, PROT_READ | PROT_WRITE);
	close(fd);
	fd = -1;
	ret = vugpu_write_file(VUGPU_SYSFS_DRIVER "/bind", bdf);
	KTAP_ASSERT(t, ret == 0, "bind %s: %s", bdf, err_str(ret));
	KTAP_ASSERT(t, wait_path(c->node, true), "%s did not come back", c->node);
	fd2 = open_mirror(t, c);
	KTAP_ASSERT(t, fd2 >= 0 && buf, "reopen");
	fill(buf, len, 13);
	ret = dmirror_cmd(fd2, HMM_DMIRROR_READ, buf, mirror, 4, &out);
	KTAP_EXPECT(t, ret == 0 && out.faults == 1 && first_diff(buf, mirror, len) == len,
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
static void concurrent_contexts(struct ktap_test *t, void *ctx)
{
	struct mmu_ctx *c = ctx;
	struct conc_arg a[CONC_THREADS] = { 0 };
	struct vugpu_dmirror_stats before, after;
	pthread_t th[CONC_THREADS];
	int i, started = 0;

	for (i = 0; i < CONC_THREADS; i++) {
		a[i].c = c;
		a[i].fd = open_mirror(t, c);
		if (a[i].fd < 0)
			goto out;
	}
	KTAP_ASSERT(t, dmirror_stats(a[0].fd, &before) == 0, "STATS failed");
	for (i = 0; i < CONC_THREADS; i++, started++)
		if (pthread_create(&th[i], NULL, conc_thread, &a[i]))
			break;
	for (i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	KTAP_EXPECT(t, started == CONC_THREADS, "started %d threads", started);
	for (i = 0; i < started; i++) {
		KTAP_EXPECT(t, a[i].ret == 0 && a[i].rounds == CONC_ROUNDS,
			    "thread %d: %s after %" PRIu64 " rounds", i, err_str(a[i].ret), a[i].rounds);
		KTAP_EXPECT(t, a[i].bad == 0, "thread %d: %d READs returned wrong data", i, a[i].bad);
		KTAP_EXPECT(t, a[i].faults >= a[i].rounds,
			    "thread %d: %" PRIu64 " faults in %" PRIu64 " READs of fresh pages", i,
			    a[i].faults, a[i].rounds);
	}
	KTAP_ASSERT(t, dmirror_stats(a[0].fd, &after) == 0, "STATS failed");
	KTAP_EXPECT(t, !c->expect_overflow ||
		    (after.hw[1] > before.hw[1] && after.overflows > before.overflows),
		    "a 1-record fault ring and %d faulting contexts: %" PRIu64 " records dropped, %" PRIu64 " overflow recoveries",
		    CONC_THREADS, (uint64_t)(after.hw[1] - before.hw[1]),
		    (uint64_t)(after.overflows - before.overflows));
	ktap_diag("%d contexts x %d faulting READs: device faults %" PRIu64 ", dropped %" PRIu64 ", driver overflow recoveries %" PRIu64 ", stray %" PRIu64,
			  CONC_THREADS, CONC_ROUNDS, (uint64_t)(after.hw[0] - before.hw[0]),
			  (uint64_t)(after.hw[1] - before.hw[1]),
			  (uint64_t)(after.overflows - before.overflows),
			  (uint64_t)(after.stray - before.stray));
out:
	for (i = 0; i < CONC_THREADS; i++)
		if (a[i].fd > 0)
			close(a[i].fd);
}

static const struct ktap_case cases[] = {
	KTAP_CASE(read_costs_one_fault),
	KTAP_CASE(write_costs_one_fault),
	KTAP_CASE(write_readonly_eperm),
	KTAP_CASE(fault_irq),
	KTAP_CASE(faults_per_second),
	KTAP_CASE(mapped_read_latency),
	KTAP_CASE(cancel_prot_none),
	KTAP_CASE(stale_tlb_after_munmap),
	KTAP_CASE(stale_tlb_after_remap),
	KTAP_CASE(atomic_needs_exclusive),
	KTAP_CASE(two_contexts),
	KTAP_CASE(concurrent_contexts),
	KTAP_CASE(works_after_flr),
	KTAP_CASE(works_after_soft_reset),
	KTAP_CASE(reset_while_faulting),
	KTAP_CASE(unbind_with_mirror_open),
};

static void usage(void)
{
	fprintf(stderr, "usage: vugpu-mmu [--dev N] [--first N] [--no-header] [--count] [--list]\n"
			"                 [--case NAME] [--expect-overflow]\n");
}

int main(int argc, char **argv)
{
	struct mmu_ctx c = { 0 };
	const struct ktap_case *run = cases;
	unsigned int n = KTAP_ARRAY_SIZE(cases), i, failed;
	struct ktap_totals tot = { 0 };
	uint64_t first = 1, dev = 0;
	bool header = true;
	int a;

	for (a = 1; a < argc; a++) {
		const char *opt = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
		uint64_t *num = NULL;

		if (!strcmp(opt, "--case") && val) {
			for (i = 0; i < KTAP_ARRAY_SIZE(cases) && strcmp(cases[i].name, val); i++)
				;
			if (i == KTAP_ARRAY_SIZE(cases)) {
				usage();
				return 2;
			}
			run = &cases[i];
			n = 1;
			a++;
			continue;
		} else if (!strcmp(opt, "--expect-overflow")) {
			c.expect_overflow = true;
			continue;
		} else if (!strcmp(opt, "--count")) {
			printf("%u\n", n);
			return 0;
		} else if (!strcmp(opt, "--list")) {
			for (i = 0; i < n; i++)
				printf("%s\n", run[i].name);
			return 0;
		} else if (!strcmp(opt, "--no-header")) {
			header = false;
			continue;
		} else if (!strcmp(opt, "--first")) {
			num = &first;
		} else if (!strcmp(opt, "--dev")) {
			num = &dev;
		}
		if (!num || !val || vugpu_parse_u64(val, num) || first > 100000 || dev > 15) {
			usage();
			return 2;
		}
		a++;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	c.page = sysconf(_SC_PAGESIZE);
	snprintf(c.node, sizeof(c.node), "/dev/hmm_dmirror%" PRIu64, dev);
	snprintf(c.vugpu_node, sizeof(c.vugpu_node), "/dev/vugpu%" PRIu64, dev);
	if (header)
		ktap_print_header(n);
	failed = ktap_run(run, n, (unsigned int)first, &c, &tot);
	if (header)
		ktap_print_totals(&tot);
	return failed ? 1 : 0;
}
