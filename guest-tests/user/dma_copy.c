// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma cases: data movement (hw-spec §6-§8).  See vugpu-dma.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dma.h"

/* Stores to the write-combined BAR mapping must be out before the engine reads VRAM. */
static inline void wc_flush(void)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#if defined(__x86_64__) || defined(__i386__)
	__asm__ __volatile__("sfence" ::: "memory");
#endif
}

static bool need_vram(struct __test_metadata *_metadata, struct dma_ctx *c, uint64_t end)
{
	if (!c->bar || end > c->vram_limit) {
		SKIP_NOTE("needs %llu MiB of CPU-visible VRAM below the ring reservation, have %llu MiB",
			  (unsigned long long)(end >> 20), (unsigned long long)(c->vram_limit >> 20));
		return false;
	}
	return true;
}

void dma_info(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_dma_info *in = &c->info;
	unsigned int i;

	REQUIRE_ENGINES(c);
	EXPECT_THAT(in->engine_count <= VUGPU_ENGINE_MAX, "ENGINE_COUNT %u", in->engine_count);
	EXPECT_THAT(in->vector_base == VUGPU_ENGINE_VECTOR_BASE_VALUE, "vector base %u",
		    in->vector_base);
	EXPECT_THAT(in->ready_mask == (1u << in->engine_count) - 1,
		    "ready engines %#x, expected all %u", in->ready_mask, in->engine_count);
	for (i = 0; i < in->engine_count; i++)
		EXPECT_THAT(in->ring_slots[i] >= 2 && !(in->ring_slots[i] & (in->ring_slots[i] - 1)) &&
			    in->ring_base[i] % VUGPU_RING_ALIGN == 0,
			    "engine %u: ring of %u slots at %#llx", i, in->ring_slots[i],
			    (unsigned long long)in->ring_base[i]);
	EXPECT_THAT(in->vram_size == c->d->info.vram_size, "VRAM size %#llx vs %#llx",
		    (unsigned long long)in->vram_size, (unsigned long long)c->d->info.vram_size);
	EXPECT_THAT(in->scratch_dma && in->scratch_size >= 4096 && in->guard_size >= 4096,
		    "scratch %#llx size %llu guard %llu", (unsigned long long)in->scratch_dma,
		    (unsigned long long)in->scratch_size, (unsigned long long)in->guard_size);
	EXPECT_THAT(in->guard_bad == 0, "%llu scratch guard bytes damaged before any test",
		    (unsigned long long)in->guard_bad);
	EXPECT_THAT(c->bar != NULL, "no BAR2 mapping");
	diag("%s: %u engines (vectors %u-%u), rings %u slots (VRAM mask %#x), timeout %u ms, VRAM %llu MiB (BAR %zu MiB, VRAM rings at %#llx), scratch %#llx+%llu",
		  c->d->bdf, in->engine_count, in->vector_base,
		  in->vector_base + in->engine_count - 1, in->ring_slots[0], in->ring_vram_mask,
		  in->timeout_ms, (unsigned long long)(in->vram_size >> 20), c->bar_len >> 20,
		  (unsigned long long)in->vram_ring_base, (unsigned long long)in->scratch_dma,
		  (unsigned long long)in->scratch_size);
}

/* ---- the four directions ----------------------------------------------------- */

enum dir { S2V, V2S, V2V, S2S };
static const char *const dir_name[] = { "SYS->VRAM", "VRAM->SYS", "VRAM->VRAM", "SYS->SYS" };

struct xfer {
	uint64_t len, src_off, dst_off;
};

static const struct xfer xfers[] = {
	{ 1, 0, 0 },
	{ 1, 4095, 7 },
	{ 4096, 1, 4093 },
	{ 4096, 4095, 2049 },
	{ 1 * MIB, 0, 0 },
	{ 1 * MIB + 5, 3, 4091 },
	{ 16 * MIB, 0, 0 },
	{ 16 * MIB, 5, 3 },
};

/*
 * One copy of @x in direction @dir on @engine: pattern in the source,
 * POISON around the target, every byte of the target and EDGE bytes on
 * each side checked afterwards (VRAM also through VRAM_DATA, sampled).
 */
