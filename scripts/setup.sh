#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine, as root: system packages, the pinned nightly (eBPF build) with rust-src,
# bpf-linker built against LLVM 22, and bpffs. Steps already done are skipped, so a second run takes
# seconds. Called by `make build`, `make test` and `make demo`.
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (the lab creates network namespaces, the agent loads eBPF programs)" >&2
    exit 1
fi

# --- Debian packages -------------------------------------------------------------------------------
# llvm-22-dev: bpf-linker links against it. iproute2: `ip netns` / veth for the lab, and `tc` (tests count
# the agent's tc filters, the traffic benchmark's hook floor). tmux: the monitor's end-to-end test drives
# the TUI in it. prometheus: the metrics test scrapes a real agent with it.
# procps (pgrep/pkill), util-linux (nsenter), psmisc for the tests and the demo. protobuf-compiler and
# python3-protobuf: the JSON output is checked against Hubble's flow.proto.
# time (GNU time): the export test measures the exporter's peak memory with it. openssl: the Kubernetes tests'
# CA and certificates. man-db: the install test formats every manual page with `man -l`. iptables, ipset and
# nftables: the traffic benchmark enforces the same policies with them side by side with flowgate. patch:
# kube-network-policies is built with tools/knp/xt-queue.patch applied.
PACKAGES=(llvm-22-dev iproute2 tmux procps util-linux psmisc ca-certificates curl pkg-config build-essential
          protobuf-compiler python3-protobuf prometheus time openssl man-db iptables ipset nftables patch)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi

# --- Rust toolchains ----------------------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/rustup" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v rustup >/dev/null 2>&1 || { echo "setup: rustup not found; install Rust with rustup first" >&2; exit 1; }
# `make test` checks formatting and lints: the stable toolchain needs rustfmt and clippy.
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
        say "rustup component add ${component}"
        rustup component add "${component}"
    fi
done

# The eBPF crate builds with one pinned nightly: its LLVM major must be the one bpf-linker links against
# (Debian 12's newest is llvm-22). A floating `nightly` moved to LLVM 23 and can no longer be linked.
# Keep in step with EBPF_TOOLCHAIN in agent/build.rs.
EBPF_TOOLCHAIN=nightly-2026-05-20
if ! rustup toolchain list | grep -q "^${EBPF_TOOLCHAIN}"; then
    say "rustup toolchain install ${EBPF_TOOLCHAIN}"
    rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal
fi
if ! rustup component list --toolchain "${EBPF_TOOLCHAIN}" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "rustup component add rust-src --toolchain ${EBPF_TOOLCHAIN}"
    rustup component add rust-src --toolchain "${EBPF_TOOLCHAIN}"
else
    say "${EBPF_TOOLCHAIN} rust-src present"
fi

# --- bpf-linker ---------------------------------------------------------------------------------------
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
    say "cargo install bpf-linker@0.13.0 (LLVM 22), about a minute"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22
else
    say "bpf-linker 0.13.0 present"
fi

# --- bpffs ----------------------------------------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
    say "mount -t bpf bpf /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
else
    say "bpffs mounted"
fi

# The socket's default group, as `--socket-group` expects when it exists.
getent group flowgate >/dev/null || groupadd --system flowgate

# --- Kubernetes control plane -------------------------------------------------------------------------
# etcd, kube-apiserver and kubectl for the Kubernetes-mode tests, built from the Go modules pinned in
# tools/k8s/go.mod into /var/cache/flowgate (about 11 minutes the first time on 2 cores; nothing after).
bash "$(dirname "$0")/build-control-plane.sh"
# kube-network-policies v0.8.0 for the traffic and propagation benchmarks, from tools/knp/go.mod with
# tools/knp/xt-queue.patch (about a minute the first time).
bash "$(dirname "$0")/build-kube-network-policies.sh"
