#!/usr/bin/env bash
# Installs the tools the file-level restore tests use to build disk images without
# mounting: mtools (FAT), gdisk (sgdisk, GPT) and e2fsprogs (mkfs.ext4 -d, debugfs).
# Idempotent: packages already present are left alone.
set -euo pipefail
# shellcheck source=install-common.sh
source "$(dirname "$0")/install-common.sh"

install_missing_packages mtools gdisk e2fsprogs

# NTFS: mkntfs, ntfscp and the ntfs-3g FUSE driver (tests build directory trees through
# it), unpacked into a private folder instead of
# installed, because `apt-get install ntfs-3g` removes fuse 2.x (restic and rclone need
# it). Tests run them with LD_LIBRARY_PATH pointing at the unpacked library.
ntfs_dir="${HAVEN_NTFS3G_DIR:-/opt/haven/ntfs-3g}"
if [ ! -x "$ntfs_dir/sbin/mkntfs" ] || [ ! -x "$ntfs_dir/sbin/ntfscp" ] || [ ! -x "$ntfs_dir/bin/ntfs-3g" ] \
  || ! LD_LIBRARY_PATH="$ntfs_dir/lib/x86_64-linux-gnu" "$ntfs_dir/sbin/ntfscp" -V >/dev/null 2>&1; then
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  if ! (cd "$download" && apt-get download -qq ntfs-3g libntfs-3g89 >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$download" && apt-get download -qq ntfs-3g libntfs-3g89 >/dev/null)
  fi
  rm -rf "$ntfs_dir.tmp"
  mkdir -p "$ntfs_dir.tmp"
  for package in "$download"/*.deb; do
    dpkg-deb -x "$package" "$ntfs_dir.tmp"
  done
  rm -rf "$ntfs_dir"
  mv "$ntfs_dir.tmp" "$ntfs_dir"
fi
