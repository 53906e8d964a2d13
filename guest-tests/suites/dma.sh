#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# dma.sh - DMA copy engine suite for vugpu GPUs (docs/hw-spec.md §5-§8).
#
# Run by the guest's /init as `sh /suites/dma.sh` (busybox applets in PATH;
# /proc, /sys, /dev mounted; the module at /lib/modules/vugpu.ko, not loaded
# yet).  Steps, each one KTAP result:
#   1        insmod vugpu.ko and wait for the driver to appear
#   2..N+1   vugpu-dma (every copy direction and size, fill, fence,
#            timestamp, completion modes, counters, No Snoop / Relaxed
#            Ordering, rings, ioctl validation, bad addresses and AER,
#            descriptor errors, timeouts, concurrent engines, hostile
#            descriptors, resets), spliced in
#   N+2      rmmod vugpu (engines stopped and freed with jobs done)
#   N+3      the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# If the driver loads but the GPU has no DMA engines (ENGINE_COUNT 0, e.g. a
# server without engine support) the whole document is `1..0 # SKIP`, which
# the runner reports as skipped (exit 4), not passed.
#
# Kernel command line (vugpu-vm --append): vugpu.vendor=ID, vugpu.device=ID,
# vugpu.dma_timeout_ms=MS, vugpu.ring_slots=N, vugpu.ring_vram=1 become module
# parameters (vendor/device also select the function); vugpu_dma.hostile=N
# (descriptors in the hostile test, default 5000) and vugpu_dma.seed=N.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_DMA_ARGS.

MODULE=${VUGPU_MODULE:-/lib/modules/vugpu.ko}
MODULE_PARAMS=${VUGPU_MODULE_PARAMS:-}
DMA_ARGS=${VUGPU_DMA_ARGS:-}
for word in $(cat /proc/cmdline 2>/dev/null); do
	case "$word" in
	vugpu.vendor=*|vugpu.device=*)
		MODULE_PARAMS="$MODULE_PARAMS ${word#vugpu.}"
		opt=${word#vugpu.}
		DMA_ARGS="$DMA_ARGS --${opt%%=*} ${opt#*=}" ;;
	vugpu.dma_timeout_ms=*|vugpu.ring_slots=*|vugpu.ring_vram=*|vugpu.irq_timeout_ms=*)
		MODULE_PARAMS="$MODULE_PARAMS ${word#vugpu.}" ;;
	vugpu_dma.hostile=*)
		DMA_ARGS="$DMA_ARGS --hostile ${word#*=}" ;;
	vugpu_dma.seed=*)
		DMA_ARGS="$DMA_ARGS --seed ${word#*=}" ;;
	esac
done
TMP=${TMPDIR:-/tmp}/vugpu-dma.$$
mkdir -p "$TMP"
FAILED=0

diag() { # prefix every line of stdin with "# "
	sed 's/^/# /'
}

result() { # result N NAME STATUS(0 ok, 1 not ok)
	if [ "$3" -eq 0 ]; then
		echo "ok $1 - $2"
	else
		echo "not ok $1 - $2"
		FAILED=$((FAILED + 1))
	fi
}

# --- load the driver (reported as test 1 once the plan is known) -------------
load_st=0
if [ ! -f "$MODULE" ]; then
	echo "$MODULE not found" > "$TMP/insmod"
	load_st=1
elif grep -q '^vugpu ' /proc/modules; then
	echo "vugpu already loaded" > "$TMP/insmod"
else
	# shellcheck disable=SC2086 # parameters are split on purpose
	insmod "$MODULE" $MODULE_PARAMS > "$TMP/insmod" 2>&1 || load_st=1
fi
if [ "$load_st" -eq 0 ]; then
	i=0
	while [ ! -d /sys/bus/pci/drivers/vugpu ] && [ "$i" -lt 50 ]; do
		sleep 0.1 2>/dev/null || usleep 100000
		i=$((i + 1))
	done
	[ -d /sys/bus/pci/drivers/vugpu ] || { echo "/sys/bus/pci/drivers/vugpu did not appear" >> "$TMP/insmod"; load_st=1; }
