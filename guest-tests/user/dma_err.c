// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dma cases: errors and recovery (hw-spec §5, §6.6).  See vugpu-dma.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dma.h"

#define STATE(r)	((r).status & VUGPU_ENG_STATUS_STATE_MASK)

static int set_timeout_ms(unsigned int ms);
#define INFO_SLOT(r)	((r).error_info >> VUGPU_ENG_INFO_SLOT_SHIFT)

/* ---- ioctl validation ------------------------------------------------------------ */

void ioctl_validation(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint64_t vs = c->info.vram_size;
	uint8_t *buf, *ro, *none;
	struct vugpu_engine_stats st;
	struct vugpu_desc raw[2] = { { .opcode = VUGPU_OP_NOP } };
	struct vugpu_cmd cmd;
	struct vugpu_dma d;
	unsigned int i;
	int ret;
	struct {
		const char *what;
		unsigned long req;
		struct vugpu_dma d;
		int expect;
	} cases[] = {
		{ "engine index = ENGINE_COUNT", VUGPU_IOCTL_DMA_COPY,
		  { .engine = c->info.engine_count, .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM,
		    .dst = 4096, .length = 64 }, -EINVAL },
		{ "unknown flag", VUGPU_IOCTL_DMA_COPY,
		  { .flags = 1u << 31, .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .dst = 4096,
		    .length = 64 }, -EINVAL },
		{ "unknown memory type", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_TYPES, .dst_type = VUGPU_MEM_VRAM, .length = 64 }, -EINVAL },
		{ "length 0", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .dst = 4096 }, -EINVAL },
		{ "length > 1 GiB", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .dst = 4096,
		    .length = VUGPU_DMA_MAX_LEN + 1 }, -EINVAL },
		{ "VRAM source past the end", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .src = vs - 16,
		    .length = 4096 }, -ERANGE },
		{ "VRAM destination offset overflows", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .dst = ~0ULL - 8,
		    .length = 64 }, -EINVAL },
		{ "overlapping VRAM ranges", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .src = 0, .dst = 32,
		    .length = 64 }, -EINVAL },
		{ "NULL user buffer", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_USER, .dst_type = VUGPU_MEM_VRAM, .length = 64 }, -EFAULT },
		{ "user buffer > 64 MiB", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_USER, .src = 0x10000, .dst_type = VUGPU_MEM_VRAM,
		    .length = VUGPU_DMA_MAX_USER + 1 }, -E2BIG },
		{ "kernel address as user buffer", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_USER, .src = 0xffff888000000000ULL,
		    .dst_type = VUGPU_MEM_VRAM, .length = 64 }, -EFAULT },
		{ "scratch past its end", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_SCRATCH, .src = c->info.scratch_size - 8,
		    .dst_type = VUGPU_MEM_VRAM, .length = 64 }, -ERANGE },
		{ "COPY from MEM_NONE", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_NONE, .dst_type = VUGPU_MEM_VRAM, .length = 64 }, -EINVAL },
		{ "repeat count too large", VUGPU_IOCTL_DMA_COPY,
		  { .src_type = VUGPU_MEM_VRAM, .dst_type = VUGPU_MEM_VRAM, .dst = 4096, .length = 64,
		    .count = VUGPU_COPY_REPEAT_MAX + 1 }, -EINVAL },
		{ "FILL at an unaligned VRAM offset", VUGPU_IOCTL_DMA_FILL,
		  { .dst_type = VUGPU_MEM_VRAM, .dst = 2, .length = 64 }, -EINVAL },
		{ "FILL length not a multiple of 4", VUGPU_IOCTL_DMA_FILL,
		  { .dst_type = VUGPU_MEM_VRAM, .dst = 0, .length = 6 }, -EINVAL },
		{ "FILL pattern wider than 32 bits", VUGPU_IOCTL_DMA_FILL,
		  { .dst_type = VUGPU_MEM_VRAM, .dst = 0, .length = 64, .value = 1ULL << 32 }, -EINVAL },
		{ "FENCE at an unaligned VRAM offset", VUGPU_IOCTL_DMA_FENCE,
		  { .dst_type = VUGPU_MEM_VRAM, .dst = 4 }, -EINVAL },
		{ "RAW_SUBMIT of 0 descriptors", VUGPU_IOCTL_DMA_RAW_SUBMIT,
		  { .src = (uintptr_t)raw, .count = 0 }, -EINVAL },
		{ "RAW_SUBMIT of 257 descriptors", VUGPU_IOCTL_DMA_RAW_SUBMIT,
		  { .src = (uintptr_t)raw, .count = VUGPU_RAW_MAX + 1 }, -EINVAL },
		{ "RAW_SUBMIT from a bad pointer", VUGPU_IOCTL_DMA_RAW_SUBMIT,
		  { .src = 16, .count = 1 }, -EFAULT },
		{ "ENGINE_RESET to 3 slots", VUGPU_IOCTL_ENGINE_RESET, { .value = 3 }, -EINVAL },
		{ "ENGINE_RESET to 1 slot", VUGPU_IOCTL_ENGINE_RESET, { .value = 1 }, -EINVAL },
	};

	REQUIRE_ENGINES(c);
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		d = cases[i].d;
		ret = vugpu_dma(c->fd, cases[i].req, &d);
		EXPECT_THAT(ret == cases[i].expect, "%s: %d (%s), expected %d (%s)", cases[i].what,
			    ret, err_str(ret), cases[i].expect, err_str(cases[i].expect));
	}

	/* User memory the engine cannot use: not readable, not writable, device memory. */
	buf = buf_alloc(3 * 4096);
	ASSERT_THAT(buf, "out of memory");
	none = buf;
	ro = buf + 4096;
	mprotect(none, 4096, PROT_NONE);
	mprotect(ro, 4096, PROT_READ);
	ret = dma_copy(c, 0, 0, VUGPU_MEM_USER, (uintptr_t)none, VUGPU_MEM_VRAM, 0, 64, &d);
	EXPECT_THAT(ret == -EFAULT, "copy from PROT_NONE memory: %d, expected -EFAULT", ret);
	ret = dma_copy(c, 0, 0, VUGPU_MEM_VRAM, 0, VUGPU_MEM_USER, (uintptr_t)ro, 64, &d);
	EXPECT_THAT(ret == -EFAULT, "copy into read-only memory: %d, expected -EFAULT", ret);
	ret = dma_copy(c, 0, 0, VUGPU_MEM_USER, (uintptr_t)ro, VUGPU_MEM_VRAM, 0, 64, &d);
	EXPECT_THAT(ret == 0, "copy from read-only memory: %d, expected 0", ret);
	if (c->bar) {
		/* BAR2 is VM_PFNMAP: FOLL_LONGTERM pinning must refuse it. */
		ret = dma_copy(c, 0, 0, VUGPU_MEM_USER, (uintptr_t)c->bar, VUGPU_MEM_VRAM, 4096, 64, &d);
		EXPECT_THAT(ret == -EFAULT, "copy from the BAR2 mapping: %d, expected -EFAULT", ret);
	}
	buf_free(buf, 3 * 4096);

	/* The struct vugpu_cmd ioctls. */
	memset(&cmd, 0, sizeof(cmd));
	cmd.ptr = (uintptr_t)&st;
	cmd.size = sizeof(st);
	cmd.offset = c->info.engine_count;
	ret = vugpu_cmd(c->fd, VUGPU_IOCTL_ENGINE_STATS, &cmd);
	EXPECT_THAT(ret == -EINVAL, "ENGINE_STATS of engine %u: %d", c->info.engine_count, ret);
	cmd.offset = 0;
	cmd.size = sizeof(st) - 8;
	ret = vugpu_cmd(c->fd, VUGPU_IOCTL_ENGINE_STATS, &cmd);
	EXPECT_THAT(ret == -EINVAL, "ENGINE_STATS into a short buffer: %d", ret);
	ret = vugpu_devctl(c->fd, 0x0001, 0x0001, NULL);
	EXPECT_THAT(ret == -EINVAL, "DEVCTL of a bit other than NS/RO: %d", ret);
	ret = vugpu_devctl(c->fd, VUGPU_DEVCTL_RELAX_EN, VUGPU_DEVCTL_NOSNOOP_EN, NULL);
	EXPECT_THAT(ret == -EINVAL, "DEVCTL value outside its mask: %d", ret);
	ret = vugpu_scratch_io(c->fd, VUGPU_IOCTL_SCRATCH_READ, c->info.scratch_size - 4, &st, 8);
	EXPECT_THAT(ret == -ERANGE, "SCRATCH_READ past the end: %d", ret);
	memset(&cmd, 0, sizeof(cmd));
	cmd.value = 2;
	cmd.ptr = (uintptr_t)&st;
	cmd.size = sizeof(struct vugpu_error_state);
	ret = vugpu_cmd(c->fd, VUGPU_IOCTL_ERROR_STATE, &cmd);
	EXPECT_THAT(ret == -EINVAL, "ERROR_STATE with an unknown flag: %d", ret);

	/* Nothing above reached an engine as an error. */
	EXPECT_THAT(!refresh_info(c) && c->info.ready_mask == (1u << c->info.engine_count) - 1,
		    "engines not ready after refused ioctls: %#x", c->info.ready_mask);
}

