#!/usr/bin/env bash
# Replication and verify throughput between two `haven storage-node` processes on
# loopback (targets: replication >= 500 MB/s, verify >= 1 GB/s of stored data).
#
#   bench/replicate.sh                 # 2048 MiB of incompressible data
#   SIZE_MIB=512 PARALLEL=32 bench/replicate.sh
#   UNSIGNED=true bench/replicate.sh   # node → node with AWS_UNSIGNED_PAYLOAD (no SigV4 body hash)
#   PERF_DIR=/tmp/p bench/replicate.sh # also `perf record` each process of the node → node run
#   KEEP=1 bench/replicate.sh          # leave BENCH_DIR behind (see below)
#   PULL=0 bench/replicate.sh          # the secondary may not pull: batches relayed through haven
#
# Deleting thousands of files makes the next minutes of file creation on the same
# file system slow when ext4 runs without a journal, as on the project's machine
# (`recently_deleted` in the inode allocator): back-to-back runs should use KEEP=1
# and delete their directories after the last run.
#
# Needs a built `haven` (HAVEN=path, default target/release/haven) and awscli (bucket
# creation). Data goes to BENCH_DIR (default a fresh dir in /var/tmp), removed at exit.
# Prints one markdown table row per measurement; MB = 10^6 bytes of stored objects.
set -euo pipefail
HAVEN=${HAVEN:-target/release/haven}
SIZE_MIB=${SIZE_MIB:-2048}
PARALLEL=${PARALLEL:-32}
VERIFY_PARALLEL=${VERIFY_PARALLEL:-16}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/haven-replicate-bench.XXXXXX)}
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 HAVEN_PASSWORD=bench-password
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

start_node() { # name [flags] -> the endpoint in $BENCH_DIR/name/endpoint, pid in pids
  local dir="$BENCH_DIR/$1"; mkdir -p "$dir"; shift
  HAVEN_LOG=warn "$HAVEN" storage-node --listen 127.0.0.1:0 --data "$dir/data" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$@" >"$dir/out" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$dir/out" ] && break; sleep 0.1; done
  head -1 "$dir/out" | awk '{print $NF}' >"$dir/endpoint"
}
cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat"; } # user+sys seconds
seconds() { python3 -c 'import sys,json; print(json.load(sys.stdin)["elapsed_seconds"])'; }
field() { python3 -c "import sys,json; print(json.load(sys.stdin)[\"$1\"])"; }
rate() { python3 -c "print(f'{$1/$2/1e6:.0f} MB/s')"; }

start_node primary; primary=$(cat "$BENCH_DIR/primary/endpoint"); primary_pid=${pids[0]}
pull_flags=(); [ "${PULL:-1}" = 0 ] || pull_flags=(--pull-source "$primary")
start_node secondary "${pull_flags[@]}"; secondary=$(cat "$BENCH_DIR/secondary/endpoint"); secondary_pid=${pids[1]}
aws --endpoint-url "$primary" s3 mb s3://haven-a >/dev/null
aws --endpoint-url "$secondary" s3 mb s3://haven-b >/dev/null
from="s3://haven-a/repo?endpoint=$primary"
to="s3://haven-b/repo?endpoint=$secondary"
local_copy="file://$BENCH_DIR/local-replica"

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$BENCH_DIR/disk.raw"
"$HAVEN" repo init --repo "$from" >/dev/null
"$HAVEN" backup image "$BENCH_DIR/disk.raw" --vm bench --repo "$from" --json >"$BENCH_DIR/backup.json"
rm -f "$BENCH_DIR/disk.raw"

echo "| measurement | stored data | time | throughput | CPU s: haven / source node / target node |"
echo "|---|---|---|---|---|"
row() { # label bytes seconds cpu
  echo "| $1 | $(python3 -c "print(f'{$2/2**20:.0f} MiB')") | $(python3 -c "print(f'{$3:.2f} s')") | $(rate "$2" "$3") | $4 |"
}
timed() { # runs "$@" with GNU time; leaves its JSON in $BENCH_DIR/out.json, CPU s in $BENCH_DIR/cpu
  /usr/bin/time -f "%U %S" -o "$BENCH_DIR/time" "$@" >"$BENCH_DIR/out.json"
  awk '{printf "%.1f", $1 + $2}' "$BENCH_DIR/time" >"$BENCH_DIR/cpu"
}
node_cpu() { echo "$(cpu "$primary_pid") $(cpu "$secondary_pid")"; }

perf_pids=()
copier_perf=()
if [ -n "${PERF_DIR:-}" ]; then
  mkdir -p "$PERF_DIR"
  for role in source:"$primary_pid" target:"$secondary_pid"; do
    perf record -q -g -p "${role#*:}" -o "$PERF_DIR/${role%%:*}.data" 2>/dev/null &
    perf_pids+=($!)
  done
  perf record -q -a -o "$PERF_DIR/all.data" 2>/dev/null &
  perf_pids+=($!)
  copier_perf=(perf record -q -g -o "$PERF_DIR/copier.data" --)
  sleep 0.5
fi
read -r p0 s0 <<<"$(node_cpu)"
HAVEN_PASSWORD='' AWS_UNSIGNED_PAYLOAD=${UNSIGNED:-false} timed "${copier_perf[@]}" "$HAVEN" replicate --from "$from" --to "$to" --parallel "$PARALLEL" --json
read -r p1 s1 <<<"$(node_cpu)"
for p in "${perf_pids[@]}"; do kill -INT "$p"; wait "$p" || true; done
json=$(cat "$BENCH_DIR/out.json")
row "replicate node → node (--parallel $PARALLEL)" "$(field bytes_copied <<<"$json")" "$(seconds <<<"$json")" \
  "$(cat "$BENCH_DIR/cpu") / $(python3 -c "print(f'{$p1-$p0:.1f}')") / $(python3 -c "print(f'{$s1-$s0:.1f}')")"

read -r p0 s0 <<<"$(node_cpu)"
HAVEN_PASSWORD='' timed "$HAVEN" replicate --from "$from" --to "$local_copy" --parallel "$PARALLEL" --json
read -r p1 s1 <<<"$(node_cpu)"
json=$(cat "$BENCH_DIR/out.json")
row "replicate node → file:// (--parallel $PARALLEL)" "$(field bytes_copied <<<"$json")" "$(seconds <<<"$json")" \
  "$(cat "$BENCH_DIR/cpu") / $(python3 -c "print(f'{$p1-$p0:.1f}')") / -"

start=$(date +%s.%N)
HAVEN_PASSWORD='' timed "$HAVEN" replicate --from "$from" --to "$to" --json
end=$(date +%s.%N)
echo "| replicate node → node, up to date | 0 | $(python3 -c "print(f'{$end-$start:.2f} s')") | - | $(cat "$BENCH_DIR/cpu") / - / - |"

for repo in "$to" "$local_copy"; do
  read -r p0 s0 <<<"$(node_cpu)"
  start=$(date +%s.%N)
  timed "$HAVEN" verify --repo "$repo" --parallel "$VERIFY_PARALLEL" --json
  end=$(date +%s.%N)
  read -r p1 s1 <<<"$(node_cpu)"
  bytes=$(field bytes_checked <"$BENCH_DIR/out.json")
  case "$repo" in s3://*) where="storage node"; node="$(python3 -c "print(f'{$s1-$s0:.1f}')")" ;; *) where="file://"; node="-" ;; esac
  row "verify on $where (--parallel $VERIFY_PARALLEL, incl. Argon2id)" "$bytes" "$(python3 -c "print($end-$start)")" \
    "$(cat "$BENCH_DIR/cpu") / - / $node"
done
