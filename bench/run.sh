#!/usr/bin/env bash
# Backup and restore throughput of Haven side by side with restic and borg, on the same
# generated image, same machine, same run.
#
#   bench/run.sh [SIZE_MIB=4096] [TOOLS="haven restic borg"]
#   bench/run.sh 2048 "haven haven-node restic-node"   # the S3 path: Haven into file://,
#                                    # into a storage node on this machine, and restic into
#                                    # the same node; prints backup and restore ratios
#   DROP_CACHES=0 bench/run.sh ...   # keep the page cache warm between steps, as the
#                                    # peer figures in shared/TESTBED.md were measured
#
# Image: 40% zeros (holes), 30% random, 30% duplicated 1 MiB blocks (bench/make-image.py).
# Steps per tool: full backup; backup after changing 1% of 64 KiB blocks at random;
# restore of the second snapshot. Times are wall-clock seconds with a warm page cache,
# peak RSS and CPU time from /usr/bin/time (and the storage node's CPU for -node tools). Every tool stores to a local directory with encryption on
# (borg: repokey-blake2; restic: always encrypted).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}
tools=${2:-"haven restic borg"}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
command -v restic >/dev/null || apt-get install -y -qq restic borgbackup >/dev/null
command -v borg >/dev/null || apt-get install -y -qq borgbackup >/dev/null
# HAVEN_BIN=path uses an already built binary (say an optimized dev build) instead.
[ -n "${HAVEN_BIN:-}" ] || cargo build --release --locked -p haven-cli >/dev/null 2>&1

work=${BENCH_DIR:-/var/tmp/haven-bench}
rm -rf "$work"; mkdir -p "$work/src"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "${HAVEN_BIN:-$CARGO_TARGET_DIR/release/haven}" "$work/haven-bin"
haven="$work/haven-bin"
image="$work/src/disk.img"
python3 bench/make-image.py "$image" "$size_mib"
sync

export HAVEN_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
# shellcheck source=lib.sh
source bench/lib.sh   # free_port, start_node (the node serves bucket `haven` from $work/node)
node_url="" node_pid=""
# node_up: starts the storage node the -node tools share, once.
node_up() {
  if [ -z "$node_url" ]; then
    local port
    port=$(free_port)
    start_node node "$port" ""
    node_url="http://127.0.0.1:$port"
    node_pid=${pids[-1]}
  fi
}
# cpu_ticks PID: user + system CPU time the process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

