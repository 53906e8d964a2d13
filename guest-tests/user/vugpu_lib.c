// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu_lib.c - sysfs, config-space, ioctl, module and kernel-log helpers
 * for the vugpu guest tests.  See vugpu_lib.h.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vugpu_lib.h"

#define SYSLOG_ACTION_READ_ALL		3
#define SYSLOG_ACTION_SIZE_BUFFER	10

uint64_t vugpu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

int vugpu_read_file(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	if (!len)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	if (n < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	close(fd);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return (int)n;
}

int vugpu_write_file(const char *path, const char *s)
{
	size_t len = strlen(s);
	ssize_t n;
	int fd;

	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, s, len);
	if (n < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	close(fd);
	return (size_t)n == len ? 0 : -EIO;
}

int vugpu_read_hex(const char *path, unsigned long *val)
{
	char buf[64], *end;
	int ret;

	ret = vugpu_read_file(path, buf, sizeof(buf));
	if (ret < 0)
		return ret;
	errno = 0;
	*val = strtoul(buf, &end, 0);
	if (errno || end == buf)
		return -EINVAL;
	return 0;
}

bool vugpu_path_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static int bdf_cmp(const void *a, const void *b)
{
	return strcmp(((const struct vugpu_dev *)a)->bdf, ((const struct vugpu_dev *)b)->bdf);
}

int vugpu_find_devs(unsigned int vendor, unsigned int device, struct vugpu_dev *devs,
		    unsigned int max)
{
	struct dirent *de;
	unsigned int n = 0;
	DIR *dir;

	dir = opendir(VUGPU_SYSFS_PCI);
	if (!dir)
		return -errno;
	while ((de = readdir(dir)) != NULL && n < max) {
		char path[300];
		unsigned long v, d;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/vendor", VUGPU_SYSFS_PCI, de->d_name);
		if (vugpu_read_hex(path, &v) || v != vendor)
			continue;
		snprintf(path, sizeof(path), "%s/%s/device", VUGPU_SYSFS_PCI, de->d_name);
		if (vugpu_read_hex(path, &d) || d != device)
			continue;
		if (strlen(de->d_name) >= sizeof(devs[n].bdf))
			continue;
		memset(&devs[n], 0, sizeof(devs[n]));
		snprintf(devs[n].bdf, sizeof(devs[n].bdf), "%.31s", de->d_name);
		snprintf(devs[n].sysfs, sizeof(devs[n].sysfs), "%s/%.31s", VUGPU_SYSFS_PCI,
			 de->d_name);
		devs[n].fd = -1;
		n++;
	}
	closedir(dir);
	qsort(devs, n, sizeof(*devs), bdf_cmp);
	return (int)n;
}

int vugpu_read_config(struct vugpu_dev *d)
{
	char path[200];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/config", d->sysfs);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	memset(d->config, 0xff, sizeof(d->config));
	n = pread(fd, d->config, sizeof(d->config), 0);
	if (n < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	close(fd);
	d->config_len = (size_t)n;
	return 0;
}

int vugpu_read_resources(struct vugpu_dev *d)
{
	char path[200], buf[1024], *line, *save = NULL;
	unsigned int i = 0;
	int ret;

	snprintf(path, sizeof(path), "%s/resource", d->sysfs);
	ret = vugpu_read_file(path, buf, sizeof(buf));
	if (ret < 0)
		return ret;
	memset(d->bars, 0, sizeof(d->bars));
	for (line = strtok_r(buf, "\n", &save); line && i < 7;
	     line = strtok_r(NULL, "\n", &save), i++) {
		unsigned long long s, e, f;

		if (sscanf(line, "%llx %llx %llx", &s, &e, &f) != 3)
			return -EINVAL;
		d->bars[i].start = s;
		d->bars[i].end = e;
		d->bars[i].flags = f;
	}
	return i == 7 ? 0 : -EINVAL;
}

int vugpu_find_devnode(struct vugpu_dev *d)
{
	char path[200];
	struct dirent *de;
	DIR *dir;
	int ret = -ENOENT;

	d->devnode[0] = '\0';
	snprintf(path, sizeof(path), "%s/misc", d->sysfs);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, "vugpu", 5) == 0 && strlen(de->d_name) < 32) {
			snprintf(d->devnode, sizeof(d->devnode), "/dev/%.31s", de->d_name);
			ret = 0;
			break;
		}
	}
	closedir(dir);
	return ret;
}

