# The compose file's lab hypervisor (service `hypervisor`, profile `lab`):
# qemu-storage-daemon standing in for the QEMUs of a KVM host, so the cluster can be
# tried and tested without one. Not for production: real hosts run their own QEMU.
#
#   docker build -f deploy/images/lab.Dockerfile -t haven-lab:local deploy/images
#
# Debian bookworm ships qemu-storage-daemon in qemu-system-common (later releases
# in qemu-utils); qemu-utils brings qemu-img and qemu-io, which make the lab's disks.

ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-system-common qemu-utils \
    && rm -rf /var/lib/apt/lists/*
CMD ["/bin/sh", "/etc/haven/lab-hypervisor.sh"]
