#!/usr/bin/env bash
# vSphere path against govmomi's simulator (crates/testkit/vcsim): full-backup throughput
# through the datastore HTTPS path next to `haven backup image` of the very same flat
# file, and incremental time at 1% and 10% of 64 KiB blocks changed.
#
#   bench/vsphere.sh [SIZE_MIB=4096] [ROUNDS=3]
#   HAVEN_BIN=/path/to/haven bench/vsphere.sh     # default: $CARGO_TARGET_DIR/debug/haven
#
# The disk is bench/make-image.py's image (40% holes, 30% random, 30% duplicated 1 MiB
# blocks) written into the simulated VM's -flat.vmdk. Each full backup goes to a fresh
# repository (the vSphere one after `haven backup vsphere` turned change tracking on, so
# it reads the allocated areas of "*"); each incremental changes PERCENT of the blocks
# (make-image.py --mutate) and backs up from the previous snapshot's changeId.
# The simulator hashes the whole flat file at every snapshot to answer
# QueryChangedDiskAreas later (ESXi tracks writes as they happen instead); its own log
# gives that time, printed beside the wall time and subtracted in the "Haven" column.
# Timings are wall-clock seconds, page cache warm (the simulator just read the file).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}
rounds=${2:-3}
haven_src=${HAVEN_BIN:-${CARGO_TARGET_DIR:-target}/debug/haven}
work=${BENCH_DIR:-$(mktemp -d /var/tmp/haven-vsphere-bench.XXXXXX)}
sim_pid=""
trap '[ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/go/src" "$work/tmp"
cp "$haven_src" "$work/haven"
haven="$work/haven"
export HAVEN_PASSWORD=bench

cp crates/testkit/vcsim/main.go "$work/go/src/"
(cd "$work/go/src" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$work/go/cache" \
  go build -o "$work/vcsim" .)
TMPDIR="$work/tmp" "$work/vcsim" -disk-mib "$size_mib" -ca-file "$work/ca.pem" \
  -info "$work/info.json" 2>"$work/vcsim.log" &
sim_pid=$!
for _ in $(seq 300); do [ -f "$work/info.json" ] && break; sleep 0.1; done
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$work/info.json")
ds=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["datastores"]["LocalDS_0"])' "$work/info.json")
vm=DC0_H0_VM0
flat="$ds/$vm/disk1-flat.vmdk"
python3 bench/make-image.py "$flat" "$size_mib"
printf 'user = "haven"\npassword = "vsphere-secret"\n' > "$work/credentials.toml"
allocated=$(du -B1 "$flat" | cut -f1)

vsphere() { # REPO
  "$haven" backup vsphere --url "$url" --vm "$vm" --credentials "$work/credentials.toml" \
    --ca-file "$work/ca.pem" --repo "$1" --json
}
# Seconds the simulator spent hashing the disk at the latest snapshot.
last_scan() { grep -o 'in [0-9.]* s' "$work/vcsim.log" | tail -1 | awk '{print $2}'; }
now() { date +%s.%N; }
row() { printf '%-34s %9s %9s %9s %10s\n' "$@"; }

echo "disk: ${size_mib} MiB, $((allocated >> 20)) MiB allocated; haven: $haven_src"
row "run" "wall s" "sim s" "Haven s" "MiB/s"
for round in $(seq "$rounds"); do
  rm -rf "$work/repo-image" "$work/repo-vsphere"
  "$haven" repo init --repo "$work/repo-image" >/dev/null
  "$haven" repo init --repo "$work/repo-vsphere" >/dev/null
  sync
  start=$(now)
  "$haven" backup image "$flat" --format raw --repo "$work/repo-image" --vm bench >/dev/null
  t=$(echo "$(now) - $start" | bc)
  row "full, image (pread) #$round" "$t" "-" "$t" "$(echo "$allocated / 1048576 / $t" | bc)"
  start=$(now)
  vsphere "$work/repo-vsphere" >/dev/null
  t=$(echo "$(now) - $start" | bc)
  scan=$(last_scan)
  h=$(echo "$t - $scan" | bc)
  row "full, vSphere (HTTPS) #$round" "$t" "$scan" "$h" "$(echo "$allocated / 1048576 / $h" | bc)"
done
for percent in 1 10; do
  for round in $(seq "$rounds"); do
    python3 bench/make-image.py --mutate "$flat" "$percent" "$((percent * 100 + round))"
    sync
    start=$(now)
    report=$(vsphere "$work/repo-vsphere")
    t=$(echo "$(now) - $start" | bc)
    scan=$(last_scan)
    read_mib=$(echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["disks"][0]["bytes_read"] >> 20, r["modes"][0]["mode"])')
    row "incremental ${percent}% #$round ($read_mib)" "$t" "$scan" "$(echo "$t - $scan" | bc)" "-"
  done
done
