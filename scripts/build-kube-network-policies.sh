#!/usr/bin/env bash
# Builds kube-network-policies (the Kubernetes SIG's reference NetworkPolicy enforcer) from the Go module pinned
# in tools/knp/go.mod, into a cache outside the repository, for the traffic benchmark (bench/src/traffic/).
# Skipped when present, so a second run takes no time. The first build takes about a minute on 2 cores.
# FLOWGATE_KNP_BIN overrides the cache directory; the benchmark reads the same variable.
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

KNP_VERSION=v0.8.0
BIN="${FLOWGATE_KNP_BIN:-/var/cache/flowgate/knp-${KNP_VERSION}/bin}"
MODULE_DIR="$(cd "$(dirname "$0")/../tools/knp" && pwd)"

if [ -x "$BIN/kube-network-policies" ]; then
    say "kube-network-policies ${KNP_VERSION} present in $BIN"
    exit 0
fi

command -v go >/dev/null 2>&1 || { echo "setup: go not found; kube-network-policies is built from its Go module" >&2; exit 1; }
mkdir -p "$BIN"
cd "$MODULE_DIR"
say "go build kube-network-policies ${KNP_VERSION} into $BIN"
start=$(date +%s)
# Built to a temporary name and renamed, so an interrupted build never leaves a binary that looks present.
go build -trimpath -buildvcs=false -ldflags=-s -o "$BIN/.kube-network-policies.partial" sigs.k8s.io/kube-network-policies/cmd
mv "$BIN/.kube-network-policies.partial" "$BIN/kube-network-policies"
say "built kube-network-policies in $(( $(date +%s) - start )) s"
