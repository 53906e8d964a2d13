/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dma.h - shared state and helpers of vugpu-dma's test cases.
 *
 * The cases live in dma_copy.c (data movement: every direction, fill,
 * fence, timestamp, completion modes, statistics, No Snoop / Relaxed
 * Ordering, ring placement), dma_err.c (ioctl validation, bad addresses,
 * VRAM range, descriptor errors, timeouts, resets), dma_stress.c
 * (concurrent engines, the hostile-descriptor test) and dma_bus.c (Bus
 * Master Enable gating); vugpu-dma.c lists and runs them against the first
 * vugpu function.
 */
#ifndef VUGPU_DMA_TEST_H
#define VUGPU_DMA_TEST_H

#include <stdbool.h>
#include <stdint.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"

#define KIB		(1ULL << 10)
#define MIB		(1ULL << 20)
#define OPEN_WAIT_MS	3000
#define EDGE		64	/* bytes checked untouched on each side of a target */
#define POISON		0xee	/* what target areas hold before a transfer */

/*
 * SYS addresses no DMA_MAP window covers (QEMU q35, IOVA = GPA, no vIOMMU).
 * Far above any guest-physical address; the window after low RAM is found
 * in /proc/iomem at run time (struct dma_ctx).  Note: with -nodefaults (no
 * VGA device) QEMU maps the legacy VGA hole 0xa0000-0xbffff as RAM, so it
 * is NOT an unmapped address under vugpu-vm.
 */
#define UNMAPPED_HIGH	0x7f0000000000ULL

/* VRAM areas used by the tests (offsets; all below the VRAM ring reservation). */
#define VRAM_A		(0 * MIB)	/* 16 MiB + edges */
#define VRAM_B		(32 * MIB)	/* 16 MiB + edges */
#define VRAM_CONC	(52 * MIB)	/* concurrent test: 1 MiB per thread */
#define VRAM_USED_END	(72 * MIB)

struct dma_ctx {
	const char *module_path;
	struct vugpu_dev devs[VUGPU_MAX_DEVS];
	int ndevs;
	struct vugpu_dev *d;		/* the function under test (first one) */
	int fd;
	struct vugpu_dma_info info;
	int info_ret;
	uint8_t *bar;			/* mmap of BAR2 */
	size_t bar_len;
	uint64_t vram_limit;		/* tests may use VRAM [0, vram_limit) */
	/*
	 * From /proc/iomem: the empty PCI window right after low RAM (unmapped;
	 * used for reads only) and the BIOS ROM below 4 GiB (QEMU maps it
	 * read-only and without an fd: reads travel as DMA messages, writes
	 * are permission errors).  0 when not found.
	 */
	uint64_t low_unmapped, low_unmapped_len;
	uint64_t rom_start, rom_end;
	uint64_t hostile_descs;		/* --hostile N */
	bool no_rom;			/* --no-rom: keep the ROM window out of the hostile test */
	uint32_t last_id;		/* ID register at the last device_alive() */
	uint64_t seed;			/* --seed */
};

/* Every case needs working engines; "none" is a skip, "broken" a failure. */
#define REQUIRE_ENGINES(c)								\
	do {									\
		if ((c)->fd < 0)						\
			SKIP_TEST("no vugpu function with the driver bound");	\
		ASSERT_THAT(!(c)->info_ret, "DMA_INFO: %s",			\
			    strerror(-(c)->info_ret));				\
		if (!(c)->info.engine_count)					\
			SKIP_TEST("%s: ENGINE_COUNT 0 (no DMA engines)",	\
				  (c)->d->bdf);					\
		ASSERT_THAT(!(c)->info.init_error,				\
			    "%s: %u engines but the driver could not enable them: %s", \
			    (c)->d->bdf, (c)->info.engine_count,		\
			    strerror(-(c)->info.init_error));			\
		ASSERT_THAT(device_alive(c),					\
			    "%s: the device no longer answers (ID reads %#x): the server " \
			    "dropped the connection or died in an earlier test", \
			    (c)->d->bdf, (c)->last_id);				\
	} while (0)