static void check_copy(struct __test_metadata *_metadata, struct dma_ctx *c, enum dir dir, const struct xfer *x,
		       unsigned int engine, uint32_t flags)
{
	bool src_vram = dir == V2S || dir == V2V, dst_vram = dir == S2V || dir == V2V;
	uint64_t len = x->len, src, dst, t0, wall;
	size_t sbuf_len = len + x->src_off + EDGE, dbuf_len = len + x->dst_off + 2 * EDGE;
	uint8_t *expect = NULL, *sbuf = NULL, *dbuf = NULL, *dptr;
	struct vugpu_dma d;
	char why[200], regs[256];
	long diff;
	int ret;

	expect = buf_alloc(len);
	ASSERT_THAT(expect, "out of memory");
	vugpu_fill_pattern64(expect, len, len * 31 + x->src_off * 7 + x->dst_off + dir * 1000 + engine);

	if (src_vram) {
		src = VRAM_A + EDGE + x->src_off;
		memcpy(c->bar + src, expect, len);
		wc_flush();
	} else {
		sbuf = buf_alloc(sbuf_len);
		if (!sbuf)
			goto oom;
		memcpy(sbuf + x->src_off, expect, len);
		src = (uintptr_t)(sbuf + x->src_off);
	}
	if (dst_vram) {
		dst = (dir == V2V ? VRAM_B : VRAM_A) + EDGE + x->dst_off;
		memset(c->bar + dst - EDGE, POISON, len + 2 * EDGE);
		wc_flush();
		dptr = c->bar + dst;
	} else {
		dbuf = buf_alloc(dbuf_len);
		if (!dbuf)
			goto oom;
		memset(dbuf, POISON, dbuf_len);
		dptr = dbuf + EDGE + x->dst_off;
		dst = (uintptr_t)dptr;
	}

	t0 = vugpu_now_ns();
	ret = dma_copy(c, engine, flags, src_vram ? VUGPU_MEM_VRAM : VUGPU_MEM_USER, src,
		       dst_vram ? VUGPU_MEM_VRAM : VUGPU_MEM_USER, dst, len, &d);
	wall = vugpu_now_ns() - t0;
	if (ret) {
		EXPECT_THAT(0, "%s %llu B (src +%llu, dst +%llu) on engine %u: %s; %s",
			    dir_name[dir], (unsigned long long)len, (unsigned long long)x->src_off,
			    (unsigned long long)x->dst_off, engine, err_str(ret),
			    regs_str(&d.regs, regs, sizeof(regs)));
		goto out;
	}
	diff = vugpu_first_diff(dptr, expect, len);
	EXPECT_THAT(diff < 0, "%s %llu B (src +%llu, dst +%llu) engine %u: byte %ld is %#x, expected %#x",
		    dir_name[dir], (unsigned long long)len, (unsigned long long)x->src_off,
		    (unsigned long long)x->dst_off, engine, diff, diff >= 0 ? dptr[diff] : 0,
		    diff >= 0 ? expect[diff] : 0);
	EXPECT_THAT(all_bytes(dptr - EDGE, EDGE, POISON) && all_bytes(dptr + len, EDGE, POISON),
		    "%s %llu B engine %u: bytes around the target changed", dir_name[dir],
		    (unsigned long long)len, engine);
	if (dst_vram)
		EXPECT_THAT(!vram_window_check(c, dst, expect, len, why, sizeof(why)), "%s %llu B: %s",
			    dir_name[dir], (unsigned long long)len, why);
	if (src_vram)	/* the engine must not write its source */
		EXPECT_THAT(vram_diff(c, src, expect, len) < 0, "%s %llu B: source VRAM changed",
			    dir_name[dir], (unsigned long long)len);
	if (len >= MIB)
		diag("%s %3llu MiB engine %u %s: %u descriptors, engine %llu us (%.0f MB/s), ioctl %llu us",
			  dir_name[dir], (unsigned long long)(len >> 20), engine,
			  flags & VUGPU_DMA_IRQ ? "irq " : "poll", d.descs,
			  (unsigned long long)d.elapsed_ns / 1000,
			  d.elapsed_ns ? (double)len * 1e3 / (double)d.elapsed_ns : 0.0,
			  (unsigned long long)wall / 1000);
out:
	buf_free(dbuf, dbuf_len);
	buf_free(sbuf, sbuf_len);
	buf_free(expect, len);
	return;
oom:
	EXPECT_THAT(0, "out of memory");
	goto out;
}

static void copy_dir(struct __test_metadata *_metadata, struct dma_ctx *c, enum dir dir)
{
	unsigned int i, n = c->info.engine_count;

	if (!need_vram(_metadata, c, VRAM_B + 17 * MIB))
		return;
	for (i = 0; i < ARRAY_SIZE(xfers); i++) {
		uint32_t flags = (i & 1) ? VUGPU_DMA_IRQ : 0;

		if (i == 2)
			flags |= VUGPU_DMA_DB_REG;
		check_copy(_metadata, c, dir, &xfers[i], (i + dir) % n, flags);
	}
}

void copy_sys_to_vram(struct __test_metadata *_metadata, void *ctx)
{
	REQUIRE_ENGINES((struct dma_ctx *)ctx);
	copy_dir(_metadata, ctx, S2V);
}

void copy_vram_to_sys(struct __test_metadata *_metadata, void *ctx)
{
	REQUIRE_ENGINES((struct dma_ctx *)ctx);
	copy_dir(_metadata, ctx, V2S);
}

void copy_vram_to_vram(struct __test_metadata *_metadata, void *ctx)
{
	REQUIRE_ENGINES((struct dma_ctx *)ctx);
	copy_dir(_metadata, ctx, V2V);
}

void copy_sys_to_sys(struct __test_metadata *_metadata, void *ctx)
{
	REQUIRE_ENGINES((struct dma_ctx *)ctx);
	copy_dir(_metadata, ctx, S2S);
}

/* The driver's coherent scratch buffer as a SYS source and target. */
void copy_scratch(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint8_t pat[4096], rd[4096 + 2 * EDGE];
	struct vugpu_dma d;
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_A + 2 * MIB))
		return;
	vugpu_fill_pattern64(pat, sizeof(pat), 77);
	memset(rd, POISON, sizeof(rd));
	ASSERT_THAT(!vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_WRITE, 1024 - EDGE, rd,
					 sizeof(rd)), "SCRATCH_WRITE failed");
	ret = dma_copy(c, 0, VUGPU_DMA_IRQ, VUGPU_MEM_USER, (uintptr_t)pat, VUGPU_MEM_SCRATCH, 1024,
		       sizeof(pat), &d);
	ASSERT_THAT(!ret, "user -> scratch: %s", err_str(ret));
	ASSERT_THAT(!vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_READ, 1024 - EDGE, rd, sizeof(rd)),
		    "SCRATCH_READ failed");
	EXPECT_THAT(vugpu_first_diff(rd + EDGE, pat, sizeof(pat)) < 0 &&
		    all_bytes(rd, EDGE, POISON) && all_bytes(rd + EDGE + sizeof(pat), EDGE, POISON),
		    "user -> scratch: data or edges wrong");

	memset(c->bar + VRAM_A + MIB - EDGE, POISON, sizeof(pat) + 2 * EDGE);
	wc_flush();
	ret = dma_copy(c, c->info.engine_count - 1, 0, VUGPU_MEM_SCRATCH, 1024, VUGPU_MEM_VRAM,
		       VRAM_A + MIB, sizeof(pat), &d);
	ASSERT_THAT(!ret, "scratch -> VRAM: %s", err_str(ret));
	EXPECT_THAT(vram_diff(c, VRAM_A + MIB, pat, sizeof(pat)) < 0 &&
		    all_bytes(c->bar + VRAM_A + MIB - EDGE, EDGE, POISON) &&
		    all_bytes(c->bar + VRAM_A + MIB + sizeof(pat), EDGE, POISON),
		    "scratch -> VRAM: data or edges wrong");

	vugpu_fill_pattern64(pat, sizeof(pat), 78);
	memcpy(c->bar + VRAM_A + MIB, pat, sizeof(pat));
	wc_flush();
	ret = dma_copy(c, 0, 0, VUGPU_MEM_VRAM, VRAM_A + MIB, VUGPU_MEM_SCRATCH, 1024, sizeof(pat), &d);
	ASSERT_THAT(!ret, "VRAM -> scratch: %s", err_str(ret));
	vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_READ, 1024 - EDGE, rd, sizeof(rd));
	EXPECT_THAT(vugpu_first_diff(rd + EDGE, pat, sizeof(pat)) < 0 &&
		    all_bytes(rd, EDGE, POISON) && all_bytes(rd + EDGE + sizeof(pat), EDGE, POISON),
		    "VRAM -> scratch: data or edges wrong");
	EXPECT_THAT(!refresh_info(c) && c->info.guard_bad == 0, "scratch guards damaged: %llu bytes",
		    (unsigned long long)c->info.guard_bad);

	/* The guard check works: 8 bytes written just below the inner area are seen. */
	{
		struct vugpu_desc f = { .opcode = VUGPU_OP_FILL, .dst_aperture = VUGPU_APERTURE_SYS,
					.dst = c->info.scratch_dma - 8, .length = 8,
					.value = 0x0badf00d };
		struct vugpu_cmd cmd = { .ptr = (uintptr_t)&c->info, .size = sizeof(c->info),
					 .value = VUGPU_DMA_INFO_REARM };

		d = (struct vugpu_dma){ .src_type = VUGPU_MEM_USER, .src = (uintptr_t)&f, .count = 1 };
		ret = vugpu_dma(c->fd, VUGPU_IOCTL_DMA_RAW_SUBMIT, &d);
		EXPECT_THAT(!ret, "FILL into the front guard: %s", err_str(ret));
		ret = vugpu_cmd(c->fd, VUGPU_IOCTL_DMA_INFO, &cmd);
		EXPECT_THAT(!ret && c->info.guard_bad >= 4 && c->info.guard_bad <= 8,
			    "guard check saw %llu damaged bytes after an 8-byte write into the guard",
			    (unsigned long long)c->info.guard_bad);
		EXPECT_THAT(!refresh_info(c) && c->info.guard_bad == 0,
			    "guards not re-armed: %llu bytes", (unsigned long long)c->info.guard_bad);
	}
}