int vugpu_open(struct vugpu_dev *d, unsigned int ms)
{
	struct vugpu_cmd cmd;
	uint64_t deadline = vugpu_now_ns() + (uint64_t)ms * 1000000ULL;
	int ret;

	vugpu_close(d);
	for (;;) {
		ret = vugpu_find_devnode(d);
		if (!ret) {
			d->fd = open(d->devnode, O_RDWR | O_CLOEXEC);
			ret = d->fd < 0 ? -errno : 0;
		}
		if (!ret || vugpu_now_ns() >= deadline)
			break;
		sleep_ms(20);
	}
	if (ret)
		return ret;

	memset(&cmd, 0, sizeof(cmd));
	cmd.ptr = (uintptr_t)&d->info;
	cmd.size = sizeof(d->info);
	ret = vugpu_cmd(d->fd, VUGPU_IOCTL_GET_INFO, &cmd);
	if (ret)
		vugpu_close(d);
	return ret;
}

void vugpu_close(struct vugpu_dev *d)
{
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
}

int vugpu_bound_driver(const struct vugpu_dev *d, char *buf, size_t len)
{
	char path[200], target[256];
	ssize_t n;
	const char *base;

	snprintf(path, sizeof(path), "%s/driver", d->sysfs);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		if (errno == ENOENT) {
			buf[0] = '\0';
			return 0;
		}
		return -errno;
	}
	target[n] = '\0';
	base = strrchr(target, '/');
	snprintf(buf, len, "%s", base ? base + 1 : target);
	return 0;
}

uint8_t vugpu_cfg8(const struct vugpu_dev *d, unsigned int off)
{
	return off < sizeof(d->config) ? d->config[off] : 0xff;
}

uint16_t vugpu_cfg16(const struct vugpu_dev *d, unsigned int off)
{
	return (uint16_t)(vugpu_cfg8(d, off) | vugpu_cfg8(d, off + 1) << 8);
}

uint32_t vugpu_cfg32(const struct vugpu_dev *d, unsigned int off)
{
	return (uint32_t)vugpu_cfg16(d, off) | (uint32_t)vugpu_cfg16(d, off + 2) << 16;
}

/* One aligned access of @width bytes: the kernel turns it into one config cycle. */
static int config_access(const struct vugpu_dev *d, unsigned int off, unsigned int width,
			 uint32_t *val, bool write)
{
	uint8_t b[4] = { 0 };
	char path[200];
	unsigned int i;
	ssize_t n;
	int fd, err = 0;

	if ((width != 1 && width != 2 && width != 4) || off % width ||
	    off + width > VUGPU_CONFIG_SPACE_SIZE)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/config", d->sysfs);
	fd = open(path, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write) {
		for (i = 0; i < width; i++)
			b[i] = (uint8_t)(*val >> (8 * i));
		n = pwrite(fd, b, width, off);
	} else {
		n = pread(fd, b, width, off);
	}
	if (n < 0)
		err = -errno;
	else if ((size_t)n != width)
		err = -EIO;
	close(fd);
	if (!err && !write)
		for (*val = 0, i = 0; i < width; i++)
			*val |= (uint32_t)b[i] << (8 * i);
	return err;
}

int vugpu_config_read(const struct vugpu_dev *d, unsigned int off, unsigned int width,
		      uint32_t *val)
{
	return config_access(d, off, width, val, false);
}

int vugpu_config_write(const struct vugpu_dev *d, unsigned int off, unsigned int width,
		       uint32_t val)
{
	return config_access(d, off, width, &val, true);
}

unsigned int vugpu_find_cap(const struct vugpu_dev *d, uint8_t id)
{
	unsigned int pos, ttl = 48;	/* at most 48 capabilities fit in 192 bytes */

	if (!(vugpu_cfg16(d, 0x06) & 0x10))	/* Status: Capabilities List */
		return 0;
	pos = vugpu_cfg8(d, 0x34) & ~3u;
	while (pos >= 0x40 && pos < 0x100 && ttl--) {
		if (vugpu_cfg8(d, pos) == id)
			return pos;
		pos = vugpu_cfg8(d, pos + 1) & ~3u;
	}
	return 0;
}

