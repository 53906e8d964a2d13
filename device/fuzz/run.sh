#!/bin/sh
# Bounded real fuzz run of the device harnesses with cargo-fuzz (libFuzzer).
#
#   device/fuzz/run.sh SECONDS [TARGET...]     (targets: gpu_regions config_space; default both)
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only flags, which RUSTC_BOOTSTRAP=1
# unlocks. Install the runner once with `cargo install cargo-fuzz`. Seeds live in seeds/TARGET
# (checked in); the growing corpus in corpus/TARGET and crashes in artifacts/TARGET
# (both git-ignored). Exits non-zero if libFuzzer finds a crash, leak or timeout (an input
# normally takes milliseconds; gpu_regions joins its engine threads at the end of each input,
# so a hang there is a timeout too).
set -eu

secs=${1:?usage: run.sh SECONDS [gpu_regions|config_space ...]}
shift
targets=${*:-gpu_regions config_space}

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== fuzzing $t for ${secs}s"
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" \
        -timeout=20 \
        -rss_limit_mb=2048 \
        -max_len=4096 \
        -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/"
done
