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
# p2p-bench.sh - a measurement, not a test (docs/benchmarks.md): NVMe
# namespace 1 -> buffer -> namespace 2 with O_DIRECT, the buffer being GPU B's
# p2pmem or system memory, interleaved; the numbers are "# bench" lines of
# result 3.  Steps: 1 load nvme, 2 insmod vugpu.ko p2pmem_mb=32, 3 the
# measurement ran (vugpu-p2p --bench 16), 4 the kernel log is clean.
#
# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init p2p-bench "${VUGPU_P2P_ARGS:-}"
suite_module_param vugpu.p2pmem_mb=32
suite_plan 4
suite_modprobe 1 nvme /dev/nvme0n1 /dev/nvme0n2
suite_load_module
suite_report_load 2
_st=0
vugpu-p2p --p2pmem-mb 32 --bench "${VUGPU_P2P_BENCH_MIB:-16}" || _st=1
ktap_result 3 p2p_bench "$_st"
suite_dmesg_check 4
suite_end
