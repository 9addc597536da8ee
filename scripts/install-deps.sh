#!/usr/bin/env bash
# Installs everything Haven's build, demo and tests need on a fresh Debian 12 machine.
# Idempotent: packages already present are left alone.
set -euo pipefail
# shellcheck source=install-common.sh
source "$(dirname "$0")/install-common.sh"

packages=(
  # build: etcd-client and the gRPC crates run protoc
  protobuf-compiler pkg-config
  # fuzzing (scripts/fuzz.sh): libFuzzer is C++, built by libfuzzer-sys
  g++
  # the data path: qemu-img, qemu-nbd, qemu-storage-daemon, qemu-io
  qemu-utils
  # demo and tests: real file systems without mounting
  e2fsprogs
  # NBD peers used by tests (nbdinfo, nbdcopy)
  libnbd-bin
  # TLS tests: CAs and certificates made with the openssl command line
  openssl
  # cluster tests: a real etcd (3 members on loopback, started by the tests)
  etcd-server etcd-client
  # partition test: network namespaces and veth pairs (ip netns, ip link)
  iproute2
  # secured etcd in tests: a private CA and certificates (crates/testkit/src/etcd/secured.rs)
  openssl
  # metrics tests: promtool test rules, and a real Prometheus scraping a cluster
  prometheus
  # web console tests: headless Chromium driven over WebDriver
  chromium chromium-driver
  # storage node tests: real S3 clients; faketime shifts a client's clock (clock skew errors)
  awscli rclone restic python3 python3-boto3 faketime
  # vSphere tests: govmomi's vCenter simulator built from Go source (crates/testkit/vcsim)
  golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev
  golang-github-kr-pretty-dev golang-github-davecgh-go-xdr-dev golang-github-vmware-vmw-guestinfo-dev
  # Hyper-V checkpoint tests: libvhdi, the packaged parent-aware VHDX reader that the
  # tests' differencing VHDX files and Haven's reader are checked against (vhdiinfo,
  # vhdimount, and python3-libvhdi for Debian's python3: cli/tests/it/hyperv.rs)
  libvhdi-utils python3-libvhdi
  # boot tests: a real Debian guest built from Debian's packages (crates/testkit/src/guest.rs)
  debootstrap
)

install_missing_packages "${packages[@]}"

# Ceph RGW tests: a one-host cluster the tests start (crates/testkit/src/ceph.rs), and
# curl, which creates its buckets. Without recommendations, which would add ceph-mds
# and a time daemon (ntp or chrony); ceph-mgr is not needed either. Removes nothing.
install_missing_packages --no-install-recommends ceph-mon ceph-osd radosgw curl

# boto3/botocore >= 1.35 for the python3 the tests run (the first on PATH): the storage
# node tests send IfNoneMatch/IfMatch on put_object, which Debian 12's python3-boto3
# (1.26) does not know. Fast when already satisfied: one python3 start.
boto3_recent_enough() {
  python3 -c 'import sys, botocore; v = tuple(int(p) for p in botocore.__version__.split(".")[:2]); sys.exit(0 if v >= (1, 35) else 1)' 2>/dev/null
}
if ! boto3_recent_enough; then
  ensure_pip
  pip_install 'boto3>=1.35'
  boto3_recent_enough || { echo "python3 still has botocore < 1.35 after pip install" >&2; exit 1; }
fi

"$(dirname "$0")/install-qemu-system.sh" --libvirt  # qemu-system-x86_64, libvirt, virtnbdbackup from backports (live-backup tests)

"$(dirname "$0")/install-files-deps.sh"  # mtools, gdisk: file-level restore tests

"$(dirname "$0")/install-deploy-deps.sh"  # helm, kubernetes-validate, PyYAML: deploy/check.py

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }

"$(dirname "$0")/install-garage.sh"  # Garage, another S3 implementation, for the storage tests (built once, cached)