/* ---- fill, fence, timestamp ----------------------------------------------------- */

static bool fill_ok(const uint8_t *p, size_t len, uint32_t pat)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != (uint8_t)(pat >> (8 * (i % 4))))
			return false;
	return true;
}

void fill(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_engine_stats s0, s1;
	uint64_t voff = VRAM_A + EDGE + 4, vlen = MIB + 12, ulen = 64 * KIB + 8, total = 0;
	size_t blen = ulen + 2 * 4096;
	uint8_t *buf, rd[4096 + 2 * EDGE];
	struct vugpu_dma d;
	char regs[256];
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_A + 2 * MIB))
		return;
	ASSERT_THAT(!vugpu_engine_stats(c->fd, 0, &s0), "ENGINE_STATS failed");

	memset(c->bar + voff - EDGE, POISON, vlen + 2 * EDGE);
	wc_flush();
	ret = dma_job(c, VUGPU_IOCTL_DMA_FILL, 0, VUGPU_DMA_IRQ, 0, 0, VUGPU_MEM_VRAM, voff, vlen,
		      0xdeadbeef, &d);
	EXPECT_THAT(!ret, "FILL VRAM: %s %s", err_str(ret), regs_str(&d.regs, regs, sizeof(regs)));
	EXPECT_THAT(fill_ok(c->bar + voff, vlen, 0xdeadbeef), "FILL VRAM: pattern wrong");
	EXPECT_THAT(all_bytes(c->bar + voff - EDGE, EDGE, POISON) &&
		    all_bytes(c->bar + voff + vlen, EDGE, POISON), "FILL VRAM: wrote outside the range");
	total += vlen;

	buf = buf_alloc(blen);
	ASSERT_THAT(buf, "out of memory");
	memset(buf, POISON, blen);
	ret = dma_job(c, VUGPU_IOCTL_DMA_FILL, 0, 0, 0, 0, VUGPU_MEM_USER, (uintptr_t)(buf + 4096 + 12),
		      ulen, 0x01234567, &d);
	EXPECT_THAT(!ret, "FILL user memory: %s", err_str(ret));
	EXPECT_THAT(fill_ok(buf + 4096 + 12, ulen, 0x01234567), "FILL user memory: pattern wrong");
	EXPECT_THAT(all_bytes(buf, 4096 + 12, POISON) &&
		    all_bytes(buf + 4096 + 12 + ulen, blen - 4096 - 12 - ulen, POISON),
		    "FILL user memory: wrote outside the range");
	total += ulen;
	diag("FILL of %llu user bytes took %u descriptors", (unsigned long long)ulen, d.descs);
	buf_free(buf, blen);

	memset(rd, POISON, sizeof(rd));
	vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_WRITE, 256 - EDGE, rd, sizeof(rd));
	ret = dma_job(c, VUGPU_IOCTL_DMA_FILL, 0, VUGPU_DMA_IRQ, 0, 0, VUGPU_MEM_SCRATCH, 256, 4096,
		      0xa5a55a5a, &d);
	EXPECT_THAT(!ret, "FILL scratch: %s", err_str(ret));
	vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_READ, 256 - EDGE, rd, sizeof(rd));
	EXPECT_THAT(fill_ok(rd + EDGE, 4096, 0xa5a55a5a) && all_bytes(rd, EDGE, POISON) &&
		    all_bytes(rd + EDGE + 4096, EDGE, POISON), "FILL scratch: pattern or edges wrong");
	total += 4096;

	ASSERT_THAT(!vugpu_engine_stats(c->fd, 0, &s1), "ENGINE_STATS failed");
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_FILL) == total,
		    "BYTES_FILL grew by %llu, filled %llu",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_FILL),
		    (unsigned long long)total);
}

static uint64_t engine_last_fence(struct dma_ctx *c, unsigned int e)
{
	uint32_t lo = 0, hi = 0;

	vugpu_reg_read(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_LAST_FENCE_LO, &lo);
	vugpu_reg_read(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_LAST_FENCE_HI, &hi);
	return (uint64_t)hi << 32 | lo;
}

