// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-inject - faults injected into a running GPU (docs/hw-spec.md §10)
 * reach the driver as a real device's would, and the driver recovers (or
 * declares the device dead).
 *
 * The host injects: each test asks the runner on the results channel with
 *	# vugpu-vm ctl: gpu0 inject dma-error engine=1
 * and reads the answer the runner writes back on the same serial line
 * (/dev/ttyS1): "vugpu-vm ctl: {"ok":...}" (guest-tests/src/ctl_agent.rs).
 * Only then does it start the job the fault is meant for.  Tests, in order
 * (surprise removal last: the function does not come back):
 *   dma_error         the next job fails with SYS_UNMAPPED and AER UR, moves
 *                     nothing; the next job succeeds (engine reset)
 *   engine_hang       the job times out (dma_timeout_ms) with the engine
 *                     RUNNING; the timeout's engine reset recovers it
 *   poisoned_vram     a copy out of poisoned VRAM fails with POISONED at the
 *                     first poisoned byte (AER internal error, logged); the
 *                     CPU still reads the bytes through the BAR; clear ends it
 *   msix_drop         a lost completion interrupt (the device signalled, the
 *                     handler never ran): a job the driver sleeps on still
 *                     completes by the missed-interrupt check (missed_irqs)
 *   surprise_removal  all-ones reads: the job fails -ENODEV, the device is
 *                     marked dead, every later ioctl fails -ENODEV at once,
 *                     and sysfs remove unbinds the driver without hanging
 *
 * On the kernel's kselftest harness (vugpu_harness.h): fixture "inject", each
 * test in a process of its own.
 *
 * Usage: vugpu-inject [HARNESS OPTIONS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"

#define RESULTS_TTY	"/dev/ttyS1"
#define CTL_WAIT_MS	30000
#define HANG_TIMEOUT_MS	1000
#define JOB_BYTES	8192
#define VRAM_OFF	(1ULL << 20)	/* where the tests put their VRAM data */

struct inj_ctx {
	struct vugpu_dev dev;
	bool opened;
	unsigned int engine;		/* the engine the faults go to */
	unsigned int vector_base;
	int tty;
	char timeout_saved[32];
};

static const char *err_str(int ret)
{
	return ret ? strerror(-ret) : "ok";
}

/*
 * Asks the runner for a control-socket request on gpu0 and waits for its
 * answer; 0 if the server answered {"ok":...}.
 */
static int ctl(struct inj_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ctl(struct inj_ctx *c, const char *fmt, ...)
{
	char req[256], line[1024];
	size_t n = 0;
	uint64_t end = vugpu_now_ns() + (uint64_t)CTL_WAIT_MS * 1000000;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(req, sizeof(req), fmt, ap);
	va_end(ap);
	if (c->tty < 0) {
		c->tty = open(RESULTS_TTY, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
		if (c->tty < 0) {
			printf("# cannot open %s: %s\n", RESULTS_TTY, strerror(errno));
			return -errno;
		}
	}
	printf("# vugpu-vm ctl: gpu0 %s\n", req);
	fflush(stdout);
	while (vugpu_now_ns() < end) {
		struct pollfd p = { .fd = c->tty, .events = POLLIN };
		char ch;
		ssize_t r;

		if (poll(&p, 1, 100) <= 0)
			continue;
		while ((r = read(c->tty, &ch, 1)) == 1) {
			if (ch == '\r')
				continue;
			if (ch != '\n') {
				if (n < sizeof(line) - 1)
					line[n++] = ch;
				continue;
			}
			line[n] = 0;
			n = 0;
			if (strncmp(line, "vugpu-vm ctl: ", 14))
				continue;
			printf("# ctl %s -> %s\n", req, line + 14);
			return strstr(line + 14, "{\"ok\"") == line + 14 ? 0 : -EIO;
		}
	}
	printf("# ctl %s: no answer from the runner within %d s\n", req, CTL_WAIT_MS / 1000);
	return -ETIMEDOUT;
}

static int job(struct inj_ctx *c, unsigned int src_type, uint64_t src, unsigned int dst_type,
	       uint64_t dst, uint64_t len, uint32_t flags, struct vugpu_dma *d)
{
	memset(d, 0, sizeof(*d));
	d->engine = c->engine;
	d->flags = flags;
	d->src_type = src_type;
	d->src = src;
	d->dst_type = dst_type;
	d->dst = dst;
	d->length = len;
	return vugpu_dma(c->dev.fd, VUGPU_IOCTL_DMA_COPY, d);
}

static void show(const char *what, int ret, const struct vugpu_dma *d)
{
	printf("# %s: %d (%s) result %u, engine %s ERROR_CODE %u %s ERROR_ADDR %#llx INFO %#x, %.1f ms\n",
	       what, ret, err_str(ret), d->result, vugpu_eng_state_name(d->regs.status),
	       d->regs.error_code, vugpu_eng_err_name(d->regs.error_code),
	       (unsigned long long)d->regs.error_addr, d->regs.error_info, d->elapsed_ns / 1e6);
}

static int set_timeout(const char *ms)
{
	return vugpu_write_file("/sys/module/vugpu/parameters/dma_timeout_ms", ms);
}

#define REQUIRE_DEV(c)							\
	do {									\
		if (!(c)->opened)						\
			SKIP_TEST("no bound vugpu GPU");			\
	} while (0)

static void dma_error(struct __test_metadata *_metadata, void *ctx)
{
	struct inj_ctx *c = ctx;
	struct vugpu_engine_stats before, after;
	struct vugpu_error_state es;
	uint8_t src[JOB_BYTES], back[JOB_BYTES], zero[JOB_BYTES] = { 0 };
	struct vugpu_dma d;
	int ret;

	REQUIRE_DEV(c);
	vugpu_fill_pattern(src, sizeof(src), 11);
	ASSERT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_WRITE, VRAM_OFF, zero,
				      sizeof(zero)), "VRAM_WRITE");
	vugpu_error_state(c->dev.fd, &es, true);
	vugpu_engine_stats(c->dev.fd, c->engine, &before);
	ASSERT_THAT(!ctl(c, "inject dma-error engine=%u", c->engine), "inject refused");

	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src),
		  VUGPU_DMA_IRQ, &d);
	show("copy with the DMA error armed", ret, &d);
	EXPECT_THAT(ret == -EIO && d.result == VUGPU_DMA_ENGINE_ERROR,
		    "job: %d (%s) result %u, expected -EIO / ENGINE_ERROR", ret, err_str(ret), d.result);
	EXPECT_THAT((d.regs.status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_ERROR &&
		    d.regs.error_code == VUGPU_ENG_ERR_SYS_UNMAPPED,
		    "engine %s code %u, expected ERROR SYS_UNMAPPED",
		    vugpu_eng_state_name(d.regs.status), d.regs.error_code);
	EXPECT_THAT((d.regs.error_info & VUGPU_ENG_INFO_APERTURE_MASK) == VUGPU_APERTURE_SYS &&
		    !(d.regs.error_info & VUGPU_ENG_INFO_WRITE),
		    "ERROR_INFO %#x: expected a SYS read (the source)", d.regs.error_info);
	EXPECT_THAT(!vugpu_error_state(c->dev.fd, &es, true) &&
		    (es.aer_uncor_status & VUGPU_AER_UNCOR_UR),
		    "AER Uncorrectable Status %#x: expected Unsupported Request", es.aer_uncor_status);
	EXPECT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_READ, VRAM_OFF, back,
				      sizeof(back)) && !memcmp(back, zero, sizeof(back)),
		    "the failed copy moved bytes");

	/* The driver resets the engine before the next job: it works. */
	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src),
		  VUGPU_DMA_IRQ, &d);
	EXPECT_THAT(ret == 0, "the next copy: %d (%s)", ret, err_str(ret));
	EXPECT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_READ, VRAM_OFF, back,
				      sizeof(back)) && !memcmp(back, src, sizeof(back)),
		    "the next copy's data did not arrive");
	vugpu_engine_stats(c->dev.fd, c->engine, &after);
	EXPECT_THAT(after.errors == before.errors + 1 && after.resets > before.resets,
		    "driver errors %llu -> %llu, resets %llu -> %llu",
		    (unsigned long long)before.errors, (unsigned long long)after.errors,
		    (unsigned long long)before.resets, (unsigned long long)after.resets);
}

