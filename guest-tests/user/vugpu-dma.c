// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma - DMA copy engine tests for a vugpu GPU in a guest, as KTAP.
 *
 * Runs against the first function with the vugpu vendor/device ID, through
 * the vugpu.ko test driver's DMA ioctls (kmod/vugpu_uapi.h), hw-spec §5-§8:
 *   - data: every direction (SYS->VRAM, VRAM->SYS, VRAM->VRAM, SYS->SYS)
 *     at 1 B, 4 KiB at odd offsets, 1 MiB and 16 MiB, every byte checked
 *     (VRAM through the BAR mapping and, sampled, through VRAM_DATA), and
 *     the bytes around each target checked untouched; fill; fence;
 *     timestamp; interrupt and fence-polling completion; §8.1 counters;
 *     No Snoop / Relaxed Ordering honoured per Device Control; rings that
 *     wrap and rings in VRAM;
 *   - errors: ioctl validation; unmapped SYS addresses (SYS_UNMAPPED, AER
 *     UR, Device Status, Received Master Abort, vector 0) and recovery by
 *     engine reset; VRAM out of range; every descriptor error; a job that
 *     times out; DMA across FLR and SOFT_RESET; Bus Master Enable cleared
 *     (nothing fetched, written or signalled; the job and a held MSI-X
 *     message complete once it is set again);
 *   - stress: every engine from its own thread at once, all verified; a
 *     hostile stream of random raw descriptors, after which the engines
 *     recover, the device still copies correctly and the driver's guard
 *     pages around the only system memory the stream could target are
 *     intact.
 *
 * Usage: vugpu-dma [--vendor ID] [--device ID] [--hostile N] [--seed N]
 *                  [--first N] [--no-header] [--count] [--list] [--engines]
 *                  [--only CASE[,CASE...]] [--no-rom]
 * --engines prints the function's ENGINE_COUNT (or "none") and exits;
 * --only runs a subset and --no-rom keeps the BIOS ROM window (fd-less,
 * message DMA) out of the hostile stream: debugging aids, the suite uses
 * neither.
 * Exit status: 0 when no test failed, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dma.h"

const char *err_str(int ret)
{
	return strerror(ret < 0 ? -ret : ret);
}

bool device_alive(struct dma_ctx *c)
{
	c->last_id = 0;
	return !vugpu_reg_read(c->fd, VUGPU_REG_ID, &c->last_id) && c->last_id == VUGPU_ID_VALUE;
}

void *buf_alloc(size_t len)
{
	void *p = mmap(NULL, len ? len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

void buf_free(void *p, size_t len)
{
	if (p)
		munmap(p, len ? len : 1);
}

int dma_job(struct dma_ctx *c, unsigned long req, unsigned int engine, uint32_t flags,
	    uint32_t src_type, uint64_t src, uint32_t dst_type, uint64_t dst, uint64_t len,
	    uint64_t value, struct vugpu_dma *out)
{
	struct vugpu_dma d = {
		.engine = engine, .flags = flags, .src_type = src_type, .dst_type = dst_type,
		.src = src, .dst = dst, .length = len, .value = value,
	};
	int ret = vugpu_dma(c->fd, req, &d);

	if (out)
		*out = d;
	return ret;
}

int dma_copy(struct dma_ctx *c, unsigned int engine, uint32_t flags, uint32_t src_type,
	     uint64_t src, uint32_t dst_type, uint64_t dst, uint64_t len, struct vugpu_dma *out)
{
	return dma_job(c, VUGPU_IOCTL_DMA_COPY, engine, flags, src_type, src, dst_type, dst, len, 0,
		       out);
}

const char *regs_str(const struct vugpu_engine_regs *r, char *buf, size_t len)
{
	snprintf(buf, len, "STATUS %s (%#x) ERROR_CODE %u %s ERROR_ADDR %#llx ERROR_INFO %#x HEAD %u TAIL %u CONTROL %#x",
		 vugpu_eng_state_name(r->status), r->status, r->error_code,
		 vugpu_eng_err_name(r->error_code), (unsigned long long)r->error_addr,
		 r->error_info, r->head, r->tail, r->control);
	return buf;
}

int refresh_info(struct dma_ctx *c)
{
	c->info_ret = vugpu_dma_info(c->fd, &c->info);
	return c->info_ret;
}

long vram_diff(struct dma_ctx *c, uint64_t off, const void *expect, size_t len)
{
	if (off + len > c->bar_len)
		return 0;
	return vugpu_first_diff(c->bar + off, expect, len);
}

int vram_window_check(struct dma_ctx *c, uint64_t off, const uint8_t *expect, size_t len,
		      char *why, size_t whylen)
{
	uint8_t win[256 + 8];
	size_t n = len < 256 ? len : 256;
	uint64_t starts[2] = { off, off + len - n };
	unsigned int k;

	for (k = 0; k < 2; k++) {
		uint64_t s = starts[k], a = s & ~3ULL;
		size_t span = ((s + n + 3) & ~3ULL) - a;
		long diff;
		int ret = vugpu_vram_io(c->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, a, win, span);

		if (ret) {
			snprintf(why, whylen, "VRAM_DATA read at %#llx: %s", (unsigned long long)a,
				 err_str(ret));
			return ret;
		}
		diff = vugpu_first_diff(win + (s - a), expect + (s - off), n);
		if (diff >= 0) {
			snprintf(why, whylen,
				 "VRAM_DATA (device view) differs at VRAM %#llx: %#x, expected %#x",
				 (unsigned long long)(s + diff), win[s - a + diff],
				 expect[s - off + diff]);
			return -1;
		}
	}
	return 0;
}

bool all_bytes(const void *p, size_t len, uint8_t byte)
{
	const uint8_t *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i] != byte)
			return false;
	return true;
}

