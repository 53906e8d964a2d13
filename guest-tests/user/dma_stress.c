// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma cases: concurrent engines, hostile descriptors, final state.
 * See vugpu-dma.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma.h"

/* ---- every engine at once ---------------------------------------------------------- */

#define CONC_LEN	(128 * KIB)
#define CONC_ITERS	12

struct conc_thread {
	struct dma_ctx *c;
	pthread_t tid;
	unsigned int idx, engine;
	uint64_t vram;
	unsigned int jobs, failures;
	char first_failure[256];
};

static void conc_fail(struct conc_thread *th, const char *what, int ret, unsigned int k)
{
	if (!th->failures++)
		snprintf(th->first_failure, sizeof(th->first_failure),
			 "thread %u engine %u iteration %u: %s: %s", th->idx, th->engine, k, what,
			 ret ? err_str(ret) : "data differs");
}

static void *conc_main(void *arg)
{
	struct conc_thread *th = arg;
	struct dma_ctx *c = th->c;
	uint8_t *a = buf_alloc(CONC_LEN), *b = buf_alloc(CONC_LEN);
	struct vugpu_dma d;
	unsigned int k;
	int ret;

	if (!a || !b) {
		conc_fail(th, "out of memory", -ENOMEM, 0);
		goto out;
	}
	for (k = 0; k < CONC_ITERS; k++) {
		uint32_t flags = (k + th->idx) & 1 ? VUGPU_DMA_IRQ : 0;
		uint64_t len = CONC_LEN - k * 4097;	/* different sizes and tails */

		vugpu_fill_pattern64(a, len, th->idx * 1000 + k);
		memset(b, POISON, CONC_LEN);
		ret = dma_copy(c, th->engine, flags, VUGPU_MEM_USER, (uintptr_t)a, VUGPU_MEM_VRAM,
			       th->vram, len, &d);
		th->jobs++;
		if (ret) {
			conc_fail(th, "SYS->VRAM", ret, k);
			continue;
		}
		/* Every third round goes through a second VRAM copy and a SYS->SYS copy. */
		if (k % 3 == 2) {
			ret = dma_copy(c, th->engine, flags ^ VUGPU_DMA_IRQ, VUGPU_MEM_VRAM, th->vram,
				       VUGPU_MEM_VRAM, th->vram + CONC_LEN, len, &d);
			th->jobs++;
			if (ret) {
				conc_fail(th, "VRAM->VRAM", ret, k);
				continue;
			}
		}
		ret = dma_copy(c, th->engine, flags, VUGPU_MEM_VRAM,
			       th->vram + (k % 3 == 2 ? CONC_LEN : 0), VUGPU_MEM_USER, (uintptr_t)b, len,
			       &d);
		th->jobs++;
		if (ret) {
			conc_fail(th, "VRAM->SYS", ret, k);
			continue;
		}
		if (vugpu_first_diff(a, b, len) >= 0 || !all_bytes(b + len, CONC_LEN - len, POISON))
			conc_fail(th, "verify", 0, k);
	}
out:
	buf_free(a, CONC_LEN);
	buf_free(b, CONC_LEN);
	return NULL;
}

