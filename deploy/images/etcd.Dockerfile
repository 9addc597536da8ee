# etcd from Debian's package, for sites that cannot pull quay.io/coreos/etcd (the
# compose file's default). Same command line as the upstream image: `etcd` is on PATH
# and the data directory is a volume.
#
#   docker build -f deploy/images/etcd.Dockerfile -t haven-etcd:local deploy/images

ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server etcd-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 0700 /var/lib/etcd
VOLUME /var/lib/etcd
CMD ["etcd"]
