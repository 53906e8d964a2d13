// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-dmactl - issue single DMA engine operations by hand (debugging aid).
 *
 *   vugpu-dmactl [-d /dev/vugpuN] [-e ENGINE] [-i] [-r] copy SRC DST LEN
 *   vugpu-dmactl [-d ...] [-e ENGINE] [-i] [-r] fill DST LEN PATTERN
 *   vugpu-dmactl [-d ...] info | stats ENGINE | errors [clear] | reset ENGINE
 *
 * SRC/DST: vram:OFF, scratch:OFF, bus:ADDR (raw SYS bus address), or
 * user:LEN-less "user" (a buffer of LEN bytes in this process, printed as
 * hex when it is the destination).  -i waits by interrupt (default: fence
 * polling); -r rings the doorbell through RING_TAIL (a trapped write) instead
 * of the doorbell page.  Prints the result and, on failure, the engine registers.
 * Exit status 0 on success, 1 on a failed operation, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vugpu_lib.h"

static int parse_mem(const char *s, __u32 *type, __u64 *addr)
{
	static const struct {
		const char *prefix;
		uint32_t type;
	} kinds[] = {
		{ "vram:", VUGPU_MEM_VRAM }, { "scratch:", VUGPU_MEM_SCRATCH }, { "bus:", VUGPU_MEM_BUS },
	};
	unsigned int i;

	if (!strcmp(s, "user")) {
		*type = VUGPU_MEM_USER;
		*addr = 0;
		return 0;
	}
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		size_t l = strlen(kinds[i].prefix);

		if (!strncmp(s, kinds[i].prefix, l)) {
			char *end;

			*type = kinds[i].type;
			errno = 0;
			*addr = strtoull(s + l, &end, 0);
			return errno || *end ? -1 : 0;
		}
	}
	return -1;
}

static void print_regs(const struct vugpu_engine_regs *r)
{
	printf("engine: STATUS %s (%#x) ERROR_CODE %u %s ERROR_ADDR %#llx ERROR_INFO %#x HEAD %u TAIL %u CONTROL %#x\n",
	       vugpu_eng_state_name(r->status), r->status, r->error_code,
	       vugpu_eng_err_name(r->error_code), (unsigned long long)r->error_addr, r->error_info,
	       r->head, r->tail, r->control);
}

