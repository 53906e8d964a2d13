// SPDX-License-Identifier: GPL-2.0
/* vugpu-smoke cases: (d) interrupts, (e) resets, (f) binding/module/log.  See vugpu-smoke.c. */
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

/* ---- (d) interrupts ------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

TEST_F_TIMEOUT(smoke, msix_all_vectors, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		unsigned int n = d->info.num_vectors, v, fired = 0;
		uint32_t cnt0 = 0, cnt1 = 0, st = 0;
		uint64_t *lat;

		lat = calloc(n ? n : 1, sizeof(*lat));
		ASSERT_THAT(lat, "out of memory");
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_COUNT, &cnt0);
		for (v = 0; v < n; v++) {
			struct vugpu_cmd c;
			int ret = vugpu_irq_test(d->fd, v, &c);

			if (ret) {
				EXPECT_THAT(0, "%s: MSI-X vector %u never fired: %s", d->bdf, v,
					    irq_err_str(ret));
				if (v < VUGPU_MSIX_MAX_VECTORS)
					s->dead_vectors[d - s->devs][v / 8] |= 1u << (v % 8);
				continue;
			}
			lat[fired++] = c.elapsed_ns;
			if (v < VUGPU_IRQ_STATUS_VECTORS)
				EXPECT_THAT(c.value & (1u << v),
					    "%s: vector %u handler saw IRQ_STATUS %#llx without bit %u",
					    d->bdf, v, (unsigned long long)c.value, v);
		}
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_COUNT, &cnt1);
		EXPECT_THAT(cnt1 - cnt0 == fired,
			    "%s: IRQ_COUNT went %u -> %u for %u delivered interrupts", d->bdf, cnt0,
			    cnt1, fired);
		vugpu_reg_read(d->fd, VUGPU_REG_IRQ_STATUS, &st);
		EXPECT_THAT(st == 0, "%s: IRQ_STATUS %#x left set after the test (bits no handler acked)", d->bdf,
			    st);
		if (fired) {
			qsort(lat, fired, sizeof(*lat), cmp_u64);
			diag("%s: %u/%u vectors fired; trigger->handler min %llu us median %llu us max %llu us",
				  d->bdf, fired, n, (unsigned long long)lat[0] / 1000,
				  (unsigned long long)lat[fired / 2] / 1000,
				  (unsigned long long)lat[fired - 1] / 1000);
		}
		free(lat);
	}
}

/* ---- (e) resets ----------------------------------------------------- */

static void check_reset_regs(struct __test_metadata *_metadata, const struct vugpu_dev *d, const char *what,
			     const struct vugpu_regs *r)
{
	unsigned int i;

	EXPECT_THAT(r->id == VUGPU_ID_VALUE && r->version == d->info.version,
		    "%s: after %s ID %#x VERSION %#x (was %#x)", d->bdf, what, r->id, r->version,
		    d->info.version);
	EXPECT_THAT(r->status == VUGPU_STATUS_READY, "%s: after %s STATUS %#x, expected READY",
		    d->bdf, what, r->status);
	for (i = 0; i < VUGPU_NUM_SCRATCH; i++)
		EXPECT_THAT(r->scratch[i] == 0, "%s: after %s SCRATCH%u = %#x, expected 0", d->bdf,
			    what, i, r->scratch[i]);
	EXPECT_THAT(r->vram_index_lo == 0 && r->vram_index_hi == 0,
		    "%s: after %s VRAM_INDEX %#x:%#x, expected 0", d->bdf, what, r->vram_index_hi,
		    r->vram_index_lo);
	EXPECT_THAT(r->err_cause == 0, "%s: after %s ERR_CAUSE %#x, expected 0", d->bdf, what,
		    r->err_cause);
	EXPECT_THAT(r->irq_status == 0 && r->irq_count == 0,
		    "%s: after %s IRQ_STATUS %#x IRQ_COUNT %u, expected 0", d->bdf, what,
		    r->irq_status, r->irq_count);
	EXPECT_THAT(r->num_vectors == d->info.num_vectors &&
		    ((uint64_t)r->vram_size_hi << 32 | r->vram_size_lo) == d->info.vram_size,
		    "%s: after %s NUM_VECTORS %u VRAM_SIZE %#x:%#x changed", d->bdf, what,
		    r->num_vectors, r->vram_size_hi, r->vram_size_lo);
}

