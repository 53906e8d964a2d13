#!/bin/sh
# Bounded real fuzz run of the protocol harnesses (see scripts/fuzz-run).
#
#   protocol/fuzz/run.sh SECONDS [TARGET...]     (targets: decode session; default both)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:?usage: run.sh SECONDS [decode|session ...]}
shift
[ $# -gt 0 ] || set -- decode session
exec "$here/../../scripts/fuzz-run" "$here" "$secs" 10 8192 "$@"