void concurrent_engines(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int n, i, e, extra;
	struct conc_thread th[VUGPU_ENGINE_MAX + 2];
	struct vugpu_engine_stats s0[VUGPU_ENGINE_MAX], s1;
	uint64_t t0, ns, bytes = 0;
	unsigned int expect_jobs[VUGPU_ENGINE_MAX] = { 0 };

	REQUIRE_ENGINES(c);
	if (!need_vram_area(c))
		SKIP_TEST("not enough CPU-visible VRAM");
	/* One thread per engine, plus two that share engines 0 and 1 with them. */
	extra = c->info.engine_count > 1 ? 2 : 1;
	n = c->info.engine_count + extra;
	for (e = 0; e < c->info.engine_count; e++)
		ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s0[e]), "ENGINE_STATS failed");
	memset(th, 0, sizeof(th));
	t0 = vugpu_now_ns();
	for (i = 0; i < n; i++) {
		th[i].c = c;
		th[i].idx = i;
		th[i].engine = i < c->info.engine_count ? i : i - c->info.engine_count;
		th[i].vram = VRAM_CONC + (uint64_t)i * 2 * CONC_LEN;
		ASSERT_THAT(!pthread_create(&th[i].tid, NULL, conc_main, &th[i]),
			    "pthread_create failed");
	}
	for (i = 0; i < n; i++)
		pthread_join(th[i].tid, NULL);
	ns = vugpu_now_ns() - t0;
	for (i = 0; i < n; i++) {
		EXPECT_THAT(th[i].failures == 0, "%u failures; first: %s", th[i].failures,
			    th[i].first_failure);
		expect_jobs[th[i].engine] += th[i].jobs;
		bytes += (uint64_t)th[i].jobs * CONC_LEN;
	}
	for (e = 0; e < c->info.engine_count; e++) {
		ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s1), "ENGINE_STATS failed");
		EXPECT_THAT(s1.jobs - s0[e].jobs == expect_jobs[e],
			    "engine %u: driver ran %llu jobs, threads submitted %u", e,
			    (unsigned long long)(s1.jobs - s0[e].jobs), expect_jobs[e]);
		EXPECT_THAT(stat_delta(&s0[e], &s1, VUGPU_ENG_STAT_ERRORS) == 0,
			    "engine %u: %llu errors", e,
			    (unsigned long long)stat_delta(&s0[e], &s1, VUGPU_ENG_STAT_ERRORS));
	}
	diag("%u threads on %u engines: %llu jobs, ~%llu MiB moved in %llu ms (%.0f MB/s aggregate)",
		  n, c->info.engine_count, (unsigned long long)(bytes / CONC_LEN),
		  (unsigned long long)(bytes >> 20), (unsigned long long)ns / 1000000,
		  (double)bytes * 1e3 / (double)(ns ? ns : 1));
}

/* ---- hostile descriptors ------------------------------------------------------------ */

/*
 * Random descriptors whose memory operands are drawn only from places
 * where a wrong write cannot hurt the guest: the driver's scratch buffer
 * (inside its guards), VRAM, SYS addresses no window maps, and garbage
 * addresses behind invalid apertures.  Everything else about them -
 * opcode, flags, reserved fields, lengths, values - is random.  The whole
 * of guest RAM is mapped for the device, so a random SYS address would let
 * a (correctly working) device corrupt the guest, as real hardware would.
 */

struct operand {
	uint8_t ap;
	uint64_t addr;
	uint64_t room;		/* bytes the engine may touch from addr */
};

struct hostile {
	struct dma_ctx *c;
	uint64_t rng;
	uint64_t vram_top;	/* valid VRAM targets stay below this */
};

static uint64_t rnd(struct hostile *h, uint64_t n)
{
	return n ? xorshift(&h->rng) % n : 0;
}

static struct operand gen_operand(struct hostile *h, bool write)
{
	struct dma_ctx *c = h->c;
	uint64_t r = rnd(h, 100), off;
	struct operand o = { .ap = VUGPU_APERTURE_SYS, .room = ~0ULL };

