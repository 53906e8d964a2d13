#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1+
# vugpu-vm: topology any
# vugpu-vm: peer any
#
# dma.sh - DMA copy engine suite for vugpu GPUs (docs/hw-spec.md §5-§8).
#
# Run by the guest's /init as `sh /suites/dma.sh` (busybox applets in PATH;
# /proc, /sys, /dev mounted; the module at /lib/modules/vugpu.ko, not loaded
# yet).  Steps, each one KTAP result:
#   1        insmod vugpu.ko and wait for the driver to appear
#   2        vugpu_dma: vugpu-dma's tests as subtests dma.NAME (every copy
#            direction and size, fill, fence, timestamp, completion modes,
#            counters, No Snoop / Relaxed Ordering, rings, ioctl validation,
#            bad addresses and AER, descriptor errors, timeouts, concurrent
#            engines, hostile descriptors, resets, Bus Master Enable
#            gating), each in a process of its own
#   3        rmmod vugpu (engines stopped and freed with jobs done)
#   4        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# If the driver loads but the GPU has no DMA engines (ENGINE_COUNT 0, e.g. a
# server without engine support) the whole document is `1..0 # SKIP`, which
# the runner fails as an unexpected skip (exit 5), never a pass.
# The steps themselves are lib/suite.sh's (its header is their contract).
#
# Kernel command line (vugpu-vm --append): vugpu.vendor=ID, vugpu.device=ID,
# vugpu.dma_timeout_ms=MS, vugpu.ring_slots=N, vugpu.ring_vram=1 become module
# parameters (vendor/device also select the function); vugpu_dma.hostile=N
# (descriptors in the hostile test, default 5000) and vugpu_dma.seed=N.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_DMA_ARGS.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init dma "${VUGPU_DMA_ARGS:-}"
for word in $(suite_cmdline); do
	case "$word" in
	vugpu.vendor=*|vugpu.device=*)
		suite_select_function "$word" ;;
	vugpu.dma_timeout_ms=*|vugpu.ring_slots=*|vugpu.ring_vram=*|vugpu.irq_timeout_ms=*)
		suite_module_param "$word" ;;
	vugpu_dma.hostile=*)
		suite_program_arg --hostile "${word#*=}" ;;
	vugpu_dma.seed=*)
		suite_program_arg --seed "${word#*=}" ;;
	esac
done

# The driver loads before the plan: a GPU without engines skips the suite.
suite_load_module
# shellcheck disable=SC2086 # the --vendor/--device words select the function
suite_require_engines $SUITE_ARGS

suite_plan 4 ", engines: $SUITE_ENGINES"
suite_report_load 1
suite_harness --timed 2 vugpu-dma
suite_rmmod 3
suite_dmesg_check 4
suite_end
