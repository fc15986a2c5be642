#!/usr/bin/env bash
# Build the image from the Dockerfile: with docker when a daemon answers, else with buildah
# (vfs storage, chroot isolation: no daemon, no registry needed for a local base). `make image`
# and the image tests both build through this script.
#
#   tests/image/build.sh [IMAGE]                       (default localhost/tasks:dev)
#
# Env (all optional):
#   BASE_IMAGE      base for both stages (default: the Dockerfile's, python:3.11-slim-bookworm)
#   BUILDER         docker | buildah (default: docker when `docker info` answers, else buildah)
#   CA_FILE         a proxy CA bundle, passed as the `ca` build secret (default: $SSL_CERT_FILE when
#                   that file exists; CA_FILE= turns it off). It never lands in a layer.
#   VERSION GIT_REVISION BUILD_DATE SOURCE_URL   release metadata (default: pyproject, git, now)
#   TARGET          build only up to this stage (e.g. build)
#   STORAGE_DRIVER  buildah storage driver (default vfs)
set -euo pipefail

IMAGE=${1:-localhost/tasks:dev}
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT_DIR"

if [ -z "${BUILDER:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then BUILDER=docker; else BUILDER=buildah; fi
fi

: "${VERSION:=$(sed -nE 's/^version = "(.*)"/\1/p' pyproject.toml | head -n1)}"
: "${GIT_REVISION:=$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
: "${BUILD_DATE:=$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
: "${SOURCE_URL:=$(git remote get-url origin 2>/dev/null || true)}"
CA_FILE=${CA_FILE-${SSL_CERT_FILE:-}}

args=(--build-arg "VERSION=$VERSION" --build-arg "GIT_REVISION=$GIT_REVISION"
      --build-arg "BUILD_DATE=$BUILD_DATE" --build-arg "SOURCE_URL=$SOURCE_URL"
      --file Dockerfile --tag "$IMAGE")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${TARGET:-}" ] && args+=(--target "$TARGET")
[ -n "$CA_FILE" ] && [ -s "$CA_FILE" ] && args+=(--secret "id=ca,src=$CA_FILE")

echo "building $IMAGE with $BUILDER (base: ${BASE_IMAGE:-Dockerfile default}, version $VERSION)"
case "$BUILDER" in
  docker)
    DOCKER_BUILDKIT=1 exec docker build "${args[@]}" . ;;
  buildah)
    # --pull=false: use a base already in the store (the stand-in), pull only when missing.
    # The release metadata again as --label/--env: buildah's --layers cache does not see a changed
    # build arg in LABEL/ENV (containers/buildah#5501) and would reuse a stale version or date.
    args+=(--label "org.opencontainers.image.version=$VERSION"
           --label "org.opencontainers.image.revision=$GIT_REVISION"
           --label "org.opencontainers.image.created=$BUILD_DATE"
           --label "org.opencontainers.image.source=$SOURCE_URL"
           --env "TASKS_VERSION=$VERSION" --env "TASKS_GIT_REVISION=$GIT_REVISION"
           --env "TASKS_BUILD_DATE=$BUILD_DATE")
    exec buildah --storage-driver "${STORAGE_DRIVER:-vfs}" build --isolation chroot --layers \
      --pull=false "${args[@]}" . ;;
  *)
    echo "build.sh: BUILDER must be docker or buildah, not $BUILDER" >&2; exit 2 ;;
esac
