#!/usr/bin/env bash
# What boot tests cost a worker (issue 20): `haven verify --boot` of a snapshot of the
# test guest (crates/testkit/src/guest.rs), N at once for each N given, sampling every
# second from /proc the CPU time and resident memory of each `haven` process and of its
# QEMU. Prints, per N: wall time to the verdicts (slowest), verdicts, CPU seconds and
# peak RSS of haven and of QEMU per test, and the machine's available memory at its
# lowest.
#
# Usage: bench/boot-test.sh HAVEN_BIN [N...]   (default N: 1 2 4)
# Needs the test guest built once (any real-guest test builds it under
# /var/tmp/haven-test-guest/VERSION), qemu-system-x86_64, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bin=${1:?usage: bench/boot-test.sh HAVEN_BIN [N...]}
shift
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(1 2 4)
guest=$(find /var/tmp/haven-test-guest -maxdepth 1 -type d -name 'bookworm-*' ! -name '*.building' | sort -V | tail -1)
[ -f "$guest/bootable.raw" ] || { echo "no test guest under /var/tmp/haven-test-guest: run a boot test first" >&2; exit 1; }
bench_setup boot "$bin"
export HAVEN_PASSWORD=bench HAVEN_LOG=warn
repo="file://$work/repo"
"$haven" repo init --repo "$repo" >/dev/null
"$haven" backup image "$guest/bootable.raw" --format raw --repo "$repo" --vm guest >/dev/null
mkdir -p "$work/tmp"

for n in "${levels[@]}"; do
  started=$(date +%s.%N)
  runs=()
  for i in $(seq "$n"); do
    TMPDIR="$work/tmp" "$haven" verify --boot guest@latest --repo "$repo" --check agent \
      --timeout 10m --max-cpus 1 --max-memory 512 --json >"$work/out-$n-$i.json" 2>/dev/null &
    runs+=($!)
    pids+=($!)
  done
  # Sample until every run ended: per process the newest utime+stime (ticks) and the
  # largest VmRSS seen; QEMU found as a child of its haven.
  python3 - "$work/samples-$n.txt" "${runs[@]}" <<'EOF' &
import os, sys, time
out, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
tick = os.sysconf("SC_CLK_TCK")
cpu, rss, low = {}, {}, None
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick   # ppid, cpu s
def vmrss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0
while any(os.path.exists(f"/proc/{p}") for p in pids):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            ppid, seconds = stat(pid)
            if pid in pids:
                key = ("haven", pid)
            elif ppid in pids and "qemu-system" in open(f"/proc/{pid}/cmdline").read():
                key = ("qemu", ppid)
            else:
                continue
            cpu[key] = seconds
            rss[key] = max(rss.get(key, 0), vmrss(pid))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    with open("/proc/meminfo") as f:
        available = next(int(l.split()[1]) // 1024 for l in f if l.startswith("MemAvailable:"))
    low = available if low is None else min(low, available)
    time.sleep(1)
with open(out, "w") as f:
    for kind in ("haven", "qemu"):
        keys = [k for k in cpu if k[0] == kind]
        if keys:
            f.write(f"{kind}: cpu {max(cpu[k] for k in keys):.1f} s, peak rss {max(rss[k] for k in keys)} MiB (per test, the largest of {len(keys)})\n")
    f.write(f"MemAvailable at its lowest: {low} MiB\n")
EOF
  sampler=$!
  for p in "${runs[@]}"; do wait "$p" || true; done
  wait "$sampler"
  ended=$(date +%s.%N)
  verdicts=$(cat "$work"/out-"$n"-*.json | python3 -c 'import sys, json
d = json.JSONDecoder(); s = sys.stdin.read().strip(); i = 0; out = []
while i < len(s):
    v, i = d.raw_decode(s, i); out.append(v["record"]["outcome"] + " " + v["record"]["detail"].rsplit(" after ", 1)[-1])
    while i < len(s) and s[i].isspace(): i += 1
print("; ".join(out))')
  printf '%d at once: %.1f s to the last verdict; verdicts: %s\n' "$n" "$(echo "$ended - $started" | bc)" "$verdicts"
  sed 's/^/  /' "$work/samples-$n.txt"
done