/* ---- error checks shared by the cases -------------------------------------------- */

static void expect_engine_error(struct __test_metadata *_metadata, struct dma_ctx *c, unsigned int e, int ret,
				const struct vugpu_dma *d, const char *what, uint32_t code,
				uint64_t addr, uint32_t aperture, bool write)
{
	uint32_t slots = c->info.ring_slots[e];
	char regs[256];

	regs_str(&d->regs, regs, sizeof(regs));
	EXPECT_THAT(ret == -EIO && d->result == VUGPU_DMA_ENGINE_ERROR,
		    "%s: ioctl %d (%s) result %u, expected -EIO and an engine error; %s", what, ret,
		    err_str(ret), d->result, regs);
	if (ret != -EIO)
		return;
	EXPECT_THAT(STATE(d->regs) == VUGPU_ENG_STATE_ERROR && d->regs.error_code == code,
		    "%s: expected STATUS ERROR with %s (%u); %s", what, vugpu_eng_err_name(code), code,
		    regs);
	EXPECT_THAT(d->regs.error_addr == addr, "%s: ERROR_ADDR %#llx, expected %#llx", what,
		    (unsigned long long)d->regs.error_addr, (unsigned long long)addr);
	EXPECT_THAT((d->regs.error_info & VUGPU_ENG_INFO_APERTURE_MASK) == aperture &&
		    !!(d->regs.error_info & VUGPU_ENG_INFO_WRITE) == write &&
		    !(d->regs.error_info & VUGPU_ENG_INFO_FETCH),
		    "%s: ERROR_INFO %#x, expected aperture %u, %s, not a fetch", what,
		    d->regs.error_info, aperture, write ? "write" : "read");
	/* The faulting descriptor is not completed: HEAD stays on it (§6.6). */
	EXPECT_THAT(slots && INFO_SLOT(d->regs) == (d->regs.head & (slots - 1)),
		    "%s: ERROR_INFO slot %u but HEAD %u (ring of %u)", what, INFO_SLOT(d->regs),
		    d->regs.head, slots);
}

/* Config-space error bits of §5 for an error with AER bit @bit. */
static void expect_config_error(struct __test_metadata *_metadata, struct dma_ctx *c, const char *what,
				uint32_t bit, uint16_t devsta_extra, uint16_t status_bit)
{
	struct vugpu_error_state es;
	uint16_t sev_bit;
	int ret;

	ret = vugpu_error_state(c->fd, &es, false);
	ASSERT_THAT(!ret, "ERROR_STATE: %s", err_str(ret));
	ASSERT_THAT(es.aer_pos, "no AER capability");
	sev_bit = (es.aer_uncor_severity & bit) ? VUGPU_DEVSTA_FED : VUGPU_DEVSTA_NFED;
	EXPECT_THAT(es.aer_uncor_status & bit, "%s: AER Uncorrectable Status %#x lacks %#x", what,
		    es.aer_uncor_status, bit);
	EXPECT_THAT((es.devsta & (sev_bit | devsta_extra)) == (sev_bit | devsta_extra),
		    "%s: Device Status %#x, expected %#x (severity %#x)", what, es.devsta,
		    sev_bit | devsta_extra, es.aer_uncor_severity);
	if (status_bit)
		EXPECT_THAT(es.pci_status & status_bit, "%s: config Status %#x lacks %#x", what,
			    es.pci_status, status_bit);
	else
		EXPECT_THAT(!(es.pci_status & (VUGPU_PCI_STATUS_REC_MASTER_ABORT |
						  VUGPU_PCI_STATUS_REC_TARGET_ABORT)),
			    "%s: config Status %#x has an abort bit", what, es.pci_status);
}

/*
 * AER First Error Pointer and Header Log for a UR or CA (AER bit @bit) on a
 * SYS access, with the errors cleared before it (§5 Details).
 */
static void expect_header_log(struct __test_metadata *_metadata, struct dma_ctx *c, const char *what,
			      unsigned int e, uint32_t bit, uint64_t addr, bool write)
{
	struct vugpu_error_state es;
	uint32_t dw0 = write ? 0x60000001 : 0x20000001;
	unsigned int fep = (unsigned int)__builtin_ctz(bit);

	if (vugpu_error_state(c->fd, &es, false) || (es.aer_uncor_mask & bit)) {
		diag("%s: error %#x masked in AER (mask %#x): no header log to check", what, bit,
			  es.aer_uncor_mask);
		return;
	}
	EXPECT_THAT((es.aer_cap_ctrl & 0x1f) == fep, "%s: First Error Pointer %u, expected %u",
		    what, es.aer_cap_ctrl & 0x1f, fep);
	EXPECT_THAT(es.aer_header_log[0] == dw0 && es.aer_header_log[1] == (0xffu | e << 8) &&
		    es.aer_header_log[2] == (uint32_t)(addr >> 32) &&
		    es.aer_header_log[3] == ((uint32_t)addr & ~3u),
		    "%s: header log %08x %08x %08x %08x, expected %08x %08x %08x %08x", what,
		    es.aer_header_log[0], es.aer_header_log[1], es.aer_header_log[2],
		    es.aer_header_log[3], dw0, 0xffu | e << 8, (uint32_t)(addr >> 32),
		    (uint32_t)addr & ~3u);
}