static void engine_hang(struct __test_metadata *_metadata, void *ctx)
{
	struct inj_ctx *c = ctx;
	struct vugpu_engine_stats before, after;
	uint8_t src[JOB_BYTES];
	struct vugpu_dma d;
	char ms[16];
	uint64_t t0, took;
	int ret;

	REQUIRE_DEV(c);
	vugpu_fill_pattern(src, sizeof(src), 12);
	snprintf(ms, sizeof(ms), "%d", HANG_TIMEOUT_MS);
	ASSERT_THAT(!set_timeout(ms), "cannot set dma_timeout_ms");
	vugpu_engine_stats(c->dev.fd, c->engine, &before);
	ASSERT_THAT(!ctl(c, "inject hang engine=%u", c->engine), "inject refused");
	t0 = vugpu_now_ns();
	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src),
		  VUGPU_DMA_IRQ, &d);
	took = (vugpu_now_ns() - t0) / 1000000;
	show("copy on the hung engine", ret, &d);
	EXPECT_THAT(ret == -ETIMEDOUT && d.result == VUGPU_DMA_TIMEOUT,
		    "job: %d (%s) result %u, expected -ETIMEDOUT", ret, err_str(ret), d.result);
	EXPECT_THAT((d.regs.status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_RUNNING,
		    "engine %s at the timeout, expected RUNNING (hung)",
		    vugpu_eng_state_name(d.regs.status));
	EXPECT_THAT(took >= HANG_TIMEOUT_MS - 50 && took < HANG_TIMEOUT_MS + 20000,
		    "the job returned after %llu ms (timeout %d ms)", (unsigned long long)took,
		    HANG_TIMEOUT_MS);
	/* The timeout's engine reset ended the hang. */
	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src),
		  VUGPU_DMA_IRQ, &d);
	EXPECT_THAT(ret == 0, "the next copy: %d (%s)", ret, err_str(ret));
	vugpu_engine_stats(c->dev.fd, c->engine, &after);
	EXPECT_THAT(after.timeouts == before.timeouts + 1, "driver timeouts %llu -> %llu",
		    (unsigned long long)before.timeouts, (unsigned long long)after.timeouts);
	set_timeout(c->timeout_saved);
}

