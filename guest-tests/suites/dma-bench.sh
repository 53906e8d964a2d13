#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1+
# vugpu-vm: topology any
# vugpu-vm: peer any
#
# dma-bench.sh - DMA engine measurements for vugpu GPUs (no thresholds).
#
# Run by the guest's /init as `sh /suites/dma-bench.sh`.  Steps, each one
# KTAP result ("ok" means the measurement ran and its data checked out; the
# numbers are "# bench ..." lines):
#   1        insmod vugpu.ko
#   2        vugpu_dma_bench: vugpu-dma-bench's measurements as subtests
#            dma_bench.NAME, each in a process of its own: engine
#            SYS->VRAM / VRAM->SYS bandwidth at
#            4 KiB-16 MiB as ratios to memcpy into / out of the mmapped BAR2
#            and RAM memcpy of the same sizes in the same run; 64-byte job
#            rates with interrupt and fence-polling completion, through the
#            doorbell page (with and without the §6.4 SLEEPING check) and
#            the trapped RING_TAIL register; pickup latency of one job after
#            3 ms of idleness per submission mode
#   3        rmmod vugpu
#   4        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# If the driver loads but the GPU has no DMA engines (ENGINE_COUNT 0, e.g. a
# server without engine support) the whole document is `1..0 # SKIP`, which
# the runner fails as an unexpected skip (exit 5), never a pass.
# The steps themselves are lib/suite.sh's (its header is their contract).
#
# Kernel command line (vugpu-vm --append): vugpu.ring_slots=N,
# vugpu.ring_vram=1 (rings in VRAM) become module parameters;
# vugpu_dma_bench.quick=1 measures with fewer repetitions.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_BENCH_ARGS.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init dma-bench "${VUGPU_BENCH_ARGS:-}"
for word in $(suite_cmdline); do
	case "$word" in
	vugpu.ring_slots=*|vugpu.ring_vram=*|vugpu.dma_timeout_ms=*)
		suite_module_param "$word" ;;
	vugpu_dma_bench.quick=1)
		suite_program_arg --quick ;;
	esac
done

# The driver loads before the plan: a GPU without engines skips the suite.
suite_load_module
# shellcheck disable=SC2119 # any function: no --vendor/--device words here
suite_require_engines

suite_plan 4 ", engines: $SUITE_ENGINES"
suite_report_load 1
suite_harness --timed 2 vugpu-dma-bench
suite_rmmod 3
suite_dmesg_check 4
suite_end