void fence(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint64_t *var;
	unsigned int e;
	struct vugpu_dma d;
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_A + 4096))
		return;
	var = buf_alloc(4096);
	ASSERT_THAT(var, "out of memory");
	for (e = 0; e < c->info.engine_count; e++) {
		uint64_t v = 0x1122334455667700ULL | e, got;

		ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, VUGPU_DMA_IRQ, 0, 0, VUGPU_MEM_NONE, 0, 0, v,
			      &d);
		EXPECT_THAT(!ret && d.value == v, "engine %u: FENCE to the driver slot: %s, read %#llx",
			    e, err_str(ret), (unsigned long long)d.value);
		/* The driver's own completion FENCE is the last one the engine ran. */
		got = engine_last_fence(c, e);
		EXPECT_THAT(got == d.seq, "engine %u: LAST_FENCE %#llx, the last fence written was %#llx",
			    e, (unsigned long long)got, (unsigned long long)d.seq);

		var[e] = 0;
		ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, 0, 0, 0, VUGPU_MEM_USER, (uintptr_t)&var[e], 0,
			      ~v, &d);
		EXPECT_THAT(!ret && var[e] == ~v && d.value == ~v,
			    "engine %u: FENCE to user memory: %s, memory %#llx", e, err_str(ret),
			    (unsigned long long)var[e]);

		ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, VUGPU_DMA_IRQ, 0, 0, VUGPU_MEM_VRAM,
			      VRAM_A + 8 * e, 0, v ^ 0xff00, &d);
		memcpy(&got, c->bar + VRAM_A + 8 * e, 8);
		EXPECT_THAT(!ret && got == (v ^ 0xff00), "engine %u: FENCE to VRAM: %s, VRAM %#llx", e,
			    err_str(ret), (unsigned long long)got);

		ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, 0, 0, 0, VUGPU_MEM_SCRATCH, 8 * e, 0,
			      v ^ 0xabc0000, &d);
		got = 0;
		vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_READ, 8 * e, &got, 8);
		EXPECT_THAT(!ret && got == (v ^ 0xabc0000) && d.value == got,
			    "engine %u: FENCE to scratch: %s, memory %#llx", e, err_str(ret),
			    (unsigned long long)got);
	}
	ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, 0, 0, 0, 0, VUGPU_MEM_USER, (uintptr_t)var + 4, 0, 1,
		      &d);
	EXPECT_THAT(ret == -EINVAL, "FENCE to a 4-byte aligned address: %d, expected -EINVAL", ret);
	buf_free(var, 4096);
}

void timestamp(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint64_t prev = 0, first = 0, *var;
	unsigned int e, i, increases = 0, n = 0;
	struct vugpu_dma d;
	int ret;

	REQUIRE_ENGINES(c);
	var = buf_alloc(4096);
	ASSERT_THAT(var, "out of memory");
	for (i = 0; i < 8; i++) {
		for (e = 0; e < c->info.engine_count; e++) {
			bool user = (i + e) % 3 == 2;
			uint64_t ts;

			var[0] = 0;
			ret = dma_job(c, VUGPU_IOCTL_DMA_TIMESTAMP, e, (i & 1) ? VUGPU_DMA_IRQ : 0, 0, 0,
				      user ? VUGPU_MEM_USER : VUGPU_MEM_NONE, (uintptr_t)var, 0, 0, &d);
			ASSERT_THAT(!ret, "engine %u: TIMESTAMP: %s", e, err_str(ret));
			ts = d.value;
			EXPECT_THAT(!user || var[0] == ts, "engine %u: memory %#llx, ioctl %#llx", e,
				    (unsigned long long)var[0], (unsigned long long)ts);
			EXPECT_THAT(d.clock_before <= ts && ts <= d.clock_after,
				    "engine %u: TIMESTAMP %llu outside the CLOCK reads around it [%llu, %llu]",
				    e, (unsigned long long)ts, (unsigned long long)d.clock_before,
				    (unsigned long long)d.clock_after);
			EXPECT_THAT(ts >= prev, "engine %u: TIMESTAMP went back: %llu after %llu", e,
				    (unsigned long long)ts, (unsigned long long)prev);
			increases += ts > prev;
			if (!first)
				first = ts;
			prev = ts;
			n++;
		}
	}
	EXPECT_THAT(increases == n, "only %u of %u timestamps advanced", increases, n);
	diag("%u timestamps over %llu us of device time", n,
		  (unsigned long long)(prev - first) / 1000);
	buf_free(var, 4096);
}

/* ---- completion modes and statistics ----------------------------------------- */

/*
 * Take a snapshot once the engine's vector is quiet.  A waiter may see its
 * fence before the handler of its interrupt runs, so the last interrupt of an
 * earlier test (timestamp runs interrupt-mode jobs on every engine) can be
 * handled after a snapshot taken at once: a handler run counted against jobs
 * that did not signal it.  Wait until the handled count has not moved for
 * 100 ms (at most 2 s).
 */
static int engine_stats_quiet(int fd, unsigned int e, struct vugpu_engine_stats *s)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	unsigned int still = 0, i;
	uint64_t last;

	if (vugpu_engine_stats(fd, e, s))
		return -1;
	last = s->completion_irqs;
	for (i = 0; i < 100 && still < 5; i++) {
		nanosleep(&ts, NULL);
		if (vugpu_engine_stats(fd, e, s))
			return -1;
		still = s->completion_irqs == last ? still + 1 : 0;
		last = s->completion_irqs;
	}
	return 0;
}

