# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=sh
#
# lib/suite.sh - the steps every vugpu guest suite shares.  Sourced, not run:
# the runner packs it as /suites/lib/suite.sh next to the suites, and a suite
# reads it with `. "$(dirname "$0")/lib/suite.sh"`.  POSIX sh (busybox ash).
#
# Contract.  A suite's stdout is one KTAP version 1 document and its exit
# status is 0 only if no test failed.  The suite numbers its results itself
# (N below), so its header comment and its code show the same numbering; the
# functions print the results and count failures in SUITE_FAILED.  Order:
#
#   suite_init NAME [ARGS]   NAME names the suite in the output and the temp
#                            dir SUITE_TMP; ARGS (the suite's VUGPU_*_ARGS)
#                            start SUITE_ARGS, the test program's arguments.
#                            MODULE (VUGPU_MODULE, default
#                            /lib/modules/vugpu.ko) and MODULE_PARAMS
#                            (VUGPU_MODULE_PARAMS) are set.
#   for word in $(suite_cmdline); do case $word in ... esac; done
#                            map kernel command line words with
#                            suite_module_param WORD (vugpu.X=V -> insmod X=V),
#                            suite_program_arg ARG... (-> SUITE_ARGS) and
#                            suite_select_function WORD (vugpu.vendor=ID /
#                            vugpu.device=ID -> both, as --vendor ID).
#   suite_load_module        insmod MODULE MODULE_PARAMS, wait up to 5 s for
#                            the driver; SUITE_LOAD_ST 0 ok / 1 failed.  May
#                            run before or after the plan: it prints nothing.
#   suite_require_engines [ARGS]
#                            (DMA suites) sets SUITE_ENGINES from
#                            `vugpu-dma --engines ARGS`; if the driver loaded
#                            and the GPU has none, prints `1..0 # SKIP ...`
#                            and exits 0 (the runner fails it as an
#                            unexpected skip, exit 5).
#   suite_plan TOTAL [EXTRA] "KTAP version 1", the plan, "# vugpu NAME suite
#                            on RELEASE[EXTRA][, module parameters: ...]"
#                            and "# ran on: kernel ..., QEMU ..., accel ..."
#                            (VUGPU_KCONFIG, VUGPU_QEMU, vugpu_vm.accel=);
#                            sets SUITE_TOTAL.
#   suite_report_load N      result N insmod_vugpu (with insmod's output and
#                            the driver's kernel log lines as diagnostics);
#                            fails unless the driver is bound to exactly
#                            VUGPU_GPUS functions, and prints "# vugpu
#                            functions bound to the driver: B of N attached",
#                            which the runner checks as well.
#   suite_harness [--timed] N PROGRAM [ARGS]
#                            result N PROGRAM (with - as _), whose subtests
#                            are the results of PROGRAM ARGS SUITE_ARGS, a
#                            program on the kernel's kselftest harness
#                            (guest-tests/user/vugpu_harness.h): its TAP,
#                            stdout and stderr, indented as KTAP subtests.
#                            The harness runs each test in a process of its
#                            own, so a crashed test is one failed subtest;
#                            results it never printed (the program itself
#                            killed) are reported failed.  N fails if a
#                            subtest failed or the program exited nonzero;
#                            no program is one failed result.  Each test's
#                            "# wall time: S s" precedes its result; --timed
#                            adds "# PROGRAM took S s".  Takes one slot of
#                            the plan.
#   suite_modprobe N MOD [PATH...]
#                            result N load_MOD: MOD already in the kernel
#                            (/sys/module/MOD: loaded by /init from the
#                            suite's `vugpu-vm: modules`, or built in), else
#                            modprobe MOD; then wait up to 10 s for each PATH.
#   suite_rmmod N            result N rmmod_vugpu (rmmod worked, module gone).
#   suite_dmesg_check N      result N dmesg_no_warn_bug (no WARNING:, BUG:,
#                            Oops or Call Trace in the kernel log).
#   suite_end                "# suite NAME: F failed"; exits 0 only if F is 0.
#
# ktap_result N NAME STATUS [DIRECTIVE] and ktap_diag (stdin as "# " lines)
# are there for suite-specific steps.  Variables and functions starting with
# SUITE_/suite_/ktap_ and _s_ belong to this file.

