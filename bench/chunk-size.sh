#!/usr/bin/env bash
# Chooses Haven's default chunk size by measurement: full backup, backup after 1% of
# 64 KiB blocks changed at random, and restore, for several chunk sizes, interleaved
# ROUNDS times so machine noise hits every size alike; prints medians and stored bytes.
#
#   bench/chunk-size.sh [SIZE_MIB=2048] [ROUNDS=3] [SIZES="262144 524288 1048576 4194304"]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}
rounds=${2:-3}
sizes=${3:-"262144 524288 1048576 4194304"}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
cargo build --release --locked -p haven-cli >/dev/null 2>&1
work=${BENCH_DIR:-/var/tmp/haven-chunk-size}
rm -rf "$work"; mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/haven" "$work/haven-bin"
haven="$work/haven-bin"
python3 bench/make-image.py "$work/orig.img" "$size_mib"
export HAVEN_PASSWORD=bench
results="$work/results.tsv"
: > "$results"
seconds() { /usr/bin/time -f "%e" -o "$work/t" "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }; cat "$work/t"; }
for round in $(seq "$rounds"); do
  for cs in $sizes; do
    rm -rf "$work/repo" "$work/out.img"
    cp --sparse=always "$work/orig.img" "$work/disk.img"
    "$haven" repo init --repo "$work/repo" --chunk-size "$cs" >/dev/null
    sync
    full=$(seconds "$haven" backup image "$work/disk.img" --format raw --repo "$work/repo" --vm b)
    python3 bench/make-image.py --mutate "$work/disk.img" 1
    sync
    incr=$(seconds "$haven" backup image "$work/disk.img" --format raw --repo "$work/repo" --vm b --json)
    added=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["uploaded_bytes"])' "$work/out")
    sync
    rest=$(seconds "$haven" restore b@latest --repo "$work/repo" --to "$work/out.img")
    cmp "$work/disk.img" "$work/out.img"
    objects=$(find "$work/repo/chunks" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$cs" "$full" "$incr" "$rest" "$added" "$objects" >> "$results"
    echo "round $round chunk $cs: full $full s, incremental $incr s (+$added B), restore $rest s, $objects objects"
  done
done
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    cs, full, incr, rest, added, objects = line.split()
    rows[int(cs)].append((float(full), float(incr), float(rest), int(added), int(objects)))
print(f"\n{'chunk':>8} {'full s':>7} {'incr s':>7} {'restore s':>9} {'incr stored MiB':>15} {'objects':>8}")
for cs, values in sorted(rows.items()):
    med = lambda i: statistics.median(v[i] for v in values)
    print(f"{cs//1024:>6}Ki {med(0):7.2f} {med(1):7.2f} {med(2):9.2f} {med(3)/2**20:15.1f} {int(med(4)):8}")
PY