int clear_errors(struct dma_ctx *c, struct vugpu_error_state *before)
{
	struct vugpu_error_state tmp;

	return vugpu_error_state(c->fd, before ? before : &tmp, true);
}

uint64_t stat_delta(const struct vugpu_engine_stats *a, const struct vugpu_engine_stats *b,
		    unsigned int reg)
{
	return b->hw[VUGPU_STAT(reg)] - a->hw[VUGPU_STAT(reg)];
}

bool need_vram_area(struct dma_ctx *c)
{
	return c->bar && c->vram_limit >= VRAM_USED_END;
}

uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

/*
 * Reads /proc/iomem's top-level entries for two SYS ranges with known
 * mapping state (see struct dma_ctx).
 */
static void find_sys_ranges(struct dma_ctx *c)
{
	struct {
		uint64_t s, e;
		char name[64];
	} top[128], kid[128];
	unsigned int nt = 0, nk = 0, i, k;
	char line[256];
	uint64_t end = 0;
	FILE *f = fopen("/proc/iomem", "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e;
		char *name = strstr(line, " : ");

		if (sscanf(line, " %llx-%llx", &s, &e) != 2 || !name)
			continue;
		name[strcspn(name, "\n")] = '\0';
		if (line[0] != ' ' && nt < KTAP_ARRAY_SIZE(top)) {
			top[nt].s = s;
			top[nt].e = e;
			snprintf(top[nt++].name, sizeof(top[0].name), "%s", name + 3);
		} else if (line[0] == ' ' && nk < KTAP_ARRAY_SIZE(kid)) {
			kid[nk].s = s;
			kid[nk++].e = e;
		}
	}
	fclose(f);

	/* Low RAM: System RAM from 1 MiB on, and the Reserved RAM right after it. */
	for (i = 0; i < nt; i++)
		if (top[i].s <= 0x100000 && 0x100000 <= top[i].e && !strcmp(top[i].name, "System RAM"))
			end = top[i].e + 1;
	for (k = 0; end && k < nt; k++)
		for (i = 0; i < nt; i++)
			if (top[i].s == end && (!strcmp(top[i].name, "System RAM") ||
						!strcmp(top[i].name, "Reserved")))
				end = top[i].e + 1;
	/* Followed by an empty PCI window: nothing decodes there, so nothing is mapped. */
	for (i = 0; end && i < nt; i++) {
		uint64_t len = top[i].e + 1 - end;
		bool empty = true;

		if (top[i].s != end || strncmp(top[i].name, "PCI Bus", 7))
			continue;
		if (len > 16 * MIB)
			len = 16 * MIB;
		for (k = 0; k < nk; k++)
			if (kid[k].s < end + len && end <= kid[k].e)
				empty = false;
		if (empty) {
			c->low_unmapped = end;
			c->low_unmapped_len = len;
		}
	}
	/* The BIOS ROM at the top of 4 GiB. */
	for (i = 0; i < nt; i++)
		if (top[i].e == 0xffffffffULL && top[i].s >= 0xfff00000ULL &&
		    !strcmp(top[i].name, "Reserved")) {
			c->rom_start = top[i].s;
			c->rom_end = 0x100000000ULL;
		}
}

static const struct ktap_case dma_cases[] = {
	KTAP_CASE(dma_info),
	KTAP_CASE(copy_sys_to_vram),
	KTAP_CASE(copy_vram_to_sys),
	KTAP_CASE(copy_vram_to_vram),
	KTAP_CASE(copy_sys_to_sys),
	KTAP_CASE(copy_scratch),
	KTAP_CASE(fill),
	KTAP_CASE(fence),
	KTAP_CASE(timestamp),
	KTAP_CASE(irq_and_poll),
	KTAP_CASE(stats_counters),
	KTAP_CASE(attrs_ns_ro),
	KTAP_CASE(ring_wrap),
	KTAP_CASE(ring_in_vram),
	KTAP_CASE(ioctl_validation),
	KTAP_CASE(bad_sys_address),
	KTAP_CASE(vram_out_of_range),
	KTAP_CASE(descriptor_errors),
	KTAP_CASE(ring_errors),
	KTAP_CASE(timeout_recovery),
	KTAP_CASE(concurrent_engines),
	KTAP_CASE(dma_across_resets),
	KTAP_CASE(bus_master_gating),
	KTAP_CASE(hostile_descriptors),
	KTAP_CASE(rom_window),
	KTAP_CASE(final_state),
};