/*
 * W1C from any writer, here userspace through sysfs (the driver's ERROR_STATE
 * clear is the other): writing 0 over the @bits an error set keeps them,
 * writing 1 to them clears exactly them.
 */
static void expect_w1c(struct __test_metadata *_metadata, struct dma_ctx *c, const char *what, const char *name,
		       unsigned int off, unsigned int width, uint32_t bits)
{
	uint32_t v0 = 0, v1 = 0, v2 = 0;
	int ret;

	ret = vugpu_config_read(c->d, off, width, &v0);
	EXPECT_THAT(!ret && (v0 & bits) == bits, "%s: %s %#x lacks %#x (%s)", what, name, v0,
		    bits, ret ? err_str(ret) : "not set");
	if (ret || (v0 & bits) != bits)
		return;
	ret = vugpu_config_write(c->d, off, width, 0);
	if (!ret)
		ret = vugpu_config_read(c->d, off, width, &v1);
	EXPECT_THAT(!ret && v1 == v0,
		    "%s: %s %#x after writing 0 over %#x (W1C: expected no change) %s", what, name,
		    v1, v0, ret ? err_str(ret) : "");
	ret = vugpu_config_write(c->d, off, width, bits);
	if (!ret)
		ret = vugpu_config_read(c->d, off, width, &v2);
	EXPECT_THAT(!ret && v2 == (v0 & ~bits),
		    "%s: %s %#x after writing %#x over %#x, expected %#x %s", what, name, v2, bits,
		    v0, v0 & ~bits, ret ? err_str(ret) : "");
}

static void expect_errors_clear(struct __test_metadata *_metadata, struct dma_ctx *c, const char *what)
{
	struct vugpu_error_state es;

	ASSERT_THAT(!clear_errors(c, NULL) && !vugpu_error_state(c->fd, &es, false),
		    "ERROR_STATE failed");
	EXPECT_THAT(!es.aer_uncor_status && !(es.devsta & 0xf) &&
		    !(es.pci_status & (VUGPU_PCI_STATUS_REC_MASTER_ABORT | VUGPU_PCI_STATUS_REC_TARGET_ABORT |
				       VUGPU_PCI_STATUS_SIG_SYSTEM_ERROR)),
		    "%s: after clearing: AER %#x Device Status %#x Status %#x", what,
		    es.aer_uncor_status, es.devsta, es.pci_status);
}

/* Verified SYS->VRAM->SYS of 64 KiB on @e: the engine works. */
static bool engine_works(struct __test_metadata *_metadata, struct dma_ctx *c, unsigned int e, const char *when)
{
	size_t len = 64 * KIB;
	uint8_t *a = buf_alloc(len), *b = buf_alloc(len);
	struct vugpu_dma d;
	char regs[256] = "";
	int ret = -ENOMEM;
	bool ok = false;

	if (a && b) {
		vugpu_fill_pattern64(a, len, e * 11 + 1);
		memset(b, POISON, len);
		ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_USER, (uintptr_t)a, VUGPU_MEM_VRAM,
			       VRAM_CONC + e * 128 * KIB, len, &d);
		if (!ret)
			ret = dma_copy(c, e, 0, VUGPU_MEM_VRAM, VRAM_CONC + e * 128 * KIB, VUGPU_MEM_USER,
				       (uintptr_t)b, len, &d);
		if (ret)
			regs_str(&d.regs, regs, sizeof(regs));
		ok = !ret && vugpu_first_diff(a, b, len) < 0;
	}
	EXPECT_THAT(ok, "engine %u %s: verified copy failed: %s %s", e, when,
		    ret ? err_str(ret) : "data differs", regs);
	buf_free(a, len);
	buf_free(b, len);
	return ok;
}

/* ---- unmapped system memory ---------------------------------------------------------- */

