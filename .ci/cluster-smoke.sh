#!/usr/bin/env bash
# README "Run a cluster", command for command: a head from the rayx binary, two
# worker nodes and the driver from the example binary, `rayx status`, `rayx
# drain` of one node (its id read from the status), `rayx stop`.
# Fails if any step fails, or if a process is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example cluster --bin rayx
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
target/release/rayx start --head --port 6379 & pids+=($!)
RAYX_ROLE=node RAYX_ADDRESS=127.0.0.1:6379 target/release/examples/cluster & pids+=($!)
RAYX_ROLE=node RAYX_ADDRESS=127.0.0.1:6379 target/release/examples/cluster & pids+=($!)
RAYX_ADDRESS=127.0.0.1:6379 timeout 120 target/release/examples/cluster   # the driver
target/release/rayx status --address 127.0.0.1:6379 | tee /tmp/rayx-smoke-status.txt
# A worker node's id: alive, and not the head's (marked `*`).
node=$(awk '$1 ~ /^node-/ && $1 !~ /\*$/ && $3 == "alive" { print $1; exit }' /tmp/rayx-smoke-status.txt)
[ -n "$node" ] || { echo "cluster-smoke: no live worker node in the status" >&2; exit 1; }
target/release/rayx drain "$node" --address 127.0.0.1:6379
target/release/rayx stop --address 127.0.0.1:6379
# Every process of the cluster exits when the head stops it.
for p in "${pids[@]}"; do
  timeout 20 tail --pid="$p" -f /dev/null || { echo "cluster-smoke: process $p did not stop" >&2; exit 1; }
done
trap - EXIT
echo "cluster-smoke: ok"