/* Dirty every resettable register and leave a VRAM pattern, for a reset test. */
static int dirty_device(const struct smoke *s, struct vugpu_dev *d, uint8_t *pattern, size_t len,
			uint64_t off)
{
	int v = live_vector(s, d, false);
	struct vugpu_cmd c;
	unsigned int i;
	int ret = 0;

	for (i = 0; i < VUGPU_NUM_SCRATCH && !ret; i++)
		ret = vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH(i), 0xc0de0000u | i);
	if (!ret)
		ret = vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_LO, 0x1000);
	if (!ret)
		ret = vugpu_reg_write(d->fd, VUGPU_REG_VRAM_INDEX_HI, 0);
	/* An interrupt so IRQ_COUNT is non-zero. */
	if (!ret && v >= 0)
		ret = vugpu_irq_test(d->fd, (unsigned int)v, &c);
	if (!ret) {
		vugpu_fill_pattern(pattern, len, off ^ 0xf1f1);
		ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WRITE, off, pattern, len);
	}
	return ret;
}

/* Interrupts still work on the first and last live vector. */
static void check_irqs(struct __test_metadata *_metadata, const struct smoke *s, struct vugpu_dev *d,
		       const char *when)
{
	int first = live_vector(s, d, false), last = live_vector(s, d, true), ret;
	struct vugpu_cmd c;

	if (first < 0) {
		diag("%s: no live MSI-X vector left to check %s", d->bdf, when);
		return;
	}
	ret = vugpu_irq_test(d->fd, (unsigned int)first, &c);
	EXPECT_THAT(!ret, "%s: vector %d %s: %s", d->bdf, first, when, irq_err_str(ret));
	if (last != first) {
		ret = vugpu_irq_test(d->fd, (unsigned int)last, &c);
		EXPECT_THAT(!ret, "%s: vector %d %s: %s", d->bdf, last, when, irq_err_str(ret));
	}
}

static void check_after_reset(struct __test_metadata *_metadata, const struct smoke *s, struct vugpu_dev *d,
			      const char *what, const uint8_t *pattern, size_t len, uint64_t off)
{
	char when[64];
	uint8_t rd[XFER];
	uint32_t v = 1;
	int ret;

	/* hw-spec §4: VRAM is preserved across every reset. */
	ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_READ, off, rd, len);
	EXPECT_THAT(!ret && vugpu_first_diff(pattern, rd, len) < 0,
		    "%s: VRAM at %#llx not preserved across %s through the BAR (%s)", d->bdf,
		    (unsigned long long)off, what, ret ? err_str(ret) : "data differs");
	ret = vugpu_vram_io(d->fd, VUGPU_IOCTL_VRAM_WINDOW_READ, off, rd, WIN_XFER);
	EXPECT_THAT(!ret && vugpu_first_diff(pattern, rd, WIN_XFER) < 0,
		    "%s: VRAM at %#llx not preserved across %s through VRAM_DATA (%s)", d->bdf,
		    (unsigned long long)off, what, ret ? err_str(ret) : "data differs");
	/* Registers read 0 now, and the device still works. */
	EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH0, &v) && v == 0,
		    "%s: SCRATCH0 %#x after %s", d->bdf, v, what);
	EXPECT_THAT(!vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH0, 0x600df00d) &&
		    !vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH0, &v) && v == 0x600df00d,
		    "%s: SCRATCH0 not writable after %s (%#x)", d->bdf, what, v);
	vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH0, 0);
	snprintf(when, sizeof(when), "after %s", what);
	check_irqs(_metadata, s, d, when);
}

TEST_F_TIMEOUT(smoke, flr, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t pattern[XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t off = d->info.bar2_size / 4, ns = 0;
		struct vugpu_regs r;
		char path[200], methods[128] = "";
		int ret;

		snprintf(path, sizeof(path), "%s/reset_method", d->sysfs);
		vugpu_read_file(path, methods, sizeof(methods));
		EXPECT_THAT(strstr(methods, "flr") != NULL,
			    "%s: kernel reset methods '%s' do not include flr", d->bdf, methods);
		ret = dirty_device(s, d, pattern, sizeof(pattern), off);
		ASSERT_THAT(!ret, "%s: preparing the device: %s", d->bdf, err_str(ret));
		ret = vugpu_reset(d->fd, VUGPU_IOCTL_FLR, &r, &ns);
		ASSERT_THAT(!ret, "%s: FLR failed: %s", d->bdf, err_str(ret));
		diag("%s: FLR took %llu us (pci_reset_function)", d->bdf,
			  (unsigned long long)ns / 1000);
		check_reset_regs(_metadata, d, "FLR", &r);
		EXPECT_THAT((r.pci_command & 0x6) == 0x6,
			    "%s: Command %#x after FLR: memory/bus master not restored", d->bdf,
			    r.pci_command);
		check_after_reset(_metadata, s, d, "FLR", pattern, sizeof(pattern), off);
	}
}

