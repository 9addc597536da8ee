#!/usr/bin/env bash
# Haven's main job on the single-machine default (no servers, local repository):
# make a VM disk with a real ext4 file system, back it up, change files in it, back it
# up again (incremental: only changed chunks stored), restore, and prove the restore
# is byte-identical. Prints throughput and deduplication figures.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"

scripts/install-deps.sh
cargo build --release --locked -p haven-cli
haven="$CARGO_TARGET_DIR/release/haven"

work=$(mktemp -d /var/tmp/haven-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export HAVEN_PASSWORD=demo-password
repo="file://$work/repo"

echo "== building a 1 GiB VM disk with an ext4 file system (no mounting)"
mkdir -p "$work/tree/etc" "$work/tree/var/lib/app" "$work/tree/home/alice"
cp -r /usr/share/doc "$work/tree/usr-share-doc" 2>/dev/null || true
head -c 200M /dev/urandom > "$work/tree/var/lib/app/database.bin"
cp "$work/tree/var/lib/app/database.bin" "$work/tree/home/alice/database-copy.bin"
echo "demo-vm" > "$work/tree/etc/hostname"
mkfs.ext4 -q -F -d "$work/tree" "$work/web1.raw" 1G
qemu-img convert -f raw -O qcow2 "$work/web1.raw" "$work/web1.qcow2"

echo "== haven repo init"
"$haven" repo init --repo "$repo"

echo "== full backup"
"$haven" backup image "$work/web1.qcow2" --repo "$repo" --vm web1 --json > "$work/full.json"

echo "== the guest changes: a new 8 MiB file and an edited one"
head -c 8M /dev/urandom > "$work/new.bin"
debugfs -w -R "write $work/new.bin /home/alice/new.bin" "$work/web1.raw" >/dev/null 2>&1
echo "demo-vm-renamed" > "$work/hostname"
debugfs -w -R "rm /etc/hostname" "$work/web1.raw" >/dev/null 2>&1
debugfs -w -R "write $work/hostname /etc/hostname" "$work/web1.raw" >/dev/null 2>&1
qemu-img convert -f raw -O qcow2 "$work/web1.raw" "$work/web1.qcow2"

echo "== incremental backup"
"$haven" backup image "$work/web1.qcow2" --repo "$repo" --vm web1 --json > "$work/incr.json"

echo "== snapshots"
"$haven" snapshots --repo "$repo"

echo "== verify and restore"
"$haven" verify --repo "$repo"
"$haven" restore web1@latest --repo "$repo" --to "$work/restored.qcow2" --format qcow2 --json > "$work/restore.json"
qemu-img compare "$work/web1.qcow2" "$work/restored.qcow2"
debugfs -R "cat /etc/hostname" "$work/web1.raw" 2>/dev/null

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
full = json.load(open(f"{work}/full.json"))
incr = json.load(open(f"{work}/incr.json"))
rest = json.load(open(f"{work}/restore.json"))
MiB = 1024 * 1024
def line(name, report):
    disk = report["disks"][0]
    rate = disk["bytes_read"] / MiB / max(report["elapsed_seconds"], 1e-3)
    print(f"{name:12} read {disk['bytes_read']/MiB:7.1f} MiB at {rate:6.0f} MiB/s, "
          f"{disk['new_chunks']:4} new chunks ({disk['uploaded_bytes']/MiB:6.1f} MiB stored), "
          f"{disk['reused_chunks'] + disk['existing_chunks']:4} deduplicated, {disk['zero_chunks']:4} zero")
line("full", full)
line("incremental", incr)
print(f"restore      {rest['bytes_written']/MiB:7.1f} MiB in {rest['elapsed_seconds']:.2f} s "
      f"({rest['bytes_written']/MiB/max(rest['elapsed_seconds'],1e-3):.0f} MiB/s), byte-identical")
PY
echo "demo OK"
