// SPDX-License-Identifier: GPL-2.0
/* vugpu-smoke cases: (a) enumeration.  See vugpu-smoke.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "smoke.h"

/* ---- (a) enumeration --------------------------------------------------- */

/*
 * Registers the OS may write (guest-tests/README.md, "What guest tests may
 * assert") are checked by what the device does with a write, never by their
 * value: write the current value with the bits of @flip inverted, read back,
 * expect exactly the writable bits @rw of @flip to have changed, then write
 * the OS's value back and check it is back.  @rw 0 checks that a register
 * (or the bits of it in @flip) ignores writes.
 *
 * W1C registers (@w1c): the write inverts every bit, so it writes 1 only to
 * bits that are clear and 0 to bits that are set: nothing may change (W1C
 * bits cannot be set by software, and a 0 does not clear them), and nothing
 * is written back (that would clear what the device reported).
 */
static bool cfg_write_check(struct __test_metadata *_metadata, const struct vugpu_dev *d, const char *name,
			    unsigned int off, unsigned int width, uint32_t rw, uint32_t flip,
			    bool w1c)
{
	uint32_t all = width == 4 ? 0xffffffffu : (1u << (8 * width)) - 1;
	uint32_t orig = 0, got = 0, back = 0, want;
	int ret, rret = 0;

	ret = vugpu_config_read(d, off, width, &orig);
	EXPECT_THAT(!ret, "%s: reading %s at %#x: %s", d->bdf, name, off, err_str(ret));
	if (ret)
		return false;
	flip &= all;
	want = orig ^ (flip & rw);
	ret = vugpu_config_write(d, off, width, orig ^ flip);
	if (!ret)
		ret = vugpu_config_read(d, off, width, &got);
	if (got != orig && !w1c) {
		rret = vugpu_config_write(d, off, width, orig);
		if (!rret)
			rret = vugpu_config_read(d, off, width, &back);
		EXPECT_THAT(!rret && back == orig, "%s: %s (%#x): restoring %#x read %#x %s",
			    d->bdf, name, off, orig, back, rret ? err_str(rret) : "");
	}
	EXPECT_THAT(!ret && got == want,
		    "%s: %s (%#x): wrote %#x over %#x, read back %#x, expected %#x (writable bits %#x) %s",
		    d->bdf, name, off, orig ^ flip, orig, got, want, rw, ret ? err_str(ret) : "");
	return !ret && !rret && got == want;
}

/* Every bit of a RO or W1C register ignores a write of its inverse. */
static bool cfg_ignores_writes(struct __test_metadata *_metadata, const struct vugpu_dev *d, const char *name,
			       unsigned int off, unsigned int width, bool w1c)
{
	return cfg_write_check(_metadata, d, name, off, width, 0, 0xffffffffu, w1c);
}

TEST_F_TIMEOUT(smoke, pci_enumeration, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	ASSERT_THAT(s->ndevs > 0, "no PCI function %04x:%04x in %s (%s)", s->vendor,
		    s->device, VUGPU_SYSFS_PCI, s->ndevs < 0 ? err_str(s->ndevs) : "none");
	for_each_dev(s, d) {
		unsigned long cls = 0, rev = 0, sv = 0, sd = 0;
		char p[256];

		snprintf(p, sizeof(p), "%s/class", d->sysfs);
		EXPECT_THAT(!vugpu_read_hex(p, &cls) && cls == VUGPU_PCI_CLASS,
			    "%s: class %#lx, expected %#x (3D controller)", d->bdf, cls,
			    VUGPU_PCI_CLASS);
		snprintf(p, sizeof(p), "%s/revision", d->sysfs);
		EXPECT_THAT(!vugpu_read_hex(p, &rev) && rev == VUGPU_PCI_REVISION,
			    "%s: revision %#lx, expected %#x", d->bdf, rev, VUGPU_PCI_REVISION);
		snprintf(p, sizeof(p), "%s/subsystem_vendor", d->sysfs);
		EXPECT_THAT(!vugpu_read_hex(p, &sv) && sv == s->subsys_vendor,
			    "%s: subsystem vendor %#lx, expected %#x", d->bdf, sv, s->subsys_vendor);
		snprintf(p, sizeof(p), "%s/subsystem_device", d->sysfs);
		EXPECT_THAT(!vugpu_read_hex(p, &sd) && sd == s->subsys_device,
			    "%s: subsystem device %#lx, expected %#x", d->bdf, sd, s->subsys_device);
		diag("%s: %04x:%04x class %06lx rev %02lx subsystem %04lx:%04lx", d->bdf,
			  s->vendor, s->device, cls, rev, sv, sd);
	}
}

