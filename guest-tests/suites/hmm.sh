#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 2
# vugpu-vm: topology any
# vugpu-vm: memory 4G
# vugpu-vm: timeout 1200
# vugpu-vm: server-args --vram 1G
# vugpu-vm: kernel-config ZONE_DEVICE DEVICE_PRIVATE HMM_MIRROR MMU_NOTIFIER
# vugpu-vm: kernel-selftest mm/hmm-tests
# vugpu-vm: kernel-test-module lib/test_hmm
# vugpu-vm: expect-skip *.hmm_gup_test unless CONFIG_GUP_TEST: hmm-tests opens /sys/kernel/debug/gup_test, which exists only with CONFIG_GUP_TEST (no Debian kernel has it)
# vugpu-vm: expect-skip *_device_coherent.*: MEMORY_DEVICE_COHERENT needs special-purpose memory (test_hmm's spm_addr_dev0/1, or a CPU-coherent device such as CXL); neither test_hmm here nor vugpu (PCIe BAR behind a non-coherent link) provides /dev/hmm_dmirror2 and 3, so every coherent variant skips "DEVICE_COHERENT not available"
#
# hmm.sh - the kernel's own tools/testing/selftests/mm/hmm-tests, unmodified and
# built from the guest kernel's own source, run twice in one boot:
#   phase test_hmm: against lib/test_hmm.ko (the kernel's reference dmirror
#                   driver, built out of tree against the same kernel)
#   phase vugpu:    against vugpu.ko dmirror=1 (/dev/hmm_dmirror0 and 1 backed
#                   by the two vugpu GPUs: their device MMU and VRAM)
# and the wall time of each phase and their ratio (target: vugpu / test_hmm
# <= 1.5).  Results (KTAP; each hmm-tests case is a result of its phase):
#   1        setup: panic_on_warn is 1, hugetlb pages reserved (the hugetlbfs cases)
#   2        load_test_hmm (insmod test_hmm.ko, /dev/hmm_dmirror0 and 1 appear)
#   3        test_hmm: hmm-tests' cases as subtests test_hmm/<fixture.variant.case>
#   4        unload_test_hmm
#   5        dmesg_after_test_hmm: no WARNING:/BUG:/Oops/Call Trace since the phase began
#   6        insmod_vugpu (dmirror=1 devmem_mb=512; bound to both GPUs)
#   7        vugpu_dmirror_devices: /dev/hmm_dmirror0 and 1 exist (else: vugpu.ko has
#            no dmirror support)
#   8        vugpu: hmm-tests' cases as subtests vugpu/<fixture.variant.case>,
#            then the GPUs' MMU counters (vugpu-hmm-stats) and, after rmmod, the
#            driver's device-private migration figures from its log
#   9        rmmod_vugpu
#   10       dmesg_after_vugpu
# Then, as measurement (diagnostic lines, not a result: speed targets are not
# timed tests): the wall time of each phase and the ratio vugpu / test_hmm
# against the issue's target 1.5 (VUGPU_HMM_MAX_RATIO), stated only when the
# vugpu phase had no failed case and every failed test_hmm case was an
# hmm-tests timeout (then test_hmm's time is a lower bound and the ratio an
# upper bound).
# A crash or timeout of hmm-tests reports the cases it never reported as failed.
# The guest runs with panic_on_warn=1 (a WARN ends the boot: exit 3).
#
# Kernel command line (vugpu-vm --append): vugpu_hmm.test=NAME (repeatable:
# hmm-tests -t NAME, e.g. migrate), vugpu_hmm.only=test_hmm|vugpu (the other
# phase reports a SKIP, which fails the run: for development only),
# vugpu_hmm.max_ratio=R, vugpu.*=V (more vugpu module parameters).
# Environment (by hand): VUGPU_HMM_ARGS (more hmm-tests arguments).

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init hmm "${VUGPU_HMM_ARGS:-}"
ONLY=
MAX_RATIO=${VUGPU_HMM_MAX_RATIO:-1.5}
for word in $(suite_cmdline); do
	case "$word" in
	vugpu_hmm.test=*) suite_program_arg -t "${word#*=}" ;;
	vugpu_hmm.only=*) ONLY=${word#*=} ;;
	vugpu_hmm.max_ratio=*) MAX_RATIO=${word#*=} ;;
	vugpu.suite=*) ;;
	vugpu.*=*) suite_module_param "$word" ;;
	esac
