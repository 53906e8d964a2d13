// SPDX-License-Identifier: GPL-2.0
/* vugpu-smoke cases: (b) registers, (c) VRAM.  See vugpu-smoke.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "smoke.h"

/* ---- (b) registers -------------------------------------------------- */

TEST_F_TIMEOUT(smoke, regs_identity, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint32_t id = 0, ver = 0, caps = 0, nvec = 0, status = 0;

		ASSERT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_ID, &id) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_VERSION, &ver) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_CAPS, &caps) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_NUM_VECTORS, &nvec) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &status),
			    "%s: REG_READ failed: %s", d->bdf, strerror(errno));
		EXPECT_THAT(id == VUGPU_ID_VALUE, "%s: ID %#010x, expected %#010x", d->bdf, id,
			    VUGPU_ID_VALUE);
		EXPECT_THAT(ver == VUGPU_VERSION_VALUE,
			    "%s: VERSION %#010x, but this tree's hw-spec is %#010x (server and spec out of step?)",
			    d->bdf, ver, VUGPU_VERSION_VALUE);
		EXPECT_THAT((caps & VUGPU_CAPS_MSIX) && (caps & VUGPU_CAPS_VRAM_MMAP),
			    "%s: CAPS %#x lacks MSI-X or VRAM-mmappable", d->bdf, caps);
		EXPECT_THAT(!(caps & ~VUGPU_CAPS_KNOWN), "%s: CAPS %#x has bits the spec does not define",
			    d->bdf, caps);
		EXPECT_THAT(nvec == d->info.num_vectors && nvec >= 1 && nvec <= VUGPU_MSIX_MAX_VECTORS,
			    "%s: NUM_VECTORS %u, driver allocated %u", d->bdf, nvec,
			    d->info.num_vectors);
		EXPECT_THAT(status == VUGPU_STATUS_READY, "%s: STATUS %#x, expected READY only",
			    d->bdf, status);
	}
}

/* The §3 registers spec 0.2 added: engine discovery, error cause, clock. */
TEST_F_TIMEOUT(smoke, regs_engine_info, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint32_t ver = 0, caps = 0, ec = 0, dbo = 0, dbs = 0, vb = 0, err = 1, nvec = 0;
		uint32_t lo1 = 0, hi1 = 0, lo2 = 0, hi2 = 0;
		uint64_t c1, c2;

		vugpu_reg_read(d->fd, VUGPU_REG_VERSION, &ver);
		if (ver < VUGPU_VERSION_ENGINES)
			SKIP_TEST("%s: VERSION %#x predates the engine registers (spec %#x)", d->bdf, ver,
				  VUGPU_VERSION_ENGINES);
		ASSERT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_CAPS, &caps) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_ENGINE_COUNT, &ec) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_DOORBELL_OFFSET, &dbo) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_DOORBELL_STRIDE, &dbs) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_ENGINE_VECTOR_BASE, &vb) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_ERR_CAUSE, &err) &&
			    !vugpu_reg_read(d->fd, VUGPU_REG_NUM_VECTORS, &nvec),
			    "%s: REG_READ failed: %s", d->bdf, strerror(errno));
		EXPECT_THAT(ec <= VUGPU_ENGINE_MAX, "%s: ENGINE_COUNT %u > %u", d->bdf, ec,
			    VUGPU_ENGINE_MAX);
		EXPECT_THAT(!!(caps & VUGPU_CAPS_ENGINES) == (ec > 0),
			    "%s: CAPS %#x engine bit disagrees with ENGINE_COUNT %u", d->bdf, caps, ec);
		EXPECT_THAT(!ec || (caps & VUGPU_CAPS_DOORBELL_MMAP),
			    "%s: CAPS %#x: %u engines but no mmappable doorbell page", d->bdf, caps, ec);
		EXPECT_THAT(dbo == VUGPU_DOORBELL_PAGE_OFFSET, "%s: DOORBELL_OFFSET %#x, expected %#x",
			    d->bdf, dbo, VUGPU_DOORBELL_PAGE_OFFSET);
		EXPECT_THAT(dbs == VUGPU_DOORBELL_STRIDE_VALUE, "%s: DOORBELL_STRIDE %#x, expected %#x",
			    d->bdf, dbs, VUGPU_DOORBELL_STRIDE_VALUE);
		EXPECT_THAT(vb == VUGPU_ENGINE_VECTOR_BASE_VALUE,
			    "%s: ENGINE_VECTOR_BASE %u, expected %u", d->bdf, vb,
			    VUGPU_ENGINE_VECTOR_BASE_VALUE);
		EXPECT_THAT(nvec >= vb + ec, "%s: %u MSI-X vectors cannot serve %u engines from vector %u",
			    d->bdf, nvec, ec, vb);
		EXPECT_THAT(err == 0, "%s: ERR_CAUSE %#x with no engine in use", d->bdf, err);
		/* CLOCK: reading LO latches HI; nanoseconds, so it moves between two reads. */
		vugpu_reg_read(d->fd, VUGPU_REG_CLOCK_LO, &lo1);
		vugpu_reg_read(d->fd, VUGPU_REG_CLOCK_HI, &hi1);
		usleep(2000);
		vugpu_reg_read(d->fd, VUGPU_REG_CLOCK_LO, &lo2);
		vugpu_reg_read(d->fd, VUGPU_REG_CLOCK_HI, &hi2);
		c1 = (uint64_t)hi1 << 32 | lo1;
		c2 = (uint64_t)hi2 << 32 | lo2;
		EXPECT_THAT(c2 > c1 && c2 - c1 >= 1000000ULL,
			    "%s: CLOCK %#llx then %#llx 2 ms later", d->bdf, (unsigned long long)c1,
			    (unsigned long long)c2);
		diag("%s: %u engines, doorbell BAR0+%#x stride %#x, engine vectors from %u, clock %llu ms",
			  d->bdf, ec, dbo, dbs, vb, (unsigned long long)(c2 / 1000000ULL));
	}
}

