#!/usr/bin/env bash
# Restores of one snapshot from `file://` and from a storage node on this machine,
# interleaved, with each restore's time, CPU (client and node) and the disk's reads and
# writes (/proc/diskstats): whether a restore is bound by the CPU, the disk, or the
# number of I/Os.
#
#   bench/restore-node.sh HAVEN_BIN [ROUNDS=3] [VARIANTS="file:8 node:8"] [DISK=vda]
#
# A variant is `file:P` or `node:P`, P the restore's `--parallel`. Only first rounds
# compare: later ones restore `file://` from the page cache, the node always reads
# direct.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 rounds=${2:-3} variants=${3:-"file:8 node:8"} disk=${4:-vda}
export HAVEN_PASSWORD=bench AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
# shellcheck source=lib.sh
source bench/lib.sh
bench_setup restore-node "$bin"
python3 bench/make-image.py "$work/disk.img" 2048
port=$(free_port)
start_node node "$port" ""
node_pid=${pids[-1]}
node_repo="s3://haven/r?endpoint=http://127.0.0.1:$port"
for repo in "$work/file-repo" "$node_repo"; do
  "$haven" repo init --repo "$repo" >/dev/null
  "$haven" backup image "$work/disk.img" --format raw --repo "$repo" --vm bench >/dev/null
done
sync
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# disk_io: reads completed, sectors read, writes completed, sectors written.
disk_io() { awk -v d="$disk" '$3 == d {print $4, $6, $8, $10}' /proc/diskstats; }
for round in $(seq "$rounds"); do
  for variant in $variants; do
    kind=${variant%%:*} parallel=${variant##*:}
    repo=$work/file-repo
    [ "$kind" = node ] && repo=$node_repo
    rm -f "$work/out.img"
    sync
    node_before=$(cpu_ticks "$node_pid")
    read -r r0 rs0 w0 ws0 < <(disk_io)
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$haven" restore bench@latest --repo "$repo" \
      --to "$work/out.img" --parallel "$parallel" >/dev/null
    read -r r1 rs1 w1 ws1 < <(disk_io)
    read -r seconds user system < "$work/time"
    node_cpu=$(echo "($(cpu_ticks "$node_pid") - $node_before) / $(getconf CLK_TCK)" | bc -l)
    printf 'round %s %-8s %6.2f s  CPU %.2f s, node %.2f s  reads %d (%d MiB)  writes %d (%d MiB)\n' \
      "$round" "$variant" "$seconds" "$(echo "$user + $system" | bc)" "$node_cpu" \
      $((r1 - r0)) $(((rs1 - rs0) / 2048)) $((w1 - w0)) $(((ws1 - ws0) / 2048))
    cmp "$work/disk.img" "$work/out.img" || { echo "restore differs"; exit 1; }
  done
done
