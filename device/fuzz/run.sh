#!/bin/sh
# Bounded real fuzz run of the device harnesses (see scripts/fuzz-run). An input normally takes
# milliseconds; gpu_regions joins its engine threads at the end of each input, so a hang there is
# a libFuzzer timeout too.
#
#   device/fuzz/run.sh SECONDS [TARGET...]
#       targets: gpu_regions config_space mmu_walk desc_decode (default: all four)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:?usage: run.sh SECONDS [gpu_regions|config_space|mmu_walk|desc_decode ...]}
shift
[ $# -gt 0 ] || set -- gpu_regions config_space mmu_walk desc_decode
exec "$here/../../scripts/fuzz-run" "$here" "$secs" 20 4096 "$@"