TEST_F_TIMEOUT(smoke, regs_vram_size, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		int ret;
		uint64_t vram = reg_vram_size(d->fd, &ret);

		ASSERT_THAT(!ret, "%s: REG_READ VRAM_SIZE: %s", d->bdf, err_str(ret));
		/*
		 * BAR2's size is the one the kernel selected in Resizable BAR
		 * Control (the whole VRAM at reset: a host test), so it is only
		 * bounded by VRAM_SIZE, which is the whole VRAM whatever BAR2 is.
		 */
		EXPECT_THAT(vram >= VUGPU_VRAM_BAR_MIN_SIZE && !(vram & (vram - 1)) &&
			    vram >= bar_size(d, VUGPU_BAR_VRAM),
			    "%s: VRAM_SIZE %#llx: expected a power of two >= 1 MiB and >= BAR2 (%#llx)",
			    d->bdf, (unsigned long long)vram,
			    (unsigned long long)bar_size(d, VUGPU_BAR_VRAM));
		EXPECT_THAT(vram == d->info.vram_size, "%s: VRAM_SIZE %#llx, GET_INFO %#llx", d->bdf,
			    (unsigned long long)vram, (unsigned long long)d->info.vram_size);
	}
}

TEST_F_TIMEOUT(smoke, regs_scratch, SMOKE_TIMEOUT)
{
	static const uint32_t patterns[] = { 0xffffffff, 0x00000000, 0xa5a55a5a, 0x5a5aa5a5,
					     0x12345678, 0x80000001 };
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		unsigned int i, r;
		uint32_t v;

		for (i = 0; i < ARRAY_SIZE(patterns); i++) {
			/* Distinct value per register: catches aliasing between them. */
			for (r = 0; r < VUGPU_NUM_SCRATCH; r++)
				ASSERT_THAT(!vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH(r),
								patterns[i] ^ (r * 0x01010101u)),
					    "%s: REG_WRITE SCRATCH%u: %s", d->bdf, r, strerror(errno));
			for (r = 0; r < VUGPU_NUM_SCRATCH; r++) {
				uint32_t want = patterns[i] ^ (r * 0x01010101u);

				v = ~want;
				EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH(r), &v) &&
					    v == want, "%s: SCRATCH%u read %#010x, wrote %#010x", d->bdf,
					    r, v, want);
			}
		}
		for (i = 0; i < 32; i++) {
			vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH0, 1u << i);
			v = 0;
			vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH0, &v);
			EXPECT_THAT(v == 1u << i, "%s: SCRATCH0 walking one: wrote %#x read %#x",
				    d->bdf, 1u << i, v);
		}
		for (r = 0; r < VUGPU_NUM_SCRATCH; r++)
			vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH(r), 0);
	}
}

