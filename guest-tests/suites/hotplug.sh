#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Needs (read by vugpu-vm, see guest-tests/README.md "Suite declarations"):
# vugpu-vm: gpus 1
# vugpu-vm: topology rootports
# vugpu-vm: peer none
# vugpu-vm: hotplug gpus
# vugpu-vm: kernel-config HOTPLUG_PCI HOTPLUG_PCI_ACPI
# vugpu-vm: timeout 900
#
# hotplug.sh - hot-unplug a vugpu GPU while its driver is bound and DMA runs,
# plug it back, again and again, then run the smoke checks on the re-plugged
# GPU in the same guest (docs/reliability.md "Hot-unplug and re-plug").
#
# The host side is vugpu-vm's (src/hotplug.rs): this script asks for each
# step with a line "# vugpu-vm hotplug: unplug gpu0" / "... replug gpu0" on
# the results channel; the runner does QMP device_del (and waits for
# DEVICE_DELETED) / device_add with the same socket, and checks that the
# server dropped the session's fds and guest-RAM mappings and took new ones;
# a failed host check fails the run.  Steps, each one KTAP result:
#   1          insmod vugpu.ko and wait for the driver to appear
#   per round r = 1..R (R = 3, vugpu_hotplug.rounds=N on the command line):
#   3r-1       unplug_during_dma_r: a DMA loop runs on every engine (guest
#              RAM -> VRAM -> guest RAM, 1 MiB jobs) and has completed jobs;
#              the unplug is requested; the function leaves the PCI bus
#              within 60 s (q35 ejects through ACPI PCI hotplug: ~0.1 s),
#              the driver logs "removed", and every DMA loop ends (its
#              ioctl or open fails: the device is gone)
#   3r         dmesg_clean_after_unplug_r: no WARNING:/BUG:/Oops/Call Trace
#   3r+1       replug_r: re-plug requested; the function is back and bound to
#              vugpu with /dev/vugpu0 within 60 s
#   3R+2       vugpu_smoke: vugpu-smoke on the re-plugged GPU (its tests as
#              subtests smoke.NAME)
#   last       the kernel log has no WARNING:/BUG:/Oops/Call Trace lines
# (The kernel runs with panic_on_warn=1: a WARN in the remove path ends the
# guest at once, exit 3.)  QEMU's q35 hot-plugs through ACPI on its root ports
# (not native PCIe hotplug), so the kernel needs HOTPLUG_PCI_ACPI: without it
# (the runner's 6.12 build) the function never leaves and every round would
# wait out its timeouts; vugpu-vm refuses such a kernel up front.  A round
# whose function never left does not ask for the re-plug (QEMU would refuse a
# second gpu0) and its replug_r fails.

# shellcheck source-path=SCRIPTDIR source=lib/suite.sh
. "$(dirname "$0")/lib/suite.sh"

suite_init hotplug "${VUGPU_SMOKE_ARGS:-}"
ROUNDS=3
for word in $(suite_cmdline); do
	case "$word" in
	vugpu_hotplug.rounds=*) ROUNDS=${word#*=} ;;
	esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) ROUNDS=3 ;; esac

suite_plan $((1 + 3 * ROUNDS + 2)) ", $ROUNDS unplug/re-plug rounds"
suite_load_module
suite_report_load 1

bdf() { # the PCI address of the function vugpu is bound to
	for _h in /sys/bus/pci/drivers/vugpu/[0-9a-f]*:*; do
		[ -e "$_h" ] && basename "$_h" && return 0
	done
	return 1
}

# wait_for SECONDS CMD...: until CMD succeeds, at most SECONDS; 0 if it did
wait_for() {
	_w_n=$(($1 * 10))
	shift
	while ! "$@"; do
		_w_n=$((_w_n - 1))
		[ "$_w_n" -gt 0 ] || return 1
		sleep 0.1
	done
}
gone() { [ ! -e "/sys/bus/pci/devices/$BDF" ]; }
bound() { [ -e "/sys/bus/pci/drivers/vugpu/$BDF" ] && [ -c /dev/vugpu0 ]; }
loops_done() {
	for _p in $LOOPS; do
		kill -0 "$_p" 2>/dev/null && return 1
	done
	return 0
}
jobs_done() { # copies the loops completed so far
	cat "$SUITE_TMP"/jobs.* 2>/dev/null | wc -l
}

