#!/usr/bin/env bash
# Incremental backups of one image, interleaved round by round between Haven builds and
# restic, with medians: the comparison that run.sh's single pass is too noisy for on a
# shared 2-core machine.
#
#   bench/incremental.sh [SIZE_MIB=4096] [ROUNDS=5]
#   HAVEN_B=/path/to/other/haven bench/incremental.sh   # also time a second Haven build
#   HAVEN_B=target/release/haven HAVEN_B_ARGS="--reader nbd" bench/incremental.sh
#                                  # the same build through qemu-nbd (HAVEN_A_ARGS too)
#
# Each round changes 1% of the image's 64 KiB blocks (bench/make-image.py --mutate),
# then runs one incremental per tool, in an order that rotates every round, each after
# `sync`, dropping the page cache (DROP_CACHES=0 keeps it) and re-reading the image so
# every tool starts from the same warm source. Prints per-round seconds, the medians,
# and restic's median divided by each Haven median.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}
rounds=${2:-5}
haven_a=${HAVEN_A:-${CARGO_TARGET_DIR:-target}/debug/haven}
haven_b=${HAVEN_B:-}
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null

work=${BENCH_DIR:-$(mktemp -d /var/tmp/haven-incremental.XXXXXX)}
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
# Private copies, so a concurrent build cannot swap a binary mid-run.
cp "$haven_a" "$work/haven-a"
tools="haven-a"
if [ -n "$haven_b" ]; then cp "$haven_b" "$work/haven-b"; tools="$tools haven-b"; fi
tools="$tools restic"
image="$work/disk.img"
python3 bench/make-image.py "$image" "$size_mib"
export HAVEN_PASSWORD=bench RESTIC_PASSWORD=bench

backup() { # tool
  case $1 in
    haven-a) "$work/$1" backup image "$image" --format raw --repo "$work/repo-$1" --vm bench ${HAVEN_A_ARGS:-} ;;
    haven-b) "$work/$1" backup image "$image" --format raw --repo "$work/repo-$1" --vm bench ${HAVEN_B_ARGS:-} ;;
    restic) restic -q -r "$work/repo-restic" backup "$image" ;;
  esac >/dev/null
}
for tool in $tools; do
  case $tool in
    haven-*) "$work/$tool" repo init --repo "$work/repo-$tool" >/dev/null ;;
    restic) restic -q -r "$work/repo-restic" init >/dev/null ;;
  esac
  backup "$tool"
done

: >"$work/times"
for round in $(seq "$rounds"); do
  python3 bench/make-image.py --mutate "$image" 1 "$round"
  order=$(echo $tools | tr ' ' '\n' | awk -v r="$round" '{a[NR]=$0} END {for (i = 0; i < NR; i++) print a[(i + r) % NR + 1]}')
  line="round $round:"
  for tool in $order; do
    sync
    if [ "${DROP_CACHES:-1}" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi
    cat "$image" >/dev/null
    start=$(date +%s.%N)
    backup "$tool"
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    printf '%s\t%s\n' "$tool" "$seconds" >>"$work/times"
    line="$line $tool $(printf '%.2f' "$seconds") s"
  done
  echo "$line (load $(cut -d' ' -f1 /proc/loadavg))"
done

python3 - "$work/times" <<'PY'
import collections, statistics, sys
times = collections.defaultdict(list)
for line in open(sys.argv[1]):
    tool, seconds = line.split()
    times[tool].append(float(seconds))
medians = {tool: statistics.median(values) for tool, values in times.items()}
for tool, median in medians.items():
    print(f"{tool}: median {median:.2f} s over {len(times[tool])} rounds")
for tool in (t for t in medians if t.startswith("haven")):
    print(f"restic / {tool}: {medians['restic'] / medians[tool]:.2f}x")
PY