TEST_F_TIMEOUT(smoke, regs_access_types, SMOKE_TIMEOUT)
{
	static const uint32_t ro[] = { VUGPU_REG_ID, VUGPU_REG_VERSION, VUGPU_REG_CAPS,
				       VUGPU_REG_NUM_VECTORS, VUGPU_REG_VRAM_SIZE_LO,
				       VUGPU_REG_VRAM_SIZE_HI, VUGPU_REG_IRQ_COUNT,
				       VUGPU_REG_ENGINE_COUNT, VUGPU_REG_DOORBELL_OFFSET,
				       VUGPU_REG_DOORBELL_STRIDE, VUGPU_REG_ENGINE_VECTOR_BASE };
	static const uint32_t rsvd[] = { VUGPU_REGFILE_RSVD_START, VUGPU_REGFILE_SIZE - 4 };
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint32_t before, after, cnt0 = 0, cnt1 = 0, st0 = 0, st1 = 0, v;
		unsigned int i;

		/* RO: writes are ignored. */
		for (i = 0; i < ARRAY_SIZE(ro); i++) {
			before = after = 0;
			vugpu_reg_read(d->fd, ro[i], &before);
			ASSERT_THAT(!vugpu_reg_write(d->fd, ro[i], ~before), "%s: REG_WRITE %#x: %s",
				    d->bdf, ro[i], strerror(errno));
			vugpu_reg_read(d->fd, ro[i], &after);
			EXPECT_THAT(after == before, "%s: RO register %#x changed %#x -> %#x", d->bdf,
				    ro[i], before, after);
		}
		/* STATUS.READY is RO: writing 0 (or 1) to it changes nothing. */
		vugpu_reg_write(d->fd, VUGPU_REG_STATUS, 0);
		v = 0;
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &v);
		EXPECT_THAT(v & VUGPU_STATUS_READY, "%s: STATUS %#x after writing 0", d->bdf, v);
		vugpu_reg_write(d->fd, VUGPU_REG_STATUS, VUGPU_STATUS_READY);
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &v);
		EXPECT_THAT(v == VUGPU_STATUS_READY, "%s: STATUS %#x after writing READY", d->bdf, v);
		/* WO registers read 0. */
		v = 1;
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_TRIGGER, &v);
		EXPECT_THAT(v == 0, "%s: IRQ_TRIGGER (WO) reads %#x", d->bdf, v);
		v = 1;
		vugpu_reg_read(d->fd, VUGPU_REG_SOFT_RESET, &v);
		EXPECT_THAT(v == 0, "%s: SOFT_RESET (WO) reads %#x", d->bdf, v);
		/* §2: 0x2000-0xfffff of the register file is RsvdZ. */
		for (i = 0; i < ARRAY_SIZE(rsvd); i++) {
			vugpu_reg_write(d->fd, rsvd[i], 0xdeadbeef);
			v = 1;
			vugpu_reg_read(d->fd, rsvd[i], &v);
			EXPECT_THAT(v == 0, "%s: RsvdZ offset %#x reads %#x after a write", d->bdf,
				    rsvd[i], v);
		}
		/* ERR_CAUSE is W1C: writing ones to clear bits that are 0 leaves 0. */
		vugpu_reg_write(d->fd, VUGPU_REG_ERR_CAUSE, 0xffffffff);
		v = 1;
		vugpu_reg_read(d->fd, VUGPU_REG_ERR_CAUSE, &v);
		EXPECT_THAT(v == 0, "%s: ERR_CAUSE reads %#x after writing ones", d->bdf, v);
		/* IRQ_TRIGGER with n >= NUM_VECTORS is ignored (no message, no cause bit). */
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_COUNT, &cnt0);
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_STATUS, &st0);
		vugpu_reg_write(d->fd, VUGPU_REG_IRQ_TRIGGER, d->info.num_vectors);
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_COUNT, &cnt1);
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_STATUS, &st1);
		EXPECT_THAT(cnt1 == cnt0 && st1 == st0,
			    "%s: IRQ_TRIGGER %u (out of range) changed IRQ_COUNT %u->%u IRQ_STATUS %#x->%#x",
			    d->bdf, d->info.num_vectors, cnt0, cnt1, st0, st1);
	}
}