TEST_F_TIMEOUT(smoke, config_header, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		ASSERT_THAT(d->config_len == VUGPU_CONFIG_SPACE_SIZE,
			    "%s: read %zu bytes of config space, expected %u (root? PCIe?)", d->bdf,
			    d->config_len, VUGPU_CONFIG_SPACE_SIZE);
		EXPECT_THAT(vugpu_cfg16(d, 0x00) == s->vendor && vugpu_cfg16(d, 0x02) == s->device,
			    "%s: config IDs %04x:%04x", d->bdf, vugpu_cfg16(d, 0), vugpu_cfg16(d, 2));
		EXPECT_THAT(vugpu_cfg8(d, 0x0e) == 0x00,
			    "%s: header type %#x, expected 0 (type 0, single function)", d->bdf,
			    vugpu_cfg8(d, 0x0e));
		EXPECT_THAT(vugpu_cfg16(d, 0x06) & 0x10, "%s: Status has no Capabilities List",
			    d->bdf);
		EXPECT_THAT(vugpu_cfg8(d, 0x34) == VUGPU_CAP_PM_OFFSET,
			    "%s: capabilities pointer %#x, expected %#x", d->bdf,
			    vugpu_cfg8(d, 0x34), VUGPU_CAP_PM_OFFSET);
		EXPECT_THAT(vugpu_cfg8(d, 0x3d) == 0,
			    "%s: Interrupt Pin %u, expected 0 (MSI-X only)", d->bdf,
			    vugpu_cfg8(d, 0x3d));
		/* Command: the kernel and the driver own the RW bits; the others are RO 0. */
		EXPECT_THAT((vugpu_cfg16(d, 0x04) & ~VUGPU_PCI_COMMAND_RW) == 0,
			    "%s: Command %#x has bits set outside the writable %#x (I/O Space?)",
			    d->bdf, vugpu_cfg16(d, 0x04), VUGPU_PCI_COMMAND_RW);
		cfg_write_check(_metadata, d, "Command", 0x04, 2, VUGPU_PCI_COMMAND_RW,
				(uint16_t)~VUGPU_PCI_COMMAND_RW, false);
		cfg_write_check(_metadata, d, "Cache Line Size", 0x0c, 1, VUGPU_PCI_CACHE_LINE_RW, 0xff,
				false);
		EXPECT_THAT(vugpu_cfg8(d, 0x0d) == 0,
			    "%s: Latency Timer %#x, expected RO 0 (PCIe)", d->bdf, vugpu_cfg8(d, 0x0d));
		cfg_ignores_writes(_metadata, d, "Latency Timer", 0x0d, 1, false);
		EXPECT_THAT(vugpu_cfg32(d, 0x30) == 0, "%s: Expansion ROM BAR %#x, expected 0",
			    d->bdf, vugpu_cfg32(d, 0x30));
		cfg_ignores_writes(_metadata, d, "Expansion ROM BAR", 0x30, 4, false);
	}
}

/*
 * PowerState: D1 and D2 are not supported, so writing them changes nothing;
 * D3hot can be entered and left (the state is stored only, and No_Soft_Reset
 * keeps the device as it was).  The kernel's state is written back at once;
 * nothing touches the BARs in between.
 */