static void discover(struct dma_ctx *c, unsigned int vendor, unsigned int device)
{
	int ret;

	c->fd = -1;
	c->info_ret = -ENODEV;
	c->ndevs = vugpu_find_devs(vendor, device, c->devs, VUGPU_MAX_DEVS);
	if (c->ndevs <= 0) {
		ktap_diag("no vugpu function %04x:%04x found", vendor, device);
		return;
	}
	c->d = &c->devs[0];
	vugpu_read_config(c->d);
	ret = vugpu_open(c->d, OPEN_WAIT_MS);
	if (ret) {
		ktap_diag("%s: cannot open its /dev/vugpuN: %s", c->d->bdf, err_str(ret));
		return;
	}
	c->fd = c->d->fd;
	if (refresh_info(c))
		return;
	c->bar_len = c->d->info.bar2_size;
	c->bar = mmap(NULL, c->bar_len, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (c->bar == MAP_FAILED) {
		ktap_diag("%s: mmap of BAR2: %s", c->d->bdf, strerror(errno));
		c->bar = NULL;
		c->bar_len = 0;
	}
	find_sys_ranges(c);
	c->vram_limit = c->info.vram_ring_size ? c->info.vram_ring_base : c->bar_len;
	if (c->vram_limit > c->bar_len)
		c->vram_limit = c->bar_len;
	if (c->ndevs > 1)
		ktap_diag("%d vugpu functions; the DMA tests use the first, %s", c->ndevs,
			  c->d->bdf);
}

static void usage(void)
{
	fprintf(stderr, "usage: vugpu-dma [--vendor ID] [--device ID] [--hostile N] [--seed N]\n"
			"                 [--first N] [--no-header] [--count] [--list] [--engines]\n"
			"                 [--only CASE[,CASE...]] [--no-rom]\n");
}

int main(int argc, char **argv)
{
	struct dma_ctx c = { .module_path = "/lib/modules/vugpu.ko", .hostile_descs = 5000,
			     .seed = 0x5eed0001 };
	unsigned int n = KTAP_ARRAY_SIZE(dma_cases), i, failed;
	uint64_t vendor = VUGPU_PCI_VENDOR_ID, device = VUGPU_PCI_DEVICE_ID, first = 1;
	struct ktap_totals tot = { 0 };
	bool header = true, engines = false;
	struct ktap_case selected[KTAP_ARRAY_SIZE(dma_cases)];
	const struct ktap_case *run = dma_cases;
	const char *only = NULL;
	int a;

	for (a = 1; a < argc; a++) {
		const char *opt = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
		uint64_t *num = NULL;

		if (!strcmp(opt, "--count")) {
			printf("%u\n", n);
			return 0;
		} else if (!strcmp(opt, "--list")) {
			for (i = 0; i < n; i++)
				printf("%s\n", dma_cases[i].name);
			return 0;
		} else if (!strcmp(opt, "--no-header")) {
			header = false;
			continue;
		} else if (!strcmp(opt, "--engines")) {
			engines = true;
			continue;
		} else if (!strcmp(opt, "--no-rom")) {
			c.no_rom = true;
			continue;
		} else if (!strcmp(opt, "--only") && val) {
			only = val;
			a++;
			continue;
		} else if (!strcmp(opt, "--vendor")) {
			num = &vendor;
		} else if (!strcmp(opt, "--device")) {
			num = &device;
		} else if (!strcmp(opt, "--first")) {
			num = &first;
		} else if (!strcmp(opt, "--hostile")) {
			num = &c.hostile_descs;
		} else if (!strcmp(opt, "--seed")) {
			num = &c.seed;
		}
		if (!num || !val || vugpu_parse_u64(val, num) || vendor > 0xffff || device > 0xffff ||
		    first > 100000) {
			usage();
			return 2;
		}
		a++;
	}

	if (only) {
		/* A comma-separated subset, in the suite's order (for debugging). */
		unsigned int m = 0;

		for (i = 0; i < n; i++) {
			const char *p = strstr(only, dma_cases[i].name);
			size_t l = strlen(dma_cases[i].name);

			if (p && (p == only || p[-1] == ',') && (p[l] == '\0' || p[l] == ','))
				selected[m++] = dma_cases[i];
		}
		if (!m) {
			usage();
			return 2;
		}
		run = selected;
		n = m;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (engines) {
		discover(&c, (unsigned int)vendor, (unsigned int)device);
		if (c.fd < 0 || c.info_ret) {
			printf("none\n");
			return 1;
		}
		printf("%u\n", c.info.engine_count);
		return 0;
	}
	if (header)
		ktap_print_header(n);
	discover(&c, (unsigned int)vendor, (unsigned int)device);
	failed = ktap_run(run, n, (unsigned int)first, &c, &tot);
	if (header)
		ktap_print_totals(&tot);
	if (c.bar)
		munmap(c.bar, c.bar_len);
	for (i = 0; i < (unsigned int)(c.ndevs > 0 ? c.ndevs : 0); i++)
		vugpu_close(&c.devs[i]);
	return failed ? 1 : 0;
}