void irq_and_poll(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int e = c->info.engine_count - 1, i, runs = 20;
	struct vugpu_engine_stats s0, s1, s2, s3;
	uint8_t src[256];
	struct vugpu_dma d;
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_A + 4096))
		return;
	vugpu_fill_pattern64(src, sizeof(src), 5);
	ASSERT_THAT(!engine_stats_quiet(c->fd, e, &s0), "ENGINE_STATS failed");
	for (i = 0; i < runs; i++) {
		ret = dma_copy(c, e, VUGPU_DMA_IRQ | (i % 4 == 3 ? VUGPU_DMA_DB_REG : 0), VUGPU_MEM_USER,
			       (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_A + 256 * i, sizeof(src), &d);
		ASSERT_THAT(!ret, "irq copy %u: %s", i, err_str(ret));
	}
	ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s1), "ENGINE_STATS failed");
	for (i = 0; i < runs; i++) {
		ret = dma_copy(c, e, i % 4 == 3 ? VUGPU_DMA_DB_REG : 0, VUGPU_MEM_VRAM, VRAM_A + 256 * i,
			       VUGPU_MEM_VRAM, VRAM_A + 8192 + 256 * i, sizeof(src), &d);
		ASSERT_THAT(!ret, "polled copy %u: %s", i, err_str(ret));
	}
	ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s2), "ENGINE_STATS failed");
	EXPECT_THAT(vram_diff(c, VRAM_A + 8192 + 256 * (runs - 1), src, sizeof(src)) < 0,
		    "data of the last polled copy wrong");

	EXPECT_THAT(s1.irq_waits - s0.irq_waits == runs && s1.poll_waits == s0.poll_waits,
		    "interrupt mode: %llu irq waits, %llu polled (expected %u, 0)",
		    (unsigned long long)(s1.irq_waits - s0.irq_waits),
		    (unsigned long long)(s1.poll_waits - s0.poll_waits), runs);
	/*
	 * Every job signalled its vector (the device's IRQS counter), but the
	 * handler may run fewer times: x86 merges a second MSI of a vector that
	 * arrives before the first was serviced (one IRR bit per vector), and
	 * the last one may be handled after the waiter already saw its fence.
	 */
	EXPECT_THAT(s2.completion_irqs - s0.completion_irqs >= 1 &&
		    s2.completion_irqs - s0.completion_irqs <= runs,
		    "%llu completion interrupts handled for %u interrupt-mode jobs",
		    (unsigned long long)(s2.completion_irqs - s0.completion_irqs), runs);
	diag("engine %u: %u interrupt-mode jobs, %llu signalled, %llu handler runs", e, runs,
		  (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_IRQS),
		  (unsigned long long)(s2.completion_irqs - s0.completion_irqs));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_IRQS) == runs,
		    "interrupt mode: device IRQS counter grew by %llu for %u jobs",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_IRQS), runs);
	EXPECT_THAT(s2.poll_waits - s1.poll_waits == runs && s2.irq_waits == s1.irq_waits,
		    "polling mode: %llu polled, %llu irq waits",
		    (unsigned long long)(s2.poll_waits - s1.poll_waits),
		    (unsigned long long)(s2.irq_waits - s1.irq_waits));
	EXPECT_THAT(stat_delta(&s1, &s2, VUGPU_ENG_STAT_IRQS) == 0,
		    "polling mode: the device signalled %llu completion interrupts, expected none",
		    (unsigned long long)stat_delta(&s1, &s2, VUGPU_ENG_STAT_IRQS));

	/* One ioctl, many jobs: the driver's job rate without syscall overhead. */
	d = (struct vugpu_dma){ .engine = e, .flags = VUGPU_DMA_IRQ, .src_type = VUGPU_MEM_VRAM,
				.dst_type = VUGPU_MEM_VRAM, .src = VRAM_A, .dst = VRAM_A + 16384,
				.length = 64, .count = 50 };
	ret = vugpu_dma(c->fd, VUGPU_IOCTL_DMA_COPY, &d);
	EXPECT_THAT(!ret, "50 repeated jobs: %s", err_str(ret));
	ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s3), "ENGINE_STATS failed");
	EXPECT_THAT(s3.jobs - s2.jobs == 50 && stat_delta(&s2, &s3, VUGPU_ENG_STAT_BYTES_V2V) == 50 * 64,
		    "50 repeated jobs: driver counted %llu, device moved %llu VRAM bytes",
		    (unsigned long long)(s3.jobs - s2.jobs),
		    (unsigned long long)stat_delta(&s2, &s3, VUGPU_ENG_STAT_BYTES_V2V));
	if (!ret)
		diag("engine %u: 50 x 64 B VRAM->VRAM jobs with interrupts: %.0f jobs/s", e,
			  50e9 / (double)(d.elapsed_ns ? d.elapsed_ns : 1));
}

void stats_counters(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_engine_stats s0, s1;
	size_t blen = 3 * 4096;
	uint8_t *a, *b;
	struct vugpu_dma d;
	uint64_t descs = 0;
	int ret, i;
	struct {
		uint32_t st, dt;
		uint64_t len;
	} jobs[] = {
		{ VUGPU_MEM_USER, VUGPU_MEM_VRAM, 4097 },
		{ VUGPU_MEM_VRAM, VUGPU_MEM_USER, 8192 },
		{ VUGPU_MEM_VRAM, VUGPU_MEM_VRAM, 12288 },
		{ VUGPU_MEM_USER, VUGPU_MEM_USER, 100 },
	};

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_B + MIB))
		return;
	a = buf_alloc(blen);
	b = buf_alloc(blen);
	ASSERT_THAT(a && b, "out of memory");
	memset(a, 1, blen);
	ASSERT_THAT(!vugpu_engine_stats(c->fd, 0, &s0), "ENGINE_STATS failed");
	for (i = 0; i < (int)ARRAY_SIZE(jobs); i++) {
		uint64_t src = jobs[i].st == VUGPU_MEM_USER ? (uintptr_t)a : VRAM_A;
		uint64_t dst = jobs[i].dt == VUGPU_MEM_USER ? (uintptr_t)b : VRAM_B;

		ret = dma_copy(c, 0, i & 1 ? VUGPU_DMA_IRQ : 0, jobs[i].st, src, jobs[i].dt, dst,
			       jobs[i].len, &d);
		ASSERT_THAT(!ret, "copy %d: %s", i, err_str(ret));
		descs += d.descs + d.fences;
	}
	ret = dma_job(c, VUGPU_IOCTL_DMA_FILL, 0, 0, 0, 0, VUGPU_MEM_VRAM, VRAM_B, 64, 7, &d);
	ASSERT_THAT(!ret, "fill: %s", err_str(ret));
	descs += d.descs + d.fences;
	ASSERT_THAT(!vugpu_engine_stats(c->fd, 0, &s1), "ENGINE_STATS failed");

	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_JOBS) == descs,
		    "JOBS grew by %llu, %llu descriptors completed",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_JOBS),
		    (unsigned long long)descs);
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_S2V) == 4097,
		    "BYTES_SYS_TO_VRAM +%llu, expected 4097",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_S2V));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_V2S) == 8192,
		    "BYTES_VRAM_TO_SYS +%llu, expected 8192",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_V2S));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_V2V) == 12288,
		    "BYTES_VRAM_TO_VRAM +%llu, expected 12288",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_V2V));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_S2S) == 100,
		    "BYTES_SYS_TO_SYS +%llu, expected 100",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_S2S));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_FILL) == 64,
		    "BYTES_FILL +%llu, expected 64",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_BYTES_FILL));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS) == 0 &&
		    stat_delta(&s0, &s1, VUGPU_ENG_STAT_NS_REQUESTED) == 0 &&
		    stat_delta(&s0, &s1, VUGPU_ENG_STAT_RO_REQUESTED) == 0,
		    "ERRORS +%llu NS_REQUESTED +%llu RO_REQUESTED +%llu, expected 0",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS),
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_NS_REQUESTED),
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_RO_REQUESTED));
	EXPECT_THAT(s1.jobs - s0.jobs == 5, "driver counted %llu jobs, ran 5",
		    (unsigned long long)(s1.jobs - s0.jobs));
	buf_free(a, blen);
	buf_free(b, blen);
}

