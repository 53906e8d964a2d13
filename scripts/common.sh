# shellcheck shell=bash
# Shared by scripts/smoke and scripts/test-all: host prerequisites and the release build.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VUGPU_CACHE=${VUGPU_CACHE:-/var/cache/vugpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

log() { printf '== %s\n' "$*" >&2; }

# progress LABEL CMD...: runs CMD, printing LABEL with the elapsed time every 15 s while it runs,
# so a long silent step (apt, a cold release build, cargo install) is visibly alive.
progress() {
    local label=$1; shift
    local t0=$SECONDS rc=0 ticker
    ( while sleep 15; do printf '==   ... %s: %d s\n' "$label" $((SECONDS - t0)) >&2; done ) &
    ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
    if [ "$rc" = 0 ]; then log "$label: done in $((SECONDS - t0)) s"; else log "$label: FAILED (exit $rc) after $((SECONDS - t0)) s"; fi
    return "$rc"
}

host_prereqs() {
    [ "$(id -u)" = 0 ] || { echo "vugpu: run as root (provisioning uses apt, debootstrap, chroot)" >&2; exit 2; }
    command -v cargo >/dev/null || {
        echo "vugpu: cargo not found. Install a Rust toolchain (>= 1.89, e.g. with rustup) first." >&2
        exit 2
    }
    local need=()
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    # libfuzzer-sys (the cargo-fuzz targets) compiles C++.
    command -v c++ >/dev/null || need+=(g++)
    command -v make >/dev/null || need+=(make)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v unshare >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        progress "installing host packages: ${need[*]} (about 30 s)" sh -c \
            'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null' \
            apt "${need[@]}"
    fi
}

build_release() {
    progress "building vugpu and vugpu-vm (release; about 2 min on a cold tree)" \
        sh -c 'cd "$1" && cargo build --release --locked -q -p vugpu-device -p vugpu-guest-tests' \
        build "$REPO"
    VUGPU_VM=$CARGO_TARGET_DIR/release/vugpu-vm
    VUGPU=$CARGO_TARGET_DIR/release/vugpu
}
