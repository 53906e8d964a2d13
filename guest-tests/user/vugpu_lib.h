/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vugpu_lib.h - helpers shared by the vugpu guest test programs.
 *
 * Three kinds of access, kept apart:
 *   - sysfs: finding vugpu functions, their config space (the 4 KiB
 *     "config" file), "resource" flags, driver binding;
 *   - /dev/vugpuN: the test driver's ioctls (kmod/vugpu_uapi.h);
 *   - module and kernel log: finit_module/delete_module, klogctl.
 * Functions return 0 or a negative errno and never exit the process.
 */
#ifndef VUGPU_LIB_H
#define VUGPU_LIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vugpu_hw.h"
#include "vugpu_uapi.h"

#define VUGPU_MAX_DEVS		16
#define VUGPU_SYSFS_PCI		"/sys/bus/pci/devices"
#define VUGPU_SYSFS_DRIVER	"/sys/bus/pci/drivers/vugpu"
#define VUGPU_MODULE_NAME	"vugpu"

/* Linux IORESOURCE_* flags as printed in sysfs "resource". */
#define VUGPU_IORESOURCE_MEM		0x00000200UL
#define VUGPU_IORESOURCE_PREFETCH	0x00002000UL
#define VUGPU_IORESOURCE_MEM_64		0x00100000UL

struct vugpu_bar {
	uint64_t start, end, flags;
};

/* One vugpu function as found in sysfs, plus its /dev node once bound. */
struct vugpu_dev {
	char bdf[32];			/* "0000:01:00.0" */
	char sysfs[160];		/* /sys/bus/pci/devices/<bdf> */
	uint8_t config[VUGPU_CONFIG_SPACE_SIZE];
	size_t config_len;		/* bytes readable from sysfs "config" */
	struct vugpu_bar bars[7];	/* sysfs "resource": BAR0-5, ROM */
	char devnode[64];		/* /dev/vugpuN, "" if not bound */
	int fd;				/* open devnode or -1 */
	struct vugpu_info info;		/* GET_INFO, valid when fd >= 0 */
};

/* sysfs helpers */
int vugpu_read_file(const char *path, char *buf, size_t len);
int vugpu_write_file(const char *path, const char *s);
int vugpu_read_hex(const char *path, unsigned long *val);
bool vugpu_path_exists(const char *path);

/* Finds functions with this vendor/device ID; returns the count or -errno. */
int vugpu_find_devs(unsigned int vendor, unsigned int device, struct vugpu_dev *devs,
		    unsigned int max);
int vugpu_read_config(struct vugpu_dev *d);
int vugpu_read_resources(struct vugpu_dev *d);
/* Fills d->devnode from <sysfs>/misc/vugpuN; -ENOENT if the driver is not bound. */
int vugpu_find_devnode(struct vugpu_dev *d);
/* Waits up to @ms for the node to appear (after bind / insmod); opens it and GET_INFO. */
int vugpu_open(struct vugpu_dev *d, unsigned int ms);
void vugpu_close(struct vugpu_dev *d);
/* Current driver name bound to the function, "" if none. */
int vugpu_bound_driver(const struct vugpu_dev *d, char *buf, size_t len);

/* config space (little-endian, from d->config) */
uint8_t vugpu_cfg8(const struct vugpu_dev *d, unsigned int off);
uint16_t vugpu_cfg16(const struct vugpu_dev *d, unsigned int off);
uint32_t vugpu_cfg32(const struct vugpu_dev *d, unsigned int off);
/*
 * Live config space through sysfs (not d->config): one aligned access of
 * @width 1, 2 or 4 bytes at @off.  Writing needs root; the kernel's view of
 * the function (saved state, driver) is not told about the write.
 */
int vugpu_config_read(const struct vugpu_dev *d, unsigned int off, unsigned int width,
		      uint32_t *val);
int vugpu_config_write(const struct vugpu_dev *d, unsigned int off, unsigned int width,
		       uint32_t val);
/* Offset of a standard / extended capability, 0 if absent (loops are bounded). */
unsigned int vugpu_find_cap(const struct vugpu_dev *d, uint8_t id);
unsigned int vugpu_find_ext_cap(const struct vugpu_dev *d, uint16_t id);

/* ioctls: 0 or -errno */
int vugpu_cmd(int fd, unsigned long req, struct vugpu_cmd *cmd);
int vugpu_reg_read(int fd, uint32_t off, uint32_t *val);
int vugpu_reg_write(int fd, uint32_t off, uint32_t val);
int vugpu_irq_test(int fd, unsigned int vector, struct vugpu_cmd *out);
int vugpu_vram_io(int fd, unsigned long req, uint64_t off, void *buf, size_t len);
int vugpu_reset(int fd, unsigned long req, struct vugpu_regs *regs, uint64_t *elapsed_ns);

/*
 * DMA engines (vugpu_uapi.h 0x10-0x1b).  vugpu_dma() returns 0 or -errno;
 * for -EIO (engine error) and -ETIMEDOUT the driver still fills @d (result,
 * engine registers).
 */
int vugpu_dma_info(int fd, struct vugpu_dma_info *info);
int vugpu_dma(int fd, unsigned long req, struct vugpu_dma *d);
int vugpu_engine_stats(int fd, unsigned int engine, struct vugpu_engine_stats *st);
int vugpu_error_state(int fd, struct vugpu_error_state *es, bool clear);
/* Sets the Device Control bits @mask to @value; *after = Device Control (may be NULL). */
int vugpu_devctl(int fd, uint16_t mask, uint16_t value, uint16_t *after);
int vugpu_scratch_io(int fd, unsigned long req, uint64_t off, void *buf, size_t len);
/* BUS_MASTER: @op VUGPU_BUS_MASTER_*; *command = PCI Command after (may be NULL). */
int vugpu_bus_master(int fd, unsigned int op, uint16_t *command);
/* IRQ_COUNTS: interrupts handled per vector into counts[0..n); returns the vector count or -errno. */
int vugpu_irq_counts(int fd, uint64_t *counts, unsigned int n);
const char *vugpu_eng_err_name(uint32_t code);
const char *vugpu_eng_state_name(uint32_t status);
/* Index of a §8.1 counter in struct vugpu_engine_stats.hw from its register offset. */
#define VUGPU_STAT(off)	(((off) - VUGPU_ENG_STATS_START) / 8)

/* binding and module */
int vugpu_unbind(const struct vugpu_dev *d);
int vugpu_bind(const struct vugpu_dev *d);
int vugpu_module_load(const char *path, const char *params);
int vugpu_module_unload(void);
bool vugpu_module_loaded(void);

/*
 * Kernel log lines containing WARNING:, BUG:, Oops or "Call Trace" are
 * copied (newline separated, truncated) into @out; returns how many there
 * were, or -errno.
 */
int vugpu_dmesg_problems(char *out, size_t len);
/* The kernel log into @buf (NUL-terminated); returns its length or -errno. */
int vugpu_dmesg(char *buf, size_t len);
/* Parses a decimal or 0x-hex number; 0 or -1. */
int vugpu_parse_u64(const char *s, uint64_t *out);

/* Deterministic test pattern: byte i of the buffer for (seed, offset). */
void vugpu_fill_pattern(void *buf, size_t len, uint64_t seed);
/* The same idea, 8 bytes per step (fast enough for many MiB under TCG). */
void vugpu_fill_pattern64(void *buf, size_t len, uint64_t seed);
/* Index of the first differing byte, or -1. */
long vugpu_first_diff(const void *a, const void *b, size_t len);

uint64_t vugpu_now_ns(void);

#endif /* VUGPU_LIB_H */
