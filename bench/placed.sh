#!/usr/bin/env bash
# Backup throughput into one `haven storage-node` against a site of three nodes with
# two replicas of each object (`s3://…?endpoint=E1&endpoint=E2&endpoint=E3&replicas=2`),
# all on loopback on this machine: what placement and the second copy cost.
#
#   bench/placed.sh                       # 1024 MiB of incompressible data
#   SIZE_MIB=512 HAVEN=target/debug/haven bench/placed.sh
#
# Needs a built `haven` (HAVEN=path, default target/release/haven). Data goes to
# BENCH_DIR (default a fresh dir in /var/tmp), removed at exit. Prints one line per
# run; MB = 10^6 bytes of disk data backed up.
set -euo pipefail
HAVEN=${HAVEN:-target/release/haven}
SIZE_MIB=${SIZE_MIB:-1024}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/haven-placed-bench.XXXXXX)}
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 HAVEN_PASSWORD=bench-password
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

start_node() { # name -> the endpoint in $BENCH_DIR/name/endpoint, pid in pids
  local dir="$BENCH_DIR/$1"; mkdir -p "$dir"
  HAVEN_LOG=warn "$HAVEN" storage-node --listen 127.0.0.1:0 --data "$dir/data" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    --create-bucket haven >"$dir/out" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$dir/out" ] && break; sleep 0.1; done
  head -1 "$dir/out" | awk '{print $NF}' >"$dir/endpoint"
}
endpoint() { cat "$BENCH_DIR/$1/endpoint"; }

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$BENCH_DIR/disk.raw"
run() { # label url
  "$HAVEN" repo init --repo "$2" >/dev/null
  local start end
  start=$(date +%s.%N)
  "$HAVEN" backup image "$BENCH_DIR/disk.raw" --vm bench --repo "$2" --json >"$BENCH_DIR/run.json" 2>/dev/null
  end=$(date +%s.%N)
  python3 -c "s=$end-$start; print(f'$1: {$SIZE_MIB} MiB in {s:.2f} s, {$SIZE_MIB*1048576/s/1e6:.0f} MB/s')"
}
for node in one a b c; do start_node "$node"; done
run "1 node" "s3://haven/one?endpoint=$(endpoint one)"
run "3 nodes, 2 replicas" "s3://haven/site?endpoint=$(endpoint a)&endpoint=$(endpoint b)&endpoint=$(endpoint c)&replicas=2"