static void pm_power_state_writes(struct __test_metadata *_metadata, const struct vugpu_dev *d,
				  unsigned int pmcsr)
{
	uint32_t orig = 0, v = 0, id = 0, state;
	int ret;

	ret = vugpu_config_read(d, pmcsr, 2, &orig);
	EXPECT_THAT(!ret, "%s: reading PMCSR: %s", d->bdf, err_str(ret));
	if (ret)
		return;
	for (state = 1; state <= 2; state++) {
		v = 0;
		if (!vugpu_config_write(d, pmcsr, 2, (orig & ~VUGPU_PMCSR_POWER_STATE) | state))
			vugpu_config_read(d, pmcsr, 2, &v);
		EXPECT_THAT(v == orig,
			    "%s: PMCSR %#x after writing D%u over %#x (unsupported: ignored)", d->bdf,
			    v, state, orig);
		if (v != orig)
			vugpu_config_write(d, pmcsr, 2, orig);
	}
	state = (orig & VUGPU_PMCSR_POWER_STATE) == 3 ? 0 : 3;
	v = 0;
	if (!vugpu_config_write(d, pmcsr, 2, (orig & ~VUGPU_PMCSR_POWER_STATE) | state))
		vugpu_config_read(d, pmcsr, 2, &v);
	vugpu_config_write(d, pmcsr, 2, orig);
	EXPECT_THAT((v & VUGPU_PMCSR_POWER_STATE) == state &&
		    (v & ~VUGPU_PMCSR_POWER_STATE) == (orig & ~VUGPU_PMCSR_POWER_STATE),
		    "%s: PMCSR %#x after writing D%u over %#x", d->bdf, v, state, orig);
	v = 0;
	vugpu_config_read(d, pmcsr, 2, &v);
	EXPECT_THAT(v == orig, "%s: PMCSR %#x after restoring %#x", d->bdf, v, orig);
	if (d->fd >= 0)
		EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_ID, &id) && id == VUGPU_ID_VALUE,
			    "%s: ID register %#x after D%u and back", d->bdf, id, state);
}

TEST_F_TIMEOUT(smoke, cap_power_management, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_cap(d, 0x01);
		uint16_t pmc, pmcsr;

		ASSERT_THAT(pos, "%s: no Power Management capability", d->bdf);
		EXPECT_THAT(pos == VUGPU_CAP_PM_OFFSET, "%s: PM capability at %#x, spec %#x",
			    d->bdf, pos, VUGPU_CAP_PM_OFFSET);
		pmc = vugpu_cfg16(d, pos + 2);
		pmcsr = vugpu_cfg16(d, pos + 4);
		EXPECT_THAT((pmc & 0x7) == 3, "%s: PMC version %u, expected 3", d->bdf, pmc & 7);
		EXPECT_THAT(!(pmc & (1 << 9)) && !(pmc & (1 << 10)),
			    "%s: PMC claims D1/D2 support (%#x)", d->bdf, pmc);
		EXPECT_THAT((pmc >> 11) == 0, "%s: PMC claims PME support (%#x)", d->bdf, pmc);
		cfg_ignores_writes(_metadata, d, "PMC", pos + 2, 2, false);
		/* The power state is the kernel's: only what a write of it does is checked. */
		EXPECT_THAT(pmcsr & VUGPU_PMCSR_NO_SOFT_RESET,
			    "%s: PMCSR No_Soft_Reset is 0 (%#x)", d->bdf, pmcsr);
		cfg_write_check(_metadata, d, "PMCSR (bits other than PowerState)", pos + 4, 2, 0,
				(uint16_t)~VUGPU_PMCSR_POWER_STATE, false);
		pm_power_state_writes(_metadata, d, pos + 4);
	}
}