	if (r < 32) {
		off = rnd(h, c->info.scratch_size);
		if (rnd(h, 4))
			off &= ~7ULL;
		o.addr = c->info.scratch_dma + off;
		o.room = c->info.scratch_size - off;
	} else if (r < 70) {
		o.ap = VUGPU_APERTURE_VRAM;
		off = rnd(h, h->vram_top);
		if (rnd(h, 4))
			off &= ~7ULL;
		o.addr = off;
		o.room = h->vram_top - off;
	} else if (r < 75) {
		o.ap = VUGPU_APERTURE_VRAM;
		/* Near or past the end; clamp_vram_oor() bounds the part that is valid. */
		o.addr = rnd(h, 2) ? c->info.vram_size - rnd(h, 4096) : c->info.vram_size + rnd(h, 1ULL << 40);
	} else if (r < 83) {
		o.addr = UNMAPPED_HIGH + rnd(h, 1ULL << 30);
	} else if (r < 88 && !write && c->low_unmapped) {
		/* The empty window after low RAM: read only, never running back into RAM. */
		o.addr = c->low_unmapped + rnd(h, c->low_unmapped_len);
		o.room = c->low_unmapped + c->low_unmapped_len - o.addr;
	} else if (r < 95 && c->rom_start && !c->no_rom) {
		/* The read-only, fd-less ROM: message DMA reads, refused writes. */
		o.addr = c->rom_start + rnd(h, c->rom_end - c->rom_start);
		o.room = c->rom_end - o.addr;
	} else if (r < 95) {
		o.addr = UNMAPPED_HIGH + rnd(h, 1ULL << 30);
	} else {
		o.ap = (uint8_t)(2 + rnd(h, 254));
		o.addr = xorshift(&h->rng);
	}
	return o;
}

/* A VRAM operand near the end may be valid; keep it inside the area the tests own. */
static void clamp_vram_oor(struct hostile *h, struct operand *o)
{
	if (o->ap == VUGPU_APERTURE_VRAM && o->addr < h->c->info.vram_size && o->addr >= h->vram_top)
		o->room = h->c->info.vram_size - o->addr;
}

static void gen_desc(struct hostile *h, struct vugpu_desc *d)
{
	uint64_t r = rnd(h, 100), len, room;
	struct operand src = gen_operand(h, false), dst = gen_operand(h, true);

	memset(d, 0, sizeof(*d));
	if (r < 45)
		d->opcode = VUGPU_OP_COPY;
	else if (r < 65)
		d->opcode = VUGPU_OP_FILL;
	else if (r < 77)
		d->opcode = VUGPU_OP_FENCE;
	else if (r < 89)
		d->opcode = VUGPU_OP_TIMESTAMP;
	else if (r < 95)
		d->opcode = VUGPU_OP_NOP;
	else
		d->opcode = (uint8_t)rnd(h, 256);	/* may still be a valid opcode */
	d->flags = rnd(h, 20) ? (uint8_t)rnd(h, 8) : (uint8_t)rnd(h, 256);
	if (!rnd(h, 30))
		d->rsvd0 = (uint32_t)xorshift(&h->rng) | 1;
	if (!rnd(h, 40))
		d->rsvd1[rnd(h, 3)] = xorshift(&h->rng) | 1;

	/*
	 * Whatever the opcode, the source is only ever read and the destination
	 * written: FENCE / TIMESTAMP write 8 bytes, so the destination needs room
	 * for them; a COPY or FILL never runs past either operand's room.
	 */
	clamp_vram_oor(h, &src);
	clamp_vram_oor(h, &dst);
	if (dst.room < 8) {
		dst.addr -= 8 - dst.room;
		dst.room = 8;
	}
	d->src_aperture = src.ap;
	d->dst_aperture = dst.ap;
	d->src = src.addr;
	d->dst = dst.addr;
	r = rnd(h, 100);
	if (r < 55)
		len = 1 + rnd(h, 256);
	else if (r < 80)
		len = 1 + rnd(h, 64 * KIB);
	else if (r < 92)
		len = 1 + rnd(h, 4 * MIB);
	else if (r < 94)
		len = 0;
	else if (r < 97)
		len = xorshift(&h->rng);
	else
		len = 1 + rnd(h, 4 * MIB);
	if (rnd(h, 4))
		len &= ~3ULL;
	room = src.room < dst.room ? src.room : dst.room;
	if (len > room)
		len = room;
	d->length = len;
	d->value = rnd(h, 8) ? (uint32_t)xorshift(&h->rng) : xorshift(&h->rng);
	/*
	 * Most descriptors keep the alignment rules, so that enough of them
	 * execute; the rest break them.  Aligning down never leaves the room.
	 */
	if (rnd(h, 8)) {
		if (d->opcode == VUGPU_OP_FILL) {
			d->dst &= ~3ULL;
			d->length &= ~3ULL;
		} else if (d->opcode == VUGPU_OP_FENCE || d->opcode == VUGPU_OP_TIMESTAMP) {
			d->dst &= ~7ULL;
		}
	}
}