/* vugpu-dma.c */
const char *err_str(int ret);
/* The ID register still reads "UPGV" (a dead vfio-user connection reads all ones). */
bool device_alive(struct dma_ctx *c);
/* Page-aligned anonymous memory (munmap'able with buf_free). */
void *buf_alloc(size_t len);
void buf_free(void *p, size_t len);
/* One job; fills @out (may be NULL).  Returns 0 or -errno. */
int dma_job(struct dma_ctx *c, unsigned long req, unsigned int engine, uint32_t flags,
	    uint32_t src_type, uint64_t src, uint32_t dst_type, uint64_t dst, uint64_t len,
	    uint64_t value, struct vugpu_dma *out);
int dma_copy(struct dma_ctx *c, unsigned int engine, uint32_t flags, uint32_t src_type,
	     uint64_t src, uint32_t dst_type, uint64_t dst, uint64_t len, struct vugpu_dma *out);
/* "STATUS ERROR code 5 SYS_UNMAPPED addr 0x... info 0x... head 3 tail 4" */
const char *regs_str(const struct vugpu_engine_regs *r, char *buf, size_t len);
/* Re-read DMA_INFO into c->info. */
int refresh_info(struct dma_ctx *c);
/* Compare VRAM [off, off + len) through the BAR with @expect; offset of the first difference or -1. */
long vram_diff(struct dma_ctx *c, uint64_t off, const void *expect, size_t len);
/* Sample up to 256 bytes at each end through VRAM_DATA (the device's view); 0 or -1/-errno. */
int vram_window_check(struct dma_ctx *c, uint64_t off, const uint8_t *expect, size_t len,
		      char *why, size_t whylen);
/* True if @len bytes at @p all equal @byte. */
bool all_bytes(const void *p, size_t len, uint8_t byte);
/* Clears AER / Device Status / Status error bits; the state before. */
int clear_errors(struct dma_ctx *c, struct vugpu_error_state *before);
uint64_t stat_delta(const struct vugpu_engine_stats *a, const struct vugpu_engine_stats *b,
		    unsigned int reg);
uint64_t xorshift(uint64_t *s);
/* The VRAM areas above fit below vram_limit and the BAR is mapped. */
bool need_vram_area(struct dma_ctx *c);

/* dma_copy.c */
void dma_info(struct __test_metadata *_metadata, void *ctx);
void copy_sys_to_vram(struct __test_metadata *_metadata, void *ctx);
void copy_vram_to_sys(struct __test_metadata *_metadata, void *ctx);
void copy_vram_to_vram(struct __test_metadata *_metadata, void *ctx);
void copy_sys_to_sys(struct __test_metadata *_metadata, void *ctx);
void copy_scratch(struct __test_metadata *_metadata, void *ctx);
void fill(struct __test_metadata *_metadata, void *ctx);
void fence(struct __test_metadata *_metadata, void *ctx);
void timestamp(struct __test_metadata *_metadata, void *ctx);
void irq_and_poll(struct __test_metadata *_metadata, void *ctx);
void stats_counters(struct __test_metadata *_metadata, void *ctx);
void attrs_ns_ro(struct __test_metadata *_metadata, void *ctx);
void ring_wrap(struct __test_metadata *_metadata, void *ctx);
void ring_in_vram(struct __test_metadata *_metadata, void *ctx);

/* dma_err.c */
void ioctl_validation(struct __test_metadata *_metadata, void *ctx);
void bad_sys_address(struct __test_metadata *_metadata, void *ctx);
void rom_window(struct __test_metadata *_metadata, void *ctx);
void vram_out_of_range(struct __test_metadata *_metadata, void *ctx);
void descriptor_errors(struct __test_metadata *_metadata, void *ctx);
void ring_errors(struct __test_metadata *_metadata, void *ctx);
void timeout_recovery(struct __test_metadata *_metadata, void *ctx);
void dma_across_resets(struct __test_metadata *_metadata, void *ctx);

/* dma_stress.c */
void concurrent_engines(struct __test_metadata *_metadata, void *ctx);
void hostile_descriptors(struct __test_metadata *_metadata, void *ctx);
void final_state(struct __test_metadata *_metadata, void *ctx);

/* dma_bus.c */
void bus_master_gating(struct __test_metadata *_metadata, void *ctx);

#endif /* VUGPU_DMA_TEST_H */