TEST_F_TIMEOUT(smoke, cap_msix, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_cap(d, 0x11), size;
		uint32_t table, pba, nvec = 0;
		uint16_t ctrl;

		ASSERT_THAT(pos, "%s: no MSI-X capability", d->bdf);
		EXPECT_THAT(pos == VUGPU_CAP_MSIX_OFFSET, "%s: MSI-X capability at %#x, spec %#x",
			    d->bdf, pos, VUGPU_CAP_MSIX_OFFSET);
		ctrl = vugpu_cfg16(d, pos + 2);
		table = vugpu_cfg32(d, pos + 4);
		pba = vugpu_cfg32(d, pos + 8);
		size = (ctrl & 0x7ff) + 1;
		EXPECT_CONFIGURED(s, &s->msix_vectors, d - s->devs, size, "MSI-X table size");
		EXPECT_THAT((table & 7) == VUGPU_BAR_REGS && (table & ~7u) == VUGPU_MSIX_TABLE_OFFSET,
			    "%s: MSI-X table BIR %u offset %#x, expected BIR 0 offset %#x", d->bdf,
			    table & 7, table & ~7u, VUGPU_MSIX_TABLE_OFFSET);
		EXPECT_THAT((pba & 7) == VUGPU_BAR_REGS && (pba & ~7u) == VUGPU_MSIX_PBA_OFFSET,
			    "%s: MSI-X PBA BIR %u offset %#x, expected BIR 0 offset %#x", d->bdf,
			    pba & 7, pba & ~7u, VUGPU_MSIX_PBA_OFFSET);
		EXPECT_THAT(size <= VUGPU_MSIX_MAX_VECTORS, "%s: table size %u > %u", d->bdf, size,
			    VUGPU_MSIX_MAX_VECTORS);
		if (d->fd >= 0) {
			EXPECT_THAT(!vugpu_reg_read(d->fd, VUGPU_REG_NUM_VECTORS, &nvec) &&
				    nvec == size,
				    "%s: MSI-X table size %u but NUM_VECTORS register %u", d->bdf, size,
				    nvec);
			/* vugpu.ko allocated MSI-X vectors: this test's own driver set Enable. */
			EXPECT_THAT(ctrl & 0x8000, "%s: MSI-X not enabled with the driver bound (%#x)",
				    d->bdf, ctrl);
		}
		/*
		 * Function Mask is the kernel's (msix_all_vectors checks delivery);
		 * Table Size, Table and PBA are RO.
		 */
		cfg_write_check(_metadata, d, "MSI-X Message Control (Table Size)", pos + 2, 2,
				VUGPU_MSIX_CTRL_RW, (uint16_t)~VUGPU_MSIX_CTRL_RW, false);
		cfg_ignores_writes(_metadata, d, "MSI-X Table", pos + 4, 4, false);
		cfg_ignores_writes(_metadata, d, "MSI-X PBA", pos + 8, 4, false);
		diag("%s: MSI-X at %#x: %u vectors, table BAR%u+%#x, PBA BAR%u+%#x", d->bdf, pos,
			  size, table & 7, table & ~7u, pba & 7, pba & ~7u);
	}
}

/* True if the device sits on a root bus: its sysfs parent is the host bridge (pciDDDD:BB). */
static bool vugpu_on_root_bus(const struct vugpu_dev *d)
{
	char real[PATH_MAX], *slash;

	if (!realpath(d->sysfs, real))
		return false;
	slash = strrchr(real, '/');
	if (!slash)
		return false;
	*slash = '\0';
	slash = strrchr(real, '/');
	return slash && strncmp(slash + 1, "pci", 3) == 0;
}

