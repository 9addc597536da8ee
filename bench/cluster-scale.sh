#!/usr/bin/env bash
# Control-plane scale simulation (issue 5): one `haven coordinator` process and N
# simulated workers (gRPC clients in the bench process) over 10,000 VMs, on a
# throw-away single-member etcd (STORE=etcd, the default) or the embedded store
# (STORE=embedded). The control plane runs on mutual TLS; PLAIN=1 runs it on plain TCP
# with API tokens, the baseline for TLS's cost. Usage: bench/cluster-scale.sh [VMS] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
vms="${1:-10000}"
workers="${2:-500}"
store="${STORE:-etcd}"

cargo build --release -p haven-cli >/dev/null
bench=$(cargo bench -p haven-coordinator --bench scale --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p')
work=$(mktemp -d)
trap 'kill $etcd_pid 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
etcd_pid=""
# A private copy: a concurrent build must not swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/haven" "$work/haven"

args=(--haven "$work/haven" --vms "$vms" --workers "$workers")
if [ "$store" = etcd ]; then
  port=$((20000 + RANDOM % 20000))
  etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "bench=http://127.0.0.1:$((port + 1))" >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 50); do
    etcdctl --endpoints "127.0.0.1:$port" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  args+=(--etcd "http://127.0.0.1:$port")
fi
if [ -n "${PLAIN:-}" ]; then
  args+=(--plain)
fi
"$bench" "${args[@]}"