fi

NDMA=0
ENGINES=unknown
if command -v vugpu-dma >/dev/null 2>&1; then
	NDMA=$(vugpu-dma --count 2>/dev/null)
	vugpu-dma --list > "$TMP/names" 2>/dev/null
	# shellcheck disable=SC2086
	[ "$load_st" -eq 0 ] && ENGINES=$(vugpu-dma --engines $DMA_ARGS 2>/dev/null)
fi
case "$NDMA" in ''|*[!0-9]*) NDMA=0 ;; esac

echo "KTAP version 1"
if [ "$load_st" -eq 0 ] && [ "$ENGINES" = 0 ]; then
	dmesg | grep -E ' vugpu [0-9a-f]+:[0-9a-f]+:' | diag
	echo "1..0 # SKIP the vugpu GPU has no DMA engines (ENGINE_COUNT 0)"
	rm -rf "$TMP"
	exit 0
fi
NSLOTS=$NDMA
[ "$NSLOTS" -gt 0 ] || NSLOTS=1
TOTAL=$((NSLOTS + 3))
echo "1..$TOTAL"
echo "# vugpu dma suite on $(uname -r), engines: $ENGINES${MODULE_PARAMS:+, module parameters:$MODULE_PARAMS}"
diag < "$TMP/insmod"
dmesg | grep -E ' vugpu [0-9a-f]+:[0-9a-f]+:' | diag
result 1 insmod_vugpu "$load_st"

# --- 2..N+1: vugpu-dma ----------------------------------------------------------
if [ "$NDMA" -eq 0 ]; then
	echo "# vugpu-dma not found in PATH or does not list its tests"
	result 2 vugpu_dma 1
else
	start=$(cut -d' ' -f1 /proc/uptime)
	# Streamed as it runs; the exit status travels through a file.
	# shellcheck disable=SC2086
	{ vugpu-dma --no-header --first 2 $DMA_ARGS; echo $? > "$TMP/rc"; } | tee "$TMP/out"
	rc=$(cat "$TMP/rc" 2>/dev/null)
	done=$(grep -cE '^(not )?ok [0-9]+ ' "$TMP/out")
	FAILED=$((FAILED + $(grep -cE '^not ok [0-9]+ ' "$TMP/out")))
	# A crash or kill leaves results missing: report each one as failed.
	i=$((done + 1))
	while [ "$i" -le "$NDMA" ]; do
		name=$(sed -n "${i}p" "$TMP/names")
		echo "# vugpu-dma exited (status ${rc:-unknown}) before reporting ${name:-test $i}"
		result $((i + 1)) "${name:-vugpu_dma_$i}" 1
		i=$((i + 1))
	done
	if [ "${rc:-1}" -ne 0 ] && ! grep -qE '^not ok ' "$TMP/out" && [ "$done" -eq "$NDMA" ]; then
		echo "# vugpu-dma exit status $rc with no failed test"
		FAILED=$((FAILED + 1))
	fi
	echo "# vugpu-dma took $(awk -v s="$start" -v e="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", e - s }') s"
fi

# --- N+2: unload ------------------------------------------------------------------
st=0
if grep -q '^vugpu ' /proc/modules; then
	if ! rmmod vugpu > "$TMP/rmmod" 2>&1; then
		diag < "$TMP/rmmod"
		st=1
	elif grep -q '^vugpu ' /proc/modules; then
		echo "# vugpu still loaded after rmmod"
		st=1
	fi
else
	echo "# vugpu is not loaded"
	st=1
fi
result $((TOTAL - 1)) rmmod_vugpu "$st"

# --- N+3: kernel log ----------------------------------------------------------------
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

echo "# suite dma: $FAILED failed"
rm -rf "$TMP"
[ "$FAILED" -eq 0 ]
