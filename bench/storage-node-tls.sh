#!/usr/bin/env bash
# Backup throughput through `haven storage-node` over https against the same node over
# http (issue 16: https must reach at least 80% of http). Same image, same machine,
# same run; each transport is measured ROUNDS times, alternating, and the median kept.
#
#   bench/storage-node-tls.sh [SIZE_MIB=2048] [ROUNDS=3]
#
# Image: bench/make-image.py (40% holes, 30% random, 30% duplicated blocks). Every
# backup goes to a fresh repository, so each one uploads all its chunks.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}
rounds=${2:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
cargo build --release --locked -p haven-cli >/dev/null 2>&1
. bench/lib.sh
bench_setup tls-bench "$CARGO_TARGET_DIR/release/haven"

python3 bench/make-image.py "$work/disk.img" "$size_mib"
"$haven" pki init --dir "$work/pki" >/dev/null
"$haven" pki issue server node --ip 127.0.0.1 --dir "$work/pki" >/dev/null

export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_REGION=us-east-1 HAVEN_PASSWORD=bench
http_port=$(free_port)
start_node http "$http_port" ""
https_port=$(free_port)
start_node https "$https_port" "[tls]
cert = \"$work/pki/node.pem\"
key = \"$work/pki/node-key.pem\"
"
declare -a http_s https_s
for round in $(seq "$rounds"); do
  http_s+=("$(timed_backup "s3://haven/http$round?endpoint=http://127.0.0.1:$http_port")")
  https_s+=("$(timed_backup "s3://haven/https$round?endpoint=https://127.0.0.1:$https_port&ca_file=$work/pki/ca.pem")")
done
table_header transport
table_row "http " "${http_s[@]}"
table_row https "${https_s[@]}"
echo "https/http throughput: $(ratio "$(median "${http_s[@]}")" "$(median "${https_s[@]}")" 2)"
