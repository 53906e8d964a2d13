# vugpu image for CI: the vugpu server, the vugpu-vm runner, the guest sources, and what the runner
# provisions for itself (a Debian trixie root with QEMU 11.1 from trixie-backports, Debian's newest
# guest kernel with headers and gcc, busybox-static), installed at build time by the runner's own
# `vugpu-vm provision`: the image holds exactly what a host run caches in /var/cache/vugpu.
#
# Build it with scripts/build-image (podman; no Docker engine needed): it builds the binaries on the
# host, stages the build context (this file, bin/, provision/, image/) and builds FROM a base it
# imports from a local debootstrap, then runs the smoke suite inside the image's file system:
#
#   scripts/build-image                        # -> localhost/vugpu:latest, smoke result, image size
#   scripts/build-image --context-only DIR     # stage the context only; then e.g.
#   docker build -t vugpu DIR                  #   (BASE defaults to debian:trixie from a registry)
#
# Run it (the runner uses private mount namespaces and chroot: --privileged; add --device
# /dev/kvm where KVM works). KTAP is on stdout, the verdict on stderr; exit codes as vugpu-vm's:
#
#   docker run --rm --privileged -v "$PWD/out:/out" vugpu --suite smoke --junit /out/smoke.xml > out/smoke.ktap
#   docker run --rm --privileged vugpu --gpus 2 -- uname -a
#   docker run --rm -v /run/vugpu:/run/vugpu --entrypoint vugpu vugpu \
#       serve --socket /run/vugpu/gpu0.sock --vram 1G                 # the server alone
#
# The binaries are built on the host (the workspace's rust-version is 1.89; Debian trixie's rustc
# is 1.85), so no Rust toolchain is needed inside. They need glibc >= the build host's (Debian 12's
# 2.36; trixie has 2.41).

ARG BASE=debian:trixie
FROM ${BASE}

# Metadata first: with podman's vfs storage (no copy-on-write) every instruction after a large layer
# copies that layer once more, so everything but the file-system changes comes before them.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VUGPU_CACHE=/var/cache/vugpu LC_ALL=C.UTF-8
WORKDIR /src
ENTRYPOINT ["/usr/local/bin/vugpu-vm", "--vugpu", "/usr/local/bin/vugpu", "--tests-dir", "/src/guest-tests"]
CMD ["--suite", "smoke"]

# Provisioning next, keyed only on the staged provision/ (a vugpu-vm that scripts/build-image
# re-stages byte-identical while the runner's provisioning code is unchanged, and guest-tests/kernel/
# for --build-kernel), so a change to the server, the suites or the rest of the runner does not
# redo it. The runner installs what it needs on this system with apt (debootstrap), creates its
# trixie root under $VUGPU_CACHE/root and installs QEMU, the kernel, its headers and the build
# tools there, exactly as on a host. apt lists and the provisioning logs are dropped afterwards
# (they are refreshed when a run needs apt again, e.g. for --build-kernel or --modules).
# VUGPU_PROVISION_ARGS bakes more into the image with the same code, e.g. `--modules nvme` (the p2p
# suites' linux-modules-KVER, ~160 MB) or `--build-kernel 6.12` (a kernel the runner builds: ~20 min
# of CPU, ~2 GB with its source tree).
ARG VUGPU_PROVISION_ARGS=""
COPY provision/ /opt/vugpu-provision/
RUN /opt/vugpu-provision/vugpu-vm provision --tests-dir /opt/vugpu-provision/guest-tests \
        $VUGPU_PROVISION_ARGS \
 && rm -rf /opt/vugpu-provision /var/lib/apt/lists/* /var/cache/apt/*.bin \
           "$VUGPU_CACHE/logs" "$VUGPU_CACHE/lock" \
           "$VUGPU_CACHE/root/var/lib/apt/lists/"* "$VUGPU_CACHE/root/var/cache/apt/"*.bin

# The last layer, for everything that changes often: /usr/local/bin/{vugpu,vugpu-vm},
# /src/guest-tests, /src/docs, /src/examples.
COPY image/ /
