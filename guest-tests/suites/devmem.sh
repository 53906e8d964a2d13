#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1+
# vugpu-vm: topology any
# vugpu-vm: peer any
# vugpu-vm: memory 2G
# vugpu-vm: kernel-config DEVICE_PRIVATE HMM_MIRROR MMU_NOTIFIER
# vugpu-vm: expect-skip devmem.thp_migrate unless CONFIG_ARCH_HAS_PMD_SOFTLEAVES: device-private THP (compound device folios, MIGRATE_VMA_SELECT_COMPOUND) is not in this kernel (6.12 has none; 7.3 builds it under ARCH_HAS_PMD_SOFTLEAVES)
# vugpu-vm: expect-skip devmem.fail_alloc unless CONFIG_ARCH_HAS_PMD_SOFTLEAVES: the fail-alloc case needs device-private THP and test_hmm's FLAGS ioctl (neither is in 6.12)
#
# devmem.sh - device-private VRAM (docs/devmem.md) through the driver's HMM
# mirror (/dev/hmm_dmirror0, vugpu.ko dmirror=1 devmem_mb=128).
#
# Run by the guest's /init as `sh /suites/devmem.sh`.  Steps, each one KTAP result:
#   1        insmod vugpu.ko dmirror=1 devmem_mb=128 and wait for the driver
#   2        /dev/hmm_dmirror0 exists (the GPU has a working device MMU)
#   3        vugpu_hmm_devmem: vugpu-hmm-devmem --unbind's tests as subtests
#            devmem.NAME (migration both ways with data checked through the
#            device and the CPU, migrate_to_ram on CPU touch, THP device
#            folios and fail-alloc on 7.x, pages/s both ways, RELEASE,
#            eviction at unbind with the data kept), each in a process of
#            its own with its own mirror
#   4        rmmod vugpu
#   5        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
#
# Kernel command line (vugpu-vm --append): vugpu.devmem_mb=MIB (default 128;
# at most half of BAR2 below p2pmem, plus any VRAM above BAR2),
# vugpu.dma_timeout_ms=MS become module parameters.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_DEVMEM_ARGS
# (default "--unbind --mib 32").
# Must fail with `--server-args '--inject vram-write-drop'` (the copy engines
# lose their writes into VRAM): migrate_verify and every case after it that
# moves data to VRAM.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init devmem "${VUGPU_DEVMEM_ARGS:---unbind --mib 32}"
suite_module_param vugpu.dmirror=1
_devmem=vugpu.devmem_mb=128
for word in $(suite_cmdline); do
	case "$word" in
	vugpu.devmem_mb=*) _devmem=$word ;;
	vugpu.dma_timeout_ms=*) suite_module_param "$word" ;;
	esac
done
suite_module_param "$_devmem"

suite_plan 5
suite_load_module
suite_report_load 1
_node_st=0
suite_wait_char /dev/hmm_dmirror0 || _node_st=1
if [ "$_node_st" -ne 0 ]; then
	dmesg | grep -i -E 'vugpu|mmu|devmem|device-private' | tail -20 | ktap_diag
fi
ktap_result 2 dmirror_node "$_node_st"
suite_harness --timed 3 vugpu-hmm-devmem
suite_rmmod 4
suite_dmesg_check 5
suite_end
