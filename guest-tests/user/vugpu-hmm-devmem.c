// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-hmm-devmem: tests of vugpu's device-private memory
 * (guest-tests/kmod/vugpu_devmem.c) through /dev/hmm_dmirrorN (lib/test_hmm's
 * ABI, vugpu_hmm_uapi.h), on the kernel's kselftest harness
 * (vugpu_harness.h): fixture "devmem", each test in a process of its own
 * with its own mirror.  Needs vugpu.ko loaded with devmem_mb > 0.
 *
 *   vugpu-hmm-devmem [--dev N] [--mib MIB] [--unbind] [HARNESS OPTIONS]
 *     --dev N    /dev/hmm_dmirrorN (default 0)
 *     --mib MIB  size of the throughput buffers (default 64)
 *     --unbind   also unbind the GPU with pages in VRAM and check that they
 *                came back (eviction), then bind it again
 *
 * Cases:
 *   migrate_verify      MIGRATE_TO_DEV: every page moves (cpages), the data the
 *                       device reads back through its page table (VRAM PTEs,
 *                       copied there by the engines) is the data, SNAPSHOT
 *                       says DEV_PRIVATE_LOCAL for every page
 *   cpu_fault_back      a CPU read of a page in VRAM brings back exactly the
 *                       fault_around_pages window around it (1 and 16), with
 *                       its data (migrate_to_ram); invalid windows are refused
 *   cpu_write_back      a CPU write to pages in VRAM: they come back, the
 *                       writes land, the device then sees the new data
 *   migrate_to_sys      MIGRATE_TO_SYS: cpages, data, SNAPSHOT without device pages
 *   thp_migrate         a 2 MiB THP moves as one device folio (SNAPSHOT PMD
 *                       bit) and comes back as one (7.x; skipped where the
 *                       kernel has no device-private THP)
 *   fail_alloc          FLAGS fail-alloc: the THP falls back to 4 KiB device
 *                       pages, data intact both ways
 *   throughput_4k, throughput_thp
 *                       pages/s both ways over MIB MiB (printed), data checked
 *   release             RELEASE evicts everything: SNAPSHOT shows no device page
 *   unbind_evict        (--unbind) unbind the GPU while pages are in VRAM: they come back
 *                       to system memory with their data; the driver is bound
 *                       again afterwards
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "vugpu_harness.h"
#include "vugpu_hmm_uapi.h"

#define TWO_MIB		(2UL << 20)

struct ctx {
	int dev;
	int fd;
	char path[64];
	size_t page;
	size_t mib;
	bool unbind;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dmirror(int fd, unsigned long req, void *addr, void *mirror, uint64_t npages,
		   struct vugpu_hmm_dmirror_cmd *out)
{
	struct vugpu_hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)addr,
		.ptr = (uintptr_t)mirror,
		.npages = npages,
	};
	int ret;

	do {
		ret = ioctl(fd, req, &cmd);
	} while (ret && errno == EINTR);
	if (out)
		*out = cmd;
	return ret ? -errno : 0;
}

