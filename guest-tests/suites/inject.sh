#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1
# vugpu-vm: topology any
# vugpu-vm: peer none
# vugpu-vm: timeout 600
#
# inject.sh - faults injected into the running GPU through its control socket
# (`vugpu ctl SOCKET inject ...`, docs/hw-spec.md §10) reach the driver as a
# real device's would, and it recovers or declares the device dead.
#
# The host side is vugpu-vm's (src/ctl_agent.rs): vugpu-inject asks for each
# injection with a line "# vugpu-vm ctl: gpu0 inject FAULT ..." on the
# results channel and waits for the runner's answer on /dev/ttyS1 before it
# starts the job the fault is meant for.  Steps, each one KTAP result:
#   1        insmod vugpu.ko and wait for the driver to appear
#   2        vugpu-inject (kselftest harness, a process per test; its tests
#            are subtests inject.NAME): dma_error, engine_hang,
#            poisoned_vram, msix_drop, surprise_removal (last: the function
#            does not come back; sysfs remove must unbind the dead device
#            without hanging)
#   3        rmmod vugpu (no device left)
#   4        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# (The kernel runs with panic_on_warn=1: a WARN ends the guest at once.)

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init inject "${VUGPU_INJECT_ARGS:-}"
suite_load_module
suite_require_engines

suite_plan 4 ", engines: $SUITE_ENGINES"
suite_report_load 1
suite_harness --timed 2 vugpu-inject
suite_rmmod 3
suite_dmesg_check 4
suite_end
