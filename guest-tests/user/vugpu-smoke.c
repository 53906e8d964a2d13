// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-smoke - first-contact tests for vugpu GPUs in a guest, on the
 * kernel's kselftest harness (see vugpu_harness.h): fixture "smoke", each
 * test in a process of its own that finds and opens the GPUs itself.
 *
 * Runs against every function with the vugpu vendor/device ID and the
 * vugpu.ko test driver (kmod/), in this order:
 *   (a) enumeration: sysfs identity, config space header and every
 *       capability hw-spec §1 promises, BAR types and sizes;
 *   (b) BAR0 registers: identity, VRAM size, scratch, read-only behaviour;
 *   (c) VRAM: BAR (ioctl and mmap) against the VRAM_INDEX/VRAM_DATA window
 *       (the device's own view), both directions, and the window's errors;
 *   (d) every MSI-X vector fires;
 *   (e) FLR (driver ioctl and sysfs "reset") and SOFT_RESET restore reset
 *       values and VRAM survives;
 *   (f) unbind/bind and rmmod/insmod leave a working device and a clean
 *       kernel log.
 *
 * Usage: vugpu-smoke [--vendor ID] [--device ID] [--subsystem-vendor ID]
 *                    [--subsystem-device ID] [--module PATH]
 *                    [--vram-mib LIST] [--msix-vectors LIST] [--serial LIST]
 *                    [HARNESS OPTIONS]
 * --vram-mib, --msix-vectors and --serial take one value per GPU, comma
 * separated, in BDF order (e.g. what a `vugpu serve --config` file gave each
 * GPU): the GPU count must match and each GPU must show its own value; the
 * harness's options select tests (-t NAME, -T NAME, -l lists them,
 * -h).  Output is the harness's TAP (results "smoke.NAME").  Exit status: 0
 * when no test failed, 1 otherwise, 2 on bad usage.  Needs root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "smoke.h"

const char *err_str(int ret)
{
	return strerror(ret < 0 ? -ret : ret);
}

uint64_t bar_size(const struct vugpu_dev *d, unsigned int bar)
{
	const struct vugpu_bar *b = &d->bars[bar];

	return b->end > b->start ? b->end - b->start + 1 : 0;
}

unsigned int ilog2_u64(uint64_t v)
{
	unsigned int r = 0;

	while (v >>= 1)
		r++;
	return r;
}

uint64_t reg_vram_size(int fd, int *ret)
{
	uint32_t lo = 0, hi = 0;

	*ret = vugpu_reg_read(fd, VUGPU_REG_VRAM_SIZE_LO, &lo);
	if (!*ret)
		*ret = vugpu_reg_read(fd, VUGPU_REG_VRAM_SIZE_HI, &hi);
	return (uint64_t)hi << 32 | lo;
}

const char *irq_err_str(int ret)
{
	return ret == -ETIMEDOUT ? "no interrupt within the driver's timeout" : err_str(ret);
}

int live_vector(const struct smoke *s, const struct vugpu_dev *d, bool last)
{
	const uint8_t *dead = s->dead_vectors[d - s->devs];
	unsigned int i, n = d->info.num_vectors;

	for (i = 0; i < n && i < VUGPU_MSIX_MAX_VECTORS; i++) {
		unsigned int v = last ? n - 1 - i : i;

		if (!(dead[v / 8] & (1u << (v % 8))))
			return (int)v;
	}
	return -1;
}

static sigjmp_buf probe_env;

static void probe_fault(int sig)
{
	siglongjmp(probe_env, sig);
}

/* Reads a dword from a mapping; the signal number if the access faulted. */
int probe_read(volatile uint32_t *p, uint32_t *val)
{
	struct sigaction sa = { .sa_handler = probe_fault }, obus, osegv;
	int sig;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &obus);
	sigaction(SIGSEGV, &sa, &osegv);
	sig = sigsetjmp(probe_env, 1);
	if (!sig)
		*val = *p;
	sigaction(SIGBUS, &obus, NULL);
	sigaction(SIGSEGV, &osegv, NULL);
	return sig;
}