results="$work/results.tsv"
: > "$results"
# measure TOOL STEP COMMAND...: runs the command, records seconds and peak RSS (KiB);
# prints the CPU time it used and, for the tools that write into the storage node, the
# node's (whether a step was bound by the CPU or by the disk).
measure() {
  local tool=$1 step=$2; shift 2
  sync
  if [ "${DROP_CACHES:-1}" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; fi
  cat "$image" > /dev/null   # warm source, as in the peer figures
  local node_before="" node_cpu=""
  if [[ $tool == *-node ]]; then node_before=$(cpu_ticks "$node_pid"); fi
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  read -r seconds rss user system < "$work/time"
  if [ -n "$node_before" ]; then
    node_cpu=$(echo "($(cpu_ticks "$node_pid") - $node_before) / $(getconf CLK_TCK)" | bc -l)
    node_cpu=$(printf ', node %.2f s' "$node_cpu")
  fi
  printf '%s\t%s\t%s\t%s\n' "$tool" "$step" "$seconds" "$rss" >> "$results"
  printf '%-11s %-12s %7.2f s %8d KiB RSS  CPU %.2f s%s\n' "$tool" "$step" "$seconds" "$rss" \
    "$(echo "$user + $system" | bc)" "$node_cpu"
}

run_tool() {
  local tool=$1
  cp --sparse=always "$image.orig" "$image"
  case $tool in
    haven)
      "$haven" repo init --repo "$work/haven" >/dev/null
      measure haven full "$haven" backup image "$image" --format raw --repo "$work/haven" --vm bench
      python3 bench/make-image.py --mutate "$image" 1
      measure haven incremental "$haven" backup image "$image" --format raw --repo "$work/haven" --vm bench
      measure haven restore "$haven" restore bench@latest --repo "$work/haven" --to "$work/restored.img"
      ;;
    haven-node)
      node_up
      local repo="s3://haven/haven-$RANDOM?endpoint=$node_url"
      "$haven" repo init --repo "$repo" >/dev/null
      measure haven-node full "$haven" backup image "$image" --format raw --repo "$repo" --vm bench
      python3 bench/make-image.py --mutate "$image" 1
      measure haven-node incremental "$haven" backup image "$image" --format raw --repo "$repo" --vm bench
      measure haven-node restore "$haven" restore bench@latest --repo "$repo" --to "$work/restored.img"
      ;;
    restic-node)
      node_up
      local repo="s3:$node_url/haven/restic-$RANDOM"
      restic -q -r "$repo" init >/dev/null
      measure restic-node full restic -q -r "$repo" backup "$image"
      python3 bench/make-image.py --mutate "$image" 1
      measure restic-node incremental restic -q -r "$repo" backup "$image"
      measure restic-node restore restic -q -r "$repo" restore latest --target "$work/restic-out"
      ;;
    restic)
      restic -q -r "$work/restic" init >/dev/null
      measure restic full restic -q -r "$work/restic" backup "$image"
      python3 bench/make-image.py --mutate "$image" 1
      measure restic incremental restic -q -r "$work/restic" backup "$image"
      measure restic restore restic -q -r "$work/restic" restore latest --target "$work/restic-out"
      ;;
    borg)
      borg init -e repokey-blake2 "$work/borg" >/dev/null 2>&1
      measure borg full borg create "$work/borg::one" "$image"
      python3 bench/make-image.py --mutate "$image" 1
      measure borg incremental borg create "$work/borg::two" "$image"
      measure borg restore sh -c "mkdir -p '$work/borg-out' && cd '$work/borg-out' && borg extract '$work/borg::two'"
      ;;
  esac
  cmp "$image" "$(restored_path "$tool")" || { echo "$tool restore differs"; exit 1; }
  # Repositories stay until the run ends (see `settle` below); restored copies go.
  rm -rf "$work/restored.img" "$work/restic-out" "$work/borg-out"
}

restored_path() {
  case $1 in
    haven | haven-node) echo "$work/restored.img" ;;
    restic | restic-node) echo "$work/restic-out$image" ;;
    borg) echo "$work/borg-out$image" ;;
  esac
}

mv "$image" "$image.orig"
echo "image: $size_mib MiB; $(nproc) cores"
# On ext4 without a journal (this test machine's /), creating a file skips every inode
# freed in the last minute, looking each one up: a tool timed right after thousands of
# files were deleted pays for them (a third of a storage node's CPU in one profile). So
# no repository is deleted before the run ends, and the first step starts a minute after
# the run did, past any earlier run's clean-up (`sync` first: a dirty inode table block
# keeps its freed inodes skipped for six minutes).
sync
settle=$((61 - SECONDS))
if [ "$settle" -gt 0 ]; then sleep "$settle"; fi
for tool in $tools; do run_tool "$tool"; done

python3 - "$results" <<'PY'
import sys, collections
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
t = collections.defaultdict(dict)
for tool, step, seconds, rss in rows:
    t[tool][step] = (float(seconds), int(rss))
if "haven" in t:
    print("\nratios (peer time / haven time; higher is better for haven):")
    for peer in [p for p in t if p not in ("haven", "haven-node")]:
        parts = []
        for step in ("full", "incremental", "restore"):
            if step in t[peer] and step in t["haven"]:
                parts.append(f"{step} {t[peer][step][0] / t['haven'][step][0]:.2f}x")
        print(f"  vs {peer}: " + ", ".join(parts))
    print(f"  haven peak RSS: {max(r for _, r in t['haven'].values()) / 1024:.0f} MiB")
if "haven" in t and "haven-node" in t:
    # The S3 path against the local one (targets: backup >= 70%, restore >= 90%).
    print("\nstorage node on this machine (file:// time / node time, as % of file:// speed):")
    for step in ("full", "incremental", "restore"):
        if step in t["haven-node"]:
            print(f"  {step}: {100 * t['haven'][step][0] / t['haven-node'][step][0]:.0f}%")
    if "restic-node" in t:
        parts = [f"{s} {t['restic-node'][s][0] / t['haven-node'][s][0]:.2f}x" for s in ("full", "restore")]
        print("  haven vs restic into the same node (restic time / haven time): " + ", ".join(parts))
PY