/* ---- (c) VRAM ------------------------------------------------------- */

/* Offsets to probe: start, an odd spot in the middle, the last XFER bytes. */
static void vram_offsets(uint64_t size, uint64_t off[3])
{
	off[0] = 0;
	off[1] = (size / 2 + 0x1234) & ~3ULL;
	off[2] = size - XFER;
}

TEST_F_TIMEOUT(smoke, vram_bar_to_window, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t wr[XFER], rd[XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t off[3];
		unsigned int i;
		long diff;
		int ret;

		vram_offsets(d->info.bar2_size, off);
		for (i = 0; i < 3; i++) {
			vugpu_fill_pattern(wr, sizeof(wr), off[i] ^ 0xb00);
			ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WRITE, off[i], wr, sizeof(wr));
			ASSERT_THAT(!ret, "%s: VRAM_WRITE at %#llx: %s", d->bdf,
				    (unsigned long long)off[i], err_str(ret));
			memset(rd, 0, sizeof(rd));
			ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, off[i], rd, sizeof(rd));
			ASSERT_THAT(!ret, "%s: VRAM_READ: %s", d->bdf, err_str(ret));
			diff = vugpu_first_diff(wr, rd, sizeof(rd));
			EXPECT_THAT(diff < 0, "%s: BAR read-back differs at %#llx: %#x != %#x", d->bdf,
				    (unsigned long long)(off[i] + (diff < 0 ? 0 : diff)),
				    diff < 0 ? 0 : rd[diff], diff < 0 ? 0 : wr[diff]);
			/* The device's own view through VRAM_DATA: proves the server has the bytes. */
			memset(rd, 0, sizeof(rd));
			ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, off[i], rd, WIN_XFER);
			ASSERT_THAT(!ret, "%s: VRAM_WINDOW_READ at %#llx: %s", d->bdf,
				    (unsigned long long)off[i], err_str(ret));
			diff = vugpu_first_diff(wr, rd, WIN_XFER);
			EXPECT_THAT(diff < 0,
				    "%s: BAR write not seen through VRAM_DATA at %#llx: %#x != %#x",
				    d->bdf, (unsigned long long)(off[i] + (diff < 0 ? 0 : diff)),
				    diff < 0 ? 0 : rd[diff], diff < 0 ? 0 : wr[diff]);
		}
		/* Unaligned BAR write in the middle of a dword run. */
		vugpu_fill_pattern(wr, 13, 0x13);
		ASSERT_THAT(!vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WRITE, off[1] + 1, wr, 13),
			    "%s: unaligned VRAM_WRITE: %s", d->bdf, strerror(errno));
		ASSERT_THAT(!vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, off[1], rd, 16),
			    "%s: VRAM_WINDOW_READ: %s", d->bdf, strerror(errno));
		EXPECT_THAT(memcmp(rd + 1, wr, 13) == 0,
			    "%s: unaligned BAR write (13 bytes at +1) not seen through VRAM_DATA",
			    d->bdf);
	}
}