/* Is ERROR_ADDR plausible for the error code and the operands we generated? */
static bool error_plausible(struct hostile *h, unsigned int e, const struct vugpu_engine_regs *r)
{
	struct dma_ctx *c = h->c;
	uint64_t ring = c->info.ring_base[e], ring_end = ring + c->info.ring_slots[e] * 64ULL;

	switch (r->error_code) {
	case VUGPU_ENG_ERR_BAD_OPCODE:
	case VUGPU_ENG_ERR_BAD_DESCRIPTOR:
		return r->error_addr >= ring && r->error_addr < ring_end && r->error_addr % 64 == 0;
	case VUGPU_ENG_ERR_SYS_UNMAPPED:
		return (r->error_addr >= UNMAPPED_HIGH && r->error_addr < UNMAPPED_HIGH + (3ULL << 30)) ||
		       (r->error_addr >= c->low_unmapped &&
			r->error_addr < c->low_unmapped + c->low_unmapped_len);
	case VUGPU_ENG_ERR_SYS_PERMISSION:
		return r->error_addr >= c->rom_start && r->error_addr < c->rom_end;
	case VUGPU_ENG_ERR_VRAM_RANGE:
		return r->error_addr >= c->info.vram_size;
	case VUGPU_ENG_ERR_TRANSLATION:
		/*
		 * A random aperture 3 (VIRT, §9.5) while the driver runs the device
		 * MMU: context 0 is never valid, the driver cancels the fault.
		 */
		return (r->error_info & VUGPU_ENG_INFO_APERTURE_MASK) == VUGPU_APERTURE_VIRT;
	default:
		return false;	/* RING_*, MSG_DMA_FAILED: nothing here causes them */
	}
}

