#!/usr/bin/env bash
# Web console render time at the scale simulation's size (issue 21): 10,000 VMs,
# 100,000 snapshots and a week of jobs loaded into a real leader, then every page
# rendered. Usage: bench/console.sh [extra args, e.g. --vms 20000 --runs 50]
# DEV=1 runs the same code in a dev build (`cargo test --bench`), slower figures.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/haven-target}"
if [ -n "${DEV:-}" ]; then
  cargo test -p haven-coordinator --bench console -- "$@"
else
  cargo bench -p haven-coordinator --bench console -- "$@"
fi