void bad_sys_address(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int e;
	struct vugpu_dma_info i0, i1;
	struct vugpu_engine_stats s0, s1;
	struct vugpu_error_state es;
	struct vugpu_dma d;
	char regs[256];
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram_area(c))
		SKIP_TEST("not enough CPU-visible VRAM");
	e = c->info.engine_count > 1 ? 1 : 0;
	ASSERT_THAT(!clear_errors(c, NULL), "ERROR_STATE clear failed");
	ASSERT_THAT(!vugpu_dma_info(c->fd, &i0) && !vugpu_engine_stats(c->fd, e, &s0),
		    "DMA_INFO / ENGINE_STATS failed");

	/* 1. Read from far above guest memory. */
	ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_BUS, UNMAPPED_HIGH, VUGPU_MEM_VRAM, VRAM_A,
		       4096, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "read of unmapped SYS", VUGPU_ENG_ERR_SYS_UNMAPPED,
			    UNMAPPED_HIGH, VUGPU_APERTURE_SYS, false);
	expect_config_error(_metadata, c, "read of unmapped SYS", VUGPU_AER_UNCOR_UR, VUGPU_DEVSTA_URD,
			    VUGPU_PCI_STATUS_REC_MASTER_ABORT);
	expect_header_log(_metadata, c, "read of unmapped SYS", e, VUGPU_AER_UNCOR_UR, UNMAPPED_HIGH, false);
	/* The same through sysfs, not through the driver. */
	if (!vugpu_read_config(c->d)) {
		unsigned int aer = vugpu_find_ext_cap(c->d, 0x0001);

		EXPECT_THAT(aer && (vugpu_cfg32(c->d, aer + 4) & VUGPU_AER_UNCOR_UR),
			    "sysfs config: AER at %#x, Uncorrectable Status %#x", aer,
			    aer ? vugpu_cfg32(c->d, aer + 4) : 0);
	}
	/* The engine is still in ERROR until something resets it. */
	ASSERT_THAT(!vugpu_error_state(c->fd, &es, false), "ERROR_STATE failed");
	EXPECT_THAT(STATE(es.engine[e]) == VUGPU_ENG_STATE_ERROR &&
		    es.engine[e].error_code == VUGPU_ENG_ERR_SYS_UNMAPPED,
		    "ERROR_STATE engine %u: %s", e, regs_str(&es.engine[e], regs, sizeof(regs)));
	EXPECT_THAT(!(es.err_cause & (1u << e)), "ERR_CAUSE %#x still set: vector 0 handler did not ack",
		    es.err_cause);
	ASSERT_THAT(!vugpu_dma_info(c->fd, &i1) && !vugpu_engine_stats(c->fd, e, &s1),
		    "DMA_INFO / ENGINE_STATS failed");
	EXPECT_THAT(i1.vec0_irqs > i0.vec0_irqs && i1.err_irqs == i0.err_irqs + 1 &&
		    s1.err_irqs == s0.err_irqs + 1,
		    "vector 0: %llu interrupts, %llu engine errors reported (engine %u: %llu), expected >= 1, 1, 1",
		    (unsigned long long)(i1.vec0_irqs - i0.vec0_irqs),
		    (unsigned long long)(i1.err_irqs - i0.err_irqs), e,
		    (unsigned long long)(s1.err_irqs - s0.err_irqs));
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS) == 1, "ERRORS counter +%llu",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS));
	/* The vector 0 handler itself read what stopped the engine. */
	EXPECT_THAT(STATE(s1.irq_error) == VUGPU_ENG_STATE_ERROR &&
		    s1.irq_error.error_code == VUGPU_ENG_ERR_SYS_UNMAPPED &&
		    s1.irq_error.error_addr == UNMAPPED_HIGH,
		    "vector 0 handler read: %s", regs_str(&s1.irq_error, regs, sizeof(regs)));

	/* 2. ENGINE_RESET brings it back; the config bits stay until cleared. */
	ret = dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, 0, 0, 0, 0, 0, 0, 0, &d);
	EXPECT_THAT(!ret && STATE(d.regs) == VUGPU_ENG_STATE_IDLE && d.regs.error_code == 0 &&
		    d.regs.error_addr == 0 && d.regs.head == 0,
		    "ENGINE_RESET: %s; %s", err_str(ret), regs_str(&d.regs, regs, sizeof(regs)));
	ASSERT_THAT(!vugpu_error_state(c->fd, &es, false), "ERROR_STATE failed");
	EXPECT_THAT(es.aer_uncor_status & VUGPU_AER_UNCOR_UR,
		    "AER UR cleared by an engine reset (%#x); only software clears it", es.aer_uncor_status);
	expect_errors_clear(_metadata, c, "read of unmapped SYS");
	engine_works(_metadata, c, e, "after ENGINE_RESET");

	/* 3. Write to unmapped memory, polled; no explicit reset: the driver recovers. */
	ret = dma_copy(c, e, 0, VUGPU_MEM_VRAM, VRAM_A, VUGPU_MEM_BUS, UNMAPPED_HIGH + 0x1000, 4096, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "write to unmapped SYS", VUGPU_ENG_ERR_SYS_UNMAPPED,
			    UNMAPPED_HIGH + 0x1000, VUGPU_APERTURE_SYS, true);
	expect_config_error(_metadata, c, "write to unmapped SYS", VUGPU_AER_UNCOR_UR, VUGPU_DEVSTA_URD,
			    VUGPU_PCI_STATUS_REC_MASTER_ABORT);
	expect_header_log(_metadata, c, "write to unmapped SYS", e, VUGPU_AER_UNCOR_UR, UNMAPPED_HIGH + 0x1000,
			  true);
	/* The three status registers it set are W1C from userspace too. */
	if (!vugpu_read_config(c->d)) {
		unsigned int aer = vugpu_find_ext_cap(c->d, 0x0001);
		unsigned int exp = vugpu_find_cap(c->d, 0x10);

		EXPECT_THAT(aer && exp, "sysfs config: AER at %#x, PCIe at %#x", aer, exp);
		if (aer)
			expect_w1c(_metadata, c, "write to unmapped SYS", "AER Uncorrectable Status",
				   aer + 4, 4, VUGPU_AER_UNCOR_UR);
		if (exp)
			expect_w1c(_metadata, c, "write to unmapped SYS", "Device Status", exp + 0x0a, 2,
				   VUGPU_DEVSTA_URD);
		expect_w1c(_metadata, c, "write to unmapped SYS", "Status", 0x06, 2,
			   VUGPU_PCI_STATUS_REC_MASTER_ABORT);
	}
	expect_errors_clear(_metadata, c, "write to unmapped SYS");
	engine_works(_metadata, c, e, "after the driver's own recovery");
	EXPECT_THAT(!vugpu_dma_info(c->fd, &i1) && i1.recoveries > i0.recoveries,
		    "the driver did not count a recovery reset");

	/* 4. A FENCE into unmapped memory. */
	ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, VUGPU_DMA_IRQ, 0, 0, VUGPU_MEM_BUS,
		      UNMAPPED_HIGH + 0x2000, 0, 1, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "FENCE to unmapped SYS", VUGPU_ENG_ERR_SYS_UNMAPPED,
			    UNMAPPED_HIGH + 0x2000, VUGPU_APERTURE_SYS, true);
	expect_errors_clear(_metadata, c, "FENCE to unmapped SYS");

	/* 5. A read running from the end of low RAM into the empty window after it. */
	if (!c->low_unmapped) {
		diag("no empty PCI window after low RAM in /proc/iomem: check skipped");
	} else {
		ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_BUS, c->low_unmapped - 4096, VUGPU_MEM_VRAM,
			       VRAM_A, 8192, &d);
		expect_engine_error(_metadata, c, e, ret, &d, "read running past the end of low RAM",
				    VUGPU_ENG_ERR_SYS_UNMAPPED, c->low_unmapped, VUGPU_APERTURE_SYS, false);
		ret = dma_copy(c, e, 0, VUGPU_MEM_BUS, c->low_unmapped + c->low_unmapped_len / 2,
			       VUGPU_MEM_VRAM, VRAM_A, 64, &d);
		expect_engine_error(_metadata, c, e, ret, &d, "read inside the window after low RAM",
				    VUGPU_ENG_ERR_SYS_UNMAPPED, c->low_unmapped + c->low_unmapped_len / 2,
				    VUGPU_APERTURE_SYS, false);
		expect_errors_clear(_metadata, c, "reads after low RAM");
	}
	engine_works(_metadata, c, e, "after the unmapped-address errors");
}


/* ---- a read-only window without an fd: the BIOS ROM ------------------------------------ */

/*
 * QEMU maps the BIOS ROM (top of 4 GiB) read-only and without an fd, so
 * the engine reads it with DMA_READ messages (§6.8) and must refuse writes
 * with SYS_PERMISSION, a Completer Abort (§5).
 */