unsigned int vugpu_find_ext_cap(const struct vugpu_dev *d, uint16_t id)
{
	unsigned int pos = 0x100, ttl = (VUGPU_CONFIG_SPACE_SIZE - 0x100) / 8;
	uint32_t hdr;

	if (d->config_len < VUGPU_CONFIG_SPACE_SIZE)
		return 0;
	while (pos >= 0x100 && pos < VUGPU_CONFIG_SPACE_SIZE && ttl--) {
		hdr = vugpu_cfg32(d, pos);
		if (hdr == 0 || hdr == 0xffffffff)
			return 0;
		if ((hdr & 0xffff) == id)
			return pos;
		pos = (hdr >> 20) & ~3u;
	}
	return 0;
}

int vugpu_cmd(int fd, unsigned long req, struct vugpu_cmd *cmd)
{
	return ioctl(fd, req, cmd) < 0 ? -errno : 0;
}

int vugpu_reg_read(int fd, uint32_t off, uint32_t *val)
{
	struct vugpu_cmd cmd = { .offset = off };
	int ret;

	ret = vugpu_cmd(fd, VUGPU_IOCTL_REG_READ, &cmd);
	if (!ret)
		*val = (uint32_t)cmd.value;
	return ret;
}

int vugpu_reg_write(int fd, uint32_t off, uint32_t val)
{
	struct vugpu_cmd cmd = { .offset = off, .value = val };

	return vugpu_cmd(fd, VUGPU_IOCTL_REG_WRITE, &cmd);
}

int vugpu_irq_test(int fd, unsigned int vector, struct vugpu_cmd *out)
{
	memset(out, 0, sizeof(*out));
	out->offset = vector;
	return vugpu_cmd(fd, VUGPU_IOCTL_IRQ_TEST, out);
}

int vugpu_vram_io(int fd, unsigned long req, uint64_t off, void *buf, size_t len)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)buf, .size = len, .offset = off };

	return vugpu_cmd(fd, req, &cmd);
}

int vugpu_reset(int fd, unsigned long req, struct vugpu_regs *regs, uint64_t *elapsed_ns)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)regs, .size = sizeof(*regs) };
	int ret, tries = 50;

	/* -EAGAIN: the PCI device lock was busy (pci_try_reset_function). */
	do {
		ret = vugpu_cmd(fd, req, &cmd);
		if (ret != -EAGAIN)
			break;
		sleep_ms(20);
	} while (--tries);
	if (!ret && elapsed_ns)
		*elapsed_ns = cmd.elapsed_ns;
	return ret;
}

int vugpu_dma_info(int fd, struct vugpu_dma_info *info)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)info, .size = sizeof(*info) };

	return vugpu_cmd(fd, VUGPU_IOCTL_DMA_INFO, &cmd);
}

int vugpu_dma(int fd, unsigned long req, struct vugpu_dma *d)
{
	return ioctl(fd, req, d) < 0 ? -errno : 0;
}

int vugpu_engine_stats(int fd, unsigned int engine, struct vugpu_engine_stats *st)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)st, .size = sizeof(*st), .offset = engine };

	return vugpu_cmd(fd, VUGPU_IOCTL_ENGINE_STATS, &cmd);
}

int vugpu_error_state(int fd, struct vugpu_error_state *es, bool clear)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)es, .size = sizeof(*es),
				 .value = clear ? VUGPU_ERROR_STATE_CLEAR : 0 };

	return vugpu_cmd(fd, VUGPU_IOCTL_ERROR_STATE, &cmd);
}

int vugpu_devctl(int fd, uint16_t mask, uint16_t value, uint16_t *after)
{
	struct vugpu_cmd cmd = { .offset = mask, .value = value };
	int ret = vugpu_cmd(fd, VUGPU_IOCTL_DEVCTL, &cmd);

	if (!ret && after)
		*after = (uint16_t)cmd.count;
	return ret;
}

int vugpu_scratch_io(int fd, unsigned long req, uint64_t off, void *buf, size_t len)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)buf, .size = len, .offset = off };

	return vugpu_cmd(fd, req, &cmd);
}

int vugpu_bus_master(int fd, unsigned int op, uint16_t *command)
{
	struct vugpu_cmd cmd = { .value = op };
	int ret = vugpu_cmd(fd, VUGPU_IOCTL_BUS_MASTER, &cmd);

	if (!ret && command)
		*command = (uint16_t)cmd.count;
	return ret;
}