TEST_F_TIMEOUT(smoke, cap_pcie, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_cap(d, 0x10);
		uint32_t devcap, lnkcap, devcap2, lnkcap2;
		uint16_t flags, devctl, lnksta;
		bool rciep;

		ASSERT_THAT(pos, "%s: no PCI Express capability", d->bdf);
		EXPECT_THAT(pos == VUGPU_CAP_EXP_OFFSET, "%s: PCIe capability at %#x, spec %#x",
			    d->bdf, pos, VUGPU_CAP_EXP_OFFSET);
		flags = vugpu_cfg16(d, pos + 0x02);
		devcap = vugpu_cfg32(d, pos + 0x04);
		devctl = vugpu_cfg16(d, pos + 0x08);
		lnkcap = vugpu_cfg32(d, pos + 0x0c);
		lnksta = vugpu_cfg16(d, pos + 0x12);
		devcap2 = vugpu_cfg32(d, pos + 0x24);
		lnkcap2 = vugpu_cfg32(d, pos + 0x2c);

		EXPECT_THAT((flags & 0xf) == 2, "%s: PCIe capability version %u, expected 2",
			    d->bdf, flags & 0xf);
		/*
		 * On a root bus (vugpu-vm --topology root-complex) QEMU's vfio-pci
		 * turns an Endpoint into a Root Complex Integrated Endpoint (type 9)
		 * and emulates its link registers as read-only 0
		 * (hw/vfio/pci.c vfio_setup_pcie_cap): there is no link.
		 */
		rciep = ((flags >> 4) & 0xf) == 9 && vugpu_on_root_bus(d);
		EXPECT_THAT(((flags >> 4) & 0xf) == 0 || rciep,
			    "%s: device/port type %u, expected 0 (Endpoint; 9 on a root bus)",
			    d->bdf, (flags >> 4) & 0xf);
		EXPECT_THAT((devcap & 0x7) == 1, "%s: Max_Payload_Size supported %u, expected 1 (256 B)",
			    d->bdf, devcap & 7);
		EXPECT_THAT(devcap & (1u << 15), "%s: DevCap lacks Role-Based Error Reporting (%#x)",
			    d->bdf, devcap);
		EXPECT_THAT(devcap & (1u << 28), "%s: DevCap not FLR capable (%#x)", d->bdf, devcap);
		/*
		 * Device Control, Link Control (2) and Device Control 2 are the
		 * kernel's (reset values: host tests): writable bits by write /
		 * read back / restore.  Never Initiate FLR (bit 15).
		 */
		EXPECT_THAT((devctl & ~VUGPU_DEVCTL_RW) == 0,
			    "%s: DevCtl %#x has RO bits set (writable %#x)", d->bdf, devctl,
			    VUGPU_DEVCTL_RW);
		cfg_write_check(_metadata, d, "Device Control", pos + 0x08, 2, VUGPU_DEVCTL_RW,
				(uint16_t)~VUGPU_DEVCTL_FLR, false);
		cfg_write_check(_metadata, d, "Link Control", pos + 0x10, 2,
				rciep ? 0 : VUGPU_LNKCTL_RW, 0xffff, false);
		cfg_write_check(_metadata, d, "Device Control 2", pos + 0x28, 2, VUGPU_DEVCTL2_RW, 0xffff,
				false);
		cfg_write_check(_metadata, d, "Link Control 2", pos + 0x30, 2,
				rciep ? 0 : VUGPU_LNKCTL2_RW, 0xffff, false);
		cfg_ignores_writes(_metadata, d, "Device Status", pos + 0x0a, 2, true);
		cfg_ignores_writes(_metadata, d, "PCIe Capabilities", pos + 0x02, 2, false);
		cfg_ignores_writes(_metadata, d, "Device Capabilities", pos + 0x04, 4, false);
		cfg_ignores_writes(_metadata, d, "Link Capabilities", pos + 0x0c, 4, false);
		cfg_ignores_writes(_metadata, d, "Link Status", pos + 0x12, 2, false);
		cfg_ignores_writes(_metadata, d, "Device Capabilities 2", pos + 0x24, 4, false);
		cfg_ignores_writes(_metadata, d, "Link Capabilities 2", pos + 0x2c, 4, false);
		if (rciep) {
			EXPECT_THAT(lnkcap == 0 && lnksta == 0 && lnkcap2 == 0,
				    "%s: integrated endpoint with LnkCap %#x LnkSta %#x LnkCap2 %#x, expected 0 (no link)",
				    d->bdf, lnkcap, lnksta, lnkcap2);
			goto devcap2;
		}
		EXPECT_THAT((lnkcap & 0xf) == 4 && ((lnkcap >> 4) & 0x3f) == 16,
			    "%s: LnkCap speed %u width x%u, expected 4 (16 GT/s) x16", d->bdf,
			    lnkcap & 0xf, (lnkcap >> 4) & 0x3f);
		EXPECT_THAT((lnksta & 0xf) == 4 && ((lnksta >> 4) & 0x3f) == 16,
			    "%s: LnkSta speed %u width x%u, expected 4 x16", d->bdf, lnksta & 0xf,
			    (lnksta >> 4) & 0x3f);
		EXPECT_THAT((lnkcap2 & 0xfe) == 0x1e,
			    "%s: LnkCap2 supported speeds %#x, expected 0x1e", d->bdf, lnkcap2 & 0xfe);
devcap2:
		EXPECT_THAT((devcap2 & 0xf) == 0xf && (devcap2 & (1u << 4)),
			    "%s: DevCap2 completion timeout ranges/disable %#x", d->bdf, devcap2);
		EXPECT_THAT((devcap2 & (7u << 7)) == (7u << 7),
			    "%s: DevCap2 AtomicOp completer bits 7-9 = %#x, expected 32/64/128-bit",
			    d->bdf, (devcap2 >> 7) & 7);
		EXPECT_THAT(devcap2 & (1u << 16), "%s: DevCap2 lacks 10-bit tag completer (%#x)",
			    d->bdf, devcap2);
		diag("%s: PCIe v%u type %u devcap %#010x devctl %#06x lnkcap %#010x lnksta %#06x devcap2 %#010x",
			  d->bdf, flags & 0xf, (flags >> 4) & 0xf, devcap, devctl, lnkcap, lnksta,
			  devcap2);
	}
}

