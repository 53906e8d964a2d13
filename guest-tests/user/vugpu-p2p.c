// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-p2p - peer-to-peer DMA tests for vugpu GPUs in a guest, on the
 * kernel's kselftest harness (vugpu_harness.h): each test in a process of its
 * own that opens the GPUs itself.
 *
 * Needs two vugpu functions bound to vugpu.ko loaded with p2pmem_mb=N (GPU A
 * is the first function, GPU B the second: B's VRAM is the p2pmem provider,
 * A's engines the client) and, for the NVMe cases, QEMU's NVMe controller with
 * two namespaces bound to the kernel's nvme driver.  Through the kernel's own
 * interfaces: the p2pdma core's sysfs files and p2pmem/allocate mapping,
 * pin_user_pages(FOLL_PCI_P2PDMA) and dma_map_sgtable() in the driver (the
 * VUGPU_DMA_P2PDMA flag), pci_p2pdma_distance() (P2P_DISTANCE), and O_DIRECT
 * block I/O whose user buffer is p2pmem.
 *
 * Two plans, chosen by VUGPU_P2P_MODE (fixtures p2p and p2p_refused):
 *   switch   (default) the GPUs and the NVMe share one PCIe switch: P2P is
 *            mapped to bus addresses; data crosses GPU <-> GPU and NVMe ->
 *            GPU p2pmem directly, checked on both sides;
 *   refused  the GPUs sit on separate root ports of q35, whose host bridge
 *            is not on the kernel's whitelist: pci_p2pdma_distance() refuses,
 *            and the driver bounces through system memory and says so.
 *
 * --bench MIB measures instead (KTAP-free "# bench" lines): MIB MiB moved
 * NVMe namespace 1 -> buffer -> namespace 2 with O_DIRECT in 64 KiB chunks,
 * the buffer being GPU B's p2pmem or system memory, interleaved over 5 rounds;
 * prints both medians and their ratio (docs/benchmarks.md).
 *
 * Usage: vugpu-p2p [--p2pmem-mb N] [--bench MIB] [HARNESS OPTIONS]
 * Exit status: 0 when no test failed, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vugpu_harness.h"
#include "vugpu_lib.h"

#define BUF_LEN		(1U << 20)	/* bytes moved per P2P case */
#define NVME_LEN	(4U << 20)	/* bytes moved per NVMe case */

struct p2p_ctx {
	struct vugpu_dev devs[VUGPU_MAX_DEVS];
	int ndevs;
	struct vugpu_dev *a, *b;	/* client, provider */
	uint64_t p2pmem_mb;		/* what the driver was asked to publish */
	bool refused;			/* VUGPU_P2P_MODE=refused */
	char nvme_bdf[32];		/* the NVMe controller bound to nvme, "" if none */
	char nvme_ns[2][32];		/* /dev/nvme0n1, /dev/nvme0n2 */
};

static const char *err_str(int ret)
{
	return strerror(ret < 0 ? -ret : ret);
}

/* Maps @len bytes of the p2pmem that @bdf publishes (its p2pmem/allocate file). */
static void *p2pmem_map(const char *bdf, size_t len, int *err)
{
	char path[160];
	void *p;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/p2pmem/allocate", VUGPU_SYSFS_PCI, bdf);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		*err = -errno;
		return NULL;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	*err = p == MAP_FAILED ? -errno : 0;
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

/* Maps @len bytes of @bdf's p2pmem into @p, or fails the test (returns). */
#define MAP_P2PMEM(_metadata, p, bdf, len)						\
	do {									\
		int _err = 0;							\
										\
		(p) = p2pmem_map((bdf), (len), &_err);				\
		ASSERT_THAT((p), "mmap %s p2pmem/allocate: %s", (bdf),	\
			    err_str(_err));					\
	} while (0)

static void *sys_buf(size_t len)
{
	void *p = NULL;

	return posix_memalign(&p, 4096, len) ? NULL : p;
}

static uint64_t pci_addr(const char *bdf)
{
	unsigned int dom, bus, dev, fn;

	if (sscanf(bdf, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4)
		return ~0ULL;
	return (uint64_t)dom << 16 | bus << 8 | dev << 3 | fn;
}

static int p2p_distance(struct vugpu_dev *client, const char *provider, int64_t *dist)
{
	struct vugpu_cmd cmd = { .offset = pci_addr(provider) };
	int ret = vugpu_cmd(client->fd, VUGPU_IOCTL_P2P_DISTANCE, &cmd);

	*dist = (int64_t)cmd.value;
	return ret;
}

/* GPU A's engine 0 copies @len bytes between two user buffers. */
static int gpu_copy(struct vugpu_dev *d, uint32_t flags, uint32_t src_type, uint64_t src,
		    uint32_t dst_type, uint64_t dst, uint64_t len, struct vugpu_dma *out)
{
	*out = (struct vugpu_dma){ .engine = 0, .flags = flags | VUGPU_DMA_IRQ,
				   .src_type = src_type, .dst_type = dst_type,
				   .src = src, .dst = dst, .length = len };
	return vugpu_dma(d->fd, VUGPU_IOCTL_DMA_COPY, out);
}

/* Prints how long one copy of @len bytes took (and its rate). */
static void print_rate(const char *what, uint64_t len, uint64_t ns)
{
	printf("# %s: %llu bytes in %llu us (%.1f MiB/s)\n", what, (unsigned long long)len,
	       (unsigned long long)(ns / 1000), ns ? (double)len / (1 << 20) * 1e9 / (double)ns : 0.0);
}

/* Offset of the first mismatch, or -1. */
static long mismatch(const void *a, const void *b, size_t len)
{
	const uint8_t *x = a, *y = b;
	size_t i;

	for (i = 0; i < len; i++)
		if (x[i] != y[i])
			return (long)i;
	return -1;
}

/*
 * GPU B's own view: its engine copies its whole p2pmem range of VRAM into
 * system memory; @want must be found there at a page boundary.
 */
static int provider_holds(struct p2p_ctx *c, const void *want, size_t len, uint64_t *found)
{
	uint64_t size = c->p2pmem_mb << 20, base = c->b->info.bar2_size - size, off;
	struct vugpu_dma d;
	uint8_t *view = sys_buf(size);
	int ret;

	if (!view)
		return -ENOMEM;
	ret = 0;
	for (off = 0; off < size && !ret; off += 16U << 20) {
		uint64_t n = size - off < (16U << 20) ? size - off : 16U << 20;

		ret = gpu_copy(c->b, 0, VUGPU_MEM_VRAM, base + off, VUGPU_MEM_USER,
			       (uintptr_t)view + off, n, &d);
	}
	if (!ret) {
		ret = -ENOENT;
		for (off = 0; off + len <= size; off += 4096) {
			if (!memcmp(view + off, want, len)) {
				*found = base + off;
				ret = 0;
				break;
			}
		}
	}
	free(view);
	return ret;
}

#define REQUIRE_GPUS(_metadata, c)							\
	do {									\
		ASSERT_THAT((c)->ndevs >= 2,					\
			    "need 2 vugpu functions, found %d", (c)->ndevs);	\
		ASSERT_THAT((c)->a->fd >= 0 && (c)->b->fd >= 0,		\
			    "%s / %s: /dev/vugpuN not open (driver not bound)",	\
			    (c)->a->bdf, (c)->b->bdf);				\
	} while (0)

/* ---- cases ------------------------------------------------------------------ */

static void p2pmem_published(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	int i;

	REQUIRE_GPUS(_metadata, c);
	for (i = 0; i < c->ndevs; i++) {
		char path[240], buf[64];
		unsigned long long size = 0, avail = 0;
		int published = -1;

		snprintf(path, sizeof(path), "%s/%s/p2pmem/size", VUGPU_SYSFS_PCI, c->devs[i].bdf);
		ASSERT_THAT(vugpu_read_file(path, buf, sizeof(buf)) > 0,
			    "%s: no p2pmem/size: the driver did not register p2pmem", c->devs[i].bdf);
		size = strtoull(buf, NULL, 0);
		snprintf(path, sizeof(path), "%s/%s/p2pmem/available", VUGPU_SYSFS_PCI, c->devs[i].bdf);
		if (vugpu_read_file(path, buf, sizeof(buf)) > 0)
			avail = strtoull(buf, NULL, 0);
		snprintf(path, sizeof(path), "%s/%s/p2pmem/published", VUGPU_SYSFS_PCI, c->devs[i].bdf);
		if (vugpu_read_file(path, buf, sizeof(buf)) > 0)
			published = atoi(buf);
		printf("# %s: p2pmem size %llu available %llu published %d\n", c->devs[i].bdf,
		       size, avail, published);
		EXPECT_THAT(size == c->p2pmem_mb << 20, "%s: p2pmem size %llu, expected %llu",
			    c->devs[i].bdf, size, (unsigned long long)(c->p2pmem_mb << 20));
		EXPECT_THAT(avail > 0 && avail <= size, "%s: p2pmem available %llu",
			    c->devs[i].bdf, avail);
		EXPECT_THAT(published == 1, "%s: p2pmem published %d", c->devs[i].bdf,
			    published);
	}
}

static void p2p_distance_gpus(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	int64_t ab = 0, ba = 0;
	int ret;

	REQUIRE_GPUS(_metadata, c);
	ret = p2p_distance(c->a, c->b->bdf, &ab);
	ASSERT_THAT(!ret, "P2P_DISTANCE: %s", err_str(ret));
	ret = p2p_distance(c->b, c->a->bdf, &ba);
	ASSERT_THAT(!ret, "P2P_DISTANCE: %s", err_str(ret));
	printf("# pci_p2pdma_distance %s -> %s: %lld, back: %lld\n", c->b->bdf, c->a->bdf,
	       (long long)ab, (long long)ba);
	if (c->refused) {
		EXPECT_THAT(ab < 0 && ba < 0,
			    "separate root ports: the kernel must refuse P2P (distance %lld/%lld)",
			    (long long)ab, (long long)ba);
	} else {
		/* Downstream port - upstream port - downstream port: 4 (drivers/pci/p2pdma.c). */
		EXPECT_THAT(ab == 4 && ba == 4, "behind one switch: distance %lld/%lld, expected 4",
			    (long long)ab, (long long)ba);
	}
}

static void p2pmem_cpu_view(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *want;
	uint64_t at = 0;
	int ret;

	REQUIRE_GPUS(_metadata, c);
	MAP_P2PMEM(_metadata, p, c->b->bdf, BUF_LEN);
	want = sys_buf(BUF_LEN);
	ASSERT_THAT(want, "no memory");
	vugpu_fill_pattern(want, BUF_LEN, 0x9a9a0001);
	memcpy(p, want, BUF_LEN);
	EXPECT_THAT(mismatch(p, want, BUF_LEN) < 0, "CPU read-back of p2pmem differs");
	/* The provider sees the CPU's stores in its VRAM (the BAR is its VRAM). */
	ret = provider_holds(c, want, BUF_LEN, &at);
	EXPECT_THAT(!ret, "%s: the CPU's data is not in its p2pmem VRAM range: %s",
		    c->b->bdf, err_str(ret));
	if (!ret)
		printf("# found at VRAM offset %#llx of %s\n", (unsigned long long)at, c->b->bdf);
	munmap(p, BUF_LEN);
	free(want);
}

/* GPU A's engine writes into GPU B's p2pmem (user mapping, FOLL_PCI_P2PDMA). */
static void gpu_a_writes_gpu_b(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *src;
	struct vugpu_dma d;
	uint64_t at = 0;
	int ret;

	REQUIRE_GPUS(_metadata, c);
	MAP_P2PMEM(_metadata, p, c->b->bdf, BUF_LEN);
	src = sys_buf(BUF_LEN);
	ASSERT_THAT(src, "no memory");
	memset(p, 0, BUF_LEN);
	vugpu_fill_pattern(src, BUF_LEN, 0xa2b0001);
	ret = gpu_copy(c->a, VUGPU_DMA_P2PDMA, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_USER,
		       (uintptr_t)p, BUF_LEN, &d);
	ASSERT_THAT(!ret, "%s COPY system -> %s p2pmem: %s (result %u, engine error %#x at %#llx)",
		    c->a->bdf, c->b->bdf, err_str(ret), d.result, d.regs.error_code,
		    (unsigned long long)d.regs.error_addr);
	printf("# out_flags %#x (%s), %u descriptor(s), %llu ns\n", d.out_flags,
	       d.out_flags & VUGPU_DMA_OUT_BOUNCED ? "bounced" :
	       d.out_flags & VUGPU_DMA_OUT_P2P_BUS ? "bus address" : "?",
	       d.descs, (unsigned long long)d.elapsed_ns);
	if (c->refused)
		EXPECT_THAT(d.out_flags & VUGPU_DMA_OUT_BOUNCED && !(d.out_flags & VUGPU_DMA_OUT_P2P_BUS),
			    "refused path: expected a bounce, out_flags %#x", d.out_flags);
	else
		EXPECT_THAT(d.out_flags == VUGPU_DMA_OUT_P2P_BUS,
			    "switch path: expected a direct bus-address transfer, out_flags %#x",
			    d.out_flags);
	EXPECT_THAT(mismatch(p, src, BUF_LEN) < 0, "CPU view of %s p2pmem differs at %ld",
		    c->b->bdf, mismatch(p, src, BUF_LEN));
	ret = provider_holds(c, src, BUF_LEN, &at);
	EXPECT_THAT(!ret, "%s's engine does not find the data in its own VRAM: %s", c->b->bdf,
		    err_str(ret));
	munmap(p, BUF_LEN);
	free(src);
}

/* GPU A's engine reads GPU B's p2pmem into A's VRAM. */
static void gpu_a_reads_gpu_b(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *back;
	struct vugpu_dma d;
	int ret;

	REQUIRE_GPUS(_metadata, c);
	MAP_P2PMEM(_metadata, p, c->b->bdf, BUF_LEN);
	back = sys_buf(BUF_LEN);
	ASSERT_THAT(back, "no memory");
	vugpu_fill_pattern(p, BUF_LEN, 0xb2a0002);
	ret = gpu_copy(c->a, VUGPU_DMA_P2PDMA, VUGPU_MEM_USER, (uintptr_t)p, VUGPU_MEM_VRAM,
		       0x100000, BUF_LEN, &d);
	ASSERT_THAT(!ret, "%s COPY %s p2pmem -> VRAM: %s (result %u, engine error %#x at %#llx)",
		    c->a->bdf, c->b->bdf, err_str(ret), d.result, d.regs.error_code,
		    (unsigned long long)d.regs.error_addr);
	EXPECT_THAT(!!(d.out_flags & VUGPU_DMA_OUT_BOUNCED) == c->refused,
		    "out_flags %#x (%s path)", d.out_flags, c->refused ? "refused" : "switch");
	ret = vugpu_vram_io(c->a->fd, VUGPU_IOCTL_VRAM_READ, 0x100000, back, BUF_LEN);
	ASSERT_THAT(!ret, "VRAM_READ: %s", err_str(ret));
	EXPECT_THAT(mismatch(back, p, BUF_LEN) < 0, "%s VRAM differs from %s p2pmem at %ld",
		    c->a->bdf, c->b->bdf, mismatch(back, p, BUF_LEN));
	munmap(p, BUF_LEN);
	free(back);
}

/*
 * Without FOLL_PCI_P2PDMA the kernel refuses to pin p2pmem: GUP's
 * try_grab_folio() fails P2PDMA folios with -EREMOTEIO.  p2pmem is the source
 * here: a FOLL_LONGTERM | FOLL_WRITE pin of this shared sysfs mapping would be
 * refused earlier, with -EFAULT, for a different reason (it needs dirty tracking).
 */
static void pin_needs_foll_pci_p2pdma(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *dst;
	struct vugpu_dma d;
	int ret;

	REQUIRE_GPUS(_metadata, c);
	MAP_P2PMEM(_metadata, p, c->b->bdf, BUF_LEN);
	dst = sys_buf(4096);
	ASSERT_THAT(dst, "no memory");
	memset(p, 0x5a, 4096);
	memset(dst, 0, 4096);
	ret = gpu_copy(c->a, 0, VUGPU_MEM_USER, (uintptr_t)p, VUGPU_MEM_USER, (uintptr_t)dst,
		       4096, &d);
	EXPECT_THAT(ret == -EREMOTEIO,
		    "COPY from p2pmem without VUGPU_DMA_P2PDMA: %s, expected EREMOTEIO (GUP must refuse P2PDMA pages without FOLL_PCI_P2PDMA)",
		    ret ? err_str(ret) : "succeeded");
	EXPECT_THAT(dst[0] == 0, "the refused copy still moved data");
	/* And with the flag the same copy goes through. */
	ret = gpu_copy(c->a, VUGPU_DMA_P2PDMA, VUGPU_MEM_USER, (uintptr_t)p, VUGPU_MEM_USER,
		       (uintptr_t)dst, 4096, &d);
	EXPECT_THAT(!ret && dst[0] == 0x5a && dst[4095] == 0x5a, "with FOLL_PCI_P2PDMA: %s",
		    ret ? err_str(ret) : "data not copied");
	munmap(p, BUF_LEN);
	free(dst);
}

/* The driver said why it bounced, in the kernel log. */
static void bounce_is_logged(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	char *log = malloc(1 << 20);
	int n;

	REQUIRE_GPUS(_metadata, c);
	ASSERT_THAT(log, "no memory");
	n = vugpu_dmesg(log, 1 << 20);
	ASSERT_THAT(n > 0, "cannot read the kernel log: %s", err_str(n));
	EXPECT_THAT(strstr(log, "bouncing through system memory") != NULL,
		    "no 'bouncing through system memory' line from vugpu in the kernel log");
	free(log);
}

/* ---- NVMe ------------------------------------------------------------------- */

static int find_nvme(struct p2p_ctx *c)
{
	char target[300];
	const char *slash;
	ssize_t n;
	int i;

	n = readlink("/sys/class/nvme/nvme0/device", target, sizeof(target) - 1);
	if (n <= 0)
		return -ENODEV;
	target[n] = 0;
	slash = strrchr(target, '/');
	snprintf(c->nvme_bdf, sizeof(c->nvme_bdf), "%.31s", slash ? slash + 1 : target);
	for (i = 0; i < 2; i++)
		snprintf(c->nvme_ns[i], sizeof(c->nvme_ns[i]), "/dev/nvme0n%d", i + 1);
	return 0;
}

static int nvme_io(const char *dev, bool write, void *buf, size_t len)
{
	int fd = open(dev, (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write ? pwrite(fd, buf, len, 0) : pread(fd, buf, len, 0);
	if (n < 0)
		n = -errno;
	else if ((size_t)n != len)
		n = -EIO;
	if (write && n >= 0 && fsync(fd))
		n = -errno;
	close(fd);
	return n < 0 ? (int)n : 0;
}

#define REQUIRE_NVME(_metadata, c)							\
	do {									\
		REQUIRE_GPUS(_metadata, c);						\
		ASSERT_THAT((c)->nvme_bdf[0],				\
			    "no NVMe controller bound to the nvme driver (/sys/class/nvme/nvme0)"); \
		ASSERT_THAT(vugpu_path_exists((c)->nvme_ns[1]),		\
			    "%s: no second namespace", (c)->nvme_ns[1]);	\
	} while (0)

/* NVMe reads straight into GPU B's p2pmem (O_DIRECT, the user buffer is p2pmem). */
static void nvme_reads_into_gpu_p2pmem(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *data;
	uint64_t at = 0;
	int ret;

	REQUIRE_NVME(_metadata, c);
	data = sys_buf(NVME_LEN);
	ASSERT_THAT(data, "no memory");
	vugpu_fill_pattern(data, NVME_LEN, 0xe1e10001);
	ret = nvme_io(c->nvme_ns[0], true, data, NVME_LEN);
	ASSERT_THAT(!ret, "write %s from system memory: %s", c->nvme_ns[0], err_str(ret));
	MAP_P2PMEM(_metadata, p, c->b->bdf, NVME_LEN);
	memset(p, 0, NVME_LEN);
	ret = nvme_io(c->nvme_ns[0], false, p, NVME_LEN);
	ASSERT_THAT(!ret, "O_DIRECT read %s into %s p2pmem: %s", c->nvme_ns[0], c->b->bdf,
		    err_str(ret));
	EXPECT_THAT(mismatch(p, data, NVME_LEN) < 0, "p2pmem differs from the data at %ld",
		    mismatch(p, data, NVME_LEN));
	ret = provider_holds(c, data, 1 << 20, &at);
	EXPECT_THAT(!ret, "%s's engine does not find the NVMe data in its VRAM: %s", c->b->bdf,
		    err_str(ret));
	munmap(p, NVME_LEN);
	free(data);
}

/* NVMe writes straight from GPU B's p2pmem; read back through system memory. */
static void nvme_writes_from_gpu_p2pmem(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *p, *back;
	int ret;

	REQUIRE_NVME(_metadata, c);
	MAP_P2PMEM(_metadata, p, c->b->bdf, NVME_LEN);
	back = sys_buf(NVME_LEN);
	ASSERT_THAT(back, "no memory");
	vugpu_fill_pattern(p, NVME_LEN, 0xe2e20002);
	ret = nvme_io(c->nvme_ns[1], true, p, NVME_LEN);
	ASSERT_THAT(!ret, "O_DIRECT write %s from %s p2pmem: %s", c->nvme_ns[1], c->b->bdf,
		    err_str(ret));
	memset(back, 0, NVME_LEN);
	ret = nvme_io(c->nvme_ns[1], false, back, NVME_LEN);
	ASSERT_THAT(!ret, "read %s into system memory: %s", c->nvme_ns[1], err_str(ret));
	EXPECT_THAT(mismatch(back, p, NVME_LEN) < 0, "namespace 2 differs from p2pmem at %ld",
		    mismatch(back, p, NVME_LEN));
	munmap(p, NVME_LEN);
	free(back);
}

/* GPU A's engine writes into the NVMe's CMB, published as p2pmem, and reads it back. */
static void gpu_writes_nvme_cmb(struct __test_metadata *_metadata, void *ctx)
{
	struct p2p_ctx *c = ctx;
	uint8_t *cmb, *src;
	struct vugpu_dma d;
	struct vugpu_regs regs;
	int64_t dist = 0;
	uint64_t t0;
	int ret;

	REQUIRE_NVME(_metadata, c);
	ret = p2p_distance(c->a, c->nvme_bdf, &dist);
	ASSERT_THAT(!ret, "P2P_DISTANCE %s: %s", c->nvme_bdf, err_str(ret));
	printf("# pci_p2pdma_distance %s -> %s: %lld\n", c->nvme_bdf, c->a->bdf, (long long)dist);
	EXPECT_THAT(dist == 4, "NVMe behind the same switch: distance %lld, expected 4",
		    (long long)dist);
	MAP_P2PMEM(_metadata, cmb, c->nvme_bdf, BUF_LEN);
	src = sys_buf(BUF_LEN);
	ASSERT_THAT(src, "no memory");
	vugpu_fill_pattern(src, BUF_LEN, 0xc3b0003);
	memset(cmb, 0, BUF_LEN);
	t0 = vugpu_now_ns();
	ret = gpu_copy(c->a, VUGPU_DMA_P2PDMA, VUGPU_MEM_USER, (uintptr_t)src, VUGPU_MEM_USER,
		       (uintptr_t)cmb, BUF_LEN, &d);
	ASSERT_THAT(!ret, "%s COPY system -> NVMe CMB: %s (result %u, engine error %#x at %#llx)",
		    c->a->bdf, err_str(ret), d.result, d.regs.error_code,
		    (unsigned long long)d.regs.error_addr);
	print_rate("COPY system -> NVMe CMB (peer window, DMA messages)", BUF_LEN, vugpu_now_ns() - t0);
	EXPECT_THAT(d.out_flags == VUGPU_DMA_OUT_P2P_BUS, "out_flags %#x", d.out_flags);
	EXPECT_THAT(mismatch(cmb, src, BUF_LEN) < 0, "CMB differs at %ld",
		    mismatch(cmb, src, BUF_LEN));
	/*
	 * An FLR closes the device's peer windows (hw-spec §6.10); the driver
	 * programs its windows again after the reset, so the copy back still
	 * reaches the CMB.
	 */
	ret = vugpu_reset(c->a->fd, VUGPU_IOCTL_FLR, &regs, NULL);
	ASSERT_THAT(!ret, "%s FLR: %s", c->a->bdf, err_str(ret));
	/* And back: CMB -> GPU A's VRAM. */
	t0 = vugpu_now_ns();
	ret = gpu_copy(c->a, VUGPU_DMA_P2PDMA, VUGPU_MEM_USER, (uintptr_t)cmb, VUGPU_MEM_VRAM,
		       0x300000, BUF_LEN, &d);
	ASSERT_THAT(!ret, "COPY NVMe CMB -> VRAM: %s (result %u, engine error %#x at %#llx)",
		    err_str(ret), d.result, d.regs.error_code, (unsigned long long)d.regs.error_addr);
	print_rate("COPY NVMe CMB -> VRAM (peer window, DMA messages)", BUF_LEN, vugpu_now_ns() - t0);
	memset(src, 0, BUF_LEN);
	ret = vugpu_vram_io(c->a->fd, VUGPU_IOCTL_VRAM_READ, 0x300000, src, BUF_LEN);
	ASSERT_THAT(!ret, "VRAM_READ: %s", err_str(ret));
	EXPECT_THAT(mismatch(src, cmb, BUF_LEN) < 0, "VRAM differs from the CMB at %ld",
		    mismatch(src, cmb, BUF_LEN));
	munmap(cmb, BUF_LEN);
	free(src);
}

/* ---- benchmark -------------------------------------------------------------- */

#define BENCH_CHUNK	(64U << 10)
#define BENCH_ROUNDS	5

/* One NVMe ns1 -> @buf -> ns2 pass of @total bytes in 64 KiB chunks; ns, or 0 on error. */
static uint64_t bench_pass(struct p2p_ctx *c, uint8_t *buf, uint64_t total)
{
	int in = open(c->nvme_ns[0], O_RDONLY | O_DIRECT | O_CLOEXEC);
	int out = open(c->nvme_ns[1], O_WRONLY | O_DIRECT | O_CLOEXEC);
	uint64_t t0 = vugpu_now_ns(), off, ns = 0;

	if (in >= 0 && out >= 0) {
		for (off = 0; off < total; off += BENCH_CHUNK) {
			if (pread(in, buf, BENCH_CHUNK, (off_t)off) != BENCH_CHUNK ||
			    pwrite(out, buf, BENCH_CHUNK, (off_t)off) != BENCH_CHUNK)
				break;
		}
		if (off >= total && !fsync(out))
			ns = vugpu_now_ns() - t0;
	}
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return ns;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int bench(struct p2p_ctx *c, uint64_t mib)
{
	uint64_t total = mib << 20, p2p_ns[BENCH_ROUNDS], sys_ns[BENCH_ROUNDS];
	uint8_t *p, *sys;
	int err = 0, r;

	if (c->ndevs < 2 || !c->nvme_bdf[0]) {
		printf("# bench: needs 2 GPUs and the NVMe with two namespaces\n");
		return 1;
	}
	p = p2pmem_map(c->b->bdf, BENCH_CHUNK, &err);
	sys = sys_buf(BENCH_CHUNK);
	if (!p || !sys) {
		printf("# bench: buffers: %s\n", err_str(err ? err : -ENOMEM));
		return 1;
	}
	for (r = 0; r < BENCH_ROUNDS; r++) {
		p2p_ns[r] = bench_pass(c, p, total);
		sys_ns[r] = bench_pass(c, sys, total);
		if (!p2p_ns[r] || !sys_ns[r]) {
			printf("# bench: round %d failed\n", r);
			return 1;
		}
	}
	qsort(p2p_ns, BENCH_ROUNDS, sizeof(p2p_ns[0]), cmp_u64);
	qsort(sys_ns, BENCH_ROUNDS, sizeof(sys_ns[0]), cmp_u64);
	printf("# bench nvme->buffer->nvme %llu MiB, 64 KiB chunks, O_DIRECT, median of %d interleaved rounds\n",
	       (unsigned long long)mib, BENCH_ROUNDS);
	printf("# bench p2pmem (%s): %.1f MB/s\n", c->b->bdf,
	       total * 1e3 / (double)p2p_ns[BENCH_ROUNDS / 2]);
	printf("# bench system memory: %.1f MB/s\n", total * 1e3 / (double)sys_ns[BENCH_ROUNDS / 2]);
	printf("# bench ratio p2pmem/system: %.2f\n",
	       (double)sys_ns[BENCH_ROUNDS / 2] / (double)p2p_ns[BENCH_ROUNDS / 2]);
	munmap(p, BENCH_CHUNK);
	free(sys);
	return 0;
}

/* The options, filled in by main() before the tests run. */
static struct p2p_ctx opts = { .p2pmem_mb = 32 };

static void p2p_open(struct p2p_ctx *c)
{
	int a;

	c->ndevs = vugpu_find_devs(VUGPU_PCI_VENDOR_ID, VUGPU_PCI_DEVICE_ID, c->devs, VUGPU_MAX_DEVS);
	if (c->ndevs < 0)
		c->ndevs = 0;
	for (a = 0; a < c->ndevs; a++) {
		int ret = vugpu_open(&c->devs[a], 2000);

		if (ret)
			diag("%s: cannot open its /dev/vugpuN: %s", c->devs[a].bdf, err_str(ret));
	}
	c->a = &c->devs[0];
	c->b = &c->devs[c->ndevs > 1 ? 1 : 0];
	if (c->ndevs == 0)
		c->devs[0].fd = -1;
	find_nvme(c);
}

static void p2p_close(struct p2p_ctx *c)
{
	int a;

	for (a = 0; a < c->ndevs; a++)
		vugpu_close(&c->devs[a]);
}

/*
 * Two plans (VUGPU_P2P_MODE, see above): fixture p2p for the switch
 * topology, p2p_refused for separate root ports; main() runs one of them.
 * Each test process finds and opens the GPUs and the NVMe afresh.
 */
FIXTURE(p2p) {
	struct p2p_ctx c;
};

FIXTURE_SETUP(p2p)
{
	self->c = opts;
	p2p_open(&self->c);
}

FIXTURE_TEARDOWN(p2p)
{
	p2p_close(&self->c);
}

FIXTURE(p2p_refused) {
	struct p2p_ctx c;
};

FIXTURE_SETUP(p2p_refused)
{
	self->c = opts;
	self->c.refused = true;
	p2p_open(&self->c);
}

FIXTURE_TEARDOWN(p2p_refused)
{
	p2p_close(&self->c);
}

/*
 * Seconds per test (the harness kills a test that takes longer and reports it
 * failed): below the suite's 300 s boot timeout.
 */
#define P2P_TIMEOUT 90

#define P2P_TEST(fixture, name)							\
	TEST_F_TIMEOUT(fixture, name, P2P_TIMEOUT)				\
	{									\
		name(_metadata, &self->c);					\
	}

/* The tests of each plan, in this order. */
P2P_TEST(p2p, p2pmem_published)
P2P_TEST(p2p, p2p_distance_gpus)
P2P_TEST(p2p, p2pmem_cpu_view)
P2P_TEST(p2p, gpu_a_writes_gpu_b)
P2P_TEST(p2p, gpu_a_reads_gpu_b)
P2P_TEST(p2p, pin_needs_foll_pci_p2pdma)
P2P_TEST(p2p, nvme_reads_into_gpu_p2pmem)
P2P_TEST(p2p, nvme_writes_from_gpu_p2pmem)
P2P_TEST(p2p, gpu_writes_nvme_cmb)

P2P_TEST(p2p_refused, p2pmem_published)
P2P_TEST(p2p_refused, p2p_distance_gpus)
P2P_TEST(p2p_refused, p2pmem_cpu_view)
P2P_TEST(p2p_refused, gpu_a_writes_gpu_b)
P2P_TEST(p2p_refused, gpu_a_reads_gpu_b)
P2P_TEST(p2p_refused, pin_needs_foll_pci_p2pdma)
P2P_TEST(p2p_refused, bounce_is_logged)

static uint64_t opt_bench_mib;

static int option(const char *opt, const char *val)
{
	uint64_t *num = NULL;

	if (!strcmp(opt, "--p2pmem-mb"))
		num = &opts.p2pmem_mb;
	else if (!strcmp(opt, "--bench"))
		num = &opt_bench_mib;
	if (!num || !val || vugpu_parse_u64(val, num) || !opts.p2pmem_mb || opts.p2pmem_mb > 4096 ||
	    opt_bench_mib > 60)
		return 0;
	return 2;
}

int main(int argc, char **argv)
{
	const char *mode = getenv("VUGPU_P2P_MODE");
	const char *usage = "[--p2pmem-mb N] [--bench MIB] (VUGPU_P2P_MODE=switch|refused selects the plan)";
	char **rest, **argv2;
	int n = vugpu_harness_opts(argc, argv, option, usage, &rest);

	if (n < 0)
		return 2;
	if (mode && strcmp(mode, "refused") && strcmp(mode, "switch")) {
		fprintf(stderr, "%s: VUGPU_P2P_MODE must be switch or refused\nusage: %s %s\n", argv[0],
			argv[0], usage);
		return 2;
	}
	if (opt_bench_mib) {
		/* A measurement, not tests: "# bench" lines, no TAP. */
		struct p2p_ctx c = opts;
		int ret;

		p2p_open(&c);
		ret = bench(&c, opt_bench_mib);
		p2p_close(&c);
		return ret;
	}
	/* The plan: the harness's fixture filter, ahead of any filter given. */
	argv2 = calloc((size_t)n + 3, sizeof(*argv2));
	if (!argv2)
		return 1;
	argv2[0] = rest[0];
	argv2[1] = "-f";
	argv2[2] = mode && !strcmp(mode, "refused") ? "p2p_refused" : "p2p";
	memcpy(argv2 + 3, rest + 1, (size_t)(n - 1) * sizeof(*argv2));
	return test_harness_run(n + 2, argv2);
}
