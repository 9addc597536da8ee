#!/usr/bin/env bash
# Runs every test: set-up, then fast unit tests, then integration tests against real
# qemu-nbd/qemu-img, the storage node and real S3 clients.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"

scripts/install-deps.sh

echo "== unit tests"
cargo test --workspace --lib --bins --locked
echo "== integration tests"
cargo test --workspace --tests --locked -- --test-threads=2
echo "== deploy/ (compose file and Helm chart against the haven binary)"
python3 deploy/check.py --haven "$CARGO_TARGET_DIR/debug/haven"
echo "== deploy/ on Docker (images from local files, compose.yaml as shipped, a backup through it)"
python3 deploy/compose_test.py "$CARGO_TARGET_DIR/debug/haven"
# The committed corpora (seeds and every input that once failed) replayed through every
# fuzz target, then each target fuzzed for a bounded time (10 s unless FUZZ_SECONDS
# says otherwise; longer campaigns: docs/reliability.md).
echo "== fuzz corpora replayed, then each target fuzzed for ${FUZZ_SECONDS:-10} s"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz.sh
