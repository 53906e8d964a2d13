// SPDX-License-Identifier: GPL-2.0
/*
 * dma_bus.c - vugpu-dma's Bus Master Enable case (hw-spec §1.1, §3.1, §6.7).
 *
 * With Command bit 2 cleared (pci_clear_master, as at unbind or kexec) the
 * device must issue no memory request: a submitted copy is not fetched, not
 * executed, not completed and raises no interrupt, and MSI-X messages are
 * held in the PBA.  Setting the bit again (pci_set_master) lets the engine
 * continue by itself and releases the held messages: the copy completes
 * with every byte right, by its completion interrupt, and a message
 * triggered during the gap is delivered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dma.h"

#define GAP_LEN		(256 * KIB)
#define GAP_MS		200	/* how long the job must stay untouched */
#define GAP_STEP_MS	20
#define RESUME_MS	1000	/* after pci_set_master; far below dma_timeout_ms */
#define MAX_VECTORS	VUGPU_MSIX_MAX_VECTORS

struct gap_job {
	struct dma_ctx *c;
	unsigned int engine;
	void *src, *dst;
	pthread_t tid;
	int ret;
	struct vugpu_dma out;
	atomic_bool done;
	uint64_t done_ns;
};

struct gap_state {
	struct gap_job job;
	bool started;			/* the job thread runs: join it */
	bool cleared;			/* Bus Master was cleared: set it again */
	bool gap_done;			/* every gap check ran */
	unsigned int vector;		/* held-message vector, or nvec: none */
	int nvec;
	uint64_t *counts;		/* per vector, before the gap */
	uint64_t *now;
	uint32_t irq_count;		/* IRQ_COUNT before the gap */
	struct vugpu_engine_stats st0;	/* before the gap */
};