TEST_F_TIMEOUT(smoke, cap_aer, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_ext_cap(d, 0x0001);
		uint32_t hdr;

		ASSERT_THAT(d->config_len == VUGPU_CONFIG_SPACE_SIZE,
			    "%s: no extended config space to search", d->bdf);
		ASSERT_THAT(pos, "%s: no AER extended capability", d->bdf);
		hdr = vugpu_cfg32(d, pos);
		EXPECT_THAT(pos == VUGPU_ECAP_AER_OFFSET, "%s: AER at %#x, spec %#x", d->bdf, pos,
			    VUGPU_ECAP_AER_OFFSET);
		EXPECT_THAT(((hdr >> 16) & 0xf) == 2, "%s: AER version %u, expected 2", d->bdf,
			    (hdr >> 16) & 0xf);
		EXPECT_THAT(vugpu_cfg32(d, pos + 0x04) == 0,
			    "%s: AER Uncorrectable Status %#x (errors already?)", d->bdf,
			    vugpu_cfg32(d, pos + 0x04));
		EXPECT_THAT(vugpu_cfg32(d, pos + 0x10) == 0,
			    "%s: AER Correctable Status %#x", d->bdf, vugpu_cfg32(d, pos + 0x10));
		/*
		 * Masks and Severity are the AER driver's (Linux 7.3 clears the
		 * Correctable Mask at boot): writable bits only, reset values are
		 * host tests.  Status bits cannot be set by software.
		 */
		cfg_write_check(_metadata, d, "AER Uncorrectable Mask", pos + 0x08, 4, VUGPU_AER_UNCOR_BITS,
				0xffffffffu, false);
		cfg_write_check(_metadata, d, "AER Uncorrectable Severity", pos + 0x0c, 4,
				VUGPU_AER_UNCOR_BITS, 0xffffffffu, false);
		cfg_write_check(_metadata, d, "AER Correctable Mask", pos + 0x14, 4, VUGPU_AER_COR_BITS,
				0xffffffffu, false);
		cfg_ignores_writes(_metadata, d, "AER Uncorrectable Status", pos + 0x04, 4, true);
		cfg_ignores_writes(_metadata, d, "AER Correctable Status", pos + 0x10, 4, true);
		cfg_ignores_writes(_metadata, d, "AER Capabilities and Control", pos + 0x18, 4, false);
		cfg_ignores_writes(_metadata, d, "AER Header Log", pos + 0x1c, 4, false);
		diag("%s: AER as the OS left it: Uncorrectable Mask %#x Severity %#x, Correctable Mask %#x",
			  d->bdf, vugpu_cfg32(d, pos + 0x08), vugpu_cfg32(d, pos + 0x0c),
			  vugpu_cfg32(d, pos + 0x14));
	}
}

