#!/usr/bin/env bash
# Live backups of a running VM: Haven (`haven backup libvirt`) side by side with
# virtnbdbackup on the same libvirt domain, same disk, same changes, same run.
#
#   bench/qemu-live.sh [SIZE_MIB=4096] [CHANGED_PERCENT=1]
#
# A TCG domain (q35, 128 MiB, no OS) with one virtio qcow2 disk built by
# bench/make-image.py (40% holes, 30% random, 30% duplicated 1 MiB blocks), under a
# private libvirtd this script starts and stops. Steps: Haven full, virtnbdbackup full;
# the guest overwrites CHANGED_PERCENT of the 64 KiB blocks at random (random data,
# through the QEMU monitor's qemu-io, so QEMU's dirty bitmaps see real guest writes);
# Haven incremental, virtnbdbackup incremental. Both tools use libvirt's pull-mode
# backup and read the same NBD export; Haven also deduplicates, compresses (zstd) and
# encrypts (AES-256-GCM), virtnbdbackup writes its uncompressed stream format. Also
# reported: Haven's `virsh backup-begin` round trip, an upper bound of the time from the
# snapshot command until the VM's I/O runs again. Warm page cache, wall-clock seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-4096}
percent=${2:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
scripts/install-qemu-system.sh --libvirt
if [ -z "${HAVEN_BIN:-}" ]; then
  cargo build --release --locked -p haven-cli >/dev/null 2>&1
  HAVEN_BIN="$CARGO_TARGET_DIR/release/haven"
fi

work=${BENCH_DIR:-/var/tmp/haven-bench-live}
rm -rf "$work"; mkdir -p "$work/scratch" "$work/vscratch"
chmod 755 "$work"   # QEMU runs as libvirt-qemu and must reach the disk
# A private copy, so a concurrent build cannot swap the binary mid-run.
cp "$HAVEN_BIN" "$work/haven"
haven="$work/haven"
domains=("haven-bench-h-$$" "haven-bench-v-$$")   # Haven's, virtnbdbackup's
uri="qemu:///system?socket=$work/libvirt-sock"
kvm_mode=$(stat -c '%a %g' /dev/kvm 2>/dev/null || true)

cleanup() {
  for domain in "${domains[@]}"; do
    virsh -q -c "$uri" destroy "$domain" >/dev/null 2>&1 || true
    virsh -q -c "$uri" undefine "$domain" --checkpoints-metadata >/dev/null 2>&1 || true
  done
  [ -s "$work/qsd.pid" ] && kill "$(cat "$work/qsd.pid")" 2>/dev/null || true
  for pid_file in "$work/libvirtd.pid" "$work/virtlogd.pid"; do
    [ -s "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  sleep 0.5
  if [ -n "$kvm_mode" ]; then
    chgrp "${kvm_mode#* }" /dev/kvm; chmod "${kvm_mode% *}" /dev/kvm
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "building the ${size_mib} MiB disk..."
python3 bench/make-image.py "$work/seed.raw" "$size_mib"
# Identical disks: virtnbdbackup refuses a domain with another tool's checkpoints, so
# each tool gets its own domain; a third copy for Haven's qemu adapter (snapshot point).
qemu-img convert -f raw -O qcow2 "$work/seed.raw" "$work/disk-h.qcow2"
rm "$work/seed.raw"
cp --sparse=always "$work/disk-h.qcow2" "$work/disk-v.qcow2"
cp --sparse=always "$work/disk-h.qcow2" "$work/disk-q.qcow2"
head -c 65536 /dev/urandom > "$work/block.bin"; chmod 644 "$work/block.bin"

# A private libvirtd: own config, pid files and client socket (nothing system-wide
# keeps running afterwards). /dev/kvm group-accessible while it runs, else libvirtd
# probes it for 12-24 s.
if [ -n "$kvm_mode" ]; then chgrp kvm /dev/kvm; chmod 660 /dev/kvm; fi
cat > "$work/libvirtd.conf" <<CONF
unix_sock_dir = "$work"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_filters = "1:qemu.qemu_monitor"
log_outputs = "1:file:$work/libvirtd.log"
CONF
virtlogd --daemon --pid-file "$work/virtlogd.pid"
libvirtd --daemon --config "$work/libvirtd.conf" --pid-file "$work/libvirtd.pid"
for _ in $(seq 200); do virsh -q -c "$uri" version >/dev/null 2>&1 && break; sleep 0.1; done
for side in h v; do
  domain="haven-bench-$side-$$"
  cat > "$work/domain-$side.xml" <<XML
<domain type='qemu'><name>$domain</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$work/disk-$side.qcow2'/><target dev='vda' bus='virtio'/></disk>
<video><model type='none'/></video><memballoon model='none'/></devices></domain>
XML
  virsh -q -c "$uri" define "$work/domain-$side.xml" >/dev/null
  virsh -q -c "$uri" start "$domain" >/dev/null
done
qemu-storage-daemon --chardev "socket,path=$work/qsd-qmp.sock,server=on,wait=off,id=m" --monitor chardev=m \
  --blockdev "driver=file,filename=$work/disk-q.qcow2,node-name=file0" \
  --blockdev driver=qcow2,file=file0,node-name=disk0 \
  --nbd-server "addr.type=unix,addr.path=$work/qsd-nbd.sock" \
  --export type=nbd,id=vm0,node-name=disk0,name=vm0,writable=on \
  --pidfile "$work/qsd.pid" --daemonize

export HAVEN_PASSWORD=bench
"$haven" repo init --repo "$work/repo" >/dev/null
"$haven" repo init --repo "$work/repo-q" >/dev/null   # separate: no dedup against the libvirt run

results="$work/results.tsv"
: > "$results"
# measure TOOL STEP COMMAND...: seconds and peak RSS (KiB) of the command.
measure() {
  local tool=$1 step=$2; shift 2
  sync
  cat "$work"/disk-?.qcow2 > /dev/null   # warm sources
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" > "$work/out" 2> "$work/err" ||
    { cat "$work/out" "$work/err"; exit 1; }
  read -r seconds rss < "$work/time"
  printf '%s\t%s\t%s\t%s\n' "$tool" "$step" "$seconds" "$rss" >> "$results"
  printf '%-14s %-12s %7.2f s %8d KiB RSS' "$tool" "$step" "$seconds" "$rss"
  if [ "$tool" != virtnbdbackup ]; then
    python3 - "$work/out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d, m = r["disks"][0], r["modes"][0]
point = r.get("snapshot_point_ms", r.get("io_blocked_ms"))
what = "backup-begin" if "snapshot_point_ms" in r else "guest i/o held"
print(f"  [{m['mode']}] read {d['bytes_read']/2**20:.1f} MiB, stored {d['uploaded_bytes']/2**20:.1f} MiB,"
      f" {what} {point:.1f} ms")
with open(sys.argv[1] + ".point", "w") as f:
    f.write(f"{point:.1f}")
PY
    cp "$work/out.point" "$work/point-$tool-$step"
    if [ "$tool" = haven ]; then
      python3 - "$work/libvirtd.log" > "$work/point-transaction-$step" <<'PY'
import json, re, sys
from datetime import datetime
stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
sent, answered = None, None
for line in open(sys.argv[1], errors="replace"):
    if '"execute":"transaction"' in line:
        match = re.search(r'"id":"(libvirt-\d+)"', line)
        sent, wanted, answered = stamp(line), match and match.group(1), None
    elif sent and answered is None and wanted and "QEMU_MONITOR_RECV_REPLY" in line and f'"{wanted}"' in line:
        answered = stamp(line)
held = (answered - sent).total_seconds() * 1000 if sent and answered else None
print("?" if held is None else "<1" if held < 1 else f"{held:.0f}")  # the log has ms resolution
PY
      printf '%28s libvirt transaction (guest i/o held): %s ms\n' "" "$(cat "$work/point-transaction-$step")"
    fi
  else
    printf '  stored %s\n' "$(du -sh "$work/vnb" | cut -f1)"
  fi
}

haven_backup=("$haven" backup libvirt --domain "${domains[0]}" --uri "$uri" --vm bench
  --scratch-dir "$work/scratch" --repo "$work/repo" --json)
vnb_backup=(virtnbdbackup -U "$uri" -d "${domains[1]}" -o "$work/vnb" -S "$work/vscratch"
  -f "$work/vscratch/nbd.sock" -n -q -l)
qemu_backup=("$haven" backup qemu --qmp "$work/qsd-qmp.sock" --nbd-server "$work/qsd-nbd.sock"
  --vm benchq --scratch-dir "$work/scratch" --repo "$work/repo-q" --json)
chown libvirt-qemu: "$work/vscratch" 2>/dev/null || true

measure haven full "${haven_backup[@]}"
measure virtnbdbackup full "${vnb_backup[@]}" full
measure haven-qemu full "${qemu_backup[@]}"

# The guest overwrites PERCENT of the 64 KiB blocks at random (same blocks, same data
# on every copy): through the QEMU monitor of each domain, all in one virsh each, and
# through the storage daemon's writable export.
python3 - "$size_mib" "$percent" > "$work/offsets" <<'PY'
import random, sys
blocks = int(sys.argv[1]) * 16
rng = random.Random(7)
for b in sorted(rng.sample(range(blocks), int(blocks * float(sys.argv[2]) / 100))):
    print(b * 65536)
PY
changed=$(wc -l < "$work/offsets")
start_ns=$(date +%s%N)
for domain in "${domains[@]}"; do
  while read -r offset; do
    echo "qemu-monitor-command $domain --hmp 'qemu-io -d virtio-disk0/virtio-backend \"write -s $work/block.bin $offset 65536\"'"
  done < "$work/offsets" > "$work/writes.virsh"
  virsh -q -c "$uri" < "$work/writes.virsh" > "$work/writes.out" 2>&1
  if grep -qiE "error|fail" "$work/writes.out"; then head -3 "$work/writes.out"; exit 1; fi
done
qemu_io=(qemu-io -f raw "nbd+unix:///vm0?socket=$work/qsd-nbd.sock")
while read -r offset; do qemu_io+=(-c "write -s $work/block.bin $offset 65536"); done < "$work/offsets"
"${qemu_io[@]}" > /dev/null
printf 'guest wrote %d random 64 KiB blocks (%s%%) into each of 3 copies in %d ms\n' "$changed" "$percent" \
  $(( ($(date +%s%N) - start_ns) / 1000000 ))

measure haven incremental "${haven_backup[@]}"
measure virtnbdbackup incremental "${vnb_backup[@]}" inc
measure haven-qemu incremental "${qemu_backup[@]}"

echo
python3 - "$results" "$work" <<'PY'
import sys
t = {}
for line in open(sys.argv[1]):
    tool, step, seconds, rss = line.split()
    t[(tool, step)] = float(seconds)
point = lambda tool, step: open(f"{sys.argv[2]}/point-{tool}-{step}").read().strip()
for step in ("full", "incremental"):
    h, v = t[("haven", step)], t[("virtnbdbackup", step)]
    print(f"{step:12} haven {h:6.2f} s   virtnbdbackup {v:6.2f} s   haven/virtnbdbackup = {h / v:.2f}"
          f"   (haven qemu adapter {t[('haven-qemu', step)]:.2f} s)")
print(f"snapshot point, libvirt (virsh backup-begin round trip): full {point('haven', 'full')} ms,"
      f" incremental {point('haven', 'incremental')} ms")
print(f"  of which libvirt's QMP transaction (guest i/o held): full {point('transaction', 'full')} ms,"
      f" incremental {point('transaction', 'incremental')} ms")
print(f"snapshot point, qemu adapter (guest i/o held): full {point('haven-qemu', 'full')} ms,"
      f" incremental {point('haven-qemu', 'incremental')} ms")
PY
