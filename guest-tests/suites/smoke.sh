#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# smoke.sh - first-contact suite for vugpu GPUs.
#
# Run by the guest's /init as `sh /suites/smoke.sh` (busybox applets in PATH;
# /proc, /sys, /dev and debugfs mounted; the module at /lib/modules/vugpu.ko,
# not loaded yet).  Steps, each one KTAP result:
#   1        insmod vugpu.ko and wait for the driver to appear
#   2..N+1   vugpu-smoke (enumeration, registers, VRAM, MSI-X, FLR,
#            unbind/rebind, rmmod/insmod, kernel log), spliced in
#   N+2      the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# stdout is a single KTAP version 1 document; exit status 0 only if no test
# failed (skips are reported as "ok ... # SKIP reason" and do not fail it).
#
# Kernel command line (e.g. vugpu-vm --append): vugpu.vendor=ID, vugpu.device=ID
# and vugpu.irq_timeout_ms=MS become module parameters, and vendor/device
# also tell vugpu-smoke which function to look for (a server started with
# --vendor-id/--device-id); vugpu_smoke.subsystem_vendor=ID and
# vugpu_smoke.subsystem_device=ID set the expected subsystem IDs.
# Environment (for running by hand): VUGPU_MODULE (default
# /lib/modules/vugpu.ko), VUGPU_MODULE_PARAMS, VUGPU_SMOKE_ARGS.

MODULE=${VUGPU_MODULE:-/lib/modules/vugpu.ko}
MODULE_PARAMS=${VUGPU_MODULE_PARAMS:-}
SMOKE_ARGS=${VUGPU_SMOKE_ARGS:-}
for word in $(cat /proc/cmdline 2>/dev/null); do
	case "$word" in
	vugpu.vendor=*|vugpu.device=*)
		MODULE_PARAMS="$MODULE_PARAMS ${word#vugpu.}"
		opt=${word#vugpu.}
		SMOKE_ARGS="$SMOKE_ARGS --${opt%%=*} ${opt#*=}" ;;
	vugpu.irq_timeout_ms=*)
		MODULE_PARAMS="$MODULE_PARAMS ${word#vugpu.}" ;;
	vugpu_smoke.subsystem_vendor=*)
		SMOKE_ARGS="$SMOKE_ARGS --subsystem-vendor ${word#*=}" ;;
	vugpu_smoke.subsystem_device=*)
		SMOKE_ARGS="$SMOKE_ARGS --subsystem-device ${word#*=}" ;;
	esac
done
TMP=${TMPDIR:-/tmp}/vugpu-smoke.$$
mkdir -p "$TMP"

if command -v vugpu-smoke >/dev/null 2>&1; then
	NSMOKE=$(vugpu-smoke --count 2>/dev/null)
	vugpu-smoke --list > "$TMP/names" 2>/dev/null
fi
case "$NSMOKE" in ''|*[!0-9]*) NSMOKE=0 ;; esac
# Without vugpu-smoke its slot is one failed result.
NSLOTS=$NSMOKE
[ "$NSLOTS" -gt 0 ] || NSLOTS=1
TOTAL=$((NSLOTS + 2))
FAILED=0

echo "KTAP version 1"
echo "1..$TOTAL"
echo "# vugpu smoke suite on $(uname -r)${MODULE_PARAMS:+, module parameters:$MODULE_PARAMS}"

result() { # result N NAME STATUS(0 ok, 1 not ok) [DIRECTIVE]
	if [ "$3" -eq 0 ]; then
		echo "ok $1 - $2${4:+ # $4}"
	else
		echo "not ok $1 - $2"
		FAILED=$((FAILED + 1))
	fi
}

diag() { # prefix every line of stdin with "# "
	sed 's/^/# /'
}

# --- 1: load the driver ------------------------------------------------------
st=0
if [ ! -f "$MODULE" ]; then
	echo "# $MODULE not found"
	st=1
elif grep -q '^vugpu ' /proc/modules; then
	echo "# vugpu already loaded"
else
	# shellcheck disable=SC2086 # parameters are split on purpose
	if ! insmod "$MODULE" $MODULE_PARAMS > "$TMP/insmod" 2>&1; then
		diag < "$TMP/insmod"
		st=1
	fi
fi
if [ "$st" -eq 0 ]; then
	i=0
	while [ ! -d /sys/bus/pci/drivers/vugpu ] && [ "$i" -lt 50 ]; do
		sleep 0.1 2>/dev/null || usleep 100000
		i=$((i + 1))
	done
	if [ ! -d /sys/bus/pci/drivers/vugpu ]; then
		echo "# /sys/bus/pci/drivers/vugpu did not appear"
		st=1
	fi
fi
# The driver's own lines (probe summary, or why probe failed).
dmesg | grep -E ' vugpu [0-9a-f]+:[0-9a-f]+:' | diag
result 1 insmod_vugpu "$st"

# --- 2..N+1: vugpu-smoke ------------------------------------------------------
if [ "$NSMOKE" -eq 0 ]; then
	echo "# vugpu-smoke not found in PATH or does not list its tests"
	result 2 vugpu_smoke 1
else
	# Streamed as it runs; the exit status travels through a file.
	# shellcheck disable=SC2086
	{ vugpu-smoke --no-header --first 2 --module "$MODULE" $SMOKE_ARGS; echo $? > "$TMP/rc"; } |
		tee "$TMP/out"
	rc=$(cat "$TMP/rc" 2>/dev/null)
	done=$(grep -cE '^(not )?ok [0-9]+ ' "$TMP/out")
	FAILED=$((FAILED + $(grep -cE '^not ok [0-9]+ ' "$TMP/out")))
	# A crash or kill leaves results missing: report each one as failed.
	i=$((done + 1))
	while [ "$i" -le "$NSMOKE" ]; do
		name=$(sed -n "${i}p" "$TMP/names")
		echo "# vugpu-smoke exited (status ${rc:-unknown}) before reporting ${name:-test $i}"
		result $((i + 1)) "${name:-vugpu_smoke_$i}" 1
		i=$((i + 1))
	done
	if [ "${rc:-1}" -ne 0 ] && ! grep -qE '^not ok ' "$TMP/out" && [ "$done" -eq "$NSMOKE" ]; then
		# Everything reported ok but the program still failed: do not pass.
		echo "# vugpu-smoke exit status $rc with no failed test"
		FAILED=$((FAILED + 1))
	fi
fi

# --- N+2: kernel log ----------------------------------------------------------
st=0
if dmesg > "$TMP/dmesg" 2>&1; then
	if grep -E 'WARNING:|BUG:|Oops|Call Trace' "$TMP/dmesg" > "$TMP/bad"; then
		diag < "$TMP/bad"
		st=1
	fi
else
	diag < "$TMP/dmesg"
	st=1
fi
result "$TOTAL" dmesg_no_warn_bug "$st"

echo "# suite smoke: $FAILED failed"
rm -rf "$TMP"
[ "$FAILED" -eq 0 ]