static void poisoned_vram(struct __test_metadata *_metadata, void *ctx)
{
	struct inj_ctx *c = ctx;
	struct vugpu_error_state es;
	uint8_t data[JOB_BYTES], out[JOB_BYTES], cpu[JOB_BYTES];
	uint64_t poison = VRAM_OFF + JOB_BYTES / 2 + 64;
	struct vugpu_dma d;
	static char log[1 << 16];
	int ret;

	REQUIRE_DEV(c);
	vugpu_fill_pattern(data, sizeof(data), 13);
	ASSERT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_WRITE, VRAM_OFF, data,
				      sizeof(data)), "VRAM_WRITE");
	vugpu_error_state(c->dev.fd, &es, true);
	ASSERT_THAT(!ctl(c, "inject poison offset=%#llx length=256", (unsigned long long)poison),
		    "inject refused");
	memset(out, 0, sizeof(out));
	ret = job(c, VUGPU_MEM_VRAM, VRAM_OFF, VUGPU_MEM_USER, (uintptr_t)out, sizeof(out),
		  VUGPU_DMA_IRQ, &d);
	show("copy out of poisoned VRAM", ret, &d);
	EXPECT_THAT(ret == -EIO && d.regs.error_code == VUGPU_ENG_ERR_POISONED,
		    "job: %d (%s) code %u (%s), expected -EIO / POISONED", ret, err_str(ret),
		    d.regs.error_code, vugpu_eng_err_name(d.regs.error_code));
	EXPECT_THAT(d.regs.error_addr == poison &&
		    (d.regs.error_info & VUGPU_ENG_INFO_APERTURE_MASK) == VUGPU_APERTURE_VRAM,
		    "ERROR_ADDR %#llx INFO %#x, expected VRAM %#llx (the first poisoned byte)",
		    (unsigned long long)d.regs.error_addr, d.regs.error_info,
		    (unsigned long long)poison);
	EXPECT_THAT(!vugpu_error_state(c->dev.fd, &es, true) &&
		    (es.aer_uncor_status & VUGPU_AER_UNCOR_UIE),
		    "AER Uncorrectable Status %#x: expected Uncorrectable Internal Error",
		    es.aer_uncor_status);
	EXPECT_THAT(vugpu_dmesg(log, sizeof(log)) > 0 && strstr(log, "POISONED"),
		    "the driver did not log the poisoned read");
	/* The CPU's view through the BAR is not affected. */
	EXPECT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_READ, VRAM_OFF, cpu,
				      sizeof(cpu)) && !memcmp(cpu, data, sizeof(cpu)),
		    "CPU read of poisoned VRAM through the BAR differs");
	/* A copy of the clean part works (after the driver's engine reset). */
	ret = job(c, VUGPU_MEM_VRAM, VRAM_OFF, VUGPU_MEM_USER, (uintptr_t)out, JOB_BYTES / 2,
		  VUGPU_DMA_IRQ, &d);
	EXPECT_THAT(ret == 0 && !memcmp(out, data, JOB_BYTES / 2),
		    "copy of the clean half: %d (%s)", ret, err_str(ret));
	ASSERT_THAT(!ctl(c, "inject clear"), "clear refused");
	ret = job(c, VUGPU_MEM_VRAM, VRAM_OFF, VUGPU_MEM_USER, (uintptr_t)out, sizeof(out),
		  VUGPU_DMA_IRQ, &d);
	EXPECT_THAT(ret == 0 && !memcmp(out, data, sizeof(out)),
		    "copy after clear: %d (%s)", ret, err_str(ret));
}

