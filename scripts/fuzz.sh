#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (fuzz/, docs/reliability.md).
#
#   scripts/fuzz.sh                 replay every committed corpus, then fuzz each target
#                                   for FUZZ_SECONDS (default 20) seconds
#   scripts/fuzz.sh replay          replay the committed corpora only
#   scripts/fuzz.sh run TARGET...   fuzz the named targets (FUZZ_SECONDS each)
#   scripts/fuzz.sh seeds           rewrite the committed seed corpora from the targets'
#                                   seed generators (fuzz/src/seeds.rs)
#   scripts/fuzz.sh list            the targets
#
# Needs rustup (a nightly toolchain is installed if missing) and a C++ compiler for
# libFuzzer. cargo-fuzz is installed once under FUZZ_TOOLS (default
# /var/tmp/cargo-fuzz-bin), the build goes to FUZZ_TARGET_DIR (default
# /var/tmp/haven-fuzz-target), inputs found while fuzzing to FUZZ_TARGET_DIR/corpus and
# crashes to FUZZ_TARGET_DIR/artifacts. A crash, a hang (FUZZ_TIMEOUT seconds, default
# 10) or an allocation past the targets' cap fails the script, naming the input.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
[ $# -gt 0 ] && shift
seconds="${FUZZ_SECONDS:-20}"
timeout="${FUZZ_TIMEOUT:-10}"
tools="${FUZZ_TOOLS:-/var/tmp/cargo-fuzz-bin}"
target_dir="${FUZZ_TARGET_DIR:-/var/tmp/haven-fuzz-target}"
cargo_fuzz_version="0.13.2"

targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^haven-fuzz$'
}

if [ "$mode" = list ]; then
    targets
    exit 0
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "== installing a nightly toolchain (cargo fuzz needs one)"
    rustup toolchain install nightly --profile minimal
fi
if ! "$tools/bin/cargo-fuzz" --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into $tools"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

echo "== building the fuzz targets (nightly, libFuzzer, debug assertions)"
# No sanitizer: Haven has no unsafe code of its own to check, and the build and the runs
# are twice as fast; the targets' allocator turns unbounded allocations into crashes.
cargo +nightly fuzz build --sanitizer none --debug-assertions --target-dir "$target_dir"
bin_dir="$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

corpus_of() { echo "fuzz/corpus/$1"; }

write_seeds() {
    local target="$1"
    rm -rf "fuzz/corpus/$target"
    HAVEN_FUZZ_WRITE_SEEDS=fuzz/corpus "$bin_dir/$target" >/dev/null 2>&1
    echo "$target: $(find "fuzz/corpus/$target" -type f | wc -l) seeds written to fuzz/corpus/$target"
}

replay() {
    local target="$1" files
    if [ ! -d "$(corpus_of "$target")" ]; then
        # A target added without its corpus: start from its seeds (commit them).
        write_seeds "$target"
    fi
    mapfile -t files < <(find "$(corpus_of "$target")" -type f | sort)
    if [ "${#files[@]}" -eq 0 ]; then
        echo "$target: no corpus" >&2
        return 1
    fi
    "$bin_dir/$target" -timeout="$timeout" "${files[@]}" >"$target_dir/replay-$target.log" 2>&1 || {
        tail -n 40 "$target_dir/replay-$target.log" >&2
        echo "$target: replaying fuzz/corpus/$target failed" >&2
        return 1
    }
    echo "$target: ${#files[@]} corpus inputs replayed"
}

run() {
    local target="$1" found="$target_dir/corpus/$1" artifacts="$target_dir/artifacts/$1/"
    mkdir -p "$found" "$artifacts"
    local log="$target_dir/fuzz-$target.log"
    nice "$bin_dir/$target" "$found" "$(corpus_of "$target")" \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 \
        -max_len="${FUZZ_MAX_LEN:-65536}" -artifact_prefix="$artifacts" \
        -print_final_stats=1 >"$log" 2>&1 || {
        tail -n 60 "$log" >&2
        echo "$target: FAILED; the input is in $artifacts (reproduce: $bin_dir/$target FILE)" >&2
        return 1
    }
    local runs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "$target: ${runs:-?} executions in ${seconds} s, no crash, corpus $(find "$found" -type f | wc -l) inputs"
}

case "$mode" in
    seeds)
        for target in $(targets); do write_seeds "$target"; done
        ;;
    replay)
        for target in $(targets); do replay "$target"; done
        ;;
    run)
        for target in "$@"; do run "$target"; done
        ;;
    all)
        for target in $(targets); do replay "$target"; done
        for target in $(targets); do run "$target"; done
        ;;
    *)
        echo "usage: scripts/fuzz.sh [all | replay | run TARGET... | seeds | list]" >&2
        exit 2
        ;;
esac
