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
#   2..N+1   vugpu-p2p (VUGPU_P2P_MODE=refused): distance < 0 both ways,
#            GPU A <-> GPU B copies fall back to a system-memory bounce
#            (out_flags BOUNCED, bytes checked on both sides), the driver
#            says so in the kernel log, the pin still needs FOLL_PCI_P2PDMA
#   N+2      rmmod vugpu
#   N+3      the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
#
# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init p2p-refused "${VUGPU_P2P_ARGS:-}"
suite_module_param vugpu.p2pmem_mb=32
suite_program_arg --p2pmem-mb 32
export VUGPU_P2P_MODE=refused
suite_tests vugpu-p2p

suite_plan $((SUITE_NSLOTS + 3))
suite_load_module
suite_report_load 1
suite_splice 2
suite_rmmod $((SUITE_TOTAL - 1))
suite_dmesg_check "$SUITE_TOTAL"
suite_end
