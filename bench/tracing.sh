#!/usr/bin/env bash
# Backup throughput with tracing off against tracing on (issue 21: tracing must cost
# under 3%). Same image, same machine, same run; each setting is measured ROUNDS times,
# alternating, and the median kept.
#
#   bench/tracing.sh [SIZE_MIB=1024] [ROUNDS=3]
#
# "On" means the `haven backup` process and the storage node both export over OTLP/gRPC
# (every span built, batched, serialised and sent; the `traceparent` header on every
# request; one request span per request on the node) to a real receiver that counts
# and discards (`crates/telemetry/examples/otlp_sink.rs`): the cost to the data path
# and the export itself, without a collector to install. HAVEN_BIN=path and SINK_BIN=path
# skip the release builds (for a quick look with dev builds; such figures are not
# comparable to docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
work=$(mktemp -d /var/tmp/haven-tracing-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
if [ -z "${HAVEN_BIN:-}" ]; then
  cargo build --release --locked -p haven-cli >/dev/null 2>&1
  HAVEN_BIN="$CARGO_TARGET_DIR/release/haven"
fi
if [ -z "${SINK_BIN:-}" ]; then
  cargo build --release --locked -p haven-telemetry --example otlp_sink >/dev/null 2>&1
  SINK_BIN="$CARGO_TARGET_DIR/release/examples/otlp_sink"
fi
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "$HAVEN_BIN" "$work/haven"
haven="$work/haven"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

python3 bench/make-image.py "$work/disk.img" "$size_mib"
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_REGION=us-east-1 HAVEN_PASSWORD=bench
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
sink_port=$(free_port)
"$SINK_BIN" "$sink_port" >"$work/sink.out" &
sink_pid=$!
pids+=("$sink_pid")
wait_port "$sink_port"
endpoint="http://127.0.0.1:$sink_port"
start_node() { # NAME PORT [ENV...]
  local name=$1 port=$2
  shift 2
  mkdir -p "$work/$name"
  printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n[[keys]]\naccess_key = "%s"\nsecret_key = "%s"\n' \
    "$port" "$work/$name/data" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$work/$name/node.toml"
  env "$@" HAVEN_LOG=warn "$haven" storage-node --config "$work/$name/node.toml" --create-bucket haven >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$port"
}
off_port=$(free_port)
start_node off "$off_port"
on_port=$(free_port)
start_node on "$on_port" OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint"
# backup URL [ENV...]: prints the seconds one full backup to a fresh repository took.
backup() {
  local url=$1
  shift
  "$haven" repo init --repo "$url" >/dev/null
  local start end
  start=$(date +%s.%N)
  env "$@" "$haven" backup image "$work/disk.img" --format raw --repo "$url" --vm bench >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
declare -a off_s on_s
for round in $(seq "$rounds"); do
  off_s+=("$(backup "s3://haven/off$round?endpoint=http://127.0.0.1:$off_port")")
  on_s+=("$(backup "s3://haven/on$round?endpoint=http://127.0.0.1:$on_port" OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
off_median=$(median "${off_s[@]}")
on_median=$(median "${on_s[@]}")
echo "image: $size_mib MiB; rounds: $rounds (alternating); full backups to fresh repositories"
echo "| tracing | seconds (each) | median s | MiB/s |"
echo "|---|---|---|---|"
echo "| off | ${off_s[*]} | $off_median | $(echo "$size_mib / $off_median" | bc -l | xargs printf '%.0f') |"
echo "| on  | ${on_s[*]} | $on_median | $(echo "$size_mib / $on_median" | bc -l | xargs printf '%.0f') |"
# The nodes first (the 'on' one sends its last spans as it stops), then the sink.
for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
kill "$sink_pid" 2>/dev/null || true
wait "$sink_pid" 2>/dev/null || true
echo "$(cat "$work/sink.out") (the backups' and the 'on' node's)"
echo "cost of tracing: $(echo "($on_median / $off_median - 1) * 100" | bc -l | xargs printf '%.1f')% of backup time"
