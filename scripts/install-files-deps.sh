#!/usr/bin/env bash
# Installs the tools the file-level restore tests use to build disk images without
# mounting: mtools (FAT), gdisk (sgdisk, GPT) and e2fsprogs (mkfs.ext4 -d, debugfs).
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(mtools gdisk e2fsprogs)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
