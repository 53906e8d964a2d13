# vugpu image for users' CI: the vugpu server, the vugpu-vm runner, QEMU >= 10.1 with vfio-user-pci
# (Debian trixie-backports), and the guest sources. The guest kernel, busybox and the module
# toolchain are provisioned by `vugpu-vm provision` into /var/cache/vugpu on first use (mount a
# volume there to keep them). The runner uses private mount namespaces and chroot, so run with
# --privileged (and --device /dev/kvm where KVM works):
#
#   docker build -t vugpu .
#   docker run --rm --privileged -v vugpu-cache:/var/cache/vugpu vugpu --gpus 1 --suite smoke
#   docker run --rm --privileged -v vugpu-cache:/var/cache/vugpu vugpu --gpus 2 -- uname -a
#
# The server alone: docker run --rm -v /run/vugpu:/run/vugpu --entrypoint vugpu vugpu \
#                      serve --socket /run/vugpu/gpu0.sock --vram 1G

FROM rust:1-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vugpu-device -p vugpu-guest-tests

FROM debian:trixie
ENV DEBIAN_FRONTEND=noninteractive
RUN echo 'deb http://deb.debian.org/debian trixie-backports main' \
        > /etc/apt/sources.list.d/trixie-backports.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends -t trixie-backports qemu-system-x86 \
 && apt-get install -y --no-install-recommends debootstrap util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/vugpu /src/target/release/vugpu-vm /usr/local/bin/
COPY guest-tests /src/guest-tests
COPY docs /src/docs
WORKDIR /src
VOLUME /var/cache/vugpu
ENTRYPOINT ["/usr/local/bin/vugpu-vm", "--vugpu", "/usr/local/bin/vugpu", "--tests-dir", "/src/guest-tests"]
CMD ["--gpus", "1", "--suite", "smoke"]
