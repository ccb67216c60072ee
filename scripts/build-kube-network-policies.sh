#!/usr/bin/env bash
# Builds kube-network-policies (the Kubernetes SIG's reference NetworkPolicy enforcer) from the Go module pinned
# in tools/knp/go.mod, with tools/knp/xt-queue.patch applied, into a cache outside the repository, for the
# traffic benchmark (bench/src/traffic/).
#
# The patch: kube-network-policies sends each new connection to user space with nftables' `queue` statement,
# which needs the kernel's nft_queue (CONFIG_NFT_QUEUE); the kernel of the machine this project is measured on
# is built without it, but has nfnetlink_queue, nft_compat and the xtables NFQUEUE target. The patch writes the
# same queueing as the NFQUEUE target inside the same nftables rules (one function, xtQueue; nothing else
# changes): the packet reaches the same nfnetlink_queue with the same queue number and bypass flag.
#
# Skipped when the binary is present and was built with this patch (a stamp beside it holds the patch's
# sha256), so a second run takes no time. The first build takes about a minute on 2 cores.
# FLOWGATE_KNP_BIN overrides the cache directory; the benchmark reads the same variable.
set -euo pipefail

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

KNP_VERSION=v0.8.0
MODULE=sigs.k8s.io/kube-network-policies
BIN="${FLOWGATE_KNP_BIN:-/var/cache/flowgate/knp-${KNP_VERSION}/bin}"
MODULE_DIR="$(cd "$(dirname "$0")/../tools/knp" && pwd)"
PATCH="$MODULE_DIR/xt-queue.patch"
STAMP="$BIN/kube-network-policies.patch.sha256"
want="$(sha256sum "$PATCH" | cut -d' ' -f1)"

if [ -x "$BIN/kube-network-policies" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    say "kube-network-policies ${KNP_VERSION} (xt-queue patch) present in $BIN"
    exit 0
fi

command -v go >/dev/null 2>&1 || { echo "setup: go not found; kube-network-policies is built from its Go module" >&2; exit 1; }
mkdir -p "$BIN"
start=$(date +%s)
# The module's source as pinned (checked against tools/knp/go.sum), copied where it can be patched.
src_dir="$(cd "$MODULE_DIR" && go mod download -json "$MODULE" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$src_dir" ] || { echo "setup: go mod download $MODULE gave no source directory" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$src_dir" "$work/src"
chmod -R u+w "$work/src"
patch --quiet -d "$work/src" -p1 < "$PATCH"
say "go build kube-network-policies ${KNP_VERSION} (xt-queue patch) into $BIN"
# Built to a temporary name and renamed, so an interrupted build never leaves a binary that looks present.
(cd "$work/src" && go build -trimpath -buildvcs=false -ldflags=-s -o "$BIN/.kube-network-policies.partial" ./cmd)
mv "$BIN/.kube-network-policies.partial" "$BIN/kube-network-policies"
printf '%s\n' "$want" > "$STAMP"
say "built kube-network-policies in $(( $(date +%s) - start )) s"