TEST_F_TIMEOUT(smoke, vram_window_to_bar, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t wr[WIN_XFER], rd[WIN_XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t offs[2] = { 4096, d->info.bar2_size - WIN_XFER };
		unsigned int i;
		uint32_t lo = 0, hi = 0;
		long diff;
		int ret;

		for (i = 0; i < 2; i++) {
			vugpu_fill_pattern(wr, sizeof(wr), offs[i] ^ 0x3a3a);
			ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_WRITE, offs[i], wr, sizeof(wr));
			ASSERT_THAT(!ret, "%s: VRAM_WINDOW_WRITE at %#llx: %s", d->bdf,
				    (unsigned long long)offs[i], err_str(ret));
			/* VRAM_INDEX advanced by 4 per dword. */
			vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_LO, &lo);
			vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_HI, &hi);
			EXPECT_THAT(((uint64_t)hi << 32 | lo) == offs[i] + sizeof(wr),
				    "%s: VRAM_INDEX %#llx after writing %zu bytes at %#llx", d->bdf,
				    (unsigned long long)((uint64_t)hi << 32 | lo), sizeof(wr),
				    (unsigned long long)offs[i]);
			memset(rd, 0, sizeof(rd));
			ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, offs[i], rd, sizeof(rd));
			ASSERT_THAT(!ret, "%s: VRAM_READ: %s", d->bdf, err_str(ret));
			diff = vugpu_first_diff(wr, rd, sizeof(rd));
			EXPECT_THAT(diff < 0,
				    "%s: VRAM_DATA write not seen through the BAR at %#llx: %#x != %#x",
				    d->bdf, (unsigned long long)(offs[i] + (diff < 0 ? 0 : diff)),
				    diff < 0 ? 0 : rd[diff], diff < 0 ? 0 : wr[diff]);
		}
	}
}

TEST_F_TIMEOUT(smoke, vram_mmap, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t wr[XFER], rd[XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		size_t size = d->info.bar2_size, off = size - 2 * XFER;
		volatile uint8_t *map;
		void *p;
		long diff;
		int ret;

		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
		ASSERT_THAT(p != MAP_FAILED, "%s: mmap of %zu bytes of BAR2: %s", d->bdf, size,
			    strerror(errno));
		map = p;

		/* CPU store through the user mapping -> device view and kernel BAR view. */
		vugpu_fill_pattern(wr, sizeof(wr), 0x6d6d);
		memcpy((void *)(map + off), wr, sizeof(wr));
		__sync_synchronize();	/* drain write-combining buffers */
		ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, off, rd, WIN_XFER);
		EXPECT_THAT(!ret && vugpu_first_diff(wr, rd, WIN_XFER) < 0,
			    "%s: store through mmap not seen through VRAM_DATA (%s)", d->bdf,
			    ret ? err_str(ret) : "data differs");
		ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, off, rd, sizeof(rd));
		EXPECT_THAT(!ret && vugpu_first_diff(wr, rd, sizeof(rd)) < 0,
			    "%s: store through mmap not seen by VRAM_READ (%s)", d->bdf,
			    ret ? err_str(ret) : "data differs");

		/* Device-side write -> user mapping. */
		vugpu_fill_pattern(wr, WIN_XFER, 0x7e7e);
		ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_WRITE, off + XFER, wr, WIN_XFER);
		EXPECT_THAT(!ret, "%s: VRAM_WINDOW_WRITE: %s", d->bdf, err_str(ret));
		memcpy(rd, (const void *)(map + off + XFER), WIN_XFER);
		diff = vugpu_first_diff(wr, rd, WIN_XFER);
		EXPECT_THAT(diff < 0, "%s: VRAM_DATA write not seen through mmap at +%ld", d->bdf,
			    diff);
		munmap(p, size);

		/* A page-offset mapping lands at that BAR offset. */
		p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, d->fd, (off_t)(off + XFER));
		EXPECT_THAT(p != MAP_FAILED && memcmp(p, wr, WIN_XFER) == 0,
			    "%s: mmap at offset %#zx does not show that VRAM (%s)", d->bdf, off + XFER,
			    p == MAP_FAILED ? strerror(errno) : "data differs");
		if (p != MAP_FAILED)
			munmap(p, 4096);

		/* Bounds: past the BAR, straddling its end, and private mappings are refused. */
		p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, d->fd, (off_t)size);
		EXPECT_THAT(p == MAP_FAILED, "%s: mmap at offset == BAR size succeeded", d->bdf);
		if (p != MAP_FAILED)
			munmap(p, 4096);
		p = mmap(NULL, 8192, PROT_READ, MAP_SHARED, d->fd, (off_t)(size - 4096));
		EXPECT_THAT(p == MAP_FAILED, "%s: mmap straddling the end of BAR2 succeeded", d->bdf);
		if (p != MAP_FAILED)
			munmap(p, 8192);
		p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, d->fd, 0);
		EXPECT_THAT(p == MAP_FAILED, "%s: MAP_PRIVATE mapping of VRAM succeeded", d->bdf);
		if (p != MAP_FAILED)
			munmap(p, 4096);
	}
}

