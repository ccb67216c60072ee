#!/usr/bin/env bash
# The demo until `flowgate demo` lands: bring up the example lab under a real agent, drive a few real
# connections between its pods, and show the events the kernel programs reported. Bounded: a fixed
# number of probes, then everything is torn down (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/debug
LAB=demo
ROUNDS=${ROUNDS:-5}
OUT=$(mktemp)

cleanup() {
    [ -n "${AGENT:-}" ] && kill -TERM "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
    "$BIN/flowgate" lab down "$LAB" >/dev/null 2>&1 || true
    rm -f "$OUT"
}
trap cleanup EXIT INT TERM

echo "== flowgate-agent: bringing up lab '$LAB' (examples/lab-small.yaml) and attaching the kernel programs"
"$BIN/flowgate-agent" --lab-topology examples/lab-small.yaml --lab-name "$LAB" --print-events >"$OUT" 2>&1 &
AGENT=$!
for _ in $(seq 100); do grep -q "attached to" "$OUT" && break; sleep 0.1; done
grep "attached to" "$OUT" || { cat "$OUT"; exit 1; }
"$BIN/flowgate" lab show "$LAB"

for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS: client -> web TCP 80, client -> web UDP 53"
    "$BIN/flowgate" lab probe --lab "$LAB" --from default/client --to default/web --port 80 --protocol TCP | tail -n 1
    "$BIN/flowgate" lab probe --lab "$LAB" --from default/client --to default/web --port 53 --protocol UDP | tail -n 1
    sleep 1
done

echo "== events from the kernel (first 40 lines)"
grep -E '^(<-|->|Lost)' "$OUT" | head -n 40
echo "== $(grep -cE '^(<-|->)' "$OUT") events in total"
