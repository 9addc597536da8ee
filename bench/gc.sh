#!/usr/bin/env bash
# Garbage collection over a synthetic repository of CHUNKS chunk objects (default
# 1,000,000; 90 % referenced by 9 snapshots, 10 % garbage): peak RSS and time of a dry
# run, a real run and a run with nothing left to remove. Figures: docs/benchmarks.md.
#
#   bench/gc.sh [CHUNKS] [WORKDIR]
set -euo pipefail
chunks=${1:-1000000}
work=${2:-/var/tmp/haven-gc-bench}
target=${CARGO_TARGET_DIR:-target}
export HAVEN_PASSWORD=bench
cargo build --release -p haven-cli --bin haven
cargo build --release -p haven-repo --example gc_synthetic_repo
rm -rf "$work"
"$target/release/examples/gc_synthetic_repo" "$work/repo" "$chunks" 9
sync
for run in dry-run real again; do
    args=(gc --repo "$work/repo" --margin 0s --json)
    [ "$run" = dry-run ] && args+=(--dry-run)
    /usr/bin/time -v "$target/release/haven" "${args[@]}" >"$work/$run.json" 2>"$work/$run.time"
    printf '%-8s removed %s of %s chunks; %s; peak RSS %s KiB\n' "$run" \
        "$(grep -o '"chunks_removed": [0-9]*' "$work/$run.json" | grep -o '[0-9]*$')" \
        "$(grep -o '"chunks_stored": [0-9]*' "$work/$run.json" | grep -o '[0-9]*$')" \
        "$(grep 'Elapsed (wall' "$work/$run.time" | sed 's/.*): //')" \
        "$(grep 'Maximum resident' "$work/$run.time" | grep -o '[0-9]*$')"
done
# Baseline: opening the repository alone (Argon2id takes 64 MiB).
/usr/bin/time -v "$target/release/haven" snapshots --repo "$work/repo" >/dev/null 2>"$work/open.time"
echo "open     peak RSS $(grep 'Maximum resident' "$work/open.time" | grep -o '[0-9]*$') KiB"
rm -rf "$work"