# --- KTAP output -----------------------------------------------------------------

# ktap_result N NAME STATUS [DIRECTIVE]: "ok N - NAME[ # DIRECTIVE]" if STATUS
# is 0, else "not ok N - NAME", counted in SUITE_FAILED.
ktap_result() {
	if [ "$3" -eq 0 ]; then
		echo "ok $1 - $2${4:+ # $4}"
	else
		echo "not ok $1 - $2"
		SUITE_FAILED=$((SUITE_FAILED + 1))
	fi
}

# ktap_diag: prefix every line of stdin with "# ".
ktap_diag() {
	sed 's/^/# /'
}

# --- setup ------------------------------------------------------------------------

suite_init() { # suite_init NAME [ARGS]
	SUITE_NAME=$1
	SUITE_ARGS=${2:-}
	SUITE_FAILED=0
	MODULE=${VUGPU_MODULE:-/lib/modules/vugpu.ko}
	MODULE_PARAMS=${VUGPU_MODULE_PARAMS:-}
	SUITE_TMP=${TMPDIR:-/tmp}/vugpu-$SUITE_NAME.$$
	mkdir -p "$SUITE_TMP"
}

suite_cmdline() { # the kernel command line's words
	cat /proc/cmdline 2>/dev/null
}

suite_module_param() { # suite_module_param vugpu.NAME=VALUE
	MODULE_PARAMS="$MODULE_PARAMS ${1#vugpu.}"
}

suite_program_arg() { # suite_program_arg ARG...
	SUITE_ARGS="$SUITE_ARGS $*"
}