TEST_F_TIMEOUT(smoke, cap_resizable_bar, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_ext_cap(d, 0x0015), cur, want;
		uint32_t cap, ctrl;
		uint64_t size = bar_size(d, VUGPU_BAR_VRAM);

		ASSERT_THAT(pos, "%s: no Resizable BAR extended capability", d->bdf);
		EXPECT_THAT(pos == VUGPU_ECAP_REBAR_OFFSET, "%s: Resizable BAR at %#x, spec %#x",
			    d->bdf, pos, VUGPU_ECAP_REBAR_OFFSET);
		cap = vugpu_cfg32(d, pos + 4);
		ctrl = vugpu_cfg32(d, pos + 8);
		cur = (ctrl >> 8) & 0x3f;
		EXPECT_THAT((ctrl & 7) == VUGPU_BAR_VRAM, "%s: Resizable BAR index %u, expected 2",
			    d->bdf, ctrl & 7);
		EXPECT_THAT(((ctrl >> 5) & 7) == 1, "%s: %u resizable BARs, expected 1", d->bdf,
			    (ctrl >> 5) & 7);
		ASSERT_THAT(size >= MIB, "%s: BAR2 size %#llx unknown", d->bdf,
			    (unsigned long long)size);
		want = ilog2_u64(size / MIB);
		EXPECT_THAT(cur == want, "%s: Resizable BAR size field %u (%llu MiB), BAR2 is %llu MiB",
			    d->bdf, cur, 1ULL << cur, (unsigned long long)(size / MIB));
		EXPECT_THAT(cur < 28 && (cap & (1u << (cur + 4))),
			    "%s: current size %u not advertised in capability %#x", d->bdf, cur, cap);
		/* The BAR Size field is the kernel's (a resize moves BAR2): RO bits only. */
		cfg_write_check(_metadata, d, "Resizable BAR Control (BAR Index, count)", pos + 8, 4, 0,
				~VUGPU_REBAR_CTRL_SIZE, false);
		cfg_ignores_writes(_metadata, d, "Resizable BAR Capability", pos + 4, 4, false);
		diag("%s: Resizable BAR cap %#010x ctrl %#010x (BAR2 %llu MiB)", d->bdf, cap, ctrl,
			  (unsigned long long)(size / MIB));
	}
}

TEST_F_TIMEOUT(smoke, cap_device_serial_number, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		unsigned int pos = vugpu_find_ext_cap(d, 0x0003);
		uint64_t dsn;

		ASSERT_THAT(pos, "%s: no Device Serial Number extended capability", d->bdf);
		EXPECT_THAT(pos == VUGPU_ECAP_DSN_OFFSET, "%s: DSN at %#x, spec %#x", d->bdf, pos,
			    VUGPU_ECAP_DSN_OFFSET);
		dsn = (uint64_t)vugpu_cfg32(d, pos + 8) << 32 | vugpu_cfg32(d, pos + 4);
		EXPECT_THAT(dsn != 0 && dsn != ~0ULL, "%s: serial number %#llx", d->bdf,
			    (unsigned long long)dsn);
		EXPECT_CONFIGURED(s, &s->serial, d - s->devs, dsn, "serial number");
		EXPECT_THAT((vugpu_cfg32(d, pos) >> 20) == 0,
			    "%s: DSN is not the last extended capability (next %#x)", d->bdf,
			    vugpu_cfg32(d, pos) >> 20);
		cfg_ignores_writes(_metadata, d, "Device Serial Number low", pos + 4, 4, false);
		cfg_ignores_writes(_metadata, d, "Device Serial Number high", pos + 8, 4, false);
		diag("%s: serial %016llx", d->bdf, (unsigned long long)dsn);
	}
	if (s->ndevs > 1) {
		int i, j;

		for (i = 0; i < s->ndevs; i++)
			for (j = i + 1; j < s->ndevs; j++) {
				const struct vugpu_dev *a = &s->devs[i], *b = &s->devs[j];
				unsigned int pa = vugpu_find_ext_cap(a, 3), pb = vugpu_find_ext_cap(b, 3);

				EXPECT_THAT(!pa || !pb ||
					    memcmp(a->config + pa + 4, b->config + pb + 4, 8),
					    "%s and %s share a serial number", a->bdf, b->bdf);
			}
	}
}