void hostile_descriptors(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct hostile h = { .c = c, .rng = c->seed | 1 };
	struct vugpu_desc descs[8];
	struct vugpu_dma_info i0, i1;
	struct vugpu_engine_stats s0[VUGPU_ENGINE_MAX], s1;
	uint64_t sent = 0, done = 0, submits = 0, errors = 0, timeouts = 0, other = 0, resets = 0;
	uint64_t by_code[16] = { 0 }, dev_errors = 0, t0, ns;
	unsigned int e, implausible = 0, k;
	uint8_t zero[4096];
	char regs[256];
	int ret;

	REQUIRE_ENGINES(c);
	if (!c->info.scratch_size)
		SKIP_TEST("no scratch buffer");
	/* Rings back in system memory: VRAM is a target here. */
	for (e = 0; e < c->info.engine_count; e++)
		if (c->info.ring_vram_mask & (1u << e))
			dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, 0, 0, 0, 0, 0, 0, 0, NULL);
	ASSERT_THAT(!refresh_info(c), "DMA_INFO failed");
	h.vram_top = c->info.vram_ring_size ? c->info.vram_ring_base : c->info.vram_size;
	memset(zero, 0, sizeof(zero));
	for (k = 0; k < c->info.scratch_size / sizeof(zero); k++)
		vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_WRITE, k * sizeof(zero), zero, sizeof(zero));
	ASSERT_THAT(!clear_errors(c, NULL) && !vugpu_dma_info(c->fd, &i0), "DMA_INFO failed");
	ASSERT_THAT(i0.guard_bad == 0, "scratch guards damaged before the test");
	for (e = 0; e < c->info.engine_count; e++)
		ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s0[e]), "ENGINE_STATS failed");
	diag("hostile: %llu descriptors, seed %#llx; targets: scratch %#llx+%llu, VRAM below %#llx, unmapped %#llx+1G and %#llx+%llu (read), ROM %#llx-%#llx",
		  (unsigned long long)c->hostile_descs, (unsigned long long)c->seed,
		  (unsigned long long)c->info.scratch_dma, (unsigned long long)c->info.scratch_size,
		  (unsigned long long)h.vram_top, UNMAPPED_HIGH, (unsigned long long)c->low_unmapped,
		  (unsigned long long)c->low_unmapped_len, (unsigned long long)c->rom_start,
		  (unsigned long long)c->rom_end);

	t0 = vugpu_now_ns();
	while (sent < c->hostile_descs) {
		unsigned int n = 1 + (unsigned int)rnd(&h, 6), i;
		uint32_t flags = (rnd(&h, 2) ? VUGPU_DMA_IRQ : 0) | (rnd(&h, 10) ? 0 : VUGPU_DMA_DB_REG);
		struct vugpu_dma d;

		if (n > c->hostile_descs - sent)
			n = (unsigned int)(c->hostile_descs - sent);
		for (i = 0; i < n; i++)
			gen_desc(&h, &descs[i]);
		e = (unsigned int)(submits % c->info.engine_count);
		d = (struct vugpu_dma){ .engine = e, .flags = flags, .src_type = VUGPU_MEM_USER,
					.src = (uintptr_t)descs, .count = n };
		ret = vugpu_dma(c->fd, VUGPU_IOCTL_DMA_RAW_SUBMIT, &d);
		submits++;
		sent += n;
		if (!ret) {
			done += n;
			continue;
		}
		if (ret == -EIO && d.result == VUGPU_DMA_ENGINE_ERROR &&
		    (d.regs.status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_ERROR) {
			/* Only a single batch maps HEAD back to the array (small rings split). */
			uint32_t idx = d.fences == 1 ? d.regs.head - (d.regs.tail - n - 1) : n;
			unsigned int code = d.regs.error_code < 16 ? d.regs.error_code : 15;

			errors++;
			/* A few samples of each error, with the descriptor that caused it. */
			if (by_code[code]++ < 2 && idx < n)
				diag("hostile: sample %s at %#llx: op %u flags %#x ap %u/%u rsvd %#x/%#llx/%#llx/%#llx src %#llx dst %#llx len %#llx value %#llx",
					  vugpu_eng_err_name(d.regs.error_code),
					  (unsigned long long)d.regs.error_addr, descs[idx].opcode,
					  descs[idx].flags, descs[idx].src_aperture, descs[idx].dst_aperture,
					  descs[idx].rsvd0, (unsigned long long)descs[idx].rsvd1[0],
					  (unsigned long long)descs[idx].rsvd1[1],
					  (unsigned long long)descs[idx].rsvd1[2],
					  (unsigned long long)descs[idx].src, (unsigned long long)descs[idx].dst,
					  (unsigned long long)descs[idx].length,
					  (unsigned long long)descs[idx].value);
			if (!error_plausible(&h, e, &d.regs) && implausible++ < 5)
				diag("hostile: engine %u: unexpected error: %s", e,
					  regs_str(&d.regs, regs, sizeof(regs)));
			/* Half the errors are reset explicitly, the rest by the driver's recovery. */
			if (errors & 1) {
				ret = dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, 0, 0, 0, 0, 0, 0, 0, &d);
				resets++;
				if (ret && other++ < 5)
					diag("hostile: ENGINE_RESET of engine %u: %s", e, err_str(ret));
			}
			continue;
		}
		if (ret == -ETIMEDOUT)
			timeouts++;
		else
			other++;
		if (!device_alive(c)) {
			/* The stream killed the device: say exactly what it was sent last. */
			diag("hostile: the device stopped answering after submission %llu (engine %u, %s): %s",
				  (unsigned long long)submits, e, flags & VUGPU_DMA_IRQ ? "irq" : "poll",
				  err_str(ret));
			for (i = 0; i < n; i++)
				diag("hostile:   desc %u: op %u flags %#x ap %u/%u rsvd %#x/%#llx/%#llx/%#llx src %#llx dst %#llx len %#llx value %#llx",
					  i, descs[i].opcode, descs[i].flags, descs[i].src_aperture,
					  descs[i].dst_aperture, descs[i].rsvd0,
					  (unsigned long long)descs[i].rsvd1[0],
					  (unsigned long long)descs[i].rsvd1[1],
					  (unsigned long long)descs[i].rsvd1[2],
					  (unsigned long long)descs[i].src, (unsigned long long)descs[i].dst,
					  (unsigned long long)descs[i].length,
					  (unsigned long long)descs[i].value);
			ASSERT_THAT(0, "the server dropped the device after %llu of %llu descriptors (%llu errors so far)",
				    (unsigned long long)sent, (unsigned long long)c->hostile_descs,
				    (unsigned long long)errors);
		}
		if (timeouts + other <= 5) {
			uint32_t idx = d.fences == 1 ? d.regs.head - (d.regs.tail - n - 1) : n;

			diag("hostile: submission %llu (engine %u, %u descriptors): %s, result %u; %s",
				  (unsigned long long)submits, e, n, err_str(ret), d.result,
				  regs_str(&d.regs, regs, sizeof(regs)));
			if (idx < n)
				diag("hostile:   at HEAD: op %u flags %#x ap %u/%u src %#llx dst %#llx len %#llx value %#llx",
					  descs[idx].opcode, descs[idx].flags, descs[idx].src_aperture,
					  descs[idx].dst_aperture, (unsigned long long)descs[idx].src,
					  (unsigned long long)descs[idx].dst,
					  (unsigned long long)descs[idx].length,
					  (unsigned long long)descs[idx].value);
		}
	}
	ns = vugpu_now_ns() - t0;

	/* Every engine recovers through a reset and still moves data correctly. */
	for (e = 0; e < c->info.engine_count; e++) {
		struct vugpu_dma d;

		ret = dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, 0, 0, 0, 0, 0, 0, 0, &d);
		EXPECT_THAT(!ret && (d.regs.status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_IDLE,
			    "engine %u after the hostile run: ENGINE_RESET %s; %s", e, err_str(ret),
			    regs_str(&d.regs, regs, sizeof(regs)));
		ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s1), "ENGINE_STATS failed");
		dev_errors += stat_delta(&s0[e], &s1, VUGPU_ENG_STAT_ERRORS);
	}
	ASSERT_THAT(!vugpu_dma_info(c->fd, &i1), "DMA_INFO failed");
	EXPECT_THAT(i1.ready_mask == (1u << c->info.engine_count) - 1, "engines ready %#x",
		    i1.ready_mask);
	EXPECT_THAT(i1.guard_bad == 0,
		    "%llu bytes of the scratch buffer's guard pages changed: the device wrote outside what it was given",
		    (unsigned long long)i1.guard_bad);
	EXPECT_THAT(timeouts == 0 && other == 0, "%llu submissions timed out, %llu failed otherwise",
		    (unsigned long long)timeouts, (unsigned long long)other);
	EXPECT_THAT(implausible == 0, "%u errors with an unexpected code or address", implausible);
	EXPECT_THAT(dev_errors == errors, "device ERRORS counters grew by %llu, %llu jobs failed",
		    (unsigned long long)dev_errors, (unsigned long long)errors);
	/* Each engine error fired vector 0 and the handler saw its ERR_CAUSE bit. */
	EXPECT_THAT(i1.err_irqs - i0.err_irqs == errors,
		    "vector 0 reported %llu engine errors for %llu failed jobs (%llu vector 0 interrupts)",
		    (unsigned long long)(i1.err_irqs - i0.err_irqs), (unsigned long long)errors,
		    (unsigned long long)(i1.vec0_irqs - i0.vec0_irqs));
	EXPECT_THAT(i1.timeouts == i0.timeouts, "the driver timed out %llu times",
		    (unsigned long long)(i1.timeouts - i0.timeouts));
	EXPECT_THAT(errors > 0 && done > 0, "the stream should both fail and succeed: %llu errors, %llu done",
		    (unsigned long long)errors, (unsigned long long)done);
	for (e = 0; e < c->info.engine_count && need_vram_area(c); e++) {
		uint8_t *a = buf_alloc(64 * KIB), *b = buf_alloc(64 * KIB);
		struct vugpu_dma d;

		ASSERT_THAT(a && b, "out of memory");
		vugpu_fill_pattern64(a, 64 * KIB, 99 + e);
		ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_USER, (uintptr_t)a, VUGPU_MEM_VRAM,
			       VRAM_CONC, 64 * KIB, &d);
		if (!ret)
			ret = dma_copy(c, e, 0, VUGPU_MEM_VRAM, VRAM_CONC, VUGPU_MEM_USER, (uintptr_t)b,
				       64 * KIB, &d);
		EXPECT_THAT(!ret && vugpu_first_diff(a, b, 64 * KIB) < 0,
			    "engine %u after the hostile run: verified copy %s", e,
			    ret ? err_str(ret) : "data differs");
		buf_free(a, 64 * KIB);
		buf_free(b, 64 * KIB);
	}
	clear_errors(c, NULL);
	diag("hostile: %llu descriptors in %llu submissions, %.1f s: %llu completed, %llu jobs stopped by an error (%llu explicit resets, %llu vector 0 interrupts)",
		  (unsigned long long)sent, (unsigned long long)submits, (double)ns / 1e9,
		  (unsigned long long)done, (unsigned long long)errors, (unsigned long long)resets,
		  (unsigned long long)(i1.vec0_irqs - i0.vec0_irqs));
	diag("hostile: errors by code: BAD_OPCODE %llu, BAD_DESCRIPTOR %llu, SYS_UNMAPPED %llu, SYS_PERMISSION %llu, VRAM_RANGE %llu, MSG_DMA_FAILED %llu, other %llu",
		  (unsigned long long)by_code[3], (unsigned long long)by_code[4],
		  (unsigned long long)by_code[5], (unsigned long long)by_code[6],
		  (unsigned long long)by_code[7], (unsigned long long)by_code[8],
		  (unsigned long long)(by_code[0] + by_code[1] + by_code[2] + by_code[15] +
				       by_code[9] + by_code[10] + by_code[11]));
}