TEST_F_TIMEOUT(smoke, vram_window_index, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t vram = d->info.vram_size, x = 0x2000;
		uint32_t known[4] = { 0x11223344, 0x55667788, 0x99aabbcc, 0xddeeff00 };
		uint32_t v = 0, lo = 0, hi = 0, st = 0, last_before = 0, last_after = 0;
		unsigned int i;

		ASSERT_THAT(!vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WRITE, x, known, sizeof(known)),
			    "%s: VRAM_WRITE: %s", d->bdf, strerror(errno));
		/* Auto-increment: three reads advance the index by 12. */
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_HI, 0);
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, (uint32_t)x);
		for (i = 0; i < 3; i++) {
			vugpu_reg_read(d->fd, VUGPU_REG_VRAM_DATA, &v);
			EXPECT_THAT(v == known[i], "%s: VRAM_DATA read %u = %#x, expected %#x", d->bdf,
				    i, v, known[i]);
		}
		vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_LO, &lo);
		EXPECT_THAT(lo == x + 12, "%s: VRAM_INDEX %#x after 3 reads from %#llx", d->bdf, lo,
			    (unsigned long long)x);
		/* Bits 1:0 of the index are ignored. */
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, (uint32_t)x + 4 + 3);
		vugpu_reg_read(d->fd, VUGPU_REG_VRAM_DATA, &v);
		EXPECT_THAT(v == known[1], "%s: VRAM_INDEX %#llx (bits 1:0 set) read %#x, expected %#x",
			    d->bdf, (unsigned long long)x + 7, v, known[1]);

		/* Out of range: reads all ones, does not advance, sets STATUS bit 1. */
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &st);
		EXPECT_THAT(!(st & VUGPU_STATUS_VRAM_INDEX_ERR), "%s: VRAM_INDEX_ERR already set",
			    d->bdf);
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_HI, (uint32_t)(vram >> 32));
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, (uint32_t)vram);
		v = 0;
		vugpu_reg_read(d->fd, VUGPU_REG_VRAM_DATA, &v);
		EXPECT_THAT(v == VUGPU_VRAM_DATA_BAD, "%s: VRAM_DATA at VRAM size reads %#x", d->bdf,
			    v);
		vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_LO, &lo);
		vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_HI, &hi);
		EXPECT_THAT(((uint64_t)hi << 32 | lo) == vram,
			    "%s: out-of-range VRAM_DATA read advanced VRAM_INDEX to %#llx", d->bdf,
			    (unsigned long long)((uint64_t)hi << 32 | lo));
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &st);
		EXPECT_THAT(st == (VUGPU_STATUS_READY | VUGPU_STATUS_VRAM_INDEX_ERR),
			    "%s: STATUS %#x after an out-of-range read, expected %#x", d->bdf, st,
			    VUGPU_STATUS_READY | VUGPU_STATUS_VRAM_INDEX_ERR);
		vugpu_reg_write(d->fd, VUGPU_REG_STATUS, VUGPU_STATUS_VRAM_INDEX_ERR);	/* W1C */
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &st);
		EXPECT_THAT(st == VUGPU_STATUS_READY, "%s: STATUS %#x after W1C of bit 1", d->bdf,
			    st);

		/* Out-of-range write: dropped, flagged; the last dword of VRAM is untouched. */
		vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, vram - 4, &last_before, 4);
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_DATA, ~last_before);
		vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &st);
		EXPECT_THAT(st & VUGPU_STATUS_VRAM_INDEX_ERR,
			    "%s: STATUS %#x after an out-of-range VRAM_DATA write", d->bdf, st);
		vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, vram - 4, &last_after, 4);
		EXPECT_THAT(last_after == last_before,
			    "%s: out-of-range VRAM_DATA write changed the last dword %#x -> %#x", d->bdf,
			    last_before, last_after);
		vugpu_reg_write(d->fd, VUGPU_REG_STATUS, VUGPU_STATUS_VRAM_INDEX_ERR);

		/* A high index far past VRAM (bit 32 of the index). */
		if (vram <= 0xffffffffULL) {
			vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_HI, 1);
			vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, 0);
			vugpu_reg_read(d->fd, VUGPU_REG_VRAM_DATA, &v);
			vugpu_reg_read(d->fd, VUGPU_REG_STATUS, &st);
			EXPECT_THAT(v == VUGPU_VRAM_DATA_BAD && (st & VUGPU_STATUS_VRAM_INDEX_ERR),
				    "%s: VRAM_INDEX 4 GiB: data %#x STATUS %#x", d->bdf, v, st);
			vugpu_reg_write(d->fd, VUGPU_REG_STATUS, VUGPU_STATUS_VRAM_INDEX_ERR);
		}
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_HI, 0);
		vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, 0);
	}
}