/* A buffer of @size bytes aligned to @align, anonymous private. */
static void *map_aligned(size_t size, size_t align, void **base, size_t *base_len)
{
	size_t len = size + align;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	*base = p;
	*base_len = len;
	return (void *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
}

static void fill(uint32_t *p, size_t bytes, uint32_t seed)
{
	size_t i;

	for (i = 0; i < bytes / 4; i++)
		p[i] = seed ^ (uint32_t)(i * 2654435761u);
}

/* Index of the first word that differs from the pattern, or -1. */
static long check(const uint32_t *p, size_t bytes, uint32_t seed)
{
	size_t i;

	for (i = 0; i < bytes / 4; i++)
		if (p[i] != (seed ^ (uint32_t)(i * 2654435761u)))
			return (long)i;
	return -1;
}

static int count_prot(const unsigned char *m, size_t n, unsigned char mask, unsigned char want)
{
	size_t i;
	int c = 0;

	for (i = 0; i < n; i++)
		c += (m[i] & mask) == want;
	return c;
}

static int snapshot(struct ctx *c, void *addr, size_t npages, unsigned char *m)
{
	memset(m, 0xee, npages);
	return dmirror(c->fd, VUGPU_HMM_SNAPSHOT, addr, m, npages, NULL);
}

#define LOCAL_MASK	0xf0
#define LOCAL		VUGPU_HMM_PROT_DEV_PRIVATE_LOCAL

static void migrate_verify(struct __test_metadata *_metadata, void *arg)
{
	struct ctx *c = arg;
	size_t npages = 256, size = npages * c->page;
	struct vugpu_hmm_dmirror_cmd cmd;
	unsigned char *m = malloc(npages);
	uint32_t *buf, *mir = malloc(size);
	long bad;
	int ret;

	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_THAT(buf != MAP_FAILED && m && mir, "allocation");
	fill(buf, size, 0x1234);
	memset(mir, 0, size);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0, "MIGRATE_TO_DEV: %s", strerror(-ret));
	EXPECT_THAT(cmd.cpages == npages, "cpages %llu, want %zu", (unsigned long long)cmd.cpages,
		    npages);
	bad = check(mir, size, 0x1234);
	EXPECT_THAT(bad < 0, "device read-back differs at word %ld", bad);
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	ret = count_prot(m, npages, LOCAL_MASK, LOCAL);
	EXPECT_THAT(ret == (int)npages, "%d of %zu pages DEV_PRIVATE_LOCAL (first %#x)", ret,
		    npages, m[0]);
	/* A second read through the device: the VRAM copy is stable. */
	memset(mir, 0, size);
	ret = dmirror(c->fd, VUGPU_HMM_READ, buf, mir, npages, &cmd);
	EXPECT_THAT(ret == 0 && check(mir, size, 0x1234) < 0, "READ from VRAM: %s",
		    ret ? strerror(-ret) : "data differs");
	munmap(buf, size);
	free(m);
	free(mir);
}

#define FAULT_AROUND "/sys/module/vugpu/parameters/fault_around_pages"

/* Write @val to a sysfs file; 0 or -errno. */
static int write_sysfs(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* Write @val to vugpu's fault_around_pages; 0 or -errno. */
static int set_fault_around(const char *val)
{
	return write_sysfs(FAULT_AROUND, val);
}

static long get_fault_around(void)
{
	char b[32] = "";
	int fd = open(FAULT_AROUND, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, b, sizeof(b) - 1);
	close(fd);
	return n > 0 ? strtol(b, NULL, 10) : -EIO;
}

/*
 * A CPU read of one page in VRAM with fault_around_pages = @window: exactly
 * the @window-aligned pages around it (here inside the buffer) come back
 * with their data, every other page stays in VRAM.
 */
static void fault_back_window(struct __test_metadata *_metadata, struct ctx *c, size_t window)
{
	size_t npages = 64, size = npages * c->page, w = c->page / 4, touch = 21, i;
	size_t first = touch / window * window;
	struct vugpu_hmm_dmirror_cmd cmd;
	unsigned char *m = malloc(npages);
	uint32_t *buf, *mir = malloc(size);
	char val[16];
	void *base;
	size_t base_len;
	int ret;

	snprintf(val, sizeof(val), "%zu", window);
	ret = set_fault_around(val);
	ASSERT_THAT(ret == 0, "fault_around_pages=%s: %s", val, strerror(-ret));
	/* Aligned to the largest window, so that the window is inside the buffer. */
	buf = map_aligned(size, npages * c->page, &base, &base_len);
	ASSERT_THAT(buf && m && mir, "allocation");
	fill(buf, size, 0xabcd);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV: %s, cpages %llu",
		    strerror(-ret), (unsigned long long)cmd.cpages);
	/* Touch one word of page 21: migrate_to_ram brings its window back. */
	EXPECT_THAT(buf[touch * w + 7] == (0xabcd ^ (uint32_t)((touch * w + 7) * 2654435761u)),
		    "page %zu word 7 is %#x after the fault", touch, buf[touch * w + 7]);
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	for (i = 0; i < npages; i++) {
		bool in_window = i >= first && i < first + window;

		EXPECT_THAT(((m[i] & LOCAL_MASK) == LOCAL) != in_window,
			    "window %zu, fault on page %zu: page %zu %s (%#x)", window, touch, i,
			    in_window ? "still in VRAM" : "left VRAM", m[i]);
	}
	ret = count_prot(m, npages, LOCAL_MASK, LOCAL);
	EXPECT_THAT(ret == (int)(npages - window), "%d pages in VRAM, want %zu", ret,
		    npages - window);
	/* Now all of it, by reading every page. */
	EXPECT_THAT(check(buf, size, 0xabcd) < 0, "data differs after faulting everything back");
	ret = snapshot(c, buf, npages, m);
	EXPECT_THAT(ret == 0 && count_prot(m, npages, LOCAL_MASK, LOCAL) == 0,
		    "pages still in VRAM after CPU reads");
	munmap(base, base_len);
	free(m);
	free(mir);
}

