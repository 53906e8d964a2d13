#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 2
# vugpu-vm: topology rootports
# vugpu-vm: peer none
# vugpu-vm: kernel-config PCI_P2PDMA ZONE_DEVICE
#
# p2p-refused.sh - the topology where the kernel must refuse peer-to-peer:
# two vugpu GPUs on separate q35 root ports (no common switch; q35's host
# bridge is not on pci_p2pdma's whitelist and the TCG vCPU is no AMD Zen).
# Steps, each one KTAP result:
#   1        insmod vugpu.ko p2pmem_mb=32 (p2pmem is still published)
#   2        vugpu_p2p: vugpu-p2p's tests (VUGPU_P2P_MODE=refused) as
#            subtests p2p_refused.NAME, each in a process of its own:
#            distance < 0 both ways, GPU A <-> GPU B copies fall back to a
#            system-memory bounce (out_flags BOUNCED, bytes checked on both
#            sides), the driver says so in the kernel log, the pin still
#            needs FOLL_PCI_P2PDMA
#   3        rmmod vugpu
#   4        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
#
# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init p2p-refused "${VUGPU_P2P_ARGS:-}"
suite_module_param vugpu.p2pmem_mb=32
suite_program_arg --p2pmem-mb 32
export VUGPU_P2P_MODE=refused

suite_plan 4
suite_load_module
suite_report_load 1
suite_harness 2 vugpu-p2p
suite_rmmod 3
suite_dmesg_check 4
suite_end