/*
 * A lost completion interrupt matters only when the driver sleeps for it: a
 * job that is done before the driver waits never needs its message.  So the
 * job is a VRAM -> VRAM copy long enough for the driver to be asleep before
 * the fence lands, longer on each attempt; every attempt proves the message
 * was lost (the device signalled once, the handler never ran), and one must
 * have been completed by the driver's missed-interrupt check.
 */
#define MSIX_SRC	(64ULL << 20)
#define MSIX_DST	(128ULL << 20)

static void msix_drop(struct __test_metadata *_metadata, void *ctx)
{
	static const uint64_t lens[] = { 16ULL << 20, 32ULL << 20, 64ULL << 20, 64ULL << 20 };
	struct inj_ctx *c = ctx;
	struct vugpu_engine_stats before, mid = { 0 }, after;
	uint8_t mark[JOB_BYTES], back[JOB_BYTES];
	unsigned int irqs = VUGPU_STAT(VUGPU_ENG_STAT_IRQS), a;
	bool recovered = false;
	struct vugpu_dma d;
	int ret;

	REQUIRE_DEV(c);
	vugpu_fill_pattern(mark, sizeof(mark), 14);
	for (a = 0; a < ARRAY_SIZE(lens) && !recovered; a++) {
		uint64_t len = lens[a];

		/* The copy's last bytes are a fresh pattern: they must arrive. */
		mark[0] = (uint8_t)a;
		ASSERT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_WRITE,
					      MSIX_SRC + len - sizeof(mark), mark, sizeof(mark)),
			    "VRAM_WRITE");
		vugpu_engine_stats(c->dev.fd, c->engine, &before);
		ASSERT_THAT(!ctl(c, "inject msix-drop vector=%u", c->vector_base + c->engine),
			    "inject refused");
		ret = job(c, VUGPU_MEM_VRAM, MSIX_SRC, VUGPU_MEM_VRAM, MSIX_DST, len, VUGPU_DMA_IRQ,
			  &d);
		vugpu_engine_stats(c->dev.fd, c->engine, &mid);
		printf("# attempt %u: %llu MiB copy whose interrupt is lost: %d (%s), %.1f ms, missed_irqs %llu -> %llu\n",
		       a + 1, (unsigned long long)(len >> 20), ret, err_str(ret), d.elapsed_ns / 1e6,
		       (unsigned long long)before.missed_irqs, (unsigned long long)mid.missed_irqs);
		ASSERT_THAT(ret == 0, "job: %d (%s), expected 0 (completed without its interrupt)",
			    ret, err_str(ret));
		EXPECT_THAT(!vugpu_vram_io(c->dev.fd, VUGPU_IOCTL_VRAM_READ,
					      MSIX_DST + len - sizeof(back), back, sizeof(back)) &&
			    !memcmp(back, mark, sizeof(back)), "data did not arrive");
		EXPECT_THAT(mid.hw[irqs] == before.hw[irqs] + 1,
			    "device IRQS %llu -> %llu: expected one signal",
			    (unsigned long long)before.hw[irqs], (unsigned long long)mid.hw[irqs]);
		ASSERT_THAT(mid.completion_irqs == before.completion_irqs,
			    "the handler ran (%llu -> %llu): the message was not lost",
			    (unsigned long long)before.completion_irqs,
			    (unsigned long long)mid.completion_irqs);
		EXPECT_THAT(mid.missed_irqs <= before.missed_irqs + 1, "missed_irqs %llu -> %llu",
			    (unsigned long long)before.missed_irqs, (unsigned long long)mid.missed_irqs);
		recovered = mid.missed_irqs == before.missed_irqs + 1;
		if (recovered)
			EXPECT_THAT(d.elapsed_ns >= 200000000ULL,
				    "completed by the missed-interrupt check after %.1f ms (< 250)",
				    d.elapsed_ns / 1e6);
	}
	ASSERT_THAT(recovered,
		    "no attempt had the driver asleep for the lost interrupt (missed_irqs unchanged)");
	/*
	 * The next message is delivered: the handler runs (within 1 s: a job done
	 * before the driver slept returns before its interrupt arrives).
	 */
	ret = job(c, VUGPU_MEM_VRAM, MSIX_SRC, VUGPU_MEM_VRAM, MSIX_DST, lens[0], VUGPU_DMA_IRQ,
		  &d);
	for (a = 0; a < 100; a++) {
		vugpu_engine_stats(c->dev.fd, c->engine, &after);
		if (after.completion_irqs != mid.completion_irqs)
			break;
		usleep(10000);
	}
	EXPECT_THAT(ret == 0 && after.missed_irqs == mid.missed_irqs &&
		    after.completion_irqs == mid.completion_irqs + 1,
		    "next job %d, missed_irqs %llu -> %llu, handler runs %llu -> %llu", ret,
		    (unsigned long long)mid.missed_irqs, (unsigned long long)after.missed_irqs,
		    (unsigned long long)mid.completion_irqs,
		    (unsigned long long)after.completion_irqs);
}

