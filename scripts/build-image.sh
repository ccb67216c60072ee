#!/usr/bin/env bash
# Builds the container image of deploy/daemonset.yaml from the repository's Dockerfile, on a machine without a
# Docker daemon and without access to container registries (this one: Debian's apt, crates.io and rustup's
# servers are reachable, docker.io / quay.io / ghcr.io are not).
#
#   sudo scripts/build-image.sh            # -> localhost/flowgate/flowgate-agent:0.1.0 in podman's storage
#
# The Dockerfile's two base images are made here instead of pulled, from the same sources their official
# builds use, and cached under $IMAGE_CACHE:
#   - debian:bookworm-slim -> `debootstrap --variant=minbase bookworm` (Debian's own archive);
#   - rust:1.95-bookworm   -> that, plus gcc, libc6-dev, curl and rustup with Rust 1.95.0 (what the rust
#     image is: buildpack-deps plus rustup).
# Then `buildah bud` builds the Dockerfile with them (--build-arg RUST_IMAGE / RUNTIME_IMAGE) and the image is
# checked: both binaries run, and the agent carries its eBPF object. Containers run with chroot isolation:
# this machine's cgroups are in hybrid mode, which crun (podman's runtime here) refuses.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE_CACHE=${IMAGE_CACHE:-/var/cache/flowgate/images}
TAG=${TAG:-localhost/flowgate/flowgate-agent:0.1.0}
DEBIAN_BASE=localhost/flowgate-base/debian:bookworm-slim
RUST_BASE=localhost/flowgate-base/rust:1.95-bookworm
MIRROR=http://deb.debian.org/debian

need() { command -v "$1" >/dev/null || { echo "build-image: $1 is missing (apt-get install -y buildah podman debootstrap)" >&2; exit 1; }; }
need buildah; need podman; need debootstrap
mkdir -p "$IMAGE_CACHE"

if ! podman image exists "$DEBIAN_BASE"; then
    rootfs="$IMAGE_CACHE/bookworm-rootfs"
    if [ ! -e "$rootfs/.complete" ]; then
        echo "build-image: debootstrap bookworm (minbase) into $rootfs"
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$IMAGE_CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$IMAGE_CACHE/debootstrap.log" >&2; exit 1; }
        # The archive and its security updates (llvm-22-dev comes from bookworm-security), as on this machine.
        cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        touch "$rootfs/.complete"
    fi
    # This machine reaches the internet through a TLS-inspecting proxy whose CA it trusts: the bases
    # trust what the machine trusts beyond Debian's bundle (ca-certificates installs them when it runs).
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    echo "build-image: $DEBIAN_BASE"
    tar -C "$rootfs" --exclude=./.complete -c . | podman import --change 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
fi

if ! podman image exists "$RUST_BASE"; then
    echo "build-image: $RUST_BASE"
    ctr=$(buildah from --pull-never "$DEBIAN_BASE")
    trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
    buildah run --isolation chroot --network host "$ctr" -- sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates curl gcc libc6-dev && rm -rf /var/lib/apt/lists/*'
    buildah run --isolation chroot --network host "$ctr" -- sh -c 'curl -sSf https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init -o /tmp/rustup-init && chmod +x /tmp/rustup-init && RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain 1.95.0 && rm /tmp/rustup-init'
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --rm "$ctr" "$RUST_BASE" >/dev/null
    trap - EXIT
fi

echo "build-image: $TAG (buildah bud of ./Dockerfile)"
buildah bud --pull-never --isolation chroot --network host --layers \
    --build-arg "RUST_IMAGE=$RUST_BASE" --build-arg "RUNTIME_IMAGE=$DEBIAN_BASE" \
    -t "$TAG" -f Dockerfile .

echo "build-image: checking $TAG"
check=$(buildah from --pull-never "$TAG")
trap 'buildah rm "$check" >/dev/null 2>&1 || true' EXIT
in_image() { buildah run --isolation chroot "$check" -- "$@"; }
in_image flowgate-agent --version
in_image flowgate --version
# The eBPF object is embedded in the agent binary (include_bytes): its programs' names are in it.
in_image sh -c 'grep -c -a -e to_endpoint /usr/local/bin/flowgate-agent' >/dev/null \
    || { echo "build-image: the agent in $TAG does not carry its eBPF programs" >&2; exit 1; }
podman image inspect --format '{{.Id}} {{.Size}} bytes' "$TAG"