BDF=$(bdf) || BDF=none
echo "# GPU at $BDF"
n=1
r=1
while [ "$r" -le "$ROUNDS" ]; do
	st=0
	# The DMA loops: one per engine, each ends at its first failed copy.
	engines=$(vugpu-dmactl -d /dev/vugpu0 info 2>/dev/null | sed -n 's/^engines \([0-9]*\) .*/\1/p')
	rm -f "$SUITE_TMP"/jobs.* "$SUITE_TMP"/loop.*
	LOOPS=
	e=0
	while [ "$e" -lt "${engines:-0}" ]; do
		(
			off=$((e * 0x200000))
			while vugpu-dmactl -d /dev/vugpu0 -e "$e" copy user "vram:$off" 0x100000 > "$SUITE_TMP/loop.$e" 2>&1 &&
				vugpu-dmactl -d /dev/vugpu0 -e "$e" copy "vram:$off" user 0x100000 > "$SUITE_TMP/loop.$e" 2>&1; do
				echo x >> "$SUITE_TMP/jobs.$e"
			done
		) &
		LOOPS="$LOOPS $!"
		e=$((e + 1))
	done
	if [ -z "$LOOPS" ]; then
		echo "# no DMA engines on $BDF (engines: '${engines}')"
		st=1
	elif ! wait_for 30 sh -c "[ \$(cat $SUITE_TMP/jobs.* 2>/dev/null | wc -l) -ge ${engines} ]"; then
		echo "# the DMA loops completed only $(jobs_done) copies in 30 s"
		st=1
	elif loops_done; then
		echo "# the DMA loops ended before the unplug:"
		cat "$SUITE_TMP"/loop.* | ktap_diag
		st=1
	fi
	before=$(jobs_done)
	echo "# vugpu-vm hotplug: unplug gpu0"
	left=1
	if ! wait_for 60 gone; then
		echo "# $BDF is still on the bus 60 s after the unplug request"
		st=1
		left=0
	fi
	if ! wait_for 30 loops_done; then
		echo "# DMA loops still running 30 s after the unplug"
		st=1
		for p in $LOOPS; do kill "$p" 2>/dev/null; done
	fi
	echo "# round $r: $before copies before the unplug request, $(jobs_done) in all; the loops ended with:"
	cat "$SUITE_TMP"/loop.* 2>/dev/null | sort | uniq -c | ktap_diag
	dmesg | grep -E "vugpu $BDF: .*removed" | tail -n 1 | ktap_diag
	dmesg | grep -qE "vugpu $BDF: .*removed" || { echo "# no 'removed' line from the driver"; st=1; }
	n=$((n + 1))
	ktap_result "$n" "unplug_during_dma_$r" "$st"

	n=$((n + 1))
	suite_dmesg_check "$n" > "$SUITE_TMP/dm"
	sed "s/dmesg_no_warn_bug/dmesg_clean_after_unplug_$r/" "$SUITE_TMP/dm"

	st=0
	if [ "$left" = 0 ]; then
		echo "# $BDF never left the bus: nothing to re-plug"
		st=1
	elif echo "# vugpu-vm hotplug: replug gpu0" && ! wait_for 60 bound; then
		echo "# $BDF is not back and bound to vugpu 60 s after the re-plug request"
		ls /sys/bus/pci/devices | ktap_diag
		st=1
	fi
	dmesg | grep -E "vugpu $BDF:" | tail -n 2 | ktap_diag
	n=$((n + 1))
	ktap_result "$n" "replug_$r" "$st"
	r=$((r + 1))
done

suite_harness $((n + 1)) vugpu-smoke --module "$MODULE"
suite_dmesg_check $((n + 2))
suite_end