/*
 * A reset the driver did not start (sysfs "reset", as an admin or vfio
 * would): the driver's reset_prepare/reset_done hooks must quiesce and
 * restore it while a file stays open.
 */
TEST_F_TIMEOUT(smoke, sysfs_reset, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t pattern[XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t off = d->info.bar2_size / 4 + 2 * XFER, start;
		char path[200];
		uint32_t v = 1, lo = 1;
		int ret;

		ret = dirty_device(s, d, pattern, sizeof(pattern), off);
		ASSERT_THAT(!ret, "%s: preparing the device: %s", d->bdf, err_str(ret));
		snprintf(path, sizeof(path), "%s/reset", d->sysfs);
		start = vugpu_now_ns();
		ret = vugpu_write_file(path, "1");
		ASSERT_THAT(!ret, "%s: writing %s: %s", d->bdf, path, err_str(ret));
		diag("%s: sysfs reset took %llu us", d->bdf,
			  (unsigned long long)(vugpu_now_ns() - start) / 1000);
		EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH3, &v) && v == 0,
			    "%s: SCRATCH3 %#x after sysfs reset", d->bdf, v);
		EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_VRAM_INDEX_LO, &lo) && lo == 0,
			    "%s: VRAM_INDEX_LO %#x after sysfs reset", d->bdf, lo);
		check_after_reset(_metadata, s, d, "sysfs reset", pattern, sizeof(pattern), off);
	}
}

TEST_F_TIMEOUT(smoke, soft_reset, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	uint8_t pattern[XFER];

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		uint64_t off = d->info.bar2_size / 4 + XFER, ns = 0;
		struct vugpu_regs r;
		uint32_t v = 0;
		unsigned int pcie = vugpu_find_cap(d, 0x10);
		uint16_t cmd_before, devctl_before;
		int ret;

		ret = dirty_device(s, d, pattern, sizeof(pattern), off);
		ASSERT_THAT(!ret, "%s: preparing the device: %s", d->bdf, err_str(ret));
		/* A wrong magic value is ignored. */
		vugpu_reg_write(d->fd, VUGPU_REG_SOFT_RESET, VUGPU_SOFT_RESET_MAGIC ^ 1);
		vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH1, &v);
		EXPECT_THAT(v == (0xc0de0000u | 1),
			    "%s: SOFT_RESET with a wrong value reset SCRATCH1 (%#x)", d->bdf, v);

		ASSERT_THAT(!vugpu_read_config(d), "%s: config: %s", d->bdf, strerror(errno));
		cmd_before = vugpu_cfg16(d, 0x04);
		devctl_before = pcie ? vugpu_cfg16(d, pcie + 8) : 0;
		ret = vugpu_reset(d->fd, VUGPU_IOCTL_SOFT_RESET, &r, &ns);
		ASSERT_THAT(!ret, "%s: SOFT_RESET failed: %s", d->bdf, err_str(ret));
		diag("%s: SOFT_RESET took %llu us", d->bdf, (unsigned long long)ns / 1000);
		check_reset_regs(_metadata, d, "SOFT_RESET", &r);
		/* Config space is kept (the kernel restores nothing here). */
		EXPECT_THAT(r.pci_command == cmd_before, "%s: Command %#x -> %#x across SOFT_RESET",
			    d->bdf, cmd_before, r.pci_command);
		EXPECT_THAT(r.pci_devctl == devctl_before,
			    "%s: DevCtl %#x -> %#x across SOFT_RESET", d->bdf, devctl_before,
			    r.pci_devctl);
		check_after_reset(_metadata, s, d, "SOFT_RESET", pattern, sizeof(pattern), off);
	}
}

/* ---- (f) binding, module, log ----------------------------------------- */

/* Scratch write/read and one interrupt: the device is usable. */
static void check_alive(struct __test_metadata *_metadata, const struct smoke *s, struct vugpu_dev *d,
			const char *when)
{
	uint32_t v = 0, id = 0;

	EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_ID, &id) && id == VUGPU_ID_VALUE,
		    "%s: ID %#x %s", d->bdf, id, when);
	EXPECT_THAT(!vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH2, 0x5ca1ab1e) &&
		    !vugpu_reg_read(d->fd, VUGPU_REG_SCRATCH2, &v) && v == 0x5ca1ab1e,
		    "%s: SCRATCH2 read %#x %s", d->bdf, v, when);
	vugpu_reg_write(d->fd, VUGPU_REG_SCRATCH2, 0);
	check_irqs(_metadata, s, d, when);
}

