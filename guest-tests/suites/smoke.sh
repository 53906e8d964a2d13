#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1+
# vugpu-vm: topology any
# vugpu-vm: peer any
#
# smoke.sh - first-contact suite for vugpu GPUs.
#
# Run by the guest's /init as `sh /suites/smoke.sh` (busybox applets in PATH;
# /proc, /sys, /dev and debugfs mounted; the module at /lib/modules/vugpu.ko,
# not loaded yet).  Steps, each one KTAP result:
#   1        insmod vugpu.ko and wait for the driver to appear
#   2        vugpu_smoke: vugpu-smoke's tests as subtests smoke.NAME
#            (enumeration, registers, VRAM, MSI-X, FLR, unbind/rebind,
#            rmmod/insmod, kernel log), each in a process of its own
#   3        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# stdout is a single KTAP version 1 document; exit status 0 only if no test
# failed (a skip is reported as "ok ... # SKIP reason"; the runner fails the
# run on any skip not declared below with `vugpu-vm: expect-skip`).
# The steps themselves are lib/suite.sh's (its header is their contract).
#
# Kernel command line (e.g. vugpu-vm --append): vugpu.vendor=ID, vugpu.device=ID
# and vugpu.irq_timeout_ms=MS become module parameters, and vendor/device
# also tell vugpu-smoke which function to look for (a server started with
# --vendor-id/--device-id); vugpu_smoke.subsystem_vendor=ID and
# vugpu_smoke.subsystem_device=ID set the expected subsystem IDs;
# vugpu_smoke.vram_mib=LIST, vugpu_smoke.msix_vectors=LIST and
# vugpu_smoke.serial=LIST (one value per GPU in BDF order, comma separated)
# what each GPU was configured with (e.g. by a `vugpu serve --config` file).
# Environment (for running by hand): VUGPU_MODULE (default
# /lib/modules/vugpu.ko), VUGPU_MODULE_PARAMS, VUGPU_SMOKE_ARGS.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init smoke "${VUGPU_SMOKE_ARGS:-}"
for word in $(suite_cmdline); do
	case "$word" in
	vugpu.vendor=*|vugpu.device=*)
		suite_select_function "$word" ;;
	vugpu.irq_timeout_ms=*)
		suite_module_param "$word" ;;
	vugpu_smoke.subsystem_vendor=*)
		suite_program_arg --subsystem-vendor "${word#*=}" ;;
	vugpu_smoke.subsystem_device=*)
		suite_program_arg --subsystem-device "${word#*=}" ;;
	vugpu_smoke.vram_mib=*)
		suite_program_arg --vram-mib "${word#*=}" ;;
	vugpu_smoke.msix_vectors=*)
		suite_program_arg --msix-vectors "${word#*=}" ;;
	vugpu_smoke.serial=*)
		suite_program_arg --serial "${word#*=}" ;;
	esac
done
suite_plan 3
suite_load_module
suite_report_load 1
suite_harness 2 vugpu-smoke --module "$MODULE"
suite_dmesg_check 3
suite_end