static void cpu_fault_back(struct __test_metadata *_metadata, void *arg)
{
	static const char *const bad[] = { "0", "3", "1024", "x" };
	long old = get_fault_around();
	char val[16];
	size_t i;
	int ret;

	ASSERT_THAT(old > 0, "%s: %s", FAULT_AROUND, strerror(old < 0 ? (int)-old : EINVAL));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ret = set_fault_around(bad[i]);
		EXPECT_THAT(ret == -EINVAL, "fault_around_pages=%s: %s, want EINVAL", bad[i],
			    ret ? strerror(-ret) : "accepted");
	}
	EXPECT_THAT(get_fault_around() == old, "a refused value changed fault_around_pages");
	fault_back_window(_metadata, arg, 1);
	fault_back_window(_metadata, arg, 16);
	snprintf(val, sizeof(val), "%ld", old);
	ret = set_fault_around(val);
	EXPECT_THAT(ret == 0, "restoring fault_around_pages=%s: %s", val, strerror(-ret));
}

static void cpu_write_back(struct __test_metadata *_metadata, void *arg)
{
	struct ctx *c = arg;
	size_t npages = 32, size = npages * c->page, i;
	struct vugpu_hmm_dmirror_cmd cmd;
	uint32_t *buf, *mir = malloc(size);
	int ret;

	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_THAT(buf != MAP_FAILED && mir, "allocation");
	fill(buf, size, 0x5555);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV: %s, cpages %llu",
		    strerror(-ret), (unsigned long long)cmd.cpages);
	fill(buf, size, 0x7777);	/* every page faults back, then is written */
	memset(mir, 0, size);
	ret = dmirror(c->fd, VUGPU_HMM_READ, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0, "READ: %s", strerror(-ret));
	i = check(mir, size, 0x7777);
	EXPECT_THAT((long)i < 0, "device sees stale data at word %ld", (long)i);
	munmap(buf, size);
	free(mir);
}

static void migrate_to_sys(struct __test_metadata *_metadata, void *arg)
{
	struct ctx *c = arg;
	size_t npages = 200, size = npages * c->page;
	struct vugpu_hmm_dmirror_cmd cmd;
	unsigned char *m = malloc(npages);
	uint32_t *buf, *mir = malloc(size);
	int ret;

	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_THAT(buf != MAP_FAILED && m && mir, "allocation");
	fill(buf, size, 0x9999);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV: %s, cpages %llu",
		    strerror(-ret), (unsigned long long)cmd.cpages);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_SYS, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0, "MIGRATE_TO_SYS: %s", strerror(-ret));
	EXPECT_THAT(cmd.cpages == npages, "cpages %llu, want %zu",
		    (unsigned long long)cmd.cpages, npages);
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	EXPECT_THAT(count_prot(m, npages, LOCAL_MASK, LOCAL) == 0, "pages still in VRAM");
	EXPECT_THAT(check(buf, size, 0x9999) < 0, "data differs after MIGRATE_TO_SYS");
	/* Again: nothing left to move. */
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_SYS, buf, mir, npages, &cmd);
	EXPECT_THAT(ret == 0 && cmd.cpages == 0, "second MIGRATE_TO_SYS: %d, cpages %llu", ret,
		    (unsigned long long)cmd.cpages);
	munmap(buf, size);
	free(m);
	free(mir);
}

