// SPDX-License-Identifier: GPL-2.0
/*
 * vugpu-hmm-stats - print the MMU counters of vugpu GPUs that have a
 * /dev/hmm_dmirrorN (vugpu.ko dmirror=1) as KTAP diagnostic lines, for the
 * hmm suite after its vugpu phase.
 *
 * usage: vugpu-hmm-stats [N...]   (default: 0 and 1)
 *
 * VUGPU_DMIRROR_STATS (vugpu_hmm_uapi.h) returns the GPU's driver counters
 * (fault interrupts, fault records, replays, cancels, TLB invalidations) and
 * the device's own (hw-spec §9.1: FAULTS, FAULTS_DROPPED, REPLAYS, CANCELS,
 * TLB_HITS, TLB_MISSES, INVALIDATIONS) since the module was loaded.  Opening
 * the node makes a mirror of this process, whose own counters are 0.
 *
 * Exit status: 0 if every node answered, 1 otherwise (test_hmm's nodes do
 * not know the ioctl: ENOTTY).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vugpu_hmm_uapi.h"

static int print_one(int n)
{
	static const char *const hw[] = {
		"FAULTS", "FAULTS_DROPPED", "REPLAYS", "CANCELS",
		"TLB_HITS", "TLB_MISSES", "INVALIDATIONS",
	};
	struct vugpu_dmirror_stats st;
	char path[64];
	unsigned int i;
	int fd;

	snprintf(path, sizeof(path), "/dev/hmm_dmirror%d", n);
	fd = open(path, O_RDWR);
	if (fd < 0) {
		printf("# %s: %s\n", path, strerror(errno));
		return 1;
	}
	memset(&st, 0, sizeof(st));
	if (ioctl(fd, VUGPU_DMIRROR_STATS, &st) < 0) {
		printf("# %s: VUGPU_DMIRROR_STATS: %s\n", path, strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);
	printf("# %s driver: fault_irqs %llu faults %llu serviced %llu cancels %llu overflows %llu invalidations %llu stray %llu; fault service %.1f ms, MMU control jobs %llu in %.1f ms\n",
	       path, (unsigned long long)st.fault_irqs, (unsigned long long)st.faults,
	       (unsigned long long)st.faults_serviced, (unsigned long long)st.cancels,
	       (unsigned long long)st.overflows, (unsigned long long)st.invalidations,
	       (unsigned long long)st.stray, st.service_ns / 1e6,
	       (unsigned long long)st.ctl_runs, st.ctl_ns / 1e6);
	printf("# %s device:", path);
	for (i = 0; i < sizeof(hw) / sizeof(hw[0]); i++)
		printf(" %s %llu", hw[i], (unsigned long long)st.hw[i]);
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	int rc = 0, i;

	if (argc < 2)
		return print_one(0) | print_one(1);
	for (i = 1; i < argc; i++) {
		char *end;
		long n = strtol(argv[i], &end, 10);

		if (*end || n < 0 || n > 255) {
			fprintf(stderr, "usage: vugpu-hmm-stats [N...]\n");
			return 2;
		}
		rc |= print_one((int)n);
	}
	return rc;
}