/* ---- No Snoop / Relaxed Ordering (§1.3, §7.1) --------------------------------- */

struct attr_counts {
	uint64_t ns_req, ns_used, ro_req, ro_used, bytes_ns, bytes_ro;
};

static struct attr_counts attr_delta(const struct vugpu_engine_stats *a,
				     const struct vugpu_engine_stats *b)
{
	return (struct attr_counts){
		.ns_req = stat_delta(a, b, VUGPU_ENG_STAT_NS_REQUESTED),
		.ns_used = stat_delta(a, b, VUGPU_ENG_STAT_NS_USED),
		.ro_req = stat_delta(a, b, VUGPU_ENG_STAT_RO_REQUESTED),
		.ro_used = stat_delta(a, b, VUGPU_ENG_STAT_RO_USED),
		.bytes_ns = stat_delta(a, b, VUGPU_ENG_STAT_BYTES_NS),
		.bytes_ro = stat_delta(a, b, VUGPU_ENG_STAT_BYTES_RO),
	};
}

/* Runs one copy with @flags on engine 0 and returns the attribute counters it moved. */
static int attr_job(struct dma_ctx *c, uint32_t flags, uint32_t st, uint64_t src, uint32_t dt,
		    uint64_t dst, uint64_t len, struct attr_counts *out, unsigned int *data_descs)
{
	struct vugpu_engine_stats a, b;
	struct vugpu_dma d;
	int ret;

	ret = vugpu_engine_stats(c->fd, 0, &a);
	if (!ret)
		ret = dma_copy(c, 0, flags | VUGPU_DMA_IRQ, st, src, dt, dst, len, &d);
	if (!ret)
		ret = vugpu_engine_stats(c->fd, 0, &b);
	if (ret)
		return ret;
	*out = attr_delta(&a, &b);
	*data_descs = d.descs;	/* the driver's completion fences request nothing */
	return 0;
}

static uint16_t sysfs_devctl(struct dma_ctx *c)
{
	unsigned int pcie;

	if (vugpu_read_config(c->d))
		return 0xffff;
	pcie = vugpu_find_cap(c->d, 0x10);
	return pcie ? vugpu_cfg16(c->d, pcie + 8) : 0xffff;
}

#define NSRO	(VUGPU_DEVCTL_NOSNOOP_EN | VUGPU_DEVCTL_RELAX_EN)
#define ATTR_FMT "NS requested %llu used %llu bytes %llu, RO requested %llu used %llu bytes %llu"
#define ATTR_ARGS(a) (unsigned long long)(a).ns_req, (unsigned long long)(a).ns_used,		\
		     (unsigned long long)(a).bytes_ns, (unsigned long long)(a).ro_req,		\
		     (unsigned long long)(a).ro_used, (unsigned long long)(a).bytes_ro

/* A failed check of attrs_ns_ro: record it and go restore Device Control. */
#define NSRO_ASSERT(_metadata, cond, ...)						\
	do {									\
		if (!(cond)) {							\
			FAIL_TEST(__VA_ARGS__);	\
			goto restore;						\
		}								\
	} while (0)

