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

work=$(mktemp -d /var/tmp/haven-tls-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/haven" "$work/haven"
haven="$work/haven"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

python3 bench/make-image.py "$work/disk.img" "$size_mib"
"$haven" pki init --dir "$work/pki" >/dev/null
"$haven" pki issue server node --ip 127.0.0.1 --dir "$work/pki" >/dev/null

export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_REGION=us-east-1 HAVEN_PASSWORD=bench
start_node() { # NAME PORT [TLS-TOML]
  mkdir -p "$work/$1"
  printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n[[keys]]\naccess_key = "%s"\nsecret_key = "%s"\n%s' \
    "$2" "$work/$1/data" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "${3:-}" >"$work/$1/node.toml"
  HAVEN_LOG=warn "$haven" storage-node --config "$work/$1/node.toml" --create-bucket haven >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$2"
}
http_port=$(free_port)
start_node http "$http_port"
https_port=$(free_port)
start_node https "$https_port" "[tls]
cert = \"$work/pki/node.pem\"
key = \"$work/pki/node-key.pem\"
"
# backup URL: prints the seconds one full backup to a fresh repository at URL took.
backup() {
  "$haven" repo init --repo "$1" >/dev/null
  local start end
  start=$(date +%s.%N)
  "$haven" backup image "$work/disk.img" --format raw --repo "$1" --vm bench >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
declare -a http_s https_s
for round in $(seq "$rounds"); do
  http_s+=("$(backup "s3://haven/http$round?endpoint=http://127.0.0.1:$http_port")")
  https_s+=("$(backup "s3://haven/https$round?endpoint=https://127.0.0.1:$https_port&ca_file=$work/pki/ca.pem")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
http_median=$(median "${http_s[@]}")
https_median=$(median "${https_s[@]}")
echo "image: $size_mib MiB; rounds: $rounds (alternating); full backups to fresh repositories"
echo "| transport | seconds (each) | median s | MiB/s |"
echo "|---|---|---|---|"
echo "| http  | ${http_s[*]} | $http_median | $(echo "$size_mib / $http_median" | bc -l | xargs printf '%.0f') |"
echo "| https | ${https_s[*]} | $https_median | $(echo "$size_mib / $https_median" | bc -l | xargs printf '%.0f') |"
echo "https/http throughput: $(echo "$http_median / $https_median" | bc -l | xargs printf '%.2f')"