void rom_window(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int e = 0;
	uint8_t *rom = NULL;
	struct vugpu_dma d;
	uint64_t ns = 0;
	int ret;

	REQUIRE_ENGINES(c);
	if (!c->rom_start)
		SKIP_TEST("no BIOS ROM range below 4 GiB in /proc/iomem");
	if (!need_vram_area(c))
		SKIP_TEST("not enough CPU-visible VRAM");
	ASSERT_THAT(!clear_errors(c, NULL), "ERROR_STATE clear failed");

	/* Reads: the x86 reset vector (last 16 bytes) is a far JMP, opcode 0xea. */
	memset(c->bar + VRAM_A, 0, 16);
	ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_BUS, c->rom_end - 16, VUGPU_MEM_VRAM, VRAM_A, 16,
		       &d);
	EXPECT_THAT(!ret && c->bar[VRAM_A] == 0xea,
		    "read of the reset vector at %#llx: %s, bytes %02x %02x %02x %02x %02x %02x %02x %02x (expected ea: a far JMP)",
		    (unsigned long long)(c->rom_end - 16), err_str(ret), c->bar[VRAM_A],
		    c->bar[VRAM_A + 1], c->bar[VRAM_A + 2], c->bar[VRAM_A + 3], c->bar[VRAM_A + 4],
		    c->bar[VRAM_A + 5], c->bar[VRAM_A + 6], c->bar[VRAM_A + 7]);
	/* The whole ROM, twice, by message DMA: the same bytes both times. */
	rom = buf_alloc(c->rom_end - c->rom_start);
	ASSERT_THAT(rom, "out of memory");
	ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_BUS, c->rom_start, VUGPU_MEM_USER, (uintptr_t)rom,
		       c->rom_end - c->rom_start, &d);
	ns = d.elapsed_ns;
	EXPECT_THAT(!ret, "read of the %llu KiB ROM: %s", (unsigned long long)(c->rom_end - c->rom_start) >> 10,
		    err_str(ret));
	if (!ret) {
		ret = dma_copy(c, e, 0, VUGPU_MEM_BUS, c->rom_start, VUGPU_MEM_VRAM, VRAM_B,
			       c->rom_end - c->rom_start, &d);
		EXPECT_THAT(!ret && vram_diff(c, VRAM_B, rom, c->rom_end - c->rom_start) < 0 &&
			    rom[c->rom_end - c->rom_start - 16] == 0xea,
			    "second read of the ROM (into VRAM): %s, %s", err_str(ret),
			    ret ? "" : "bytes differ from the first read");
		diag("ROM %#llx-%#llx read through DMA messages: %llu us for %llu KiB",
			  (unsigned long long)c->rom_start, (unsigned long long)c->rom_end - 1,
			  (unsigned long long)ns / 1000,
			  (unsigned long long)(c->rom_end - c->rom_start) >> 10);
	}
	buf_free(rom, c->rom_end - c->rom_start);

	/*
	 * Message DMA must also start when the doorbell was a trapped RING_TAIL
	 * write (the server is answering that write when the engine needs the
	 * message); 1 s per job is plenty for 100 bytes.
	 */
	{
		unsigned int k, stuck = 0, orig = c->info.timeout_ms ? c->info.timeout_ms : 5000;

		set_timeout_ms(1000);
		for (k = 0; k < 12; k++) {
			ret = dma_copy(c, k % c->info.engine_count,
				       VUGPU_DMA_DB_REG | (k & 1 ? VUGPU_DMA_IRQ : 0), VUGPU_MEM_BUS,
				       c->rom_end - 100, VUGPU_MEM_VRAM, VRAM_A + 4096, 100, &d);
			stuck += ret == -ETIMEDOUT;
			EXPECT_THAT(ret == 0 || ret == -ETIMEDOUT, "ROM read %u after a RING_TAIL doorbell: %s",
				    k, err_str(ret));
		}
		set_timeout_ms(orig);
		EXPECT_THAT(stuck == 0,
			    "%u of 12 ROM reads (message DMA) rung through RING_TAIL never ran (engine RUNNING until the driver's 1 s timeout)",
			    stuck);
	}

	/* Writes: a Completer Abort from the host (AER CA, Received Target Abort). */
	ret = dma_copy(c, e, VUGPU_DMA_IRQ, VUGPU_MEM_VRAM, VRAM_A, VUGPU_MEM_BUS, c->rom_start + 0x100,
		       64, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "write to the read-only ROM window",
			    VUGPU_ENG_ERR_SYS_PERMISSION, c->rom_start + 0x100, VUGPU_APERTURE_SYS, true);
	expect_config_error(_metadata, c, "write to the read-only ROM window", VUGPU_AER_UNCOR_CA, 0,
			    VUGPU_PCI_STATUS_REC_TARGET_ABORT);
	expect_header_log(_metadata, c, "write to the read-only ROM window", e, VUGPU_AER_UNCOR_CA,
			  c->rom_start + 0x100, true);
	expect_errors_clear(_metadata, c, "ROM write");
	ret = dma_job(c, VUGPU_IOCTL_DMA_FENCE, e, 0, 0, 0, VUGPU_MEM_BUS, c->rom_end - 8, 0, 1, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "FENCE into the ROM window", VUGPU_ENG_ERR_SYS_PERMISSION,
			    c->rom_end - 8, VUGPU_APERTURE_SYS, true);
	expect_errors_clear(_metadata, c, "ROM FENCE");
	/* The reset vector is still there: nothing was written. */
	ret = dma_copy(c, e, 0, VUGPU_MEM_BUS, c->rom_end - 16, VUGPU_MEM_VRAM, VRAM_A, 16, &d);
	EXPECT_THAT(!ret && c->bar[VRAM_A] == 0xea, "reset vector after the refused writes: %s %#x",
		    err_str(ret), c->bar[VRAM_A]);
	engine_works(_metadata, c, e, "after the ROM checks");
}

/* ---- VRAM out of range (device side, through raw descriptors) -------------------------- */

static int raw_submit(struct dma_ctx *c, unsigned int e, uint32_t flags, const struct vugpu_desc *descs,
		      unsigned int n, struct vugpu_dma *out)
{
	*out = (struct vugpu_dma){ .engine = e, .flags = flags, .src_type = VUGPU_MEM_USER,
				   .src = (uintptr_t)descs, .count = n };
	return vugpu_dma(c->fd, VUGPU_IOCTL_DMA_RAW_SUBMIT, out);
}

void vram_out_of_range(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	uint64_t vs = c->info.vram_size;
	struct vugpu_desc desc;
	struct vugpu_dma d;
	unsigned int e;
	int ret;

	REQUIRE_ENGINES(c);
	e = c->info.engine_count - 1;
	ASSERT_THAT(!clear_errors(c, NULL), "ERROR_STATE clear failed");

	/* The driver refuses what it can check itself. */
	ret = dma_copy(c, e, 0, VUGPU_MEM_VRAM, vs - 16, VUGPU_MEM_VRAM, VRAM_A, 4096, &d);
	EXPECT_THAT(ret == -ERANGE, "DMA_COPY past the end of VRAM: %d, expected -ERANGE", ret);

	/* The device refuses the rest: a source running past the end. */
	memset(&desc, 0, sizeof(desc));
	desc.opcode = VUGPU_OP_COPY;
	desc.src_aperture = VUGPU_APERTURE_VRAM;
	desc.dst_aperture = VUGPU_APERTURE_VRAM;
	desc.src = vs - 16;
	desc.dst = VRAM_A;
	desc.length = 4096;
	ret = raw_submit(c, e, VUGPU_DMA_IRQ, &desc, 1, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "COPY from past the end of VRAM", VUGPU_ENG_ERR_VRAM_RANGE,
			    vs, VUGPU_APERTURE_VRAM, false);
	expect_config_error(_metadata, c, "COPY from past the end of VRAM", VUGPU_AER_UNCOR_UIE, 0, 0);
	expect_errors_clear(_metadata, c, "VRAM range");

	/* A FILL that starts past the end. */
	memset(&desc, 0, sizeof(desc));
	desc.opcode = VUGPU_OP_FILL;
	desc.dst_aperture = VUGPU_APERTURE_VRAM;
	desc.dst = vs + 4096;
	desc.length = 64;
	ret = raw_submit(c, e, 0, &desc, 1, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "FILL past the end of VRAM", VUGPU_ENG_ERR_VRAM_RANGE,
			    vs + 4096, VUGPU_APERTURE_VRAM, true);
	/* A FENCE at exactly the VRAM size. */
	memset(&desc, 0, sizeof(desc));
	desc.opcode = VUGPU_OP_FENCE;
	desc.dst_aperture = VUGPU_APERTURE_VRAM;
	desc.dst = vs;
	ret = raw_submit(c, e, 0, &desc, 1, &d);
	expect_engine_error(_metadata, c, e, ret, &d, "FENCE at the VRAM size", VUGPU_ENG_ERR_VRAM_RANGE, vs,
			    VUGPU_APERTURE_VRAM, true);
	expect_errors_clear(_metadata, c, "VRAM range");
	/* The last 8 bytes of VRAM are fine. */
	desc.dst = vs - 8;
	desc.value = 0x1234;
	ret = raw_submit(c, e, 0, &desc, 1, &d);
	EXPECT_THAT(ret == 0, "FENCE to the last 8 bytes of VRAM: %s", err_str(ret));
	if (need_vram_area(c))
		engine_works(_metadata, c, e, "after VRAM range errors");
}

