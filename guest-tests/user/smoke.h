/* SPDX-License-Identifier: GPL-2.0 */
/*
 * smoke.h - shared state and helpers of vugpu-smoke's test cases.
 *
 * The cases live in smoke_enum.c (a: enumeration), smoke_mem.c (b, c:
 * registers and VRAM) and smoke_reset.c (d, e, f: interrupts, resets,
 * binding, module, kernel log); vugpu-smoke.c lists and runs them.
 */
#ifndef VUGPU_SMOKE_H
#define VUGPU_SMOKE_H

#include <stdint.h>

#include "ktap.h"
#include "vugpu_lib.h"

#define MIB		(1ULL << 20)
#define XFER		4096	/* bytes moved per VRAM check */
#define WIN_XFER	1024	/* window transfers: each dword is a trapped access */
#define OPEN_WAIT_MS	3000	/* after bind / insmod */

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
	 * fails one test instead of every test after it.
	 */
	uint8_t dead_vectors[VUGPU_MAX_DEVS][VUGPU_MSIX_MAX_VECTORS / 8];
};

#define for_each_dev(s, d) for ((d) = (s)->devs; (d) < (s)->devs + (s)->ndevs; (d)++)

/* Every test needs at least one function; most need the driver bound too. */
#define REQUIRE_DEVS(t, s)							\
	do {									\
		if ((s)->ndevs <= 0)						\
			KTAP_SKIP(t, "no vugpu function %04x:%04x found",	\
				  (s)->vendor, (s)->device);			\
	} while (0)

#define REQUIRE_BOUND(t, s)							\
	do {									\
		struct vugpu_dev *__d;						\
		REQUIRE_DEVS(t, s);						\
		for_each_dev(s, __d)						\
			if (__d->fd < 0)					\
				KTAP_SKIP(t, "%s: no open /dev/vugpuN (driver not bound)", \
					  __d->bdf);				\
	} while (0)

/*
 * Checks device @d (index @i in BDF order) against @e's value: true when @e
 * is unset or its value is @got.
 */
#define EXPECT_CONFIGURED(t, s, e, i, got, what)				\
	KTAP_EXPECT(t, !(e)->n || ((unsigned int)(i) < (e)->n &&		\
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

/* smoke_enum.c: (a) enumeration */
void pci_enumeration(struct ktap_test *t, void *ctx);
void config_header(struct ktap_test *t, void *ctx);
void cap_power_management(struct ktap_test *t, void *ctx);
void cap_msix(struct ktap_test *t, void *ctx);
void cap_pcie(struct ktap_test *t, void *ctx);
void cap_aer(struct ktap_test *t, void *ctx);
void cap_resizable_bar(struct ktap_test *t, void *ctx);
void cap_device_serial_number(struct ktap_test *t, void *ctx);
void bar_layout(struct ktap_test *t, void *ctx);
void driver_binding(struct ktap_test *t, void *ctx);

/* smoke_mem.c: (b) registers, (c) VRAM */
void regs_identity(struct ktap_test *t, void *ctx);
void regs_engine_info(struct ktap_test *t, void *ctx);
void regs_vram_size(struct ktap_test *t, void *ctx);
void regs_scratch(struct ktap_test *t, void *ctx);
void regs_access_types(struct ktap_test *t, void *ctx);
void vram_bar_to_window(struct ktap_test *t, void *ctx);
void vram_window_to_bar(struct ktap_test *t, void *ctx);
void vram_mmap(struct ktap_test *t, void *ctx);
void vram_window_index(struct ktap_test *t, void *ctx);
void ioctl_validation(struct ktap_test *t, void *ctx);

/* smoke_reset.c: (d) interrupts, (e) resets, (f) binding/module/log */
void msix_all_vectors(struct ktap_test *t, void *ctx);
void flr(struct ktap_test *t, void *ctx);
void sysfs_reset(struct ktap_test *t, void *ctx);
void soft_reset(struct ktap_test *t, void *ctx);
void unbind_rebind(struct ktap_test *t, void *ctx);
void module_reload(struct ktap_test *t, void *ctx);
void dmesg_clean(struct ktap_test *t, void *ctx);

#endif /* VUGPU_SMOKE_H */
