/* SPDX-License-Identifier: GPL-2.0 */
/*
 * smoke.h - shared state and helpers of vugpu-smoke's test cases.
 *
 * The cases live in smoke_enum.c (a: enumeration), smoke_mem.c (b, c:
 * registers and VRAM) and smoke_reset.c (d, e, f: interrupts, resets,
 * binding, module, kernel log), which vugpu-smoke.c #includes after its
 * fixture (a kselftest harness program is one translation unit); they run
 * in that order, each in a process of its own.
 */
#ifndef VUGPU_SMOKE_H
#define VUGPU_SMOKE_H

#include <stdint.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"

#define MIB		(1ULL << 20)
#define XFER		4096	/* bytes moved per VRAM check */
#define WIN_XFER	1024	/* window transfers: each dword is a trapped access */
#define OPEN_WAIT_MS	3000	/* after bind / insmod */
/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 300 s boot timeout, so a hung test costs its own
 * result only; the slowest took 0.3 s here (TCG).
 */
#define SMOKE_TIMEOUT	60

/*
 * Per-GPU values the server was configured with (--vram-mib 512,128 ...),
 * in BDF order; n == 0: not checked.
 */
struct smoke_expect {
	unsigned int n;
	unsigned long long v[VUGPU_MAX_DEVS];
};

struct smoke {
	unsigned int vendor, device, subsys_vendor, subsys_device;
	struct smoke_expect vram_mib, msix_vectors, serial;
	const char *module_path;
	struct vugpu_dev devs[VUGPU_MAX_DEVS];
	int ndevs;		/* < 0: -errno from discovery */
	/*
	 * Vectors msix_all_vectors found dead, per device: later tests check
	 * that interrupts still work with live vectors only, so one dead vector
	 * fails one test instead of every test after it.  Shared (MAP_SHARED)
	 * by every test process: the only state a test leaves for later ones.
	 */
	uint8_t (*dead_vectors)[VUGPU_MSIX_MAX_VECTORS / 8];
};

#define for_each_dev(s, d) for ((d) = (s)->devs; (d) < (s)->devs + (s)->ndevs; (d)++)

/* Every test needs at least one function; most need the driver bound too. */
#define REQUIRE_DEVS(s)								\
	do {									\
		if ((s)->ndevs <= 0)						\
			SKIP_TEST("no vugpu function %04x:%04x found",		\
				  (s)->vendor, (s)->device);			\
	} while (0)

#define REQUIRE_BOUND(s)							\
	do {									\
		struct vugpu_dev *__d;						\
		REQUIRE_DEVS(s);						\
		for_each_dev(s, __d)						\
			if (__d->fd < 0)					\
				SKIP_TEST("%s: no open /dev/vugpuN (driver not bound)", \
					  __d->bdf);				\
	} while (0)

/*
 * Checks device @d (index @i in BDF order) against @e's value: true when @e
 * is unset or its value is @got.
 */
#define EXPECT_CONFIGURED(s, e, i, got, what)					\
	EXPECT_THAT(!(e)->n || ((unsigned int)(i) < (e)->n &&		\
		    (unsigned long long)(got) == (e)->v[i]),			\
		    "%s (GPU %d of %d): %s %llu (%#llx), configured %llu",		\
		    (s)->devs[i].bdf, (int)(i), (s)->ndevs, what,			\
		    (unsigned long long)(got), (unsigned long long)(got),		\
		    (unsigned int)(i) < (e)->n ? (e)->v[i] : 0ULL)

/* vugpu-smoke.c */
const char *err_str(int ret);
uint64_t bar_size(const struct vugpu_dev *d, unsigned int bar);
unsigned int ilog2_u64(uint64_t v);
uint64_t reg_vram_size(int fd, int *ret);
/* IRQ_TEST's error as text ("no interrupt ..." for a timeout). */
const char *irq_err_str(int ret);
/* First (or last) vector of @d not known to be dead; -1 if none. */
int live_vector(const struct smoke *s, const struct vugpu_dev *d, bool last);
/* Reads a dword from a mapping; 0, or the signal number if the access faulted. */
int probe_read(volatile uint32_t *p, uint32_t *val);

#endif /* VUGPU_SMOKE_H */
