#!/usr/bin/env bash
# Garage, an S3 implementation the tests run Haven against (crates.io `garage`; Debian
# does not package it). Built once, cached under /var/tmp, linked as /usr/local/bin/garage.
#
# A debug build with LMDB only: a release build of its 500 crates takes far longer on
# 2 cores, and the tests move megabytes, not gigabytes.
set -euo pipefail

version="2.5.0"
root="${GARAGE_ROOT:-/var/tmp/haven-tools/garage-$version}"
binary="$root/bin/garage"

if ! "$binary" --version >/dev/null 2>&1; then
  echo "== building garage $version (once; cached in $root)"
  CARGO_TARGET_DIR="$root/target" nice cargo install garage --version "$version" --locked \
    --debug --no-default-features --features lmdb,bundled-libs --root "$root"
  rm -rf "$root/target"
fi
ln -sf "$binary" /usr/local/bin/garage
