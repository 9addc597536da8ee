#!/usr/bin/env bash
# Installs everything Haven's build, demo and tests need on a fresh Debian 12 machine.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
  # build: etcd-client and the gRPC crates run protoc
  protobuf-compiler pkg-config
  # the data path: qemu-img, qemu-nbd, qemu-storage-daemon, qemu-io
  qemu-utils
  # demo and tests: real file systems without mounting
  e2fsprogs
  # NBD peers used by tests (nbdinfo, nbdcopy)
  libnbd-bin
  # storage node tests: real S3 clients
  awscli rclone restic python3 python3-boto3
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
