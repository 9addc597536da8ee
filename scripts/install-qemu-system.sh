#!/usr/bin/env bash
# Installs qemu-system-x86_64 (and, with --libvirt, libvirt + virtnbdbackup) from
# bookworm-backports through a PRIVATE apt configuration.
#
# Why: bookworm main's qemu-system-x86 is QEMU 7.2, whose qemu-system-common conflicts
# with the qemu-utils 10 from backports that Haven's data path uses; apt would remove
# qemu-utils. The system's apt sources stay untouched: a private sources list (same
# mirrors as /etc/apt/sources.list.d/debian.sources, plus bookworm-backports), private
# lists and archives. Never `-t bookworm-backports` (it would pull a new systemd).
# Idempotent: exits at once when everything is installed.
set -euo pipefail

want_libvirt=0
[ "${1:-}" = "--libvirt" ] && want_libvirt=1

# shellcheck source=install-common.sh
source "$(dirname "$0")/install-common.sh"

packages=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
libvirt_packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt0
  libvirt-common libvirt-daemon-common libvirt-daemon-log)
libvirt_main=(virtnbdbackup python3-libvirt)

missing=0
for package in "${packages[@]}"; do package_installed "$package" || missing=1; done
if [ "$want_libvirt" = 1 ]; then
  for package in "${libvirt_packages[@]}" "${libvirt_main[@]}"; do package_installed "$package" || missing=1; done
fi
if [ "$missing" = 0 ] && command -v qemu-system-x86_64 >/dev/null; then
  exit 0
fi

D=/var/cache/haven-apt
mkdir -p "$D/lists/partial" "$D/archives/partial"

# The mirrors the system already uses (first URI of each kind), defaulting to deb.debian.org.
sources=/etc/apt/sources.list.d/debian.sources
debian_uri=http://deb.debian.org/debian
security_uri=http://deb.debian.org/debian-security
if [ -r "$sources" ]; then
  found=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$sources")
  [ -n "$found" ] && debian_uri=$found
  found=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' "$sources")
  [ -n "$found" ] && security_uri=$found
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$D/sources.list" <<SOURCES
deb [signed-by=$keyring] $debian_uri bookworm main
deb [signed-by=$keyring] $debian_uri bookworm-updates main
deb [signed-by=$keyring] $debian_uri bookworm-backports main
deb [signed-by=$keyring] $security_uri bookworm-security main
SOURCES

apt_private=(-o "Dir::Etc::sourcelist=$D/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::lists=$D/lists" -o "Dir::Cache::archives=$D/archives")
export DEBIAN_FRONTEND=noninteractive
apt-get "${apt_private[@]}" update -qq

targets=()
for package in "${packages[@]}"; do targets+=("$package/bookworm-backports"); done
if [ "$want_libvirt" = 1 ]; then
  for package in "${libvirt_packages[@]}"; do targets+=("$package/bookworm-backports"); done
  targets+=("${libvirt_main[@]}")
fi
apt-get "${apt_private[@]}" install -y -qq --no-install-recommends "${targets[@]}" >/dev/null

# Refuse to leave a machine where the data path lost its tools.
for tool in qemu-system-x86_64 qemu-img qemu-nbd qemu-storage-daemon; do
  command -v "$tool" >/dev/null || { echo "install-qemu-system: $tool missing after install" >&2; exit 1; }
done