/* Writes "1" to the function's sysfs remove within @ms; 0, or -ETIMEDOUT / -errno. */
static int sysfs_remove(const struct vugpu_dev *d, unsigned int ms)
{
	char path[200];
	pid_t pid;
	int st;
	uint64_t end = vugpu_now_ns() + (uint64_t)ms * 1000000;

	snprintf(path, sizeof(path), "%s/remove", d->sysfs);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid)
		_exit(vugpu_write_file(path, "1") ? 1 : 0);
	while (vugpu_now_ns() < end) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid)
			return WIFEXITED(st) && !WEXITSTATUS(st) ? 0 : -EIO;
		usleep(20000);
	}
	return -ETIMEDOUT;
}

static void surprise_removal(struct __test_metadata *_metadata, void *ctx)
{
	struct inj_ctx *c = ctx;
	uint8_t src[JOB_BYTES];
	struct vugpu_dma d;
	struct vugpu_cmd cmd;
	static char log[1 << 16];
	uint64_t t0, took;
	char ms[16];
	int ret;

	REQUIRE_DEV(c);
	vugpu_fill_pattern(src, sizeof(src), 15);
	snprintf(ms, sizeof(ms), "%d", HANG_TIMEOUT_MS);
	ASSERT_THAT(!set_timeout(ms), "cannot set dma_timeout_ms");
	ASSERT_THAT(!ctl(c, "inject remove"), "inject refused");
	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src),
		  VUGPU_DMA_IRQ, &d);
	show("copy on the removed function", ret, &d);
	EXPECT_THAT(ret == -ENODEV, "job: %d (%s), expected -ENODEV", ret, err_str(ret));
	EXPECT_THAT(d.regs.status == VUGPU_REG_BAD_READ, "STATUS %#x, expected all ones",
		    d.regs.status);
	EXPECT_THAT(vugpu_dmesg(log, sizeof(log)) > 0 && strstr(log, "surprise removal"),
		    "the driver did not log the removal");
	/* Dead now: every ioctl fails at once, without touching the function. */
	t0 = vugpu_now_ns();
	ret = job(c, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_OFF, sizeof(src), 0, &d);
	EXPECT_THAT(ret == -ENODEV, "next job: %d (%s), expected -ENODEV", ret, err_str(ret));
	memset(&cmd, 0, sizeof(cmd));
	cmd.offset = VUGPU_REG_ID;
	ret = vugpu_cmd(c->dev.fd, VUGPU_IOCTL_REG_READ, &cmd);
	EXPECT_THAT(ret == -ENODEV, "REG_READ: %d (%s), expected -ENODEV", ret, err_str(ret));
	took = (vugpu_now_ns() - t0) / 1000000;
	EXPECT_THAT(took < 500, "the dead device's ioctls took %llu ms", (unsigned long long)took);
	vugpu_close(&c->dev);
	c->opened = false;
	/* Unbinding a dead device does not hang. */
	t0 = vugpu_now_ns();
	ret = sysfs_remove(&c->dev, 60000);
	took = (vugpu_now_ns() - t0) / 1000000;
	printf("# sysfs remove: %d (%s) after %llu ms\n", ret, err_str(ret), (unsigned long long)took);
	EXPECT_THAT(ret == 0, "sysfs remove of the dead function: %d (%s)", ret, err_str(ret));
	EXPECT_THAT(!vugpu_path_exists(c->dev.sysfs), "%s still exists", c->dev.sysfs);
	EXPECT_THAT(vugpu_dmesg(log, sizeof(log)) > 0 && strstr(log, "removed"),
		    "the driver did not log its remove");
}