static int usage(void)
{
	fprintf(stderr, "usage: vugpu-dmactl [-d DEV] [-e ENGINE] [-i] [-r] copy SRC DST LEN | fill DST LEN PATTERN |\n"
			"                    info | stats ENGINE | errors [clear] | reset ENGINE\n"
			"       SRC/DST: vram:OFF scratch:OFF bus:ADDR user\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/vugpu0";
	struct vugpu_dma d = { 0 };
	unsigned int engine = 0;
	bool irq = false, dbreg = false;
	uint8_t *buf = NULL;
	int opt, fd, ret;

	while ((opt = getopt(argc, argv, "d:e:ir")) != -1) {
		if (opt == 'd')
			dev = optarg;
		else if (opt == 'e')
			engine = (unsigned int)strtoul(optarg, NULL, 0);
		else if (opt == 'i')
			irq = true;
		else if (opt == 'r')
			dbreg = true;
		else
			return usage();
	}
	if (optind >= argc)
		return usage();
	fd = open(dev, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror(dev);
		return 1;
	}
	argv += optind;
	argc -= optind;

	if (!strcmp(argv[0], "info")) {
		struct vugpu_dma_info in;

		ret = vugpu_dma_info(fd, &in);
		if (ret)
			goto fail;
		printf("engines %u (ready %#x, VRAM rings %#x), vectors from %u, timeout %u ms, init %d\n"
		       "VRAM %#llx, VRAM ring area %#llx+%#llx, scratch %#llx+%#llx (guards %llu, damaged %llu)\n"
		       "vector 0 irqs %llu, engine errors %llu, recoveries %llu, timeouts %llu\n",
		       in.engine_count, in.ready_mask, in.ring_vram_mask, in.vector_base, in.timeout_ms,
		       in.init_error, (unsigned long long)in.vram_size,
		       (unsigned long long)in.vram_ring_base, (unsigned long long)in.vram_ring_size,
		       (unsigned long long)in.scratch_dma, (unsigned long long)in.scratch_size,
		       (unsigned long long)in.guard_size, (unsigned long long)in.guard_bad,
		       (unsigned long long)in.vec0_irqs, (unsigned long long)in.err_irqs,
		       (unsigned long long)in.recoveries, (unsigned long long)in.timeouts);
		return 0;
	}
	if (!strcmp(argv[0], "stats") && argc == 2) {
		static const char *const names[] = {
			"JOBS", "BYTES_SYS_TO_VRAM", "BYTES_VRAM_TO_SYS", "BYTES_VRAM_TO_VRAM",
			"BYTES_SYS_TO_SYS", "BYTES_FILL", "NS_REQUESTED", "NS_USED", "RO_REQUESTED",
			"RO_USED", "BYTES_NS", "BYTES_RO", "ERRORS", "IRQS",
		};
		struct vugpu_engine_stats st;
		unsigned int i;

		ret = vugpu_engine_stats(fd, (unsigned int)strtoul(argv[1], NULL, 0), &st);
		if (ret)
			goto fail;
		for (i = 0; i < 14; i++)
			printf("%-20s %llu\n", names[i], (unsigned long long)st.hw[i]);
		printf("driver: jobs %llu descs %llu irq_waits %llu poll_waits %llu completion_irqs %llu err_irqs %llu errors %llu timeouts %llu resets %llu\n",
		       (unsigned long long)st.jobs, (unsigned long long)st.descs,
		       (unsigned long long)st.irq_waits, (unsigned long long)st.poll_waits,
		       (unsigned long long)st.completion_irqs, (unsigned long long)st.err_irqs,
		       (unsigned long long)st.errors, (unsigned long long)st.timeouts,
		       (unsigned long long)st.resets);
		printf("last error seen by vector 0: ");
		print_regs(&st.irq_error);
		return 0;
	}
	if (!strcmp(argv[0], "errors")) {
		struct vugpu_error_state es;
		unsigned int i;

		ret = vugpu_error_state(fd, &es, argc > 1 && !strcmp(argv[1], "clear"));
		if (ret)
			goto fail;
		printf("ERR_CAUSE %#x AER@%#x uncor status %#x mask %#x severity %#x cap/ctl %#x header %08x %08x %08x %08x\n"
		       "Device Status %#x Device Control %#x Status %#x; vector 0 irqs %llu, engine errors %llu\n",
		       es.err_cause, es.aer_pos, es.aer_uncor_status, es.aer_uncor_mask,
		       es.aer_uncor_severity, es.aer_cap_ctrl, es.aer_header_log[0], es.aer_header_log[1],
		       es.aer_header_log[2], es.aer_header_log[3], es.devsta, es.devctl, es.pci_status,
		       (unsigned long long)es.vec0_irqs, (unsigned long long)es.err_irqs);
		for (i = 0; i < es.engine_count && i < VUGPU_ENGINE_MAX; i++) {
			printf("%u ", i);
			print_regs(&es.engine[i]);
		}
		return 0;
	}
	if (!strcmp(argv[0], "reset") && argc == 2) {
		d.engine = (unsigned int)strtoul(argv[1], NULL, 0);
		ret = vugpu_dma(fd, VUGPU_IOCTL_ENGINE_RESET, &d);
		print_regs(&d.regs);
		if (ret)
			goto fail;
		return 0;
	}

	d.engine = engine;
	d.flags = (irq ? VUGPU_DMA_IRQ : 0) | (dbreg ? VUGPU_DMA_DB_REG : 0);
	if (!strcmp(argv[0], "copy") && argc == 4) {
		if (parse_mem(argv[1], &d.src_type, &d.src) || parse_mem(argv[2], &d.dst_type, &d.dst))
			return usage();
		d.length = strtoull(argv[3], NULL, 0);
	} else if (!strcmp(argv[0], "fill") && argc == 4) {
		if (parse_mem(argv[1], &d.dst_type, &d.dst))
			return usage();
		d.length = strtoull(argv[2], NULL, 0);
		d.value = strtoull(argv[3], NULL, 0);
	} else {
		return usage();
	}
	if (d.src_type == VUGPU_MEM_USER || d.dst_type == VUGPU_MEM_USER) {
		buf = calloc(1, d.length ? d.length : 1);
		if (!buf)
			return 1;
		if (d.src_type == VUGPU_MEM_USER)
			d.src = (uintptr_t)buf;
		if (d.dst_type == VUGPU_MEM_USER)
			d.dst = (uintptr_t)buf;
	}
	ret = vugpu_dma(fd, argv[0][0] == 'c' ? VUGPU_IOCTL_DMA_COPY : VUGPU_IOCTL_DMA_FILL, &d);
	printf("%s: %s, %u descriptors, %llu us\n", argv[0], ret ? strerror(-ret) : "done", d.descs,
	       (unsigned long long)d.elapsed_ns / 1000);
	if (ret) {
		print_regs(&d.regs);
		return 1;
	}
	if (buf && d.dst_type == VUGPU_MEM_USER) {
		uint64_t i;

		for (i = 0; i < d.length && i < 64; i++)
			printf("%02x%s", buf[i], (i % 16 == 15) ? "\n" : " ");
		printf("\n");
	}
	free(buf);
	return 0;
fail:
	fprintf(stderr, "%s: %s\n", argv[0], strerror(-ret));
	return 1;
}