/* ---- every descriptor error of §6.6 / §7 ----------------------------------------------- */

void descriptor_errors(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_engine_stats s0, s1;
	struct vugpu_error_state es;
	struct vugpu_desc base, descs[2];
	struct vugpu_dma d;
	unsigned int i, e = 0, errors = 0;
	struct {
		const char *what;
		int field;	/* which change, see the switch */
		uint64_t v;
		uint32_t code;
	} cases[] = {
		{ "opcode 8", 0, 8, VUGPU_ENG_ERR_BAD_OPCODE },	/* 5-7: §9.5 since 0.4 */
		{ "opcode 0xff", 0, 0xff, VUGPU_ENG_ERR_BAD_OPCODE },
		{ "flags bit 3", 1, 1u << 3, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "flags bit 7", 1, 1u << 7, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "reserved dword at 0x04", 2, 1, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "reserved byte at 0x3f", 3, 1ULL << 56, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "source aperture PEER", 4, VUGPU_APERTURE_PEER, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		/* 3 is VIRT since 0.4 (§9.5; a fault while the driver runs the MMU). */
		{ "destination aperture 4", 5, 4, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "COPY length 0", 6, 0, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "COPY length 1 GiB + 1", 6, (1ULL << 30) + 1, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "COPY overlapping VRAM ranges", 7, 32, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "COPY source + length overflows", 8, ~0ULL - 15, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "FILL at an unaligned address", 9, 2, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "FILL length 6", 10, 6, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "FILL length 0", 10, 0, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "FILL value bits 63:32", 11, 1ULL << 32, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "FENCE at an unaligned address", 12, 4, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
		{ "TIMESTAMP at an unaligned address", 13, 1, VUGPU_ENG_ERR_BAD_DESCRIPTOR },
	};

	REQUIRE_ENGINES(c);
	ASSERT_THAT(!clear_errors(c, NULL) && !vugpu_engine_stats(c->fd, e, &s0),
		    "ERROR_STATE / ENGINE_STATS failed");
	memset(&base, 0, sizeof(base));
	base.opcode = VUGPU_OP_COPY;
	base.src_aperture = VUGPU_APERTURE_VRAM;
	base.dst_aperture = VUGPU_APERTURE_VRAM;
	base.src = VRAM_A;
	base.dst = VRAM_A + 4096;
	base.length = 64;
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		struct vugpu_desc *x = &descs[1];
		uint64_t ring = c->info.ring_base[e];
		uint32_t slot;
		int ret;

		memset(&descs[0], 0, sizeof(descs[0]));	/* a NOP first: HEAD must pass it */
		*x = base;
		switch (cases[i].field) {
		case 0: x->opcode = (uint8_t)cases[i].v; break;
		case 1: x->flags = (uint8_t)cases[i].v; break;
		case 2: x->rsvd0 = (uint32_t)cases[i].v; break;
		case 3: x->rsvd1[2] = cases[i].v; break;
		case 4: x->src_aperture = (uint8_t)cases[i].v; break;
		case 5: x->dst_aperture = (uint8_t)cases[i].v; break;
		case 6: x->length = cases[i].v; break;
		case 7: x->dst = x->src + cases[i].v; break;
		case 8: x->src = cases[i].v; break;
		case 9: x->opcode = VUGPU_OP_FILL; x->dst += cases[i].v; break;
		case 10: x->opcode = VUGPU_OP_FILL; x->length = cases[i].v; break;
		case 11: x->opcode = VUGPU_OP_FILL; x->value = cases[i].v; break;
		case 12: x->opcode = VUGPU_OP_FENCE; x->dst += cases[i].v; break;
		case 13: x->opcode = VUGPU_OP_TIMESTAMP; x->dst += cases[i].v; break;
		}
		ret = raw_submit(c, e, i & 1 ? VUGPU_DMA_IRQ : 0, descs, 2, &d);
		/* Reported at the descriptor's own address in the ring (§6.6). */
		slot = d.regs.head & (c->info.ring_slots[e] - 1);
		expect_engine_error(_metadata, c, e, ret, &d, cases[i].what, cases[i].code,
				    ring + (uint64_t)slot * VUGPU_DESC_SIZE, VUGPU_APERTURE_SYS, false);
		EXPECT_THAT(ret != -EIO || d.regs.head == d.regs.tail - 2,
			    "%s: HEAD %u TAIL %u: the NOP before it should have completed", cases[i].what,
			    d.regs.head, d.regs.tail);
		errors += ret == -EIO;
	}
	ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s1) && !vugpu_error_state(c->fd, &es, false),
		    "ENGINE_STATS / ERROR_STATE failed");
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS) == ARRAY_SIZE(cases) &&
		    s1.err_irqs - s0.err_irqs == ARRAY_SIZE(cases),
		    "%zu bad descriptors: ERRORS +%llu, vector 0 reported %llu", ARRAY_SIZE(cases),
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS),
		    (unsigned long long)(s1.err_irqs - s0.err_irqs));
	/* Descriptor errors are not PCIe transaction errors (§5 table). */
	EXPECT_THAT(!es.aer_uncor_status && !(es.devsta & 0xf) &&
		    !(es.pci_status & (VUGPU_PCI_STATUS_REC_MASTER_ABORT | VUGPU_PCI_STATUS_REC_TARGET_ABORT)),
		    "descriptor errors set config error bits: AER %#x Device Status %#x Status %#x",
		    es.aer_uncor_status, es.devsta, es.pci_status);

	/* A NOP with IRQ completes and interrupts; a good raw COPY works. */
	memset(&descs[0], 0, sizeof(descs[0]));
	descs[0].flags = VUGPU_DESC_F_IRQ;
	descs[1] = base;
	EXPECT_THAT(!raw_submit(c, e, 0, descs, 2, &d) && d.result == VUGPU_DMA_DONE &&
		    STATE(d.regs) == VUGPU_ENG_STATE_IDLE && d.regs.head == d.regs.tail,
		    "NOP + COPY: %s", regs_str(&d.regs, (char[256]){ 0 }, 256));
	EXPECT_THAT(errors == ARRAY_SIZE(cases), "%u of %zu bad descriptors refused", errors,
		    ARRAY_SIZE(cases));
}

