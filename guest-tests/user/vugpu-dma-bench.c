// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma-bench - DMA engine measurements in a guest, on the kernel's
 * kselftest harness (vugpu_harness.h): fixture dma_bench, each measurement a
 * test in a process of its own (it fails when the engine moved wrong data or
 * an ioctl failed; the figures are "# bench" lines).
 *
 * Measurements, not pass/fail thresholds: a case is "ok" when it ran and
 * its data checked out; the numbers are "# bench ..." diagnostic lines.
 * Under emulation (TCG) absolute numbers mean little, so every engine
 * figure is also given as a ratio to a CPU memcpy of the same size measured
 * in the same run:
 *   bandwidth	engine SYS->VRAM and VRAM->SYS at 4 KiB, 64 KiB, 1 MiB and
 *		16 MiB, against memcpy into / out of the mmapped BAR2 and a
 *		RAM-to-RAM memcpy.  "engine" is doorbell to completion fence
 *		(repeated jobs of one pinned buffer, DMA_COPY count = R);
 *		"ioctl" is a whole DMA_COPY including pinning and mapping.
 *	jobs	small (64 B) copies per second: VRAM->VRAM jobs run by the
 *		driver back to back (no syscall per job), SYS->VRAM with one
 *		ioctl per job; each with interrupt and with fence-polling
 *		completion, and with the doorbell page as hw-spec §6.4
 *		recommends (TAIL store, mb(), RING_TAIL write only when
 *		SLEEPING reads 1; "wakes" counts those writes), the doorbell
 *		page alone (no SLEEPING check) or the RING_TAIL register.
 *	pickup	one 64 B job after 3 ms of idleness (the engine has gone from
 *		spinning to sleeping between polls), fence polling: doorbell
 *		to completion per submission mode, median and 90th percentile
 *		of interleaved samples.  This is where the §6.4 SLEEPING check
 *		matters: without it the job waits for the engine's next poll.
 *
 * Caveat (TCG): a guest memcpy's speed depends on more than its size.  In
 * one boot, the same 4 KiB-1 MiB memcpy ran at ~0.4 GB/s or ~3-4 GB/s
 * depending on the order in which the buffers and the BAR were mmapped
 * (measured with a throwaway program; THP made no difference).  The ratios
 * printed here compare measurements of one run, as the guest sees them.
 *
 * Usage: vugpu-dma-bench [--quick] [HARNESS OPTIONS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"

#define KIB	(1ULL << 10)
#define MIB	(1ULL << 20)

struct bench {
	struct vugpu_dev devs[VUGPU_MAX_DEVS];
	int ndevs;
	int fd;
	struct vugpu_dma_info info;
	uint8_t *bar;
	size_t bar_len;
	bool quick;
};

static const char *err_str(int ret)
{
	return strerror(ret < 0 ? -ret : ret);
}

static void *buf_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		       -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static double mbps(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes * 1e3 / (double)ns : 0.0;
}

#define REQUIRE(b)								\
	do {									\
		if ((b)->fd < 0)						\
			SKIP_TEST("no vugpu function with the driver bound");	\
		if (!(b)->info.engine_count)					\
			SKIP_TEST("no DMA engines");				\
		ASSERT_THAT(!(b)->info.init_error, "engines failed to start: %s", \
			    err_str((b)->info.init_error));			\
		ASSERT_THAT((b)->bar, "no BAR2 mapping");			\
	} while (0)

/* Repetitions so that one measurement moves about @target bytes (at least 3 runs). */
static unsigned int reps_for(uint64_t size, uint64_t target)
{
	uint64_t r = target / size;

	return r < 3 ? 3 : r > 2000 ? 2000 : (unsigned int)r;
}

static uint64_t time_memcpy(void *dst, const void *src, size_t len, unsigned int reps)
{
	uint64_t t0 = vugpu_now_ns();
	unsigned int i;

	for (i = 0; i < reps; i++) {
		memcpy(dst, src, len);
		__asm__ __volatile__("" ::: "memory");
	}
	return vugpu_now_ns() - t0;
}

struct engine_time {
	uint64_t engine_ns;	/* doorbell to fence, summed over the repeated jobs */
	uint64_t ioctl_ns;	/* wall time of single-job ioctls */
	unsigned int reps, ioctl_reps;
	int ret;
};

static struct engine_time time_engine(struct bench *b, bool to_vram, uint8_t *ubuf, uint64_t voff,
				      size_t len, unsigned int reps)
{
	struct engine_time et = { .reps = reps, .ioctl_reps = reps < 20 ? reps : 20 };
	struct vugpu_dma d = {
		.engine = 0, .flags = VUGPU_DMA_IRQ,
		.src_type = to_vram ? VUGPU_MEM_USER : VUGPU_MEM_VRAM,
		.dst_type = to_vram ? VUGPU_MEM_VRAM : VUGPU_MEM_USER,
		.src = to_vram ? (uintptr_t)ubuf : voff, .dst = to_vram ? voff : (uintptr_t)ubuf,
		.length = len, .count = reps,
	};
	uint64_t t0;
	unsigned int i;

	et.ret = vugpu_dma(b->fd, VUGPU_IOCTL_DMA_COPY, &d);
	if (et.ret)
		return et;
	et.engine_ns = d.elapsed_ns;
	d.count = 1;
	t0 = vugpu_now_ns();
	for (i = 0; i < et.ioctl_reps && !et.ret; i++)
		et.ret = vugpu_dma(b->fd, VUGPU_IOCTL_DMA_COPY, &d);
	et.ioctl_ns = vugpu_now_ns() - t0;
	return et;
}

static const char *size_str(uint64_t size, char *buf, size_t len)
{
	if (size >= MIB)
		snprintf(buf, len, "%lluM", (unsigned long long)(size >> 20));
	else
		snprintf(buf, len, "%lluK", (unsigned long long)(size >> 10));
	return buf;
}

static void bandwidth(struct __test_metadata *_metadata, void *ctx)
{
	static const uint64_t sizes[] = { 4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB };
	struct bench *b = ctx;
	uint64_t target = b->quick ? 4 * MIB : 48 * MIB;
	uint8_t *src, *dst;
	unsigned int i;

	REQUIRE(b);
	ASSERT_THAT(b->bar_len >= 48 * MIB, "BAR2 of %zu MiB is too small", b->bar_len >> 20);
	src = buf_alloc(16 * MIB);
	dst = buf_alloc(16 * MIB);
	ASSERT_THAT(src && dst, "out of memory");
	vugpu_fill_pattern64(src, 16 * MIB, 1);
	diag("bench: engine 0; engine = doorbell to completion fence, ioctl = whole DMA_COPY incl. pinning; MB/s = 10^6 B/s");
	for (i = 0; i < ARRAY_SIZE(sizes); i++) {
		uint64_t len = sizes[i];
		unsigned int reps = reps_for(len, target);
		uint64_t to_bar, from_bar, ram;
		struct engine_time s2v, v2s;
		double e_s2v, e_v2s, m_to, m_from, m_ram;
		char sz[16];

		size_str(len, sz, sizeof(sz));
		/*
		 * Warm up, untimed: VRAM is sparse (first touches allocate in the
		 * server) and the user pages get faulted in.
		 */
		time_memcpy(b->bar, src, len, 1);
		time_memcpy(dst, src, len, 1);
		time_engine(b, true, src, 16 * MIB, len, 1);
		time_engine(b, false, dst, 16 * MIB, len, 1);
		/* CPU copies of the same size, same run. */
		to_bar = time_memcpy(b->bar, src, len, reps);
		from_bar = time_memcpy(dst, b->bar + 16 * MIB, len, reps);
		ram = time_memcpy(dst, src, len, reps);
		/* Engine copies; check the data once. */
		memset(dst, 0, len);
		s2v = time_engine(b, true, src, 16 * MIB, len, reps);
		v2s = time_engine(b, false, dst, 16 * MIB, len, reps);
		EXPECT_THAT(!s2v.ret && !v2s.ret, "%s: engine copy failed: %s", sz,
			    err_str(s2v.ret ? s2v.ret : v2s.ret));
		if (s2v.ret || v2s.ret)
			continue;
		EXPECT_THAT(vugpu_first_diff(src, dst, len) < 0, "%s: data wrong after SYS->VRAM->SYS", sz);
		e_s2v = mbps(len * s2v.reps, s2v.engine_ns);
		e_v2s = mbps(len * v2s.reps, v2s.engine_ns);
		m_to = mbps(len * reps, to_bar);
		m_from = mbps(len * reps, from_bar);
		m_ram = mbps(len * reps, ram);
		diag("bench bandwidth size=%s reps=%u sys_to_vram_engine_MBps=%.0f sys_to_vram_ioctl_MBps=%.0f memcpy_to_bar_MBps=%.0f ratio_engine_to_memcpy=%.3f",
			  sz, reps, e_s2v, mbps(len * s2v.ioctl_reps, s2v.ioctl_ns), m_to,
			  m_to > 0 ? e_s2v / m_to : 0.0);
		diag("bench bandwidth size=%s reps=%u vram_to_sys_engine_MBps=%.0f vram_to_sys_ioctl_MBps=%.0f memcpy_from_bar_MBps=%.0f ratio_engine_to_memcpy=%.3f",
			  sz, reps, e_v2s, mbps(len * v2s.ioctl_reps, v2s.ioctl_ns), m_from,
			  m_from > 0 ? e_v2s / m_from : 0.0);
		diag("bench bandwidth size=%s ram_memcpy_MBps=%.0f ratio_sys_to_vram_engine_to_ram_memcpy=%.3f ratio_vram_to_sys_engine_to_ram_memcpy=%.3f",
			  sz, m_ram, m_ram > 0 ? e_s2v / m_ram : 0.0, m_ram > 0 ? e_v2s / m_ram : 0.0);
	}
	munmap(src, 16 * MIB);
	munmap(dst, 16 * MIB);
}

/* Submission modes of the small-job measurements. */
static const struct {
	const char *name;
	uint32_t flags;
} job_modes[] = {
	{ "irq doorbell-page", VUGPU_DMA_IRQ },
	{ "poll doorbell-page", 0 },
	{ "irq doorbell-page-no-hint", VUGPU_DMA_IRQ | VUGPU_DMA_DB_PAGE_ONLY },
	{ "poll doorbell-page-no-hint", VUGPU_DMA_DB_PAGE_ONLY },
	{ "irq ring-tail-register", VUGPU_DMA_IRQ | VUGPU_DMA_DB_REG },
	{ "poll ring-tail-register", VUGPU_DMA_DB_REG },
};
#define JOB_MODES	ARRAY_SIZE(job_modes)
#define JOB_ROUNDS	5

struct job_rates {
	double rate[JOB_ROUNDS];	/* jobs/s per round */
	uint64_t jobs, wakes;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void report_rates(const char *copy, const char *how, const struct job_rates *r,
			 unsigned int rounds)
{
	unsigned int k;

	for (k = 0; k < JOB_MODES; k++) {
		double sorted[JOB_ROUNDS], med;

		memcpy(sorted, r[k].rate, sizeof(sorted));
		qsort(sorted, rounds, sizeof(sorted[0]), cmp_double);
		med = sorted[rounds / 2];
		diag("bench jobs copy=%s mode=\"%s\" jobs=%llu jobs_per_s=%.0f us_per_job=%.1f min_jobs_per_s=%.0f max_jobs_per_s=%.0f wakes=%llu (%s; median of %u rounds)",
			  copy, job_modes[k].name, (unsigned long long)r[k].jobs, med,
			  med > 0 ? 1e6 / med : 0.0, sorted[0], sorted[rounds - 1],
			  (unsigned long long)r[k].wakes, how, rounds);
	}
}

/*
 * Small jobs: every mode once per round, rounds interleaved, so that load
 * changes on the (shared, emulated) host hit every mode alike; the median
 * round is reported.  "wakes" counts the RING_TAIL writes the §6.4
 * submission did because the engine's SLEEPING hint read 1.
 */
static void jobs(struct __test_metadata *_metadata, void *ctx)
{
	struct bench *b = ctx;
	unsigned int rounds = b->quick ? 1 : JOB_ROUNDS;
	unsigned int n = b->quick ? 50 : 100, m = n / 2, k, i, round;
	struct job_rates loop[JOB_MODES] = { 0 }, ioc[JOB_MODES] = { 0 };
	struct vugpu_engine_stats st0, st1;
	uint8_t *src;

	REQUIRE(b);
	src = buf_alloc(4096);
	ASSERT_THAT(src, "out of memory");
	memset(src, 0x5a, 64);
	for (round = 0; round < rounds; round++) {
		for (k = 0; k < JOB_MODES; k++) {
			/* VRAM->VRAM, looped inside the driver: no syscall per job. */
			struct vugpu_dma d = {
				.engine = 0, .flags = job_modes[k].flags,
				.src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM,
				.src = 32 * MIB, .dst = 32 * MIB + 4096, .length = 64, .count = n,
			};
			int ret;

			if (vugpu_engine_stats(b->fd, 0, &st0))
				break;
			ret = vugpu_dma(b->fd, VUGPU_IOCTL_DMA_COPY, &d);
			EXPECT_THAT(!ret && !vugpu_engine_stats(b->fd, 0, &st1), "%s: %s",
				    job_modes[k].name, err_str(ret));
			if (ret)
				continue;
			loop[k].rate[round] = 1e9 * n / (double)(d.elapsed_ns ? d.elapsed_ns : 1);
			loop[k].jobs += n;
			loop[k].wakes += st1.doorbell_wakes - st0.doorbell_wakes;
		}
		for (k = 0; k < JOB_MODES; k++) {
			/* SYS->VRAM, one ioctl per job: pin, map, submit, wait, unpin. */
			struct vugpu_dma d = {
				.engine = 0, .flags = job_modes[k].flags,
				.src_type = VUGPU_MEM_USER, .dst_type = VUGPU_MEM_VRAM,
				.src = (uintptr_t)src, .dst = 32 * MIB + 8192, .length = 64,
			};
			uint64_t t0, ns;
			int ret = 0;

			if (vugpu_engine_stats(b->fd, 0, &st0))
				break;
			t0 = vugpu_now_ns();
			for (i = 0; i < m && !ret; i++)
				ret = vugpu_dma(b->fd, VUGPU_IOCTL_DMA_COPY, &d);
			ns = vugpu_now_ns() - t0;
			EXPECT_THAT(!ret && !vugpu_engine_stats(b->fd, 0, &st1),
				    "%s, one ioctl per job: %s", job_modes[k].name, err_str(ret));
			if (ret)
				continue;
			ioc[k].rate[round] = 1e9 * m / (double)(ns ? ns : 1);
			ioc[k].jobs += m;
			ioc[k].wakes += st1.doorbell_wakes - st0.doorbell_wakes;
		}
	}
	EXPECT_THAT(b->bar && !memcmp(b->bar + 32 * MIB + 8192, src, 64), "64 B copy data wrong");
	munmap(src, 4096);
	if (_metadata->exit_code == KSFT_FAIL)
		return;
	report_rates("vram_to_vram_64B", "in-driver loop", loop, rounds);
	report_rates("sys_to_vram_64B", "one ioctl per job", ioc, rounds);
}

#define PICKUP_SAMPLES	25
#define PICKUP_IDLE_MS	3

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static void pickup(struct __test_metadata *_metadata, void *ctx)
{
	static const unsigned int modes[] = { 1, 3, 5 };	/* poll: page, page-no-hint, register */
	struct bench *b = ctx;
	unsigned int samples = b->quick ? 5 : PICKUP_SAMPLES, i, k;
	uint64_t ns[ARRAY_SIZE(modes)][PICKUP_SAMPLES], wakes[ARRAY_SIZE(modes)] = { 0 };
	struct vugpu_engine_stats st0, st1;

	REQUIRE(b);
	for (i = 0; i < samples; i++) {
		for (k = 0; k < ARRAY_SIZE(modes); k++) {
			struct timespec idle = { .tv_nsec = PICKUP_IDLE_MS * 1000000L };
			struct vugpu_dma d = {
				.engine = 0, .flags = job_modes[modes[k]].flags,
				.src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM,
				.src = 32 * MIB, .dst = 32 * MIB + 4096, .length = 64,
			};
			int ret;

			nanosleep(&idle, NULL);
			ASSERT_THAT(!vugpu_engine_stats(b->fd, 0, &st0), "ENGINE_STATS failed");
			ret = vugpu_dma(b->fd, VUGPU_IOCTL_DMA_COPY, &d);
			ASSERT_THAT(!ret, "%s: %s", job_modes[modes[k]].name, err_str(ret));
			ASSERT_THAT(!vugpu_engine_stats(b->fd, 0, &st1), "ENGINE_STATS failed");
			ns[k][i] = d.elapsed_ns;
			wakes[k] += st1.doorbell_wakes - st0.doorbell_wakes;
		}
	}
	for (k = 0; k < ARRAY_SIZE(modes); k++) {
		qsort(ns[k], samples, sizeof(ns[k][0]), cmp_u64);
		diag("bench pickup mode=\"%s\" after_idle_ms=%u samples=%u median_us=%.1f p90_us=%.1f min_us=%.1f wakes=%llu (one 64 B VRAM->VRAM job, doorbell to fence)",
			  job_modes[modes[k]].name, PICKUP_IDLE_MS, samples, ns[k][samples / 2] / 1e3,
			  ns[k][samples * 9 / 10] / 1e3, ns[k][0] / 1e3, (unsigned long long)wakes[k]);
	}
}

/* The options, filled in by main() before the tests run. */
static struct bench opts = { .fd = -1 };

/* Each test process opens the GPU and maps its VRAM BAR afresh. */
FIXTURE(dma_bench) {
	struct bench b;
};

FIXTURE_SETUP(dma_bench)
{
	struct bench *b = &self->b;
	int ret;

	*b = opts;
	b->ndevs = vugpu_find_devs(VUGPU_PCI_VENDOR_ID, VUGPU_PCI_DEVICE_ID, b->devs, VUGPU_MAX_DEVS);
	if (b->ndevs > 0 && !(ret = vugpu_open(&b->devs[0], 3000))) {
		b->fd = b->devs[0].fd;
		ret = vugpu_dma_info(b->fd, &b->info);
		if (ret)
			diag("DMA_INFO: %s", err_str(ret));
		b->bar_len = b->devs[0].info.bar2_size;
		b->bar = mmap(NULL, b->bar_len, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
		if (b->bar == MAP_FAILED)
			b->bar = NULL;
	} else {
		diag("no usable vugpu function");
	}
}

FIXTURE_TEARDOWN(dma_bench)
{
	int i;

	if (self->b.bar)
		munmap(self->b.bar, self->b.bar_len);
	for (i = 0; i < self->b.ndevs; i++)
		vugpu_close(&self->b.devs[i]);
}

/*
 * Seconds per measurement (the harness kills one that takes longer and
 * reports it failed): below the suite's 300 s boot timeout.
 */
#define BENCH_TIMEOUT 200

/* The measurements, in this order. */
TEST_F_TIMEOUT(dma_bench, bench_bandwidth, BENCH_TIMEOUT)
{
	bandwidth(_metadata, &self->b);
}

TEST_F_TIMEOUT(dma_bench, bench_small_jobs, BENCH_TIMEOUT)
{
	jobs(_metadata, &self->b);
}

TEST_F_TIMEOUT(dma_bench, bench_idle_pickup, BENCH_TIMEOUT)
{
	pickup(_metadata, &self->b);
}

static int option(const char *opt, const char *val)
{
	(void)val;
	if (!strcmp(opt, "--quick")) {
		opts.quick = true;
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	return vugpu_harness_main(argc, argv, option, "[--quick]");
}
