# shellcheck shell=bash
# Shared by scripts/build-image and scripts/image-run: podman without a Docker engine or a registry.
# Storage is vfs under $VUGPU_CACHE/image/storage (no overlay or fuse needed), builds use chroot
# isolation, and containers are never started with `podman run` (refused by some hosts' rlimits):
# a command "in the image" runs chrooted in a fresh writable copy of the image's file system
# (`podman create` + `podman mount`), with /proc, /sys and /dev mounted in a private mount
# namespace, the image's environment, working directory and entrypoint. That is what
# `docker run --privileged IMAGE ARGS` does, minus the container's own namespaces.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

IMAGE=${VUGPU_IMAGE:-localhost/vugpu:latest}
IMG_CACHE=$VUGPU_CACHE/image

PM=(podman --root "$IMG_CACHE/storage" --runroot /run/vugpu-podman --storage-driver vfs
    --cgroup-manager cgroupfs --events-backend file)
pm() { "${PM[@]}" "$@"; }

image_prereqs() { # podman, debootstrap and cpio, from the host's apt when missing
    [ "$(id -u)" = 0 ] || { echo "vugpu: run as root (podman storage, debootstrap, chroot)" >&2; exit 2; }
    local need=()
    command -v podman >/dev/null || need+=(podman)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v unshare >/dev/null || need+=(util-linux)
    command -v cpio >/dev/null || need+=(cpio)
    if [ ${#need[@]} -gt 0 ]; then
        progress "installing host packages: ${need[*]}" sh -c \
            'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >/dev/null' \
            apt "${need[@]}"
    fi
    mkdir -p "$IMG_CACHE"
}

# image_exec IMAGE OUTDIR CMD...: runs CMD (absolute path inside the image) chrooted in a fresh
# writable copy of IMAGE's file system, with the image's Env and WorkingDir, OUTDIR (host)
# bind-mounted on /out; the copy is removed afterwards. Returns CMD's exit code.
image_exec() {
    local image=$1 out=$2; shift 2
    local ctr mnt rc=0 wd
    local -a envs
    image_gc
    mapfile -t envs < <(pm image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
    wd=$(pm image inspect --format '{{.Config.WorkingDir}}' "$image")
    ctr=$(pm create --name "vugpu-exec-$$-$RANDOM" "$image") || return 125
    mnt=$(pm mount "$ctr") || { pm rm -f "$ctr" >/dev/null; return 125; }
    mkdir -p "$out" "$mnt/out"
    # shellcheck disable=SC2016
    unshare --mount --propagation private -- /bin/sh -c '
        set -e
        r=$1 out=$2 wd=$3; shift 3
        # The root of the chroot must be a mount point (unshare --propagation inside needs it).
        mount --bind "$r" "$r"
        mount -t proc proc "$r/proc"
        mount -t sysfs sysfs "$r/sys"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        mount --bind "$out" "$r/out"
        cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
        exec chroot "$r" /bin/sh -c "cd \"\${0:-/}\" && exec \"\$@\"" "$wd" "$@"
    ' sh "$mnt" "$out" "${wd:-/}" /usr/bin/env -i "${envs[@]}" "$@" || rc=$?
    pm umount "$ctr" >/dev/null || true
    pm rm -f "$ctr" >/dev/null || true
    return "$rc"
}

# image_gc: removes the file-system copies of image_exec runs whose process is gone (killed by a
# timeout or a signal before their clean-up).
image_gc() {
    local name pid
    pm ps -a --format '{{.Names}}' 2>/dev/null | while read -r name; do
        case "$name" in vugpu-exec-*) ;; *) continue ;; esac
        pid=${name#vugpu-exec-}; pid=${pid%%-*}
        [ -d "/proc/$pid" ] && continue
        pm umount "$name" >/dev/null 2>&1 || true
        pm rm -f "$name" >/dev/null 2>&1 || true
    done
}

# image_entrypoint IMAGE: the image's ENTRYPOINT words, one per line.
image_entrypoint() {
    pm image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$1" | sed '/^$/d'
}