/* ---- ring errors and descriptor fetch faults, programmed behind the driver's back --------- */

/*
 * Wait until vector 0 reported an error of engine @e (its err_irqs grows
 * past @seen), then read the engine's registers.  Waiting for the interrupt
 * (not just for STATUS) keeps one ERR_CAUSE bit per error: the bit is a
 * summary, two errors before the handler acks it would count once.
 */
static int wait_engine_error(struct dma_ctx *c, unsigned int e, uint64_t *seen,
			     struct vugpu_engine_regs *r)
{
	struct vugpu_engine_stats st;
	struct vugpu_error_state es;
	unsigned int i;
	int ret;

	for (i = 0; i < 200; i++) {
		ret = vugpu_engine_stats(c->fd, e, &st);
		if (ret)
			return ret;
		if (st.err_irqs > *seen) {
			*seen = st.err_irqs;
			ret = vugpu_error_state(c->fd, &es, false);
			*r = es.engine[e];
			return ret;
		}
		usleep(5000);
	}
	ret = vugpu_error_state(c->fd, &es, false);
	*r = es.engine[e];
	return ret ? ret : -ETIMEDOUT;
}

static void expect_ring_error(struct __test_metadata *_metadata, struct dma_ctx *c, unsigned int e,
			      uint64_t *seen, const char *what, uint32_t code, uint64_t addr,
			      uint32_t info_mask, uint32_t info)
{
	struct vugpu_engine_regs r;
	struct vugpu_dma d;
	char regs[256];
	int ret = wait_engine_error(c, e, seen, &r);

	EXPECT_THAT(!ret && STATE(r) == VUGPU_ENG_STATE_ERROR && r.error_code == code &&
		    r.error_addr == addr && (r.error_info & info_mask) == info,
		    "%s: expected vector 0 and %s at %#llx (ERROR_INFO & %#x == %#x); %s: %s", what,
		    vugpu_eng_err_name(code), (unsigned long long)addr, info_mask, info,
		    ret == -ETIMEDOUT ? "no vector 0 report within 1 s" : ret ? err_str(ret) : "got",
		    regs_str(&r, regs, sizeof(regs)));
	/* The driver reprograms the engine from scratch. */
	ret = dma_job(c, VUGPU_IOCTL_ENGINE_RESET, e, 0, 0, 0, 0, 0, 0, 0, &d);
	EXPECT_THAT(!ret && STATE(d.regs) == VUGPU_ENG_STATE_IDLE, "%s: ENGINE_RESET: %s; %s", what,
		    err_str(ret), regs_str(&d.regs, regs, sizeof(regs)));
}

/* Program engine @e's ring registers directly (the driver's ring is abandoned). */
static void program_ring(struct dma_ctx *c, unsigned int e, uint64_t base, uint32_t slots,
			 uint32_t aperture)
{
	uint32_t r = VUGPU_ENGINE_REGS(e);

	vugpu_reg_write(c->fd, r + VUGPU_ENG_CONTROL, VUGPU_ENG_CONTROL_RESET);
	vugpu_reg_write(c->fd, r + VUGPU_ENG_RING_BASE_LO, (uint32_t)base);
	vugpu_reg_write(c->fd, r + VUGPU_ENG_RING_BASE_HI, (uint32_t)(base >> 32));
	vugpu_reg_write(c->fd, r + VUGPU_ENG_RING_SIZE, slots);
	vugpu_reg_write(c->fd, r + VUGPU_ENG_RING_APERTURE, aperture);
	vugpu_reg_write(c->fd, r + VUGPU_ENG_CONTROL, VUGPU_ENG_CONTROL_ENABLE);
}

void ring_errors(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	struct vugpu_engine_stats s0, s1;
	struct vugpu_error_state es;
	unsigned int e;
	uint32_t slots;
	uint64_t seen;

	REQUIRE_ENGINES(c);
	e = c->info.engine_count - 1;
	slots = c->info.ring_slots[e];
	ASSERT_THAT(!clear_errors(c, NULL) && !vugpu_engine_stats(c->fd, e, &s0),
		    "ERROR_STATE / ENGINE_STATS failed");
	seen = s0.err_irqs;

	/* RING_CONFIG at enable: size, alignment, aperture (§6.6: ERROR_ADDR = RING_BASE). */
	program_ring(c, e, 0x10000, 3, VUGPU_APERTURE_SYS);
	expect_ring_error(_metadata, c, e, &seen, "ring of 3 slots", VUGPU_ENG_ERR_RING_CONFIG, 0x10000, 0, 0);
	program_ring(c, e, 0x10020, 16, VUGPU_APERTURE_SYS);
	expect_ring_error(_metadata, c, e, &seen, "ring base not 64-byte aligned", VUGPU_ENG_ERR_RING_CONFIG, 0x10020,
			  0, 0);
	program_ring(c, e, 0x10000, 16, VUGPU_APERTURE_PEER);
	expect_ring_error(_metadata, c, e, &seen, "ring in the PEER aperture", VUGPU_ENG_ERR_RING_CONFIG, 0x10000, 0, 0);
	program_ring(c, e, 0x10000, 131072, VUGPU_APERTURE_SYS);
	expect_ring_error(_metadata, c, e, &seen, "ring of 131072 slots", VUGPU_ENG_ERR_RING_CONFIG, 0x10000, 0, 0);

	/* RING_OVERFLOW: TAIL - HEAD > RING_SIZE on the driver's own (valid) ring. */
	vugpu_reg_write(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_RING_TAIL, slots + 1);
	expect_ring_error(_metadata, c, e, &seen, "TAIL past the ring", VUGPU_ENG_ERR_RING_OVERFLOW, slots + 1, 0, 0);

	/* Descriptor fetch faults: a ring in unmapped SYS memory, and one past the end of VRAM. */
	program_ring(c, e, UNMAPPED_HIGH, 16, VUGPU_APERTURE_SYS);
	vugpu_reg_write(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_RING_TAIL, 1);
	expect_ring_error(_metadata, c, e, &seen, "ring in unmapped SYS memory", VUGPU_ENG_ERR_SYS_UNMAPPED,
			  UNMAPPED_HIGH,
			  VUGPU_ENG_INFO_FETCH | VUGPU_ENG_INFO_WRITE | VUGPU_ENG_INFO_APERTURE_MASK,
			  VUGPU_ENG_INFO_FETCH | VUGPU_APERTURE_SYS);
	ASSERT_THAT(!vugpu_error_state(c->fd, &es, true), "ERROR_STATE failed");
	EXPECT_THAT(es.aer_uncor_status & VUGPU_AER_UNCOR_UR,
		    "descriptor fetch from unmapped memory: AER status %#x lacks UR", es.aer_uncor_status);
	program_ring(c, e, c->info.vram_size, 16, VUGPU_APERTURE_VRAM);
	vugpu_reg_write(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_RING_TAIL, 1);
	expect_ring_error(_metadata, c, e, &seen, "ring past the end of VRAM", VUGPU_ENG_ERR_VRAM_RANGE,
			  c->info.vram_size,
			  VUGPU_ENG_INFO_FETCH | VUGPU_ENG_INFO_WRITE | VUGPU_ENG_INFO_APERTURE_MASK,
			  VUGPU_ENG_INFO_FETCH | VUGPU_APERTURE_VRAM);

	ASSERT_THAT(!vugpu_engine_stats(c->fd, e, &s1), "ENGINE_STATS failed");
	EXPECT_THAT(stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS) == 7 && s1.err_irqs - s0.err_irqs == 7,
		    "7 ring errors: ERRORS +%llu, vector 0 reported %llu",
		    (unsigned long long)stat_delta(&s0, &s1, VUGPU_ENG_STAT_ERRORS),
		    (unsigned long long)(s1.err_irqs - s0.err_irqs));
	clear_errors(c, NULL);
	if (need_vram_area(c))
		engine_works(_metadata, c, e, "after the ring errors");
}