static void discover(struct smoke *s)
{
	struct vugpu_dev *d;

	s->ndevs = vugpu_find_devs(s->vendor, s->device, s->devs, VUGPU_MAX_DEVS);
	if (s->ndevs <= 0)
		return;
	for_each_dev(s, d) {
		int ret;

		if (vugpu_read_config(d))
			diag("%s: cannot read config: %s", d->bdf, strerror(errno));
		if (vugpu_read_resources(d))
			diag("%s: cannot parse sysfs resource", d->bdf);
		ret = vugpu_open(d, OPEN_WAIT_MS);
		if (ret)
			diag("%s: cannot open its /dev/vugpuN: %s", d->bdf, err_str(ret));
	}
}

/* The options, filled in by main() before the tests run. */
static struct smoke opts = {
	.vendor = VUGPU_PCI_VENDOR_ID,
	.device = VUGPU_PCI_DEVICE_ID,
	.subsys_vendor = VUGPU_PCI_SUBSYS_VENDOR_ID,
	.subsys_device = VUGPU_PCI_SUBSYS_ID,
	.module_path = "/lib/modules/vugpu.ko",
};

/* Each test process finds the functions and opens their /dev/vugpuN afresh. */
FIXTURE(smoke) {
	struct smoke s;
};

FIXTURE_SETUP(smoke)
{
	self->s = opts;
	discover(&self->s);
}

FIXTURE_TEARDOWN(smoke)
{
	int i;

	for (i = 0; i < self->s.ndevs; i++)
		vugpu_close(&self->s.devs[i]);
}

/* The tests, in this order. */
#include "smoke_enum.c"
#include "smoke_mem.c"
#include "smoke_reset.c"

static int parse_num(const char *s, unsigned int *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *end || end == s || v > 0xffffffffUL)
		return -1;
	*out = (unsigned int)v;
	return 0;
}

/* "512,128": one number per GPU. */
static int parse_list(const char *s, struct smoke_expect *e)
{
	const char *p = s;

	e->n = 0;
	for (;;) {
		char *end;
		unsigned long long v;

		if (e->n == VUGPU_MAX_DEVS)
			return -1;
		errno = 0;
		v = strtoull(p, &end, 0);
		if (errno || end == p || *p == '-')
			return -1;
		e->v[e->n++] = v;
		if (!*end)
			return 0;
		if (*end != ',')
			return -1;
		p = end + 1;
	}
}

static int option(const char *opt, const char *val)
{
	unsigned int *num = NULL;

	if (!strcmp(opt, "--module") && val) {
		opts.module_path = val;
		return 2;
	} else if (!strcmp(opt, "--vram-mib") || !strcmp(opt, "--msix-vectors") ||
		   !strcmp(opt, "--serial")) {
		struct smoke_expect *e = opt[2] == 'v' ? &opts.vram_mib :
					 opt[2] == 'm' ? &opts.msix_vectors : &opts.serial;

		return val && !parse_list(val, e) ? 2 : 0;
	} else if (!strcmp(opt, "--vendor")) {
		num = &opts.vendor;
	} else if (!strcmp(opt, "--device")) {
		num = &opts.device;
	} else if (!strcmp(opt, "--subsystem-vendor")) {
		num = &opts.subsys_vendor;
	} else if (!strcmp(opt, "--subsystem-device")) {
		num = &opts.subsys_device;
	}
	return num && val && !parse_num(val, num) ? 2 : 0;
}

int main(int argc, char **argv)
{
	size_t len = sizeof(*opts.dead_vectors) * VUGPU_MAX_DEVS;

	opts.dead_vectors = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
				 -1, 0);
	if (opts.dead_vectors == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	return vugpu_harness_main(argc, argv, option,
				  "[--vendor ID] [--device ID] [--subsystem-vendor ID] "
				  "[--subsystem-device ID] [--module PATH] "
				  "[--vram-mib LIST] [--msix-vectors LIST] [--serial LIST]");
}