void attrs_ns_ro(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	const uint64_t len = 64 * KIB;
	uint16_t orig = 0, now = 0, sys;
	struct attr_counts a;
	unsigned int k = 0;
	uint8_t *buf;
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_B + MIB))
		return;
	ASSERT_THAT(!vugpu_devctl(c->fd, 0, 0, &orig), "DEVCTL query failed");
	buf = buf_alloc(len);
	ASSERT_THAT(buf, "out of memory");
	memset(buf, 3, len);
	diag("Device Control %#06x at start (NS %s, RO %s)", orig,
		  orig & VUGPU_DEVCTL_NOSNOOP_EN ? "on" : "off",
		  orig & VUGPU_DEVCTL_RELAX_EN ? "on" : "off");

	/* Both enabled: every SYS descriptor that requests them uses them. */
	ret = vugpu_devctl(c->fd, NSRO, NSRO, &now);
	NSRO_ASSERT(_metadata, !ret && (now & NSRO) == NSRO, "DEVCTL set: %s, now %#x", err_str(ret), now);
	sys = sysfs_devctl(c);
	EXPECT_THAT((sys & NSRO) == NSRO, "sysfs config shows Device Control %#x after setting NS|RO",
		    sys);
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP | VUGPU_DMA_RELAXED, VUGPU_MEM_USER, (uintptr_t)buf,
		       VUGPU_MEM_VRAM, VRAM_A, len, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == k && a.ns_used == k && a.ro_req == k && a.ro_used == k &&
		    a.bytes_ns == len && a.bytes_ro == len,
		    "enabled, SYS->VRAM %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));
	diag("enabled:  %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));

	/* SYS->SYS moves every byte twice over the link. */
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP, VUGPU_MEM_USER, (uintptr_t)buf, VUGPU_MEM_USER,
		       (uintptr_t)buf + len / 2, len / 2, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == k && a.ns_used == k && a.bytes_ns == len && a.ro_req == 0 &&
		    a.ro_used == 0 && a.bytes_ro == 0,
		    "enabled, SYS->SYS NS only, %u descriptors, %llu bytes: " ATTR_FMT, k,
		    (unsigned long long)len / 2, ATTR_ARGS(a));

	/* VRAM->VRAM never leaves the device: requested, not used. */
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP | VUGPU_DMA_RELAXED, VUGPU_MEM_VRAM, VRAM_A,
		       VUGPU_MEM_VRAM, VRAM_B, 4096, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == 1 && a.ro_req == 1 && a.ns_used == 0 && a.ro_used == 0 &&
		    a.bytes_ns == 0 && a.bytes_ro == 0, "enabled, VRAM->VRAM: " ATTR_FMT, ATTR_ARGS(a));

	/* Not requested: nothing counted. */
	ret = attr_job(c, 0, VUGPU_MEM_USER, (uintptr_t)buf, VUGPU_MEM_VRAM, VRAM_A, len, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(!a.ns_req && !a.ns_used && !a.ro_req && !a.ro_used && !a.bytes_ns && !a.bytes_ro,
		    "enabled, not requested: " ATTR_FMT, ATTR_ARGS(a));

	/* Both disabled: requested grows, used stays. */
	ret = vugpu_devctl(c->fd, NSRO, 0, &now);
	NSRO_ASSERT(_metadata, !ret && !(now & NSRO), "DEVCTL clear: %s, now %#x", err_str(ret), now);
	sys = sysfs_devctl(c);
	EXPECT_THAT(!(sys & NSRO), "sysfs config shows Device Control %#x after clearing NS|RO", sys);
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP | VUGPU_DMA_RELAXED, VUGPU_MEM_USER, (uintptr_t)buf,
		       VUGPU_MEM_VRAM, VRAM_A, len, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == k && a.ro_req == k && a.ns_used == 0 && a.ro_used == 0 &&
		    a.bytes_ns == 0 && a.bytes_ro == 0,
		    "disabled, SYS->VRAM %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));
	diag("disabled: %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));

	/* Only No Snoop enabled: each attribute follows its own bit. */
	ret = vugpu_devctl(c->fd, NSRO, VUGPU_DEVCTL_NOSNOOP_EN, &now);
	NSRO_ASSERT(_metadata, !ret && (now & NSRO) == VUGPU_DEVCTL_NOSNOOP_EN, "DEVCTL NS only: %s, now %#x",
		    err_str(ret), now);
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP | VUGPU_DMA_RELAXED, VUGPU_MEM_VRAM, VRAM_A,
		       VUGPU_MEM_USER, (uintptr_t)buf, len, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == k && a.ns_used == k && a.bytes_ns == len && a.ro_req == k &&
		    a.ro_used == 0 && a.bytes_ro == 0,
		    "NS only, VRAM->SYS %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));

	/* And only Relaxed Ordering. */
	ret = vugpu_devctl(c->fd, NSRO, VUGPU_DEVCTL_RELAX_EN, &now);
	NSRO_ASSERT(_metadata, !ret && (now & NSRO) == VUGPU_DEVCTL_RELAX_EN, "DEVCTL RO only: %s, now %#x",
		    err_str(ret), now);
	ret = attr_job(c, VUGPU_DMA_NO_SNOOP | VUGPU_DMA_RELAXED, VUGPU_MEM_USER, (uintptr_t)buf,
		       VUGPU_MEM_VRAM, VRAM_A, len, &a, &k);
	NSRO_ASSERT(_metadata, !ret, "copy: %s", err_str(ret));
	EXPECT_THAT(a.ns_req == k && a.ns_used == 0 && a.bytes_ns == 0 && a.ro_req == k &&
		    a.ro_used == k && a.bytes_ro == len,
		    "RO only, SYS->VRAM %u descriptors: " ATTR_FMT, k, ATTR_ARGS(a));

	/*
	 * Restore what the kernel had set, also after a failure above: Device
	 * Control is the kernel's, and the later tests must not inherit ours.
	 */
restore:
	ret = vugpu_devctl(c->fd, NSRO, orig & NSRO, &now);
	EXPECT_THAT(!ret && (now & NSRO) == (orig & NSRO), "restoring Device Control %#x: %s, now %#x",
		    orig, err_str(ret), now);
	sys = sysfs_devctl(c);
	EXPECT_THAT(sys == orig, "sysfs Device Control %#x after restoring %#x", sys, orig);
	buf_free(buf, len);
}

/* ---- rings --------------------------------------------------------------------- */

static int engine_reset(struct dma_ctx *c, unsigned int e, uint32_t flags, uint32_t slots,
			struct vugpu_dma *out)
{
	return dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, flags, 0, 0, 0, 0, 0, slots, out);
}

/* A round trip SYS->VRAM->SYS of @len bytes on @e, verified. */
static void roundtrip(struct __test_metadata *_metadata, struct dma_ctx *c, unsigned int e, uint64_t len,
		      uint64_t voff, uint32_t flags, const char *what)
{
	uint8_t *a = buf_alloc(len), *b = buf_alloc(len);
	struct vugpu_dma d1, d2;
	char regs[256];
	int r1 = -ENOMEM, r2 = -ENOMEM;

	if (a && b) {
		vugpu_fill_pattern64(a, len, len ^ voff ^ e);
		memset(b, POISON, len);
		r1 = dma_copy(c, e, flags, VUGPU_MEM_USER, (uintptr_t)a, VUGPU_MEM_VRAM, voff, len, &d1);
		r2 = r1 ? r1 : dma_copy(c, e, flags, VUGPU_MEM_VRAM, voff, VUGPU_MEM_USER, (uintptr_t)b,
					len, &d2);
	}
	EXPECT_THAT(!r1 && !r2 && vugpu_first_diff(a, b, len) < 0,
		    "%s: engine %u round trip of %llu bytes: %s%s%s", what, e, (unsigned long long)len,
		    r1 ? err_str(r1) : r2 ? err_str(r2) : "data differs", r1 || r2 ? "; " : "",
		    r1 ? regs_str(&d1.regs, regs, sizeof(regs)) :
		    r2 ? regs_str(&d2.regs, regs, sizeof(regs)) : "");
	buf_free(a, len);
	buf_free(b, len);
}

