#!/usr/bin/env bash
# Compares `haven storage-node` with s3s-fs 0.14.1 on loopback.
# Needs: a built `haven` binary (HAVEN=path, default target/release/haven),
# `s3s-fs` (cargo install s3s-fs --version 0.14.1 --features binary; S3S_FS=path),
# python3 with boto3. Data goes to BENCH_DIR (default a fresh dir in /var/tmp).
# LOAD=path/to/s3_load (cargo build --release -p haven-storage-node --example s3_load)
# uses the Rust load generator instead of bench.py (the Python client is CPU-bound).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HAVEN=${HAVEN:-target/release/haven}
S3S_FS=${S3S_FS:-s3s-fs}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/haven-bench.XXXXXX)}
AK=bench-key SK=bench-secret-0123456789
load() { if [ -n "${LOAD:-}" ]; then "$LOAD" "$@"; else python3 "$here/bench.py" "$@"; fi; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "| server | PUT 4 MiB x16 | GET 4 MiB x16 | PUT 4 KiB x16 | GET 4 KiB x16 |"
echo "|---|---|---|---|---|"
port=$(free_port); mkdir -p "$BENCH_DIR/haven"
HAVEN_LOG=warn "$HAVEN" storage-node --listen 127.0.0.1:$port --data "$BENCH_DIR/haven" --access-key $AK --secret-key $SK >/dev/null &
pids+=($!); wait_port $port
load http://127.0.0.1:$port $AK $SK "haven storage-node (fsync)"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

port=$(free_port); mkdir -p "$BENCH_DIR/s3s-fs"
"$S3S_FS" --host 127.0.0.1 --port $port --access-key $AK --secret-key $SK "$BENCH_DIR/s3s-fs" >/dev/null 2>&1 &
pids+=($!); wait_port $port
load http://127.0.0.1:$port $AK $SK "s3s-fs 0.14.1 (no fsync)"