static bool thp_enabled(void)
{
	char s[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (!f)
		return false;
	if (!fgets(s, sizeof(s), f))
		s[0] = 0;
	fclose(f);
	return !strstr(s, "[never]");
}

/* Device-private THP (compound device folios, MIGRATE_VMA_SELECT_COMPOUND) came with 6.18/7.x. */
static bool kernel_has_device_thp(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major > 6 || (major == 6 && minor >= 18);
}

/*
 * A THP-backed 2 MiB range to VRAM and back, data checked both ways.
 * fail_in: fail-alloc on the way in (4 KiB device pages instead of a folio);
 * fail_out: fail-alloc on the way back (4 KiB system pages: the core splits
 * the device folio).  Neither: one device folio (SNAPSHOT PMD bit) and back.
 */
static void thp_round(struct __test_metadata *_metadata, struct ctx *c, bool fail_in, bool fail_out)
{
	size_t npages = TWO_MIB / c->page, base_len;
	struct vugpu_hmm_dmirror_cmd cmd;
	unsigned char *m = malloc(npages);
	uint32_t *buf, *mir = malloc(TWO_MIB);
	uint32_t seed = 0x2a2a + fail_in + 2 * fail_out;
	void *base;
	int ret, pmd;

	buf = map_aligned(TWO_MIB, TWO_MIB, &base, &base_len);
	ASSERT_THAT(buf && m && mir, "allocation");
	ASSERT_THAT(madvise(buf, TWO_MIB, MADV_HUGEPAGE) == 0, "madvise: %s", strerror(errno));
	fill(buf, TWO_MIB, seed);
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	if (!(m[0] & VUGPU_HMM_PROT_PMD)) {
		munmap(base, base_len);
		SKIP_TEST("the kernel gave no THP (SNAPSHOT %#x)", m[0]);
	}
	if (fail_in) {
		ret = dmirror(c->fd, VUGPU_HMM_FLAGS, buf, NULL, VUGPU_HMM_FLAG_FAIL_ALLOC, NULL);
		ASSERT_THAT(ret == 0, "FLAGS: %s", strerror(-ret));
	}
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0, "MIGRATE_TO_DEV: %s", strerror(-ret));
	EXPECT_THAT(cmd.cpages == npages, "cpages %llu", (unsigned long long)cmd.cpages);
	EXPECT_THAT(check(mir, TWO_MIB, seed) < 0, "device read-back differs");
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	pmd = count_prot(m, npages, LOCAL_MASK | VUGPU_HMM_PROT_PMD,
			 LOCAL | VUGPU_HMM_PROT_PMD);
	EXPECT_THAT(count_prot(m, npages, LOCAL_MASK, LOCAL) == (int)npages,
		    "not every page in VRAM (first %#x)", m[0]);
	if (fail_in)
		EXPECT_THAT(pmd == 0, "fail-alloc: %d pages still PMD-mapped device pages", pmd);
	else
		EXPECT_THAT(pmd == (int)npages, "%d of %zu pages in a device PMD (first %#x)", pmd,
			    npages, m[0]);
	if (fail_out) {
		ret = dmirror(c->fd, VUGPU_HMM_FLAGS, buf, NULL, VUGPU_HMM_FLAG_FAIL_ALLOC, NULL);
		ASSERT_THAT(ret == 0, "FLAGS: %s", strerror(-ret));
	}
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_SYS, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0, "MIGRATE_TO_SYS: %s", strerror(-ret));
	/* test_hmm counts migrated src entries: a folio is one, 4 KiB pages one each. */
	if (fail_in)
		EXPECT_THAT(cmd.cpages == npages, "back: cpages %llu, want %zu",
			    (unsigned long long)cmd.cpages, npages);
	else if (!fail_out)
		EXPECT_THAT(cmd.cpages == 1, "back: cpages %llu, want 1 (one folio)",
			    (unsigned long long)cmd.cpages);
	else
		EXPECT_THAT(cmd.cpages >= 1, "back: cpages %llu", (unsigned long long)cmd.cpages);
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	EXPECT_THAT(count_prot(m, npages, LOCAL_MASK, LOCAL) == 0, "%d pages still in VRAM",
		    count_prot(m, npages, LOCAL_MASK, LOCAL));
	EXPECT_THAT(check(buf, TWO_MIB, seed) < 0, "data differs after the round trip");
	munmap(base, base_len);
	free(m);
	free(mir);
}

static bool thp_usable(struct __test_metadata *_metadata)
{
	if (!thp_enabled()) {
		SKIP_NOTE("transparent hugepages are disabled");
		return false;
	}
	if (!kernel_has_device_thp()) {
		SKIP_NOTE("this kernel has no device-private THP (and no FLAGS ioctl)");
		return false;
	}
	return true;
}

static void thp_migrate(struct __test_metadata *_metadata, void *arg)
{
	if (thp_usable(_metadata))
		thp_round(_metadata, arg, false, false);
}

/* FLAGS fail-alloc: the 4 KiB fallback on the way in, then on the way back. */
static void fail_alloc(struct __test_metadata *_metadata, void *arg)
{
	if (!thp_usable(_metadata))
		return;
	thp_round(_metadata, arg, true, false);
	if (_metadata->exit_code == KSFT_PASS)
		thp_round(_metadata, arg, false, true);
}