/* ---- a job that never completes ---------------------------------------------------------- */

static int set_timeout_ms(unsigned int ms)
{
	char v[16];

	snprintf(v, sizeof(v), "%u", ms);
	return vugpu_write_file("/sys/module/vugpu/parameters/dma_timeout_ms", v);
}

void timeout_recovery(struct __test_metadata *_metadata, void *ctx)
{
	struct dma_ctx *c = ctx;
	unsigned int e = 0, k, orig = c->info.timeout_ms ? c->info.timeout_ms : 5000;
	uint64_t t0, took;
	uint8_t src[4096];
	struct vugpu_dma d;
	char regs[256];
	int ret;

	REQUIRE_ENGINES(c);
	if (!need_vram_area(c))
		SKIP_TEST("not enough CPU-visible VRAM");
	ret = set_timeout_ms(300);
	ASSERT_THAT(!ret, "setting dma_timeout_ms: %s", err_str(ret));
	memset(src, 0x42, sizeof(src));
	for (k = 0; k < 2; k++) {
		uint32_t flags = k ? VUGPU_DMA_IRQ : 0;

		/* HALT: the engine stops at the next boundary and fetches nothing. */
		ret = vugpu_reg_write(c->fd, VUGPU_ENGINE_REGS(e) + VUGPU_ENG_CONTROL,
				      VUGPU_ENG_CONTROL_ENABLE | VUGPU_ENG_CONTROL_IRQ_ENABLE |
				      VUGPU_ENG_CONTROL_HALT);
		EXPECT_THAT(!ret, "setting HALT: %s", err_str(ret));
		memset(c->bar + VRAM_A, POISON, sizeof(src));
		t0 = vugpu_now_ns();
		ret = dma_copy(c, e, flags, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_VRAM, VRAM_A,
			       sizeof(src), &d);
		took = vugpu_now_ns() - t0;
		EXPECT_THAT(ret == -ETIMEDOUT && d.result == VUGPU_DMA_TIMEOUT &&
			    STATE(d.regs) == VUGPU_ENG_STATE_HALTED,
			    "copy on a halted engine (%s): %d (%s), result %u; %s", flags ? "irq" : "poll",
			    ret, err_str(ret), d.result, regs_str(&d.regs, regs, sizeof(regs)));
		EXPECT_THAT(took >= 300000000ULL && took < 3000000000ULL,
			    "timeout after %llu ms, configured 300", (unsigned long long)took / 1000000);
		/* Nothing was executed, and nothing will be: the driver reset the engine. */
		EXPECT_THAT(all_bytes(c->bar + VRAM_A, sizeof(src), POISON),
			    "the timed-out copy wrote VRAM");
		engine_works(_metadata, c, e, "after a timeout");
	}
	ret = set_timeout_ms(orig);
	EXPECT_THAT(!ret, "restoring dma_timeout_ms: %s", err_str(ret));
	EXPECT_THAT(!refresh_info(c) && c->info.timeouts >= 2 && c->info.timeout_ms == orig,
		    "driver counted %llu timeouts, timeout now %u ms", (unsigned long long)c->info.timeouts,
		    c->info.timeout_ms);
}

/* ---- DMA across FLR, SOFT_RESET and a sysfs reset ---------------------------------------- */

void dma_across_resets(struct __test_metadata *_metadata, void *ctx)
{
	static const struct {
		const char *what;
		unsigned long req;	/* 0: sysfs reset */
	} resets[] = {
		{ "FLR", VUGPU_IOCTL_FLR },
		{ "SOFT_RESET", VUGPU_IOCTL_SOFT_RESET },
		{ "sysfs reset", 0 },
	};
	struct dma_ctx *c = ctx;
	unsigned int r, e;

	REQUIRE_ENGINES(c);
	if (!need_vram_area(c))
		SKIP_TEST("not enough CPU-visible VRAM");
	for (r = 0; r < ARRAY_SIZE(resets); r++) {
		struct vugpu_engine_stats st;
		struct vugpu_regs regs;
		char path[200];
		int ret;

		if (resets[r].req) {
			ret = vugpu_reset(c->fd, resets[r].req, &regs, NULL);
		} else {
			snprintf(path, sizeof(path), "%s/reset", c->d->sysfs);
			ret = vugpu_write_file(path, "1");
		}
		ASSERT_THAT(!ret, "%s: %s", resets[r].what, err_str(ret));
		EXPECT_THAT(!refresh_info(c) && c->info.ready_mask == (1u << c->info.engine_count) - 1,
			    "%s: engines ready %#x", resets[r].what, c->info.ready_mask);
		for (e = 0; e < c->info.engine_count; e++) {
			/* Counters restart from 0 at every reset but an engine reset (§8.1). */
			EXPECT_THAT(!vugpu_engine_stats(c->fd, e, &st) &&
				    st.hw[VUGPU_STAT(VUGPU_ENG_STAT_JOBS)] == 0,
				    "%s: engine %u JOBS %llu, expected 0", resets[r].what, e,
				    (unsigned long long)st.hw[VUGPU_STAT(VUGPU_ENG_STAT_JOBS)]);
			engine_works(_metadata, c, e, resets[r].what);
			EXPECT_THAT(!vugpu_engine_stats(c->fd, e, &st) &&
				    st.hw[VUGPU_STAT(VUGPU_ENG_STAT_BYTES_S2V)] == 64 * KIB &&
				    st.hw[VUGPU_STAT(VUGPU_ENG_STAT_BYTES_V2S)] == 64 * KIB,
				    "%s: engine %u counters after one round trip: S2V %llu V2S %llu",
				    resets[r].what, e,
				    (unsigned long long)st.hw[VUGPU_STAT(VUGPU_ENG_STAT_BYTES_S2V)],
				    (unsigned long long)st.hw[VUGPU_STAT(VUGPU_ENG_STAT_BYTES_V2S)]);
		}
	}
}