int vugpu_irq_counts(int fd, uint64_t *counts, unsigned int n)
{
	struct vugpu_cmd cmd = { .ptr = (uintptr_t)counts, .size = (uint64_t)n * sizeof(*counts) };
	int ret = vugpu_cmd(fd, VUGPU_IOCTL_IRQ_COUNTS, &cmd);

	return ret ? ret : (int)cmd.count;
}

const char *vugpu_eng_err_name(uint32_t code)
{
	static const char *const names[] = {
		"NONE", "RING_CONFIG", "RING_OVERFLOW", "BAD_OPCODE", "BAD_DESCRIPTOR",
		"SYS_UNMAPPED", "SYS_PERMISSION", "VRAM_RANGE", "MSG_DMA_FAILED", "TRANSLATION",
		"POISONED",
	};

	return code < sizeof(names) / sizeof(names[0]) ? names[code] : "UNKNOWN";
}

const char *vugpu_eng_state_name(uint32_t status)
{
	static const char *const names[] = { "DISABLED", "IDLE", "RUNNING", "HALTED", "ERROR" };
	uint32_t st = status & VUGPU_ENG_STATUS_STATE_MASK;

	return st < sizeof(names) / sizeof(names[0]) ? names[st] : "UNKNOWN";
}

int vugpu_unbind(const struct vugpu_dev *d)
{
	return vugpu_write_file(VUGPU_SYSFS_DRIVER "/unbind", d->bdf);
}

int vugpu_bind(const struct vugpu_dev *d)
{
	return vugpu_write_file(VUGPU_SYSFS_DRIVER "/bind", d->bdf);
}

int vugpu_module_load(const char *path, const char *params)
{
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, params ? params : "", 0) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int vugpu_module_unload(void)
{
	int tries = 100;

	/* O_NONBLOCK: fail with EWOULDBLOCK instead of waiting for users. */
	while (syscall(SYS_delete_module, VUGPU_MODULE_NAME, O_NONBLOCK) < 0) {
		if (errno != EAGAIN || !--tries)
			return -errno;
		sleep_ms(20);
	}
	return 0;
}

bool vugpu_module_loaded(void)
{
	return vugpu_path_exists("/sys/module/" VUGPU_MODULE_NAME);
}

int vugpu_dmesg(char *buf, size_t len)
{
	int n;

	if (!len)
		return -EINVAL;
	n = klogctl(SYSLOG_ACTION_READ_ALL, buf, len > INT32_MAX ? INT32_MAX : (int)len - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return n;
}

int vugpu_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end || end == s)
		return -1;
	*out = v;
	return 0;
}

int vugpu_dmesg_problems(char *out, size_t len)
{
	static const char *const needles[] = { "WARNING:", "BUG:", "Oops", "Call Trace" };
	char *buf, *line, *save = NULL;
	size_t used = 0;
	int size, n, found = 0;

	size = klogctl(SYSLOG_ACTION_SIZE_BUFFER, NULL, 0);
	if (size <= 0)
		return size < 0 ? -errno : -EIO;
	buf = malloc((size_t)size + 1);
	if (!buf)
		return -ENOMEM;
	n = vugpu_dmesg(buf, (size_t)size + 1);
	if (n < 0) {
		free(buf);
		return n;
	}
	if (len)
		out[0] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		size_t i;

		for (i = 0; i < sizeof(needles) / sizeof(needles[0]); i++) {
			if (strstr(line, needles[i]))
				break;
		}
		if (i == sizeof(needles) / sizeof(needles[0]))
			continue;
		found++;
		if (used + 1 < len) {
			int w = snprintf(out + used, len - used, "%s\n", line);

			used = w < 0 ? len : used + (size_t)w;
		}
	}
	free(buf);
	return found;
}

void vugpu_fill_pattern(void *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i < len; i++) {
		/* xorshift64 */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

void vugpu_fill_pattern64(void *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL, w;
	uint8_t *p = buf;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w = x * 0x2545f4914f6cdd1dULL;
		memcpy(p + i, &w, 8);
	}
	for (; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

long vugpu_first_diff(const void *a, const void *b, size_t len)
{
	const uint8_t *x = a, *y = b;
	size_t i;

	if (!memcmp(a, b, len))
		return -1;
	for (i = 0; i < len; i++)
		if (x[i] != y[i])
			return (long)i;
	return -1;
}