TEST_F_TIMEOUT(smoke, bar_layout, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	struct vugpu_dev *d;
	static const unsigned int unused[] = { 1, 3, 4, 5, 6 };

	REQUIRE_DEVS(s);
	for_each_dev(s, d) {
		uint64_t f0 = d->bars[0].flags, f2 = d->bars[2].flags;
		uint64_t s0 = bar_size(d, 0), s2 = bar_size(d, 2);
		unsigned int i;

		ASSERT_THAT(d->bars[0].end, "%s: no sysfs resource for BAR0", d->bdf);
		EXPECT_THAT((f0 & VUGPU_IORESOURCE_MEM) && !(f0 & VUGPU_IORESOURCE_PREFETCH) &&
			    !(f0 & VUGPU_IORESOURCE_MEM_64),
			    "%s: BAR0 flags %#llx, expected 32-bit non-prefetchable memory", d->bdf,
			    (unsigned long long)f0);
		EXPECT_THAT(s0 == VUGPU_BAR0_SIZE, "%s: BAR0 size %#llx, expected 16 MiB", d->bdf,
			    (unsigned long long)s0);
		EXPECT_THAT((f2 & VUGPU_IORESOURCE_MEM) && (f2 & VUGPU_IORESOURCE_PREFETCH) &&
			    (f2 & VUGPU_IORESOURCE_MEM_64),
			    "%s: BAR2 flags %#llx, expected 64-bit prefetchable memory", d->bdf,
			    (unsigned long long)f2);
		EXPECT_THAT(s2 >= VUGPU_VRAM_BAR_MIN_SIZE && !(s2 & (s2 - 1)),
			    "%s: BAR2 size %#llx, expected a power of two >= 1 MiB", d->bdf,
			    (unsigned long long)s2);
		EXPECT_THAT((vugpu_cfg32(d, 0x10) & 0xf) == 0x0,
			    "%s: BAR0 register type bits %#x, expected 0 (32-bit, non-prefetchable)",
			    d->bdf, vugpu_cfg32(d, 0x10) & 0xf);
		EXPECT_THAT((vugpu_cfg32(d, 0x18) & 0xf) == 0xc,
			    "%s: BAR2 register type bits %#x, expected 0xc (64-bit, prefetchable)",
			    d->bdf, vugpu_cfg32(d, 0x18) & 0xf);
		for (i = 0; i < ARRAY_SIZE(unused); i++)
			EXPECT_THAT(bar_size(d, unused[i]) == 0,
				    "%s: resource %u unexpectedly has size %#llx", d->bdf, unused[i],
				    (unsigned long long)bar_size(d, unused[i]));
		diag("%s: BAR0 %#llx+%#llx BAR2 %#llx+%#llx (%llu MiB)", d->bdf,
			  (unsigned long long)d->bars[0].start, (unsigned long long)s0,
			  (unsigned long long)d->bars[2].start, (unsigned long long)s2,
			  (unsigned long long)(s2 / MIB));
	}
}

TEST_F_TIMEOUT(smoke, driver_binding, SMOKE_TIMEOUT)
{
	struct smoke *s = &self->s;
	const struct smoke_expect *lists[] = { &s->vram_mib, &s->msix_vectors, &s->serial };
	struct vugpu_dev *d;
	unsigned int i;

	REQUIRE_DEVS(s);
	for (i = 0; i < ARRAY_SIZE(lists); i++)
		EXPECT_THAT(!lists[i]->n || lists[i]->n == (unsigned int)s->ndevs,
			    "%u GPUs configured, %d found", lists[i]->n, s->ndevs);
	for_each_dev(s, d) {
		char drv[64] = "";

		vugpu_bound_driver(d, drv, sizeof(drv));
		EXPECT_THAT(strcmp(drv, VUGPU_MODULE_NAME) == 0, "%s: bound driver '%s', expected vugpu",
			    d->bdf, drv);
		if (d->fd < 0) {
			EXPECT_THAT(0, "%s: no usable /dev/vugpuN (node '%s')", d->bdf, d->devnode);
			continue;
		}
		EXPECT_THAT(strcmp(d->info.pci_name, d->bdf) == 0, "%s: GET_INFO names %s", d->bdf,
			    d->info.pci_name);
		EXPECT_THAT(d->info.vendor == s->vendor && d->info.device == s->device &&
			    d->info.class == VUGPU_PCI_CLASS,
			    "%s: GET_INFO %04x:%04x class %#x", d->bdf, d->info.vendor, d->info.device,
			    d->info.class);
		EXPECT_THAT(d->info.bar0_size == bar_size(d, 0) && d->info.bar2_size == bar_size(d, 2),
			    "%s: GET_INFO BAR sizes %#llx/%#llx differ from sysfs", d->bdf,
			    (unsigned long long)d->info.bar0_size,
			    (unsigned long long)d->info.bar2_size);
		EXPECT_CONFIGURED(s, &s->vram_mib, d - s->devs, d->info.vram_size / MIB,
				  "VRAM MiB");
		diag("%s: %s, %u MSI-X vectors, VRAM %llu MiB", d->bdf, d->devnode,
			  d->info.num_vectors, (unsigned long long)(d->info.vram_size / MIB));
	}
}
