#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# dma-bench.sh - DMA engine measurements for vugpu GPUs (no thresholds).
#
# Run by the guest's /init as `sh /suites/dma-bench.sh`.  Steps, each one
# KTAP result ("ok" means the measurement ran and its data checked out; the
# numbers are "# bench ..." lines):
#   1        insmod vugpu.ko
#   2..N+1   vugpu-dma-bench: engine SYS->VRAM / VRAM->SYS bandwidth at
#            4 KiB-16 MiB as ratios to memcpy into / out of the mmapped BAR2
#            and RAM memcpy of the same sizes in the same run; 64-byte job
#            rates with interrupt and fence-polling completion
#   N+2      rmmod vugpu
#   N+3      the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# If the driver loads but the GPU has no DMA engines (ENGINE_COUNT 0, e.g. a
# server without engine support) the whole document is `1..0 # SKIP`, which
# the runner reports as skipped (exit 4), not passed.
#
# Kernel command line (vugpu-vm --append): vugpu.ring_slots=N,
# vugpu.ring_vram=1 (rings in VRAM) become module parameters;
# vugpu_dma_bench.quick=1 measures with fewer repetitions.
# Environment (by hand): VUGPU_MODULE, VUGPU_MODULE_PARAMS, VUGPU_BENCH_ARGS.

MODULE=${VUGPU_MODULE:-/lib/modules/vugpu.ko}
MODULE_PARAMS=${VUGPU_MODULE_PARAMS:-}
BENCH_ARGS=${VUGPU_BENCH_ARGS:-}
for word in $(cat /proc/cmdline 2>/dev/null); do
	case "$word" in
	vugpu.ring_slots=*|vugpu.ring_vram=*|vugpu.dma_timeout_ms=*)
		MODULE_PARAMS="$MODULE_PARAMS ${word#vugpu.}" ;;
	vugpu_dma_bench.quick=1)
		BENCH_ARGS="$BENCH_ARGS --quick" ;;
	esac
done
TMP=${TMPDIR:-/tmp}/vugpu-dma-bench.$$
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
if command -v vugpu-dma-bench >/dev/null 2>&1; then
	NDMA=$(vugpu-dma-bench --count 2>/dev/null)
	vugpu-dma-bench --list > "$TMP/names" 2>/dev/null
fi
if command -v vugpu-dma >/dev/null 2>&1 && [ "$load_st" -eq 0 ]; then
	ENGINES=$(vugpu-dma --engines 2>/dev/null)
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
echo "# vugpu dma-bench suite on $(uname -r), engines: $ENGINES${MODULE_PARAMS:+, module parameters:$MODULE_PARAMS}"
diag < "$TMP/insmod"
dmesg | grep -E ' vugpu [0-9a-f]+:[0-9a-f]+:' | diag
result 1 insmod_vugpu "$load_st"

# --- 2..N+1: vugpu-dma-bench ------------------------------------------------------
if [ "$NDMA" -eq 0 ]; then
	echo "# vugpu-dma-bench not found in PATH or does not list its tests"
	result 2 vugpu_dma_bench 1
else
	start=$(cut -d' ' -f1 /proc/uptime)
	# Streamed as it runs; the exit status travels through a file.
	# shellcheck disable=SC2086
	{ vugpu-dma-bench --no-header --first 2 $BENCH_ARGS; echo $? > "$TMP/rc"; } | tee "$TMP/out"
	rc=$(cat "$TMP/rc" 2>/dev/null)
	done=$(grep -cE '^(not )?ok [0-9]+ ' "$TMP/out")
	FAILED=$((FAILED + $(grep -cE '^not ok [0-9]+ ' "$TMP/out")))
	# A crash or kill leaves results missing: report each one as failed.
	i=$((done + 1))
	while [ "$i" -le "$NDMA" ]; do
		name=$(sed -n "${i}p" "$TMP/names")
		echo "# vugpu-dma-bench exited (status ${rc:-unknown}) before reporting ${name:-test $i}"
		result $((i + 1)) "${name:-vugpu_dma_bench_$i}" 1
		i=$((i + 1))
	done
	if [ "${rc:-1}" -ne 0 ] && ! grep -qE '^not ok ' "$TMP/out" && [ "$done" -eq "$NDMA" ]; then
		echo "# vugpu-dma-bench exit status $rc with no failed test"
		FAILED=$((FAILED + 1))
	fi
	echo "# vugpu-dma-bench took $(awk -v s="$start" -v e="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", e - s }') s"
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

echo "# suite dma-bench: $FAILED failed"
rm -rf "$TMP"
[ "$FAILED" -eq 0 ]
