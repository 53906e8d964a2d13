// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma - DMA copy engine tests for a vugpu GPU in a guest, on the
 * kernel's kselftest harness (vugpu_harness.h): fixture "dma", each test in a
 * process of its own that opens the GPU and maps its VRAM BAR itself.
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
 *                  [--engines] [--no-rom] [HARNESS OPTIONS]
 * --engines prints the function's ENGINE_COUNT (or "none") and exits;
 * --no-rom keeps the BIOS ROM window (fd-less, message DMA) out of the
 * hostile stream (a debugging aid, like the harness's -t NAME that runs one
 * test; the suite uses neither).
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
		if (line[0] != ' ' && nt < ARRAY_SIZE(top)) {
			top[nt].s = s;
			top[nt].e = e;
			snprintf(top[nt++].name, sizeof(top[0].name), "%s", name + 3);
		} else if (line[0] == ' ' && nk < ARRAY_SIZE(kid)) {
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

static void discover(struct dma_ctx *c, unsigned int vendor, unsigned int device)
{
	int ret;

	c->fd = -1;
	c->info_ret = -ENODEV;
	c->ndevs = vugpu_find_devs(vendor, device, c->devs, VUGPU_MAX_DEVS);
	if (c->ndevs <= 0) {
		diag("no vugpu function %04x:%04x found", vendor, device);
		return;
	}
	c->d = &c->devs[0];
	vugpu_read_config(c->d);
	ret = vugpu_open(c->d, OPEN_WAIT_MS);
	if (ret) {
		diag("%s: cannot open its /dev/vugpuN: %s", c->d->bdf, err_str(ret));
		return;
	}
	c->fd = c->d->fd;
	if (refresh_info(c))
		return;
	c->bar_len = c->d->info.bar2_size;
	c->bar = mmap(NULL, c->bar_len, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (c->bar == MAP_FAILED) {
		diag("%s: mmap of BAR2: %s", c->d->bdf, strerror(errno));
		c->bar = NULL;
		c->bar_len = 0;
	}
	find_sys_ranges(c);
	c->vram_limit = c->info.vram_ring_size ? c->info.vram_ring_base : c->bar_len;
	if (c->vram_limit > c->bar_len)
		c->vram_limit = c->bar_len;
	if (c->ndevs > 1)
		diag("%d vugpu functions; the DMA tests use the first, %s", c->ndevs,
			  c->d->bdf);
}

/* The options, filled in by main() before the tests run. */
static struct dma_ctx opts = { .module_path = "/lib/modules/vugpu.ko", .hostile_descs = 5000,
			       .seed = 0x5eed0001 };
static uint64_t opt_vendor = VUGPU_PCI_VENDOR_ID, opt_device = VUGPU_PCI_DEVICE_ID;
static bool opt_engines;

static int option(const char *opt, const char *val)
{
	uint64_t *num = NULL;

	if (!strcmp(opt, "--engines")) {
		opt_engines = true;
		return 1;
	} else if (!strcmp(opt, "--no-rom")) {
		opts.no_rom = true;
		return 1;
	} else if (!strcmp(opt, "--vendor")) {
		num = &opt_vendor;
	} else if (!strcmp(opt, "--device")) {
		num = &opt_device;
	} else if (!strcmp(opt, "--hostile")) {
		num = &opts.hostile_descs;
	} else if (!strcmp(opt, "--seed")) {
		num = &opts.seed;
	}
	if (!num || !val || vugpu_parse_u64(val, num) || opt_vendor > 0xffff || opt_device > 0xffff)
		return 0;
	return 2;
}

static void dma_close(struct dma_ctx *c)
{
	int i;

	if (c->bar)
		munmap(c->bar, c->bar_len);
	for (i = 0; i < c->ndevs; i++)
		vugpu_close(&c->devs[i]);
}

/* Each test process opens the GPU and maps its BAR afresh. */
FIXTURE(dma) {
	struct dma_ctx c;
};

FIXTURE_SETUP(dma)
{
	self->c = opts;
	discover(&self->c, (unsigned int)opt_vendor, (unsigned int)opt_device);
}

FIXTURE_TEARDOWN(dma)
{
	dma_close(&self->c);
}

/* The cases (one translation unit for the harness). */
#include "dma_copy.c"
#include "dma_err.c"
#include "dma_stress.c"
#include "dma_bus.c"

/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 300 s boot timeout, so a hung test costs its own
 * result only; all 26 tests took 13 s together here (TCG).
 */
#define DMA_TIMEOUT 120

/* The tests, in this order. */
#define DMA_TEST(name)								\
	TEST_F_TIMEOUT(dma, name, DMA_TIMEOUT)					\
	{									\
		name(_metadata, &self->c);					\
	}

DMA_TEST(dma_info)
DMA_TEST(copy_sys_to_vram)
DMA_TEST(copy_vram_to_sys)
DMA_TEST(copy_vram_to_vram)
DMA_TEST(copy_sys_to_sys)
DMA_TEST(copy_scratch)
DMA_TEST(fill)
DMA_TEST(fence)
DMA_TEST(timestamp)
DMA_TEST(irq_and_poll)
DMA_TEST(stats_counters)
DMA_TEST(attrs_ns_ro)
DMA_TEST(ring_wrap)
DMA_TEST(ring_in_vram)
DMA_TEST(ioctl_validation)
DMA_TEST(bad_sys_address)
DMA_TEST(vram_out_of_range)
DMA_TEST(descriptor_errors)
DMA_TEST(ring_errors)
DMA_TEST(timeout_recovery)
DMA_TEST(concurrent_engines)
DMA_TEST(dma_across_resets)
DMA_TEST(bus_master_gating)
DMA_TEST(hostile_descriptors)
DMA_TEST(rom_window)
DMA_TEST(final_state)

int main(int argc, char **argv)
{
	char **rest;
	int n = vugpu_harness_opts(argc, argv, option,
				   "[--vendor ID] [--device ID] [--hostile N] [--seed N] [--engines] "
				   "[--no-rom]", &rest);

	if (n < 0)
		return 2;
	if (opt_engines) {
		struct dma_ctx c = opts;

		discover(&c, (unsigned int)opt_vendor, (unsigned int)opt_device);
		if (c.fd < 0 || c.info_ret)
			printf("none\n");
		else
			printf("%u\n", c.info.engine_count);
		dma_close(&c);
		return c.fd < 0 || c.info_ret;
	}
	return test_harness_run(n, rest);
}
