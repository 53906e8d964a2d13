#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 2
# vugpu-vm: topology switch
# vugpu-vm: peer nvme-cmb
# vugpu-vm: kernel-config PCI_P2PDMA ZONE_DEVICE
# vugpu-vm: modules nvme
#
# p2p.sh - peer-to-peer DMA between two vugpu GPUs and QEMU's NVMe, all on
# downstream ports of one PCIe switch (what pci_p2pdma_distance() accepts in a
# q35 guest).  Run by the guest's /init as `sh /suites/p2p.sh`.  Steps, each
# one KTAP result:
#   1        load the nvme driver (from the kernel's own modules) and wait
#            for both namespaces
#   2        insmod vugpu.ko p2pmem_mb=32: each GPU publishes the top 32 MiB
#            of its VRAM BAR as p2pmem
#   3        vugpu_p2p: vugpu-p2p's tests (VUGPU_P2P_MODE=switch) as subtests
#            p2p.NAME, each in a process of its own: p2pmem sysfs, distance,
#            GPU A <-> GPU B VRAM through p2pmem with FOLL_PCI_P2PDMA pins
#            (bytes checked by the CPU and by GPU B's own engine), the pin
#            refused without FOLL_PCI_P2PDMA, NVMe O_DIRECT into and out of
#            GPU p2pmem, GPU A's engine into the NVMe's CMB and back
#   4        rmmod vugpu (p2pmem torn down by devres after remove)
#   5        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# The refused topology (separate root ports) is suites/p2p-refused.sh.
#
# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init p2p "${VUGPU_P2P_ARGS:-}"
suite_module_param vugpu.p2pmem_mb=32
suite_program_arg --p2pmem-mb 32
export VUGPU_P2P_MODE=switch

suite_plan 5
suite_modprobe 1 nvme /dev/nvme0n1 /dev/nvme0n2
suite_load_module
suite_report_load 2
suite_harness 3 vugpu-p2p
suite_rmmod 4
suite_dmesg_check 5
suite_end