suite_select_function() { # suite_select_function vugpu.{vendor,device}=ID
	suite_module_param "$1"
	_s_opt=${1#vugpu.}
	suite_program_arg "--${_s_opt%%=*}" "${_s_opt#*=}"
}

# --- the driver --------------------------------------------------------------------

suite_load_module() {
	SUITE_LOAD_ST=0
	if [ ! -f "$MODULE" ]; then
		echo "$MODULE not found" > "$SUITE_TMP/insmod"
		SUITE_LOAD_ST=1
	elif grep -q '^vugpu ' /proc/modules; then
		echo "vugpu already loaded" > "$SUITE_TMP/insmod"
	else
		# shellcheck disable=SC2086 # parameters are split on purpose
		insmod "$MODULE" $MODULE_PARAMS > "$SUITE_TMP/insmod" 2>&1 || SUITE_LOAD_ST=1
	fi
	if [ "$SUITE_LOAD_ST" -eq 0 ]; then
		_s_i=0
		while [ ! -d /sys/bus/pci/drivers/vugpu ] && [ "$_s_i" -lt 50 ]; do
			sleep 0.1 2>/dev/null || usleep 100000
			_s_i=$((_s_i + 1))
		done
		if [ ! -d /sys/bus/pci/drivers/vugpu ]; then
			echo "/sys/bus/pci/drivers/vugpu did not appear" >> "$SUITE_TMP/insmod"
			SUITE_LOAD_ST=1
		fi
	fi
}

suite_modprobe() { # suite_modprobe N MODULE [PATH...]: result N load_MODULE
	# The kernel's own module (packed with its dependencies by vugpu-vm from
	# the suite's `modules` declaration), then wait up to 10 s for each PATH.
	_s_n=$1 _s_mod=$2
	shift 2
	_s_st=0
	if [ -d "/sys/module/$_s_mod" ]; then
		# Loaded at boot by /init, or built into the kernel (a --build-kernel kernel).
		echo "# $_s_mod: already in the kernel"
	elif ! modprobe "$_s_mod" > "$SUITE_TMP/modprobe" 2>&1; then
		ktap_diag < "$SUITE_TMP/modprobe"
		_s_st=1
	fi
	for _s_p in "$@"; do
		_s_i=0
		while [ ! -e "$_s_p" ] && [ "$_s_i" -lt 100 ]; do
			sleep 0.1 2>/dev/null || usleep 100000
			_s_i=$((_s_i + 1))
		done
		if [ ! -e "$_s_p" ]; then
			echo "# $_s_p did not appear after modprobe $_s_mod"
			_s_st=1
		fi
	done
	ktap_result "$_s_n" "load_$_s_mod" "$_s_st"
}

suite_driver_log() { # the driver's own kernel log lines (probe summary, or why probe failed)
	dmesg | grep -E ' vugpu [0-9a-f]+:[0-9a-f]+:' | ktap_diag
}

suite_require_engines() { # suite_require_engines [ARGS for vugpu-dma --engines]
	SUITE_ENGINES=unknown
	if command -v vugpu-dma >/dev/null 2>&1 && [ "$SUITE_LOAD_ST" -eq 0 ]; then
		SUITE_ENGINES=$(vugpu-dma --engines "$@" 2>/dev/null)
	fi
	if [ "$SUITE_LOAD_ST" -eq 0 ] && [ "$SUITE_ENGINES" = 0 ]; then
		echo "KTAP version 1"
		suite_driver_log
		echo "1..0 # SKIP the vugpu GPU has no DMA engines (ENGINE_COUNT 0)"
		rm -rf "$SUITE_TMP"
		exit 0
	fi
}

# --- results ------------------------------------------------------------------------

suite_plan() { # suite_plan TOTAL [EXTRA header text]
	SUITE_TOTAL=$1
	_s_accel=
	for _s_w in $(suite_cmdline); do
		case "$_s_w" in vugpu_vm.accel=*) _s_accel=${_s_w#*=} ;; esac
	done
	echo "KTAP version 1"
	echo "1..$SUITE_TOTAL"
	echo "# vugpu $SUITE_NAME suite on $(uname -r)${2:-}${MODULE_PARAMS:+, module parameters:$MODULE_PARAMS}"
	echo "# ran on: kernel $(uname -r) (${VUGPU_KCONFIG:-config unknown}), QEMU ${VUGPU_QEMU:-unknown}, accel ${_s_accel:-unknown}, ${VUGPU_GPUS:-0} GPU(s) attached, topology ${VUGPU_TOPOLOGY:-unknown}, peer ${VUGPU_PEER:-none}"
}

suite_bound() { # how many PCI functions the vugpu driver is bound to
	ls -d /sys/bus/pci/drivers/vugpu/[0-9a-f]*:* 2>/dev/null | wc -l
}

suite_report_load() { # suite_report_load N
	ktap_diag < "$SUITE_TMP/insmod"
	suite_driver_log
	_s_st=$SUITE_LOAD_ST
	_s_bound=$(suite_bound)
	# The runner checks this line too: a GPU that is attached but not bound fails the run.
	echo "# vugpu functions bound to the driver: $_s_bound of ${VUGPU_GPUS:-0} attached"
	if [ "$_s_bound" -ne "${VUGPU_GPUS:-0}" ]; then
		echo "# the driver is bound to $_s_bound function(s) but ${VUGPU_GPUS:-0} GPU(s) are attached"
		_s_st=1
	fi
	ktap_result "$1" insmod_vugpu "$_s_st"
}

suite_harness() { # suite_harness [--timed] N PROGRAM [ARGS]
	_s_timed=
	if [ "$1" = --timed ]; then
		_s_timed=1
		shift
	fi
	_s_n=$1 _s_prog=$2
	shift 2
	_s_name=$(echo "$_s_prog" | tr - _)
	if ! command -v "$_s_prog" >/dev/null 2>&1; then
		echo "# $_s_prog not found in PATH"
		ktap_result "$_s_n" "$_s_name" 1
		return
	fi
	_s_start=$(cut -d' ' -f1 /proc/uptime)
	# Streamed as it runs; the exit status travels through a file.
	# shellcheck disable=SC2086 # SUITE_ARGS are split on purpose
	{ "$_s_prog" "$@" $SUITE_ARGS 2>&1; echo $? > "$SUITE_TMP/rc"; } |
		awk -v counts="$SUITE_TMP/counts" -v prog="$_s_prog" '
		function out(s) { print "    " s; fflush() }
		function now(   t, a) {
			getline t < "/proc/uptime"; close("/proc/uptime")
			split(t, a, " "); return a[1] + 0
		}
		/^TAP version/ { out("KTAP version 1"); next }
		/^1\.\.[0-9]+/ { plan = substr($0, 4) + 0; out($0); next }
		/^(not )?ok [0-9]+ / {
			n++
			if ($0 ~ /# [Ss][Kk][Ii][Pp]/) skip++
			else if ($0 ~ /^not ok/) fail++
			else pass++
			if (running != "")
				out(sprintf("# wall time: %.2f s", now() - started))
			running = ""
			out($0); next
		}
		/^#  RUN / { running = $3; started = now() }
		/^$/ { next }
		/^#/ { out($0); next }
		{ out("# " $0) }
		END {
			if (plan == 0 && n == 0) {
				out("KTAP version 1"); out("1..1")
				out("# " prog " printed no plan and no result")
				out("not ok 1 " prog "_output"); fail++; n = 1; plan = 1
			}
			for (i = n + 1; i <= plan; i++) {
				name = (i == n + 1 && running != "") ? running : "test_" i
				out("# " prog " ended (killed?) before reporting this test")
				out("not ok " i " " name)
				fail++
			}
			printf "%d %d %d\n", pass, fail, skip > counts
		}'
	_s_rc=$(cat "$SUITE_TMP/rc" 2>/dev/null)
	read -r _s_pass _s_fail _s_skip < "$SUITE_TMP/counts"
	_s_st=0
	[ "$_s_fail" -eq 0 ] || _s_st=1
	if [ "${_s_rc:-1}" -ne 0 ] && [ "$_s_fail" -eq 0 ]; then
		# Everything reported ok but the program still failed: do not pass.
		echo "# $_s_prog exit status ${_s_rc:-unknown} with no failed test"
		_s_st=1
	fi
	if [ -n "$_s_timed" ]; then
		echo "# $_s_prog took $(awk -v s="$_s_start" -v e="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", e - s }') s"
	fi
	echo "# $_s_prog: pass $_s_pass fail $_s_fail skip $_s_skip"
	ktap_result "$_s_n" "$_s_name" "$_s_st"
}

suite_wait_char() { # suite_wait_char PATH: up to 3 s for a character device node; 0 if it appeared
	_s_i=0
	while [ ! -c "$1" ] && [ "$_s_i" -lt 30 ]; do
		sleep 0.1 2>/dev/null || usleep 100000
		_s_i=$((_s_i + 1))
	done
	[ -c "$1" ]
}

suite_rmmod() { # suite_rmmod N
	_s_st=0
	if grep -q '^vugpu ' /proc/modules; then
		if ! rmmod vugpu > "$SUITE_TMP/rmmod" 2>&1; then
			ktap_diag < "$SUITE_TMP/rmmod"
			_s_st=1
		elif grep -q '^vugpu ' /proc/modules; then
			echo "# vugpu still loaded after rmmod"
			_s_st=1
		fi
	else
		echo "# vugpu is not loaded"
		_s_st=1
	fi
	ktap_result "$1" rmmod_vugpu "$_s_st"
}

suite_dmesg_check() { # suite_dmesg_check N
	_s_st=0
	if dmesg > "$SUITE_TMP/dmesg" 2>&1; then
		if grep -E 'WARNING:|BUG:|Oops|Call Trace' "$SUITE_TMP/dmesg" > "$SUITE_TMP/bad"; then
			ktap_diag < "$SUITE_TMP/bad"
			_s_st=1
		fi
	else
		ktap_diag < "$SUITE_TMP/dmesg"
		_s_st=1
	fi
	ktap_result "$1" dmesg_no_warn_bug "$_s_st"
}

suite_end() {
	echo "# suite $SUITE_NAME: $SUITE_FAILED failed"
	rm -rf "$SUITE_TMP"
	[ "$SUITE_FAILED" -eq 0 ] || exit 1
	exit 0
}