void ring_wrap(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint32_t orig = c->info.ring_slots[0];
	struct vugpu_dma d;
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram(_metadata, c, VRAM_A + 2 * MIB))
		return;
	ret = engine_reset(c, 0, 0, 4, &d);
	ASSERT_THAT(!ret, "ENGINE_RESET to a 4-slot ring: %s", err_str(ret));
	refresh_info(c);
	EXPECT_THAT(c->info.ring_slots[0] == 4, "ring has %u slots", c->info.ring_slots[0]);
	EXPECT_THAT((d.regs.status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_IDLE &&
		    d.regs.head == 0 && d.regs.tail == 0, "after ENGINE_RESET: STATUS %#x HEAD %u TAIL %u",
		    d.regs.status, d.regs.head, d.regs.tail);
	/* 3 descriptors + fence per batch: a 1 MiB user buffer needs several batches. */
	roundtrip(_metadata, c, 0, MIB, VRAM_A, VUGPU_DMA_IRQ, "4-slot ring");
	roundtrip(_metadata, c, 0, 3 * 4096 + 5, VRAM_A + 4096, 0, "4-slot ring");
	/* 40 jobs of 2 descriptors: the slot index wraps 20 times. */
	d = (struct vugpu_dma){ .engine = 0, .flags = VUGPU_DMA_IRQ, .src_type = VUGPU_MEM_VRAM,
				.dst_type = VUGPU_MEM_VRAM, .src = VRAM_A, .dst = VRAM_A + MIB,
				.length = 4096, .count = 40 };
	ret = vugpu_dma(c->fd, VUGPU_IOCTL_DMA_COPY, &d);
	EXPECT_THAT(!ret && vugpu_first_diff(c->bar + VRAM_A, c->bar + VRAM_A + MIB, 4096) < 0,
		    "40 jobs through a 4-slot ring: %s", err_str(ret));
	ret = engine_reset(c, 0, 0, orig, &d);
	EXPECT_THAT(!ret, "ENGINE_RESET back to %u slots: %s", orig, err_str(ret));
	roundtrip(_metadata, c, 0, 64 * KIB, VRAM_A, VUGPU_DMA_IRQ, "restored ring");
	refresh_info(c);
}

void ring_in_vram(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int e;
	uint32_t orig;
	struct vugpu_dma d;
	uint64_t v = 0;
	uint32_t tail = 0;
	int ret;

	REQUIRE_ENGINES(c);
	e = c->info.engine_count - 1;
	orig = c->info.ring_slots[e];
	if (!c->info.vram_ring_size)
		SKIP_TEST("BAR2 too small to reserve VRAM for rings");
	if (!need_vram(_metadata, c, VRAM_B + 2 * MIB))
		return;
	ret = engine_reset(c, e, VUGPU_DMA_RING_VRAM, 256, &d);
	ASSERT_THAT(!ret, "ENGINE_RESET with a VRAM ring: %s", err_str(ret));
	refresh_info(c);
	EXPECT_THAT(c->info.ring_vram_mask & (1u << e) && c->info.ring_slots[e] == 256 &&
		    c->info.ring_base[e] >= c->info.vram_ring_base &&
		    c->info.ring_base[e] + 256 * VUGPU_DESC_SIZE <= c->info.vram_ring_base + c->info.vram_ring_size,
		    "engine %u: ring mask %#x slots %u base %#llx", e, c->info.ring_vram_mask,
		    c->info.ring_slots[e], (unsigned long long)c->info.ring_base[e]);
	roundtrip(_metadata, c, e, MIB, VRAM_B, VUGPU_DMA_IRQ, "VRAM ring");
	roundtrip(_metadata, c, e, 4099, VRAM_B + MIB + 1, 0, "VRAM ring");
	ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, 0, 0, 0, VUGPU_MEM_NONE, 0, 0, 0xfeed, &d);
	EXPECT_THAT(!ret && d.value == 0xfeed, "VRAM ring FENCE: %s value %#llx", err_str(ret),
		    (unsigned long long)d.value);
	/* 300 jobs x 2 descriptors wrap the 256-slot VRAM ring twice. */
	d = (struct vugpu_dma){ .engine = e, .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM,
				.src = VRAM_B, .dst = VRAM_B + MIB + 8192, .length = 64, .count = 300 };
	ret = vugpu_dma(c->fd, VUGPU_IOCTL_DMA_COPY, &d);
	EXPECT_THAT(!ret && vugpu_first_diff(c->bar + VRAM_B, c->bar + VRAM_B + MIB + 8192, 64) < 0,
		    "300 jobs through the VRAM ring: %s", err_str(ret));
	/* The descriptors really live in VRAM: the last fence is readable through the BAR. */
	EXPECT_THAT(!vugpu_reg_read(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_RING_TAIL, &tail) &&
		    tail > 512, "TAIL %u after more than 512 descriptors", tail);
	memcpy(&v, c->bar + c->info.ring_base[e] + ((tail - 1) % 256) * VUGPU_DESC_SIZE +
	       VUGPU_DESC_OFF_VALUE, 8);
	EXPECT_THAT(!ret && v == d.seq, "last ring slot in VRAM holds fence value %#llx, job seq %#llx",
		    (unsigned long long)v, (unsigned long long)d.seq);
	ret = engine_reset(c, e, 0, orig, &d);
	EXPECT_THAT(!ret, "ENGINE_RESET back to a system-memory ring: %s", err_str(ret));
	refresh_info(c);
	EXPECT_THAT(!(c->info.ring_vram_mask & (1u << e)), "ring still in VRAM");
	roundtrip(_metadata, c, e, 64 * KIB, VRAM_B, 0, "ring back in system memory");
}
