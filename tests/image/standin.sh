#!/usr/bin/env bash
# Build a local stand-in for an official image, with no registry: Debian bookworm via debootstrap,
# imported into buildah's store. Stand-ins are named for what they are (`...-stand-in`), never
# re-tagged as the official image.
#
#   python  stand-in for `python:3.11-slim-bookworm` (the Dockerfile's base), with Debian's python3.
#           It gives the Dockerfile what it relies on in the official image: `python` on PATH
#           (python → python3), `python -m venv` with pip, useradd/groupadd (passwd),
#           ca-certificates, PATH with /usr/sbin.
#   redis   stand-in for the chart's `redis:<version>-alpine`, with Debian's redis-server (7.0): what
#           the Redis subchart runs is `sh`, `cp`, `redis-server` and `redis-cli`, as UID 999.
#   kind    stand-in for kind's base image (kindest/base): systemd and the packages its Dockerfile
#           installs, on bookworm, whose systemd 252 still boots on a cgroup v1 host (kind's own
#           base moved to trixie, whose systemd refuses v1). The node image adds the rest
#           (tests/e2e/cluster/kindnode.py).
#
# Idempotent: does nothing when the tag exists with the same packages; reuses a finished debootstrap
# of them in the cache dir.
#
#   tests/image/standin.sh python|redis|kind [TAG]        (root; needs debootstrap and buildah)
#
# Env: STANDIN_CACHE (default .cache/image), DEBIAN_MIRROR (default: the host's apt mirror),
#      STORAGE_DRIVER (default vfs).
set -euo pipefail

KIND=${1:?usage: standin.sh python|redis|kind [TAG]}
case "$KIND" in
  python)
    TAG=${2:-localhost/tasks-base-python:3.11-stand-in}
    PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates,netbase,tzdata
    CMD=python3
    DESCRIPTION="Local stand-in for python:3.11-slim-bookworm (Debian python3)" ;;
  redis)
    TAG=${2:-localhost/tasks-redis:7.0-stand-in}
    PACKAGES=redis-server,redis-tools
    CMD=redis-server
    DESCRIPTION="Local stand-in for the official redis image (Debian redis-server)" ;;
  kind)
    TAG=${2:-localhost/tasks-kind-base:bookworm}
    PACKAGES=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,bash,ca-certificates,procps,jq,containernetworking-plugins
    CMD=/sbin/init
    DESCRIPTION="Local stand-in for kind's base image (Debian bookworm, systemd)" ;;
  *) echo "standin.sh: unknown stand-in '$KIND' (python, redis or kind)" >&2; exit 2 ;;
esac
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${STANDIN_CACHE:-$ROOT_DIR/.cache/image}
ROOTFS=$CACHE/rootfs-$KIND
SUITE=bookworm
buildah() { command buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }

# The tag and the debootstrap are reused only while they hold this package list.
have_tag() {
  [ "$(buildah inspect --format '{{index .ImageAnnotations "org.tasks.stand-in.packages"}}' "$TAG" 2>/dev/null)" = "$PACKAGES" ]
}
if have_tag; then
  echo "stand-in $KIND: $TAG already in the store"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "standin.sh: debootstrap and buildah mount need root" >&2; exit 1; }

# One builder at a time (parallel test sessions share the cache dir and the tag).
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$KIND"
flock 9
if have_tag; then
  echo "stand-in $KIND: $TAG made meanwhile by another run"
  exit 0
fi

host_mirror() {
  # The Debian mirror apt already uses on this machine (deb822 or one-line sources).
  local uri
  uri=$(grep -hsE '^\s*(URIs:|deb\s)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
          /etc/apt/sources.list | grep -oE 'https?://[^ ]+/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [ "$(cat "$ROOTFS/.stand-in-complete" 2>/dev/null)" != "$PACKAGES" ]; then
  mirror=${DEBIAN_MIRROR:-$(host_mirror)}
  echo "stand-in $KIND: debootstrap $SUITE from $mirror into $ROOTFS"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$mirror" \
    >"$CACHE/debootstrap-$KIND.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap-$KIND.log" >&2; exit 1; }
  # Slim like debian:bookworm-slim: no package caches, lists, docs, man pages or locales.
  rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
         "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
         "$ROOTFS"/usr/share/locale/*
  # Containers get /dev, /proc and /sys from the runtime, and DNS config from the host.
  rm -rf "${ROOTFS:?}"/dev/* "$ROOTFS"/etc/resolv.conf "$ROOTFS"/etc/hostname
  echo "$PACKAGES" > "$ROOTFS/.stand-in-complete"
fi

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
tar -C "$ROOTFS" --exclude=./.stand-in-complete --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
buildah umount "$ctr" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd "$CMD" \
  --label org.opencontainers.image.description="$DESCRIPTION" \
  --annotation org.tasks.stand-in.packages="$PACKAGES" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$TAG" >/dev/null
trap - EXIT
echo "stand-in $KIND: committed $TAG"
