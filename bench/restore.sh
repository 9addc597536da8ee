#!/usr/bin/env bash
# Full restore of a disk image: Haven (raw, direct I/O) vs restic, same data, same
# machine, interleaved rounds, medians; plus the first read of `haven serve-nbd` from a
# cold cache.
#
#   bench/restore.sh [SIZE_MIB=4096] [ROUNDS=3]
#
# Image: bench/make-image.py (40% holes, 30% random, 30% duplicated 1 MiB blocks).
# Both tools back it up once into a local, encrypted repository; then each round drops
# the page cache (when allowed) and times `haven restore` and `restic restore` of that
# snapshot, in alternating order. Restores are byte-compared with the source once.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}
rounds=${2:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null
command -v qemu-io >/dev/null || { echo "qemu-io (qemu-utils) is required" >&2; exit 1; }
cargo build --release --locked -p haven-cli >/dev/null 2>&1

work=${BENCH_DIR:-/var/tmp/haven-bench-restore}
rm -rf "$work"; mkdir -p "$work/src"
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/haven" "$work/haven-bin"
haven="$work/haven-bin"
image="$work/src/disk.img"
python3 bench/make-image.py "$image" "$size_mib"
sync

export HAVEN_PASSWORD=bench RESTIC_PASSWORD=bench HAVEN_REPO="$work/haven"
"$haven" repo init >/dev/null
"$haven" backup image "$image" --format raw --vm bench >/dev/null
restic -q -r "$work/restic" init >/dev/null
restic -q -r "$work/restic" backup "$image" >/dev/null

drop_caches() {
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}

# seconds COMMAND...: wall-clock seconds of the command, which must succeed.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" > "$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

haven_restore() {
  rm -f "$work/haven-out.img"
  drop_caches
  seconds "$haven" restore bench@latest --to "$work/haven-out.img"
}

restic_restore() {
  rm -rf "$work/restic-out"
  drop_caches
  seconds restic -q -r "$work/restic" restore latest --target "$work/restic-out"
}

haven_times=()
restic_times=()
echo "image: $size_mib MiB; $(nproc) cores; $rounds rounds"
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    haven_times+=("$(haven_restore)"); restic_times+=("$(restic_restore)")
  else
    restic_times+=("$(restic_restore)"); haven_times+=("$(haven_restore)")
  fi
  printf 'round %d: haven %.2f s, restic %.2f s\n' "$round" "${haven_times[-1]}" "${restic_times[-1]}"
done
cmp "$image" "$work/haven-out.img" || { echo "haven restore differs" >&2; exit 1; }
cmp "$image" "$work/restic-out$image" || { echo "restic restore differs" >&2; exit 1; }
rm -rf "$work/haven-out.img" "$work/restic-out"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
haven_median=$(median "${haven_times[@]}")
restic_median=$(median "${restic_times[@]}")
ratio=$(echo "$restic_median / $haven_median" | bc -l)
printf 'restore median: haven %.2f s (%.0f MiB/s of disk), restic %.2f s; ratio restic/haven %.2fx\n' \
  "$haven_median" "$(echo "$size_mib / $haven_median" | bc -l)" "$restic_median" "$ratio"

# Instant recovery: a fresh server (empty chunk cache) after dropping the page cache.
# "start" runs from launching serve-nbd to the first 4 KiB read answered (repository
# open and key derivation included); "read" is one 4 KiB read at a data block from an
# already listening server, whose chunk is not cached yet.
data_offset=$(python3 - "$image" <<'PY'
import sys
MIB = 1 << 20
with open(sys.argv[1], "rb") as image:
    # Far from offset 0, so the server's read-ahead after the first read cannot help.
    image.seek(0, 2)
    block = image.tell() // MIB // 2
    image.seek(block * MIB)
    while True:
        data = image.read(MIB)
        if not data:
            sys.exit("no data block")
        if data.count(0) != len(data):
            print(block * MIB + 512 * 1024)
            break
        block += 1
PY
)
socket="$work/nbd.sock"
first_read() {
  local offset=$1
  qemu-io -r -f raw "nbd+unix:///vda?socket=$socket" -c "read $offset 4k" >/dev/null
}
start_times=(); read_times=()
for round in $(seq 1 "$rounds"); do
  drop_caches
  rm -f "$socket"
  start=$(date +%s.%N)
  "$haven" serve-nbd bench@latest --listen "unix:$socket" >/dev/null 2>&1 &
  server_pid=$!
  until [ -S "$socket" ]; do sleep 0.005; done
  first_read 0
  end=$(date +%s.%N)
  start_times+=("$(echo "$end - $start" | bc -l)")
  drop_caches
  read_times+=("$(seconds first_read "$data_offset")")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
done
printf 'serve-nbd cold: start to first read %.3f s (median), first read of an uncached chunk %.3f s (median, qemu-io start included)\n' \
  "$(median "${start_times[@]}")" "$(median "${read_times[@]}")"