done
suite_module_param vugpu.dmirror=1
# Device-private VRAM for the migration cases: half of each GPU's 1 GiB (the largest hmm-tests
# buffer, benchmark_thp_migration's 128 THPs, is 256 MiB on one device).
suite_module_param vugpu.devmem_mb=512
HMM_TESTS=$(command -v hmm-tests 2>/dev/null)
TEST_HMM_KO=/lib/modules/test_hmm.ko
PHASE_LIMIT=${VUGPU_HMM_PHASE_LIMIT:-540}

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.1f", e - s }'; }

# wait_dev PATH...: up to 10 s for each; prints what is missing.
wait_dev() {
	_w_st=0
	for _w_p in "$@"; do
		_w_i=0
		while [ ! -c "$_w_p" ] && [ "$_w_i" -lt 100 ]; do
			sleep 0.1 2>/dev/null || usleep 100000
			_w_i=$((_w_i + 1))
		done
		if [ ! -c "$_w_p" ]; then
			echo "# $_w_p did not appear"
			_w_st=1
		fi
	done
	return "$_w_st"
}

# dmesg_mark: the kernel log's current length (lines), for dmesg_since.
dmesg_mark() { dmesg | wc -l; }

# dmesg_check N NAME MARK: result N NAME, no WARNING:/BUG:/Oops/Call Trace in
# the kernel log after line MARK.
dmesg_check() {
	_d_st=0
	if dmesg > "$SUITE_TMP/dmesg" 2>&1; then
		if sed "1,${3}d" "$SUITE_TMP/dmesg" |
			grep -E 'WARNING:|BUG:|Oops|Call Trace' > "$SUITE_TMP/bad"; then
			ktap_diag < "$SUITE_TMP/bad"
			_d_st=1
		fi
	else
		ktap_diag < "$SUITE_TMP/dmesg"
		_d_st=1
	fi
	ktap_result "$1" "$2" "$_d_st"
}

