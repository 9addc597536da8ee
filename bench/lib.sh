# Shared by the benchmarks that time full backups through storage nodes
# (bench/storage-node-tls.sh, bench/tracing.sh): a work folder cleaned up on exit, a
# private copy of the haven binary, loopback ports, storage nodes, timed backups and
# medians. Sourced, not run; the caller has `set -euo pipefail` and is in the repository
# root.

# bench_setup NAME HAVEN_BIN: makes $work (/var/tmp/haven-NAME.XXXXXX), removed on exit
# with every process whose pid is added to $pids, and copies HAVEN_BIN to $haven, so a
# concurrent build cannot swap the binary mid-run.
bench_setup() {
  work=$(mktemp -d "/var/tmp/haven-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
  cp "$2" "$work/haven"
  haven="$work/haven"
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}

# free_port: prints a loopback port nobody listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: returns once something accepts connections on PORT (10 s at most).
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1))" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# start_node NAME PORT EXTRA_TOML [ENV...]: a storage node in $work/NAME on PORT with the
# bucket `haven` and the key pair of $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, EXTRA_TOML
# appended to its configuration and ENV in its environment; returns once it listens.
start_node() {
  local name=$1 port=$2 extra=$3
  shift 3
  mkdir -p "$work/$name"
  printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n[[keys]]\naccess_key = "%s"\nsecret_key = "%s"\n%s' \
    "$port" "$work/$name/data" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$extra" >"$work/$name/node.toml"
  env "$@" HAVEN_LOG=warn "$haven" storage-node --config "$work/$name/node.toml" --create-bucket haven >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$port"
}

# timed_backup URL [ENV...]: prints the seconds one full backup of $work/disk.img to a
# fresh repository at URL took, with ENV in the backup's environment.
timed_backup() {
  local url=$1
  shift
  "$haven" repo init --repo "$url" >/dev/null
  local start end
  start=$(date +%s.%N)
  env "$@" "$haven" backup image "$work/disk.img" --format raw --repo "$url" --vm bench >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# median SECONDS...: the median (the mean of the middle two for an even count).
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ratio A B [DECIMALS=0]: A / B, rounded.
ratio() { echo "$1 / $2" | bc -l | xargs printf "%.${3:-0}f"; }

# table_header SETTING: the results table's title and header; SETTING names what the
# rows compare. Reads $size_mib and $rounds.
table_header() {
  echo "image: $size_mib MiB; rounds: $rounds (alternating); full backups to fresh repositories"
  echo "| $1 | seconds (each) | median s | MiB/s |"
  echo "|---|---|---|---|"
}

# table_row LABEL SECONDS...: one setting's row: each time, the median and the
# throughput of the median.
table_row() {
  local label=$1 middle
  shift
  middle=$(median "$@")
  echo "| $label | $* | $middle | $(ratio "$size_mib" "$middle") |"
}