/* Each test process opens the GPU itself. */
FIXTURE(inject) {
	struct inj_ctx c;
};

FIXTURE_SETUP(inject)
{
	struct inj_ctx *c = &self->c;
	struct vugpu_dma_info info;
	int ndevs;

	memset(c, 0, sizeof(*c));
	c->tty = -1;
	ndevs = vugpu_find_devs(VUGPU_PCI_VENDOR_ID, VUGPU_PCI_DEVICE_ID, &c->dev, 1);
	if (ndevs > 0 && !vugpu_open(&c->dev, 3000) && !vugpu_dma_info(c->dev.fd, &info) &&
	    info.engine_count > 0) {
		c->opened = true;
		/* Engine 1 when there is one: engine 0 stays for whatever else runs. */
		c->engine = info.engine_count > 1 ? 1 : 0;
		c->vector_base = info.vector_base;
		if (vugpu_read_file("/sys/module/vugpu/parameters/dma_timeout_ms", c->timeout_saved,
				    sizeof(c->timeout_saved)) < 0)
			snprintf(c->timeout_saved, sizeof(c->timeout_saved), "5000");
		c->timeout_saved[strcspn(c->timeout_saved, "\n")] = 0;
		diag("%s: engine %u of %u gets the faults", c->dev.bdf, c->engine,
		     info.engine_count);
	} else {
		diag("no bound vugpu GPU with DMA engines (%d found)", ndevs);
	}
}

FIXTURE_TEARDOWN(inject)
{
	if (self->c.opened)
		vugpu_close(&self->c.dev);
	if (self->c.tty >= 0)
		close(self->c.tty);
}

/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 600 s boot timeout, above the 30 s a test may
 * wait for the runner's answer to an injection request.
 */
#define INJECT_TIMEOUT 180

/* The tests, in this order (surprise removal last: the function does not come back). */
#define INJECT_TEST(name)							\
	TEST_F_TIMEOUT(inject, name, INJECT_TIMEOUT)				\
	{									\
		name(_metadata, &self->c);					\
	}

INJECT_TEST(dma_error)
INJECT_TEST(engine_hang)
INJECT_TEST(poisoned_vram)
INJECT_TEST(msix_drop)
INJECT_TEST(surprise_removal)

int main(int argc, char **argv)
{
	return vugpu_harness_main(argc, argv, NULL, "");
}