static void throughput(struct __test_metadata *_metadata, struct ctx *c, bool thp)
{
	size_t size = c->mib << 20, npages = size / c->page, base_len;
	struct vugpu_hmm_dmirror_cmd cmd;
	double t0, t1, t2, best_in = 0, best_out = 0;
	uint32_t *buf, *mir = malloc(size);
	void *base;
	int ret, i;

	if (thp && !thp_enabled())
		SKIP_TEST("transparent hugepages are disabled");
	buf = map_aligned(size, TWO_MIB, &base, &base_len);
	ASSERT_THAT(buf && mir, "allocation");
	ASSERT_THAT(madvise(buf, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) == 0, "madvise");
	fill(buf, size, 0x3141);
	for (i = 0; i < 3; i++) {
		t0 = now_s();
		ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
		t1 = now_s();
		ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV %d: %s, cpages %llu",
			    i, strerror(-ret), (unsigned long long)cmd.cpages);
		ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_SYS, buf, mir, npages, &cmd);
		t2 = now_s();
		/* cpages counts folios (test_hmm): with THP at least one per 2 MiB. */
		ASSERT_THAT(ret == 0 && (thp ? cmd.cpages >= size / TWO_MIB && cmd.cpages <= npages :
					     cmd.cpages == npages),
			    "MIGRATE_TO_SYS %d: %s, cpages %llu", i, strerror(-ret),
			    (unsigned long long)cmd.cpages);
		if (npages / (t1 - t0) > best_in)
			best_in = npages / (t1 - t0);
		if (npages / (t2 - t1) > best_out)
			best_out = npages / (t2 - t1);
	}
	EXPECT_THAT(check(mir, size, 0x3141) < 0, "device read-back differs");
	EXPECT_THAT(check(buf, size, 0x3141) < 0, "data differs after 3 round trips");
	/* MIGRATE_TO_DEV includes test_hmm's read-back through the device. */
	diag("%s %zu MiB: to VRAM %.0f pages/s (%.1f MiB/s, incl. device read-back), to system %.0f pages/s (%.1f MiB/s)",
		  thp ? "THP" : "4 KiB", c->mib, best_in, best_in * c->page / 1048576.0, best_out,
		  best_out * c->page / 1048576.0);
	munmap(base, base_len);
	free(mir);
}

static void throughput_4k(struct __test_metadata *_metadata, void *arg)
{
	throughput(_metadata, arg, false);
}

static void throughput_thp(struct __test_metadata *_metadata, void *arg)
{
	throughput(_metadata, arg, true);
}

static void release(struct __test_metadata *_metadata, void *arg)
{
	struct ctx *c = arg;
	size_t npages = 128, size = npages * c->page;
	struct vugpu_hmm_dmirror_cmd cmd;
	unsigned char *m = malloc(npages);
	uint32_t *buf, *mir = malloc(size);
	int ret;

	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_THAT(buf != MAP_FAILED && m && mir, "allocation");
	fill(buf, size, 0x4444);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV: %s", strerror(-ret));
	/* npages 0 would be -EINVAL, as in test_hmm. */
	ret = dmirror(c->fd, VUGPU_HMM_RELEASE, buf, NULL, npages, NULL);
	ASSERT_THAT(ret == 0, "RELEASE: %s", strerror(-ret));
	ret = snapshot(c, buf, npages, m);
	ASSERT_THAT(ret == 0, "SNAPSHOT: %s", strerror(-ret));
	EXPECT_THAT(count_prot(m, npages, LOCAL_MASK, LOCAL) == 0,
		    "%d pages still in VRAM after RELEASE", count_prot(m, npages, LOCAL_MASK, LOCAL));
	EXPECT_THAT(check(buf, size, 0x4444) < 0, "data differs after RELEASE");
	munmap(buf, size);
	free(m);
	free(mir);
}

/* The PCI address of the GPU behind /dev/hmm_dmirrorN (its misc device's parent). */
static int dmirror_bdf(struct ctx *c, char *bdf, size_t len)
{
	char link[PATH_MAX], p[128];
	ssize_t n;
	char *s;

	snprintf(p, sizeof(p), "/sys/class/misc/hmm_dmirror%d/device", c->dev);
	n = readlink(p, link, sizeof(link) - 1);
	if (n < 0)
		return -errno;
	link[n] = 0;
	s = strrchr(link, '/');
	s = s ? s + 1 : link;
	if (strlen(s) >= len)
		return -ENAMETOOLONG;
	memcpy(bdf, s, strlen(s) + 1);
	return 0;
}

