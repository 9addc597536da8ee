#!/bin/sh
# Builds Haven's images from local files only, with no registry:
#
#   1. haven-base:bookworm   Debian bookworm (minbase) made by debootstrap from
#                            Debian's mirror and loaded with `docker import`;
#   2. haven:local           deploy/Dockerfile's runtime stage on that base, around the
#                            `haven` binary built on this machine (target `prebuilt`);
#   3. haven-etcd:local      etcd from Debian's etcd-server package;
#   4. haven-lab:local       the compose file's lab hypervisor (qemu-storage-daemon).
#
# Usage: deploy/images/build.sh [HAVEN_BINARY]
#   HAVEN_BINARY  default: $CARGO_TARGET_DIR/debug/haven (built if missing)
# Environment: HAVEN_IMAGE_TAG (default `local`), HAVEN_MIRROR (default: the first
# `URIs:` of /etc/apt/sources.list.d/debian.sources, else deb.debian.org).
# Prints each image's size at the end.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${HAVEN_IMAGE_TAG:-local}
base=haven-base:bookworm
binary=${1:-${CARGO_TARGET_DIR:-/var/tmp/haven-target}/debug/haven}

mirror=${HAVEN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/haven-images.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        echo "debootstrap is missing: apt-get install debootstrap" >&2
        exit 1
    }
    echo "making $base with debootstrap from $mirror"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 20 "$work/debootstrap.log" >&2
        exit 1
    }
    # Security and point-release updates, as debian:bookworm-slim has them.
    security=$(echo "$mirror" | sed 's#/debian/*$#/debian-security#')
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
        "$mirror" "$mirror" "$security" >"$work/rootfs/etc/apt/sources.list"
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi

if [ ! -x "$binary" ]; then
    (cd "$repo" && cargo build --locked -p haven-cli)
fi
mkdir -p "$work/context"
cp "$binary" "$work/context/haven"
strip --strip-debug "$work/context/haven" 2>/dev/null || true

# The legacy builder: BuildKit needs buildx, which Debian packages separately.
docker build --quiet --build-arg BASE="$base" --target prebuilt \
    -f "$repo/deploy/Dockerfile" -t "haven:$tag" "$work/context" >/dev/null
docker build --quiet --build-arg BASE="$base" \
    -f "$here/etcd.Dockerfile" -t "haven-etcd:$tag" "$here" >/dev/null
docker build --quiet --build-arg BASE="$base" \
    -f "$here/lab.Dockerfile" -t "haven-lab:$tag" "$here" >/dev/null

for image in "$base" "haven:$tag" "haven-etcd:$tag" "haven-lab:$tag"; do
    docker image inspect --format '{{index .RepoTags 0}} {{.Size}}' "$image" |
        awk '{ printf "%-24s %6.1f MB\n", $1, $2 / 1000000 }'
done