static void *gap_job_main(void *arg)
{
	struct gap_job *j = arg;

	j->ret = dma_copy(j->c, j->engine, VUGPU_DMA_IRQ, VUGPU_MEM_USER, (uintptr_t)j->src,
			  VUGPU_MEM_USER, (uintptr_t)j->dst, GAP_LEN, &j->out);
	j->done_ns = vugpu_now_ns();
	atomic_store(&j->done, true);
	return NULL;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static uint32_t eng_reg(struct dma_ctx *c, unsigned int engine, uint32_t off)
{
	uint32_t v = VUGPU_REG_BAD_READ;

	vugpu_reg_read(c->fd, VUGPU_ENGINE_REGS(engine) + off, &v);
	return v;
}

/* Everything while Bus Master Enable is 0; the caller sets it again and joins. */
static void gap_checks(struct __test_metadata *_metadata, struct dma_ctx *c, struct gap_state *s)
{
	struct gap_job *j = &s->job;
	struct vugpu_engine_stats st;
	uint32_t head0, v, status;
	uint16_t command = 0;
	unsigned int waited;
	int ret;

	ASSERT_THAT(!vugpu_engine_stats(c->fd, j->engine, &s->st0), "ENGINE_STATS failed");
	head0 = eng_reg(c, j->engine, VUGPU_ENG_RING_HEAD);
	v = eng_reg(c, j->engine, VUGPU_ENG_RING_TAIL);
	ASSERT_THAT(v == head0, "engine %u not idle before the test: HEAD %u TAIL %u",
		    j->engine, head0, v);

	ret = vugpu_bus_master(c->fd, VUGPU_BUS_MASTER_CLEAR, &command);
	ASSERT_THAT(!ret, "BUS_MASTER clear: %s", err_str(ret));
	s->cleared = true;
	ASSERT_THAT(!(command & VUGPU_PCI_COMMAND_MASTER),
		    "Command %#x after pci_clear_master: Bus Master still set", command);
	ASSERT_THAT(!vugpu_reg_read(c->fd, VUGPU_REG_IRQ_COUNT, &s->irq_count),
		    "IRQ_COUNT read failed");
	ASSERT_THAT(vugpu_irq_counts(c->fd, s->counts, MAX_VECTORS) == s->nvec,
		    "IRQ_COUNTS failed");

	ASSERT_THAT(!pthread_create(&j->tid, NULL, gap_job_main, j), "pthread_create failed");
	s->started = true;

	/* Submitted: TAIL (the doorbell word) moves past HEAD. */
	for (waited = 0; eng_reg(c, j->engine, VUGPU_ENG_RING_TAIL) == head0; waited++) {
		ASSERT_THAT(!atomic_load(&j->done),
			    "the job ended (%s, result %u) while Bus Master was clear",
			    err_str(j->ret), j->out.result);
		ASSERT_THAT(waited < 2000, "the job was not submitted within 2 s");
		sleep_ms(1);
	}

	/* A message signalled now must be held, not sent (IRQ_TRIGGER, §3). */
	if (s->vector < (unsigned int)s->nvec)
		ASSERT_THAT(!vugpu_reg_write(c->fd, VUGPU_REG_IRQ_TRIGGER, s->vector),
			    "IRQ_TRIGGER write failed");

	for (waited = 0; waited < GAP_MS; waited += GAP_STEP_MS) {
		sleep_ms(GAP_STEP_MS);
		v = eng_reg(c, j->engine, VUGPU_ENG_RING_HEAD);
		ASSERT_THAT(v == head0,
			    "engine %u: HEAD %u -> %u %u ms after pci_clear_master: it ran without Bus Master Enable",
			    j->engine, head0, v, waited + GAP_STEP_MS);
		status = eng_reg(c, j->engine, VUGPU_ENG_STATUS);
		ASSERT_THAT((status & VUGPU_ENG_STATUS_STATE_MASK) == VUGPU_ENG_STATE_RUNNING,
			    "engine %u: STATUS %s (%#x) with a job pending and Bus Master clear, expected RUNNING",
			    j->engine, vugpu_eng_state_name(status), status);
		ASSERT_THAT(!atomic_load(&j->done), "the job ended (%s, result %u) during the gap",
			    err_str(j->ret), j->out.result);
		ASSERT_THAT(all_bytes(j->dst, GAP_LEN, POISON),
			    "destination written without Bus Master Enable (%u ms into the gap)",
			    waited + GAP_STEP_MS);
	}
	ASSERT_THAT(!vugpu_engine_stats(c->fd, j->engine, &st), "ENGINE_STATS failed");
	EXPECT_THAT(st.completion_irqs == s->st0.completion_irqs,
		    "%llu completion interrupt(s) during the gap",
		    (unsigned long long)(st.completion_irqs - s->st0.completion_irqs));
	EXPECT_THAT(stat_delta(&s->st0, &st, VUGPU_ENG_STAT_JOBS) == 0,
		    "JOBS counted %llu descriptors during the gap",
		    (unsigned long long)stat_delta(&s->st0, &st, VUGPU_ENG_STAT_JOBS));
	ASSERT_THAT(!vugpu_reg_read(c->fd, VUGPU_REG_IRQ_COUNT, &v), "IRQ_COUNT read failed");
	EXPECT_THAT(v == s->irq_count, "IRQ_COUNT %u -> %u: MSI-X sent without Bus Master Enable",
		    s->irq_count, v);
	ASSERT_THAT(vugpu_irq_counts(c->fd, s->now, MAX_VECTORS) == s->nvec,
		    "IRQ_COUNTS failed");
	if (s->vector < (unsigned int)s->nvec)
		EXPECT_THAT(s->now[s->vector] == s->counts[s->vector],
			    "vector %u handled %llu interrupt(s) while Bus Master was clear",
			    s->vector,
			    (unsigned long long)(s->now[s->vector] - s->counts[s->vector]));
	s->gap_done = true;
}

/* After pci_set_master: the job and the held message arrive, nothing is lost. */
static void resume_checks(struct __test_metadata *_metadata, struct dma_ctx *c, struct gap_state *s,
			  uint64_t set_ns)
{
	struct gap_job *j = &s->job;
	struct vugpu_engine_stats st;
	unsigned int waited;
	uint32_t v = 0;
	long diff;

	ASSERT_THAT(!j->ret && j->out.result == VUGPU_DMA_DONE,
		    "job after pci_set_master: %s, result %u", err_str(j->ret), j->out.result);
	/* Without the completion interrupt the driver would wait for dma_timeout_ms. */
	EXPECT_THAT(j->done_ns - set_ns < RESUME_MS * 1000000ULL,
		    "the job completed %llu ms after pci_set_master (interrupt lost?)",
		    (unsigned long long)((j->done_ns - set_ns) / 1000000ULL));
	EXPECT_THAT(j->out.elapsed_ns >= GAP_MS * 1000000ULL,
		    "doorbell to completion %llu us: shorter than the %u ms gap",
		    (unsigned long long)(j->out.elapsed_ns / 1000), GAP_MS);
	diff = vugpu_first_diff(j->dst, j->src, GAP_LEN);
	ASSERT_THAT(diff < 0, "destination differs at byte %ld: %#x, expected %#x", diff,
		    ((uint8_t *)j->dst)[diff], ((uint8_t *)j->src)[diff]);
	ASSERT_THAT(!vugpu_engine_stats(c->fd, j->engine, &st), "ENGINE_STATS failed");
	EXPECT_THAT(st.completion_irqs > s->st0.completion_irqs &&
		    st.irq_waits == s->st0.irq_waits + j->out.fences,
		    "completion interrupts %llu -> %llu, interrupt waits %llu -> %llu",
		    (unsigned long long)s->st0.completion_irqs, (unsigned long long)st.completion_irqs,
		    (unsigned long long)s->st0.irq_waits, (unsigned long long)st.irq_waits);
	EXPECT_THAT(stat_delta(&s->st0, &st, VUGPU_ENG_STAT_JOBS) == j->out.descs + j->out.fences &&
		    stat_delta(&s->st0, &st, VUGPU_ENG_STAT_IRQS) == j->out.fences,
		    "JOBS +%llu IRQS +%llu for %u descriptors and %u fences",
		    (unsigned long long)stat_delta(&s->st0, &st, VUGPU_ENG_STAT_JOBS),
		    (unsigned long long)stat_delta(&s->st0, &st, VUGPU_ENG_STAT_IRQS),
		    j->out.descs, j->out.fences);

	if (s->vector >= (unsigned int)s->nvec) {
		diag("no vector without an engine: held-message check not run");
		return;
	}
	for (waited = 0;; waited++) {
		ASSERT_THAT(vugpu_irq_counts(c->fd, s->now, MAX_VECTORS) == s->nvec,
			    "IRQ_COUNTS failed");
		if (s->now[s->vector] > s->counts[s->vector])
			break;
		ASSERT_THAT(waited < RESUME_MS,
			    "vector %u: the message held while Bus Master was clear never arrived",
			    s->vector);
		sleep_ms(1);
	}
	ASSERT_THAT(!vugpu_reg_read(c->fd, VUGPU_REG_IRQ_COUNT, &v), "IRQ_COUNT read failed");
	/* The held vector and at least one completion were sent after the gap. */
	EXPECT_THAT(v - s->irq_count >= 2, "IRQ_COUNT %u -> %u after pci_set_master",
		    s->irq_count, v);
	diag("bus master: engine %u held a %llu KiB copy (%u descriptors) for %u ms; done %llu us after pci_set_master, by interrupt; vector %u held, then delivered; IRQ_COUNT +%u",
		  j->engine, (unsigned long long)(GAP_LEN / KIB), j->out.descs + j->out.fences,
		  GAP_MS, (unsigned long long)((j->done_ns - set_ns) / 1000), s->vector,
		  v - s->irq_count);
}

void bus_master_gating(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct gap_state s = { 0 };
	struct gap_job *j = &s.job;
	uint16_t command = 0;
	uint64_t set_ns = 0;
	int ret;

	REQUIRE_ENGINES(c);
	ret = vugpu_bus_master(c->fd, VUGPU_BUS_MASTER_QUERY, &command);
	ASSERT_THAT(!ret, "BUS_MASTER query: %s", err_str(ret));
	ASSERT_THAT(command & VUGPU_PCI_COMMAND_MASTER,
		    "Command %#x: the driver did not set Bus Master at probe", command);

	s.counts = calloc(MAX_VECTORS, sizeof(*s.counts));
	s.now = calloc(MAX_VECTORS, sizeof(*s.now));
	j->src = buf_alloc(GAP_LEN);
	j->dst = buf_alloc(GAP_LEN);
	j->c = c;
	j->engine = c->info.engine_count - 1;
	if (!s.counts || !s.now || !j->src || !j->dst) {
		FAIL_TEST("out of memory");
		goto out;
	}
	vugpu_fill_pattern(j->src, GAP_LEN, 0xb5ULL);
	memset(j->dst, POISON, GAP_LEN);
	s.nvec = vugpu_irq_counts(c->fd, s.counts, MAX_VECTORS);
	if (s.nvec <= 0) {
		FAIL_TEST("IRQ_COUNTS: %s", err_str(s.nvec));
		goto out;
	}
	/* The first vector without an engine: its handler only counts and acks IRQ_STATUS. */
	s.vector = c->info.vector_base + c->info.engine_count;
	if (s.vector >= VUGPU_IRQ_STATUS_VECTORS || s.vector >= (unsigned int)s.nvec)
		s.vector = (unsigned int)s.nvec;

	gap_checks(_metadata, c, &s);
	if (s.cleared) {
		set_ns = vugpu_now_ns();
		ret = vugpu_bus_master(c->fd, VUGPU_BUS_MASTER_SET, &command);
		if (ret || !(command & VUGPU_PCI_COMMAND_MASTER))
			FAIL_TEST("BUS_MASTER set: %s, Command %#x",
				     err_str(ret), command);
	}
	if (s.started)
		pthread_join(j->tid, NULL);
	if (s.gap_done)
		resume_checks(_metadata, c, &s, set_ns);
out:
	buf_free(j->src, GAP_LEN);
	buf_free(j->dst, GAP_LEN);
	free(s.counts);
	free(s.now);
}