TEST_F_TIMEOUT(smoke, unbind_rebind, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_BOUND(s);
	for_each_dev(s, d) {
		char drv[64] = "x", node[64];
		size_t len = 4096;
		void *p;
		uint32_t v;
		int ret, sig;

		/* Keep the file open and a VRAM mapping alive across the unbind. */
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
		ASSERT_THAT(p != MAP_FAILED, "%s: mmap: %s", d->bdf, strerror(errno));
		snprintf(node, sizeof(node), "%s", d->devnode);
		ret = vugpu_unbind(d);
		if (ret) {
			munmap(p, len);
			ASSERT_THAT(0, "%s: unbind: %s", d->bdf, err_str(ret));
		}
		vugpu_bound_driver(d, drv, sizeof(drv));
		EXPECT_THAT(drv[0] == '\0', "%s: still bound to '%s' after unbind", d->bdf, drv);
		EXPECT_THAT(!vugpu_path_exists(node), "%s: %s still exists after unbind", d->bdf,
			    node);
		ret = vugpu_reg_read(d->fd, VUGPU_REG_ID, &v);
		EXPECT_THAT(ret == -ENODEV, "%s: REG_READ on a file of an unbound device returned %d",
			    d->bdf, ret);
		sig = probe_read(p, &v);
		EXPECT_THAT(sig == SIGBUS,
			    "%s: VRAM mapping still usable after unbind (signal %d, expected SIGBUS)",
			    d->bdf, sig);
		munmap(p, len);
		vugpu_close(d);

		ret = vugpu_bind(d);
		ASSERT_THAT(!ret, "%s: bind: %s", d->bdf, err_str(ret));
		ret = vugpu_open(d, OPEN_WAIT_MS);
		ASSERT_THAT(!ret, "%s: no usable /dev/vugpuN after bind: %s", d->bdf, err_str(ret));
		check_alive(_metadata, s, d, "after unbind/bind");
	}
}

TEST_F_TIMEOUT(smoke, module_reload, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	char params[96], vend[32] = "", dev[32] = "";
	int ret;

	REQUIRE_BOUND(s);
	if (!vugpu_path_exists(s->module_path))
		SKIP_TEST("module file %s not present", s->module_path);
	if (!vugpu_path_exists("/sys/module/" VUGPU_MODULE_NAME "/initstate"))
		SKIP_TEST("vugpu is built into the kernel, cannot unload");
	/* Reload with the same ID parameters it was loaded with. */
	vugpu_read_file("/sys/module/vugpu/parameters/vendor", vend, sizeof(vend));
	vugpu_read_file("/sys/module/vugpu/parameters/device", dev, sizeof(dev));
	snprintf(params, sizeof(params), "%s%s %s%s", vend[0] ? "vendor=" : "", vend,
		 dev[0] ? "device=" : "", dev);

	for_each_dev(s, d)
		vugpu_close(d);
	ret = vugpu_module_unload();
	ASSERT_THAT(!ret, "rmmod vugpu: %s", err_str(ret));
	EXPECT_THAT(!vugpu_module_loaded(), "/sys/module/vugpu still present after rmmod");
	EXPECT_THAT(!vugpu_path_exists(VUGPU_SYSFS_DRIVER),
		    "%s still present after rmmod", VUGPU_SYSFS_DRIVER);
	for_each_dev(s, d) {
		char drv[64] = "x";

		vugpu_bound_driver(d, drv, sizeof(drv));
		EXPECT_THAT(drv[0] == '\0', "%s: bound to '%s' after rmmod", d->bdf, drv);
	}

	ret = vugpu_module_load(s->module_path, params);
	ASSERT_THAT(!ret, "insmod %s %s: %s", s->module_path, params, err_str(ret));
	for_each_dev(s, d) {
		ret = vugpu_open(d, OPEN_WAIT_MS);
		EXPECT_THAT(!ret, "%s: no usable /dev/vugpuN after insmod: %s", d->bdf,
			    err_str(ret));
		if (!ret)
			check_alive(_metadata, s, d, "after rmmod/insmod");
	}
}

TEST_F_TIMEOUT(smoke, dmesg_clean, SMOKE_TIMEOUT)
{
	char lines[2048];
	int n;

	n = vugpu_dmesg_problems(lines, sizeof(lines));
	if (n == -EPERM)
		SKIP_TEST("cannot read the kernel log: %s", err_str(n));
	ASSERT_THAT(n >= 0, "reading the kernel log: %s", err_str(n));
	if (n > 0)
		diag("%s", lines);
	EXPECT_THAT(n == 0, "%d WARNING/BUG/Oops lines in the kernel log", n);
}