/* ---- final state --------------------------------------------------------------------- */

void final_state(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_error_state es;
	char lines[2048];
	int n;

	REQUIRE_ENGINES(c);
	ASSERT_THAT(!refresh_info(c), "DMA_INFO failed");
	EXPECT_THAT(c->info.ready_mask == (1u << c->info.engine_count) - 1 && !c->info.ring_vram_mask,
		    "engines ready %#x, VRAM rings %#x", c->info.ready_mask, c->info.ring_vram_mask);
	EXPECT_THAT(c->info.guard_bad == 0, "scratch guards damaged: %llu bytes",
		    (unsigned long long)c->info.guard_bad);
	ASSERT_THAT(!vugpu_error_state(c->fd, &es, true), "ERROR_STATE failed");
	diag("driver totals: %llu vector 0 interrupts, %llu engine errors, %llu recoveries, %llu timeouts; Device Control %#x",
		  (unsigned long long)c->info.vec0_irqs, (unsigned long long)c->info.err_irqs,
		  (unsigned long long)c->info.recoveries, (unsigned long long)c->info.timeouts,
		  es.devctl);
	n = vugpu_dmesg_problems(lines, sizeof(lines));
	ASSERT_THAT(n >= 0, "reading the kernel log: %s", err_str(n));
	if (n > 0)
		diag("%s", lines);
	EXPECT_THAT(n == 0, "%d WARNING/BUG/Oops lines in the kernel log", n);
}
