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
if [ -z "${HAVEN_BIN:-}" ]; then
  cargo build --release --locked -p haven-cli >/dev/null 2>&1
  HAVEN_BIN="$CARGO_TARGET_DIR/release/haven"
fi
if [ -z "${SINK_BIN:-}" ]; then
  cargo build --release --locked -p haven-telemetry --example otlp_sink >/dev/null 2>&1
  SINK_BIN="$CARGO_TARGET_DIR/release/examples/otlp_sink"
fi
. bench/lib.sh
bench_setup tracing-bench "$HAVEN_BIN"

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
off_port=$(free_port)
start_node off "$off_port" ""
on_port=$(free_port)
start_node on "$on_port" "" OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint"
declare -a off_s on_s
for round in $(seq "$rounds"); do
  off_s+=("$(timed_backup "s3://haven/off$round?endpoint=http://127.0.0.1:$off_port")")
  on_s+=("$(timed_backup "s3://haven/on$round?endpoint=http://127.0.0.1:$on_port" OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint")")
done
off_median=$(median "${off_s[@]}")
on_median=$(median "${on_s[@]}")
table_header tracing
table_row off "${off_s[@]}"
table_row "on " "${on_s[@]}"
# The nodes first (the 'on' one sends its last spans as it stops), then the sink.
for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
kill "$sink_pid" 2>/dev/null || true
wait "$sink_pid" 2>/dev/null || true
echo "$(cat "$work/sink.out") (the backups' and the 'on' node's)"
echo "cost of tracing: $(echo "($on_median / $off_median - 1) * 100" | bc -l | xargs printf '%.1f')% of backup time"