# phase N NAME: runs hmm-tests as result N NAME with its cases as subtests
# (KTAP, indented 4); sets PHASE_FAILED, PHASE_PASSED, PHASE_SKIPPED,
# PHASE_SECONDS.  Lines that are not results are kept as diagnostics.
phase() {
	_p_n=$1 _p_name=$2
	PHASE_FAILED=0 PHASE_PASSED=0 PHASE_SKIPPED=0 PHASE_SECONDS=0 PHASE_BENCH=0 PHASE_TIMEOUTS=0
	if [ -z "$HMM_TESTS" ]; then
		echo "# hmm-tests is not in the guest (the runner builds it from the kernel's source)"
		ktap_result "$_p_n" "$_p_name" 1
		PHASE_FAILED=1
		return
	fi
	cp /proc/vmstat "$SUITE_TMP/vmstat" 2>/dev/null
	_p_start=$(now)
	# shellcheck disable=SC2086 # SUITE_ARGS are split on purpose
	{ timeout "$PHASE_LIMIT" "$HMM_TESTS" $SUITE_ARGS 2>&1; echo $? > "$SUITE_TMP/rc"; } |
		awk -v counts="$SUITE_TMP/counts" -v bench="$SUITE_TMP/bench" '
		function out(s) { print "    " s; fflush() }
		function now(   t, a) {
			getline t < "/proc/uptime"; close("/proc/uptime")
			split(t, a, " "); return a[1] + 0
		}
		BEGIN { t0 = now() }
		/^TAP version/ { out("KTAP version 1"); next }
		/^1\.\.[0-9]+/ { plan = substr($0, 4) + 0; out($0); next }
		/^(not )?ok [0-9]+ / {
			n++
			line = $0
			if (line ~ /# [Ss][Kk][Ii][Pp]/) skip++
			else if (line ~ /^not ok/) fail++
			else pass++
			if (started != "") {
				d = now() - started
				out(sprintf("# case wall time: %.2f s", d))
				if (running ~ /benchmark/) btime += d
			}
			started = ""
			out(line); next
		}
		/^#  RUN / { running = $3; started = now() }
		/^# [^ ]*: Test terminated by timeout/ { timeouts++ }
		/^$/ { next }
		/^#/ { out($0); next }
		{ out("# " $0) }
		END {
			if (plan == 0 && n == 0) {
				out("KTAP version 1"); out("1..1")
				out("# hmm-tests printed no plan and no result")
				out("not ok 1 hmm_tests_output"); fail++; n = 1; plan = 1
			}
			for (i = n + 1; i <= plan; i++) {
				name = (i == n + 1 && running != "") ? running : "case_" i
				out("# hmm-tests ended (crash, kill or timeout) before reporting this case")
				out("not ok " i " " name)
				fail++
			}
			printf "%d %d %d\n", pass, fail, skip > counts
			printf "%.1f %d\n", btime, timeouts > bench
		}'
	_p_end=$(now)
	PHASE_SECONDS=$(elapsed "$_p_start" "$_p_end")
	_p_rc=$(cat "$SUITE_TMP/rc" 2>/dev/null)
	read -r PHASE_PASSED PHASE_FAILED PHASE_SKIPPED < "$SUITE_TMP/counts"
	read -r PHASE_BENCH PHASE_TIMEOUTS < "$SUITE_TMP/bench"
	_p_extra=0
	case "${_p_rc:-1}" in
	0) ;;
	4) [ "$PHASE_PASSED" -eq 0 ] || _p_extra=1 ;; # KSFT_SKIP: all skipped
	*) [ "$PHASE_FAILED" -gt 0 ] || _p_extra=1 ;;
	esac
	if [ "$_p_extra" -ne 0 ]; then
		echo "# hmm-tests exit status $_p_rc with no failed case"
		PHASE_FAILED=$((PHASE_FAILED + 1))
	fi
	[ "${_p_rc:-1}" != 124 ] && [ "${_p_rc:-1}" != 143 ] ||
		echo "# hmm-tests was stopped after ${PHASE_LIMIT} s"
	echo "# phase $_p_name: $PHASE_SECONDS s wall ($PHASE_BENCH s of it in benchmark_thp_migration), pass $PHASE_PASSED fail $PHASE_FAILED skip $PHASE_SKIPPED"
	# The kernel's own page migration meanwhile (compaction moves pages that a migrate_vma
	# of the same instant then cannot collect: docs/hmm.md, -ENOENT).
	[ -r /proc/vmstat ] && awk 'NR == FNR { before[$1] = $2; next }
		$1 ~ /^(compact_stall|compact_daemon_wake|compact_isolated|pgmigrate_success|pgmigrate_fail|thp_migration_split|thp_split_page)$/ {
			s = s sprintf(" %s +%d", $1, $2 - before[$1])
		}
		END { print "# phase kernel counters (/proc/vmstat deltas):" s }' "$SUITE_TMP/vmstat" /proc/vmstat
	if [ "$PHASE_FAILED" -eq 0 ]; then
		ktap_result "$_p_n" "$_p_name" 0
	else
		# The failures are counted through the subtests; the parent line carries them.
		echo "not ok $_p_n - $_p_name"
		SUITE_FAILED=$((SUITE_FAILED + 1))
	fi
}

# skipped_phase N NAME: vugpu_hmm.only left this phase out (a skip the suite
# does not declare: never a pass).
skipped_phase() {
	ktap_result "$1" "$2" 0 "SKIP phase left out by vugpu_hmm.only=$ONLY"
}

suite_plan 10 ", hmm-tests from the guest kernel's source, phases test_hmm and vugpu"

# 1: setup.
st=0
if [ "$(cat /proc/sys/kernel/panic_on_warn 2>/dev/null)" != 1 ]; then
	echo 1 > /proc/sys/kernel/panic_on_warn 2>/dev/null
	[ "$(cat /proc/sys/kernel/panic_on_warn 2>/dev/null)" = 1 ] ||
		{ echo "# cannot set panic_on_warn"; st=1; }
