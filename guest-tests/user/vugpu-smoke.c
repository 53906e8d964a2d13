// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-smoke - first-contact tests for vugpu GPUs in a guest, as KTAP.
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
 *                    [--first N] [--no-header] [--count] [--list]
 * --vram-mib, --msix-vectors and --serial take one value per GPU, comma
 * separated, in BDF order (e.g. what a `vugpu serve --config` file gave each
 * GPU): the GPU count must match and each GPU must show its own value.
 * --first/--no-header let a shell suite splice the results into its own KTAP
 * document (numbering starts at N, no version/plan lines).  Exit status: 0
 * when no test failed, 1 otherwise, 2 on bad usage.  Needs root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static const struct ktap_case smoke_cases[] = {
	/* (a) */
	KTAP_CASE(pci_enumeration),
	KTAP_CASE(config_header),
	KTAP_CASE(cap_power_management),
	KTAP_CASE(cap_msix),
	KTAP_CASE(cap_pcie),
	KTAP_CASE(cap_aer),
	KTAP_CASE(cap_resizable_bar),
	KTAP_CASE(cap_device_serial_number),
	KTAP_CASE(bar_layout),
	KTAP_CASE(driver_binding),
	/* (b) */
	KTAP_CASE(regs_identity),
	KTAP_CASE(regs_engine_info),
	KTAP_CASE(regs_vram_size),
	KTAP_CASE(regs_scratch),
	KTAP_CASE(regs_access_types),
	/* (c) */
	KTAP_CASE(vram_bar_to_window),
	KTAP_CASE(vram_window_to_bar),
	KTAP_CASE(vram_mmap),
	KTAP_CASE(vram_window_index),
	KTAP_CASE(ioctl_validation),
	/* (d) */
	KTAP_CASE(msix_all_vectors),
	/* (e) */
	KTAP_CASE(flr),
	KTAP_CASE(sysfs_reset),
	KTAP_CASE(soft_reset),
	/* (f) */
	KTAP_CASE(unbind_rebind),
	KTAP_CASE(module_reload),
	KTAP_CASE(dmesg_clean),
};

static void discover(struct smoke *s)
{
	struct vugpu_dev *d;

	s->ndevs = vugpu_find_devs(s->vendor, s->device, s->devs, VUGPU_MAX_DEVS);
	if (s->ndevs <= 0)
		return;
	for_each_dev(s, d) {
		int ret;

		if (vugpu_read_config(d))
			ktap_diag("%s: cannot read config: %s", d->bdf, strerror(errno));
		if (vugpu_read_resources(d))
			ktap_diag("%s: cannot parse sysfs resource", d->bdf);
		ret = vugpu_open(d, OPEN_WAIT_MS);
		if (ret)
			ktap_diag("%s: cannot open its /dev/vugpuN: %s", d->bdf, err_str(ret));
	}
}

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

static void usage(void)
{
	fprintf(stderr,
		"usage: vugpu-smoke [--vendor ID] [--device ID] [--subsystem-vendor ID]\n"
		"                   [--subsystem-device ID] [--module PATH]\n"
		"                   [--vram-mib LIST] [--msix-vectors LIST] [--serial LIST]\n"
		"                   [--first N] [--no-header] [--count] [--list]\n");
}

int main(int argc, char **argv)
{
	struct smoke s = {
		.vendor = VUGPU_PCI_VENDOR_ID,
		.device = VUGPU_PCI_DEVICE_ID,
		.subsys_vendor = VUGPU_PCI_SUBSYS_VENDOR_ID,
		.subsys_device = VUGPU_PCI_SUBSYS_ID,
		.module_path = "/lib/modules/vugpu.ko",
	};
	unsigned int n = KTAP_ARRAY_SIZE(smoke_cases), first = 1, i, failed;
	struct ktap_totals tot = { 0 };
	bool header = true;
	int a;

	for (a = 1; a < argc; a++) {
		const char *opt = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
		unsigned int *num = NULL;

		if (!strcmp(opt, "--count")) {
			printf("%u\n", n);
			return 0;
		} else if (!strcmp(opt, "--list")) {
			for (i = 0; i < n; i++)
				printf("%s\n", smoke_cases[i].name);
			return 0;
		} else if (!strcmp(opt, "--no-header")) {
			header = false;
			continue;
		} else if (!strcmp(opt, "--module") && val) {
			s.module_path = val;
			a++;
			continue;
		} else if (!strcmp(opt, "--vram-mib") || !strcmp(opt, "--msix-vectors") ||
			   !strcmp(opt, "--serial")) {
			struct smoke_expect *e = opt[2] == 'v' ? &s.vram_mib :
						 opt[2] == 'm' ? &s.msix_vectors : &s.serial;

			if (!val || parse_list(val, e)) {
				usage();
				return 2;
			}
			a++;
			continue;
		} else if (!strcmp(opt, "--vendor")) {
			num = &s.vendor;
		} else if (!strcmp(opt, "--device")) {
			num = &s.device;
		} else if (!strcmp(opt, "--subsystem-vendor")) {
			num = &s.subsys_vendor;
		} else if (!strcmp(opt, "--subsystem-device")) {
			num = &s.subsys_device;
		} else if (!strcmp(opt, "--first")) {
			num = &first;
		}
		if (!num || !val || parse_num(val, num)) {
			usage();
			return 2;
		}
		a++;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (header)
		ktap_print_header(n);
	discover(&s);
	failed = ktap_run(smoke_cases, n, first, &s, &tot);
	if (header)
		ktap_print_totals(&tot);
	for (i = 0; i < (unsigned int)(s.ndevs > 0 ? s.ndevs : 0); i++)
		vugpu_close(&s.devs[i]);
	return failed ? 1 : 0;
}
