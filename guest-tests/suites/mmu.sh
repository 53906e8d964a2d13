#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1+
# vugpu-vm: topology any
# vugpu-vm: peer any
# vugpu-vm: memory 2G
# vugpu-vm: kernel-config DEVICE_PRIVATE HMM_MIRROR MMU_NOTIFIER
#
# mmu.sh - device MMU suite (docs/hw-spec.md §9) through the driver's HMM
# mirror (/dev/hmm_dmirror0, vugpu.ko dmirror=1).
#
# Run by the guest's /init as `sh /suites/mmu.sh`.  Steps, each one KTAP result:
#   1        insmod vugpu.ko dmirror=1 and wait for the driver to appear
#   2        /dev/hmm_dmirror0 exists (the GPU has a working device MMU)
#   3        vugpu_mmu: vugpu-mmu's tests as subtests mmu.NAME (one fault
#            per READ of N pages, faults serviced per second, cancel and
#            engine recovery, no stale translation after munmap / remap,
#            atomics only with the PTE ATOMIC bit, faults by interrupt, two
#            and three concurrent contexts, MMU after FLR and SOFT_RESET,
#            resets while faulting, unbind with a mirror open), each in a
#            process of its own
#   4        rmmod vugpu (mirrors closed, MMU disabled)
#   5        fault_ring_overflow: insmod with fault_ring_slots=1 (a ring smaller
#            than the engines), vugpu-mmu -t concurrent_contexts
#            --expect-overflow (records are dropped, the driver recovers by
#            replaying all contexts), rmmod
#   6        the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# Fault injections of the server that these tests catch (each fails at least
# one case): --inject mmu-stale-tlb, mmu-ignore-atomic-perm, mmu-no-fault-irq.
#
# Kernel command line (vugpu-vm --append): vugpu.vendor=ID, vugpu.device=ID,
# vugpu.dma_timeout_ms=MS become module parameters.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_MMU_ARGS.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init mmu "${VUGPU_MMU_ARGS:-}"
suite_module_param vugpu.dmirror=1
for word in $(suite_cmdline); do
	case "$word" in
	vugpu.vendor=*|vugpu.device=*|vugpu.dma_timeout_ms=*)
		suite_module_param "$word" ;;
	esac
done

suite_plan 6
suite_load_module
suite_report_load 1
_node_st=0
suite_wait_char /dev/hmm_dmirror0 || _node_st=1
if [ "$_node_st" -ne 0 ]; then
	dmesg | grep -i -E 'vugpu|mmu' | tail -20 | ktap_diag
fi
ktap_result 2 dmirror_node "$_node_st"
suite_harness --timed 3 vugpu-mmu
suite_rmmod 4
# shellcheck disable=SC2086 # parameters are split on purpose
if insmod "$MODULE" $MODULE_PARAMS fault_ring_slots=1 > "$SUITE_TMP/insmod1" 2>&1; then
	suite_wait_char /dev/hmm_dmirror0
	vugpu-mmu -t concurrent_contexts --expect-overflow > "$SUITE_TMP/overflow" 2>&1
	_ovf_st=$?
	rmmod vugpu >> "$SUITE_TMP/overflow" 2>&1 || _ovf_st=1
else
	cat "$SUITE_TMP/insmod1" > "$SUITE_TMP/overflow"
	_ovf_st=1
fi
ktap_diag < "$SUITE_TMP/overflow"
ktap_result 5 fault_ring_overflow "$_ovf_st"
suite_dmesg_check 6
suite_end