fi
echo "# panic_on_warn=$(cat /proc/sys/kernel/panic_on_warn 2>/dev/null)"
if [ -w /proc/sys/vm/nr_hugepages ]; then
	echo 8 > /proc/sys/vm/nr_hugepages
	echo "# hugetlb: $(grep -E '^(HugePages_Total|HugePages_Free|Hugepagesize)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
	free=$(awk '/^HugePages_Free/ { print $2 }' /proc/meminfo)
	[ "${free:-0}" -ge 2 ] || { echo "# fewer than 2 free hugetlb pages"; st=1; }
else
	echo "# no /proc/sys/vm/nr_hugepages (CONFIG_HUGETLBFS off): the hugetlbfs cases will skip"
fi
# 6.12's make_device_exclusive_range() (later replaced by the single-page make_device_exclusive(),
# which 7.x has) skips the tail pages of a transparent huge page, so with THP "always" its own exclusive,
# exclusive_mprotect and exclusive_cow cases fail with -EBUSY against test_hmm.ko as much as against
# vugpu (docs/hmm.md). Those cases assume small pages; on such kernels both phases run with THP
# "madvise" (hmm-tests' THP cases madvise(MADV_HUGEPAGE) their buffers, so they still get THPs).
thp=/sys/kernel/mm/transparent_hugepage/enabled
if grep -qw make_device_exclusive_range /proc/kallsyms 2>/dev/null && [ -w "$thp" ]; then
	echo madvise > "$thp" 2>/dev/null
	echo "# this kernel has make_device_exclusive_range() (6.12 API): THP set to madvise for both phases"
	grep -q '\[madvise\]' "$thp" || { echo "# cannot set THP to madvise"; st=1; }
fi
echo "# THP: $(cat "$thp" 2>/dev/null || echo none)"
echo "# hmm-tests: ${HMM_TESTS:-missing}; test_hmm.ko: $([ -f "$TEST_HMM_KO" ] && echo present || echo missing)"
ktap_result 1 setup "$st"

# Phase test_hmm: 2-5.
if [ "$ONLY" = vugpu ]; then
	for r in "2 load_test_hmm" "3 test_hmm" "4 unload_test_hmm" "5 dmesg_after_test_hmm"; do
		# shellcheck disable=SC2086
		skipped_phase $r
	done
	T1=
else
	mark=$(dmesg_mark)
	st=0
	if [ ! -f "$TEST_HMM_KO" ]; then
		echo "# $TEST_HMM_KO missing (the runner builds it out of tree from lib/test_hmm.c)"
		st=1
	elif ! insmod "$TEST_HMM_KO" > "$SUITE_TMP/insmod" 2>&1; then
		ktap_diag < "$SUITE_TMP/insmod"
		st=1
	else
		wait_dev /dev/hmm_dmirror0 /dev/hmm_dmirror1 || st=1
	fi
	dmesg | sed "1,${mark}d" | grep -i 'hmm' | ktap_diag
	ktap_result 2 load_test_hmm "$st"
	phase 3 test_hmm
	T1=$PHASE_SECONDS
	B1=$PHASE_BENCH
	F1=$PHASE_FAILED
	O1=$PHASE_TIMEOUTS
	st=0
	if grep -q '^test_hmm ' /proc/modules; then
		rmmod test_hmm > "$SUITE_TMP/rmmod" 2>&1 || { ktap_diag < "$SUITE_TMP/rmmod"; st=1; }
		! grep -q '^test_hmm ' /proc/modules || { echo "# test_hmm still loaded"; st=1; }
	else
		echo "# test_hmm is not loaded"
		st=1
	fi
	ktap_result 4 unload_test_hmm "$st"
	dmesg_check 5 dmesg_after_test_hmm "$mark"
fi

# Phase vugpu: 6-10.
if [ "$ONLY" = test_hmm ]; then
	for r in "6 insmod_vugpu" "7 vugpu_dmirror_devices" "8 vugpu" "9 rmmod_vugpu" "10 dmesg_after_vugpu"; do
		# shellcheck disable=SC2086
		skipped_phase $r
	done
	T2=
