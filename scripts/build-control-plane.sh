#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests run against (etcd, kube-apiserver, kubectl) from the Go modules
# pinned in tools/k8s/go.mod, into a cache outside the repository. Skipped when all three are present, so a
# second run takes no time. The first build takes about 11 minutes on 2 cores (etcd 70 s, kube-apiserver
# 9 min, kubectl 1 min, with the module cache warm).
# FLOWGATE_K8S_BIN overrides the cache directory; the tests read the same variable (tests/src/control_plane.rs).
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

K8S_VERSION=v1.37.2
BIN="${FLOWGATE_K8S_BIN:-/var/cache/flowgate/k8s-${K8S_VERSION}/bin}"
MODULE_DIR="$(cd "$(dirname "$0")/../tools/k8s" && pwd)"
# name=main package, built with `go build` inside tools/k8s.
TARGETS=(etcd=./cmd/etcd kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl)

missing=()
for t in "${TARGETS[@]}"; do
    [ -x "$BIN/${t%%=*}" ] || missing+=("$t")
done
if [ ${#missing[@]} -eq 0 ]; then
    say "control plane ${K8S_VERSION} present in $BIN"
    exit 0
fi

command -v go >/dev/null 2>&1 || { echo "setup: go not found; the control plane is built from Go modules" >&2; exit 1; }
mkdir -p "$BIN"
cd "$MODULE_DIR"
for t in "${missing[@]}"; do
    name="${t%%=*}"; pkg="${t#*=}"
    say "go build $name ($pkg) into $BIN: the first time takes minutes"
    start=$(date +%s)
    # Built to a temporary name and renamed, so an interrupted build never leaves a binary that looks present.
    go build -trimpath -buildvcs=false -ldflags=-s -o "$BIN/.$name.partial" "$pkg"
    mv "$BIN/.$name.partial" "$BIN/$name"
    say "built $name in $(( $(date +%s) - start )) s"
done