/* The driver's own input validation (its ioctl ABI, not the device). */
TEST_F_TIMEOUT(smoke, ioctl_validation, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t buf[64];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t bar = d->info.bar2_size;
		struct vugpu_cmd c;
		uint32_t v;
		struct {
			const char *what;
			int got, want;
		} cases[] = {
			{ "REG_READ misaligned", vugpu_reg_read(d->fd, 2, &v), -EINVAL },
			{ "REG_READ past register file", vugpu_reg_read(d->fd, VUGPU_REGFILE_SIZE, &v),
			  -EINVAL },
			{ "REG_READ MSI-X table", vugpu_reg_read(d->fd, VUGPU_MSIX_TABLE_OFFSET, &v),
			  -EINVAL },
			{ "VRAM_READ size 0", vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, 0, buf, 0),
			  -EINVAL },
			{ "VRAM_READ at BAR end",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, bar, buf, 4), -ERANGE },
			{ "VRAM_READ straddling BAR end",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, bar - 4, buf, 8), -ERANGE },
			{ "VRAM_WRITE huge offset",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WRITE, ~0ULL - 2, buf, 8), -ERANGE },
			{ "VRAM_WINDOW_READ misaligned",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, 2, buf, 4), -EINVAL },
			{ "VRAM_WINDOW_READ odd size",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, 0, buf, 6), -EINVAL },
			{ "VRAM_WINDOW_WRITE past VRAM",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_WRITE, d->info.vram_size, buf, 4),
			  -ERANGE },
			{ "VRAM_READ over VUGPU_MAX_XFER",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, 0, buf, VUGPU_MAX_XFER + 1ULL),
			  -E2BIG },
			{ "VRAM_READ bad user pointer",
			  vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, 0, (void *)16, 4), -EFAULT },
		};
		unsigned int i;
		int ret;

		for (i = 0; i < ARRAY_SIZE(cases); i++)
			EXPECT_THAT(cases[i].got == cases[i].want, "%s: %s returned %d, expected %d",
				    d->bdf, cases[i].what, cases[i].got, cases[i].want);

		memset(&c, 0, sizeof(c));
		c.offset = VUGPU_REG_SCRATCH0;
		c.value = 0x100000000ULL;
		ret = vugpu_cmd(d->fd, VUGPU_IOCTL_REG_WRITE, &c);
		EXPECT_THAT(ret == -EINVAL, "%s: REG_WRITE of a 33-bit value returned %d", d->bdf, ret);
		ret = vugpu_irq_test(d->fd, d->info.num_vectors, &c);
		EXPECT_THAT(ret == -EINVAL, "%s: IRQ_TEST vector %u returned %d", d->bdf,
			    d->info.num_vectors, ret);
		memset(&c, 0, sizeof(c));
		c.ptr = (uintptr_t)buf;
		c.size = 8;
		ret = vugpu_cmd(d->fd, VUGPU_IOCTL_GET_INFO, &c);
		EXPECT_THAT(ret == -EINVAL, "%s: GET_INFO into 8 bytes returned %d", d->bdf, ret);
		ret = vugpu_cmd(d->fd, _IOWR('V', 0x7f, struct vugpu_cmd), &c);
		EXPECT_THAT(ret == -ENOTTY, "%s: unknown ioctl returned %d", d->bdf, ret);
	}
}