static void unbind_evict(struct __test_metadata *_metadata, void *arg)
{
	struct ctx *c = arg;
	size_t npages = 512, size = npages * c->page;
	struct vugpu_hmm_dmirror_cmd cmd;
	uint32_t *buf, *mir = malloc(size);
	char bdf[64];
	int ret;

	if (!c->unbind)
		SKIP_TEST("not asked for (--unbind)");
	ret = dmirror_bdf(c, bdf, sizeof(bdf));
	ASSERT_THAT(ret == 0, "no PCI device behind %s: %s", c->path, strerror(-ret));
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_THAT(buf != MAP_FAILED && mir, "allocation");
	fill(buf, size, 0x6666);
	ret = dmirror(c->fd, VUGPU_HMM_MIGRATE_TO_DEV, buf, mir, npages, &cmd);
	ASSERT_THAT(ret == 0 && cmd.cpages == npages, "MIGRATE_TO_DEV: %s, cpages %llu",
		    strerror(-ret), (unsigned long long)cmd.cpages);
	/*
	 * Unbind with the mirror still open (closing it would evict, like
	 * test_hmm): remove tears the mirror down and evicts the pages.
	 */
	ret = write_sysfs("/sys/bus/pci/drivers/vugpu/unbind", bdf);
	close(c->fd);
	c->fd = -1;
	ASSERT_THAT(ret == 0, "unbind %s: %s", bdf, strerror(-ret));
	EXPECT_THAT(check(buf, size, 0x6666) < 0, "data lost by the eviction at unbind");
	ret = write_sysfs("/sys/bus/pci/drivers/vugpu/bind", bdf);
	EXPECT_THAT(ret == 0, "bind %s again: %s", bdf, strerror(-ret));
	munmap(buf, size);
	free(mir);
}

/* The options, filled in by main() before the tests run. */
static struct ctx opts = { .dev = 0, .mib = 64, .fd = -1 };

/* Each test process opens its own mirror (one MMU context). */
FIXTURE(devmem) {
	struct ctx c;
};

FIXTURE_SETUP(devmem)
{
	self->c = opts;
	self->c.fd = open(self->c.path, O_RDWR);
	ASSERT_THAT(self->c.fd >= 0, "open %s: %s", self->c.path, strerror(errno));
}

FIXTURE_TEARDOWN(devmem)
{
	if (self->c.fd >= 0)
		close(self->c.fd);
}

/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 300 s boot timeout; all 10 tests took 2.2 s
 * together here (TCG, --mib 32).
 */
#define DEVMEM_TIMEOUT 60

/* The tests, in this order. */
#define DEVMEM_TEST(name)							\
	TEST_F_TIMEOUT(devmem, name, DEVMEM_TIMEOUT)				\
	{									\
		name(_metadata, &self->c);					\
	}

DEVMEM_TEST(migrate_verify)
DEVMEM_TEST(cpu_fault_back)
DEVMEM_TEST(cpu_write_back)
DEVMEM_TEST(migrate_to_sys)
DEVMEM_TEST(thp_migrate)
DEVMEM_TEST(fail_alloc)
DEVMEM_TEST(throughput_4k)
DEVMEM_TEST(throughput_thp)
DEVMEM_TEST(release)
DEVMEM_TEST(unbind_evict)

static int option(const char *opt, const char *val)
{
	char *end;

	if (!strcmp(opt, "--unbind")) {
		opts.unbind = true;
		return 1;
	}
	if (!val)
		return 0;
	errno = 0;
	if (!strcmp(opt, "--dev")) {
		long v = strtol(val, &end, 0);

		if (errno || *end || end == val || v < 0 || v > 255)
			return 0;
		opts.dev = (int)v;
		return 2;
	}
	if (!strcmp(opt, "--mib")) {
		unsigned long v = strtoul(val, &end, 0);

		if (errno || *end || end == val || v > 4096)
			return 0;
		opts.mib = v ? v : 1;
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char **rest;
	int n = vugpu_harness_opts(argc, argv, option, "[--dev N] [--mib MIB] [--unbind]", &rest);

	if (n < 0)
		return 2;
	opts.page = sysconf(_SC_PAGESIZE);
	snprintf(opts.path, sizeof(opts.path), "/dev/hmm_dmirror%d", opts.dev);
	return test_harness_run(n, rest);
}
