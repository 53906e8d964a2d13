# shellcheck shell=bash
# Shared by scripts/smoke and scripts/test-all: host prerequisites and the release build.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VUGPU_CACHE=${VUGPU_CACHE:-/var/cache/vugpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

log() { printf '== %s\n' "$*" >&2; }

host_prereqs() {
    [ "$(id -u)" = 0 ] || { echo "vugpu: run as root (provisioning uses apt, debootstrap, chroot)" >&2; exit 2; }
    command -v cargo >/dev/null || {
        echo "vugpu: cargo not found. Install a Rust toolchain (>= 1.89, e.g. with rustup) first." >&2
        exit 2
    }
    local need=()
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v unshare >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

build_release() {
    log "building vugpu and vugpu-vm (release)"
    (cd "$REPO" && cargo build --release --locked -q -p vugpu-device -p vugpu-guest-tests)
    VUGPU_VM=$CARGO_TARGET_DIR/release/vugpu-vm
    VUGPU=$CARGO_TARGET_DIR/release/vugpu
}