else
	mark=$(dmesg_mark)
	suite_load_module
	suite_report_load 6
	st=0
	if [ "$SUITE_LOAD_ST" -ne 0 ]; then
		echo "# vugpu.ko did not load"
		st=1
	elif ! wait_dev /dev/hmm_dmirror0 /dev/hmm_dmirror1; then
		if dmesg | sed "1,${mark}d" | grep -q "unknown parameter 'dmirror'"; then
			echo "# vugpu.ko has no dmirror support: it does not know the parameter dmirror"
		else
			echo "# vugpu.ko dmirror=1 did not create /dev/hmm_dmirror0 and 1 (the driver's log above says why, e.g. a GPU without a device MMU)"
		fi
		dmesg | sed "1,${mark}d" | grep -iE 'unknown parameter|dmirror|device MMU|hmm' | ktap_diag
		st=1
	fi
	ktap_result 7 vugpu_dmirror_devices "$st"
	phase 8 vugpu
	T2=$PHASE_SECONDS
	B2=$PHASE_BENCH
	F2=$PHASE_FAILED
	# The GPUs' MMU counters since insmod (faults, replays, TLB), from the driver's
	# VUGPU_DMIRROR_STATS; migration figures follow from its log at rmmod.
	if [ "$st" -eq 0 ] && command -v vugpu-hmm-stats > /dev/null 2>&1; then
		vugpu-hmm-stats 0 1 || echo "# vugpu-hmm-stats failed (no MMU counters)"
	fi
	suite_rmmod 9
	# The driver's own figures (device-private pages migrated each way, CPU faults, evictions),
	# which it logs when its device memory goes away.
	dmesg | sed "1,${mark}d" | grep -E 'device-private memory removed|MMU faults|replays' |
		sed 's/^\[[ 0-9.]*\] //; s/^/# driver figures: /'
	dmesg_check 10 dmesg_after_vugpu "$mark"
fi

# The ratio: a measurement, printed; not a result.
if [ -n "$T1" ] && [ -n "$T2" ]; then
	ratio=$(awk -v a="$T1" -v b="$T2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "inf" }')
	echo "# wall time: test_hmm $T1 s, vugpu $T2 s, ratio vugpu/test_hmm $ratio (target <= $MAX_RATIO)"
	awk -v a="$T1" -v b="$T2" -v ba="$B1" -v bb="$B2" 'BEGIN {
		if (ba > 0 && a - ba > 0)
			printf "# without benchmark_thp_migration: test_hmm %.1f s, vugpu %.1f s, ratio %.2f (for information)\n", a - ba, b - bb, (b - bb) / (a - ba)
		if (ba > 0)
			printf "# benchmark_thp_migration alone: test_hmm %.1f s, vugpu %.1f s, ratio %.2f (for information)\n", ba, bb, bb / ba
	}'
	if [ "$F2" -ne 0 ]; then
		echo "# ratio not valid: the vugpu phase had $F2 failed case(s)"
	elif [ "$F1" -ne 0 ] && [ "$F1" -ne "$O1" ]; then
		echo "# ratio not valid: the test_hmm phase had $F1 failed case(s), not all of them timeouts"
	else
		if [ "$F1" -ne 0 ]; then
			# Every test_hmm failure is hmm-tests' own timeout: that case would have run at least
			# as long as it was given, so test_hmm's phase time is a lower bound and the ratio an
			# upper bound (the reference's failure itself stays a failure in result 3).
			echo "# test_hmm's phase was cut short by $O1 hmm-tests timeout(s): its time is a lower bound, so $ratio is an upper bound of the ratio"
		fi
		if awk -v r="$ratio" -v m="$MAX_RATIO" 'BEGIN { exit !(r != "inf" && r + 0 <= m + 0) }'; then
			echo "# ratio $ratio meets the target <= $MAX_RATIO"
		else
			echo "# ratio $ratio misses the target <= $MAX_RATIO (a measurement under this run's load, not a failure; see docs/hmm.md)"
		fi
	fi
fi
suite_end
