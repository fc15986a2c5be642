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
#   VERSION GIT_REVISION BUILD_DATE SOURCE_URL   release metadata (default: pyproject, git HEAD and its
#                   commit date, the origin remote)
#   TARGET          build only up to this stage (e.g. build)
#   STORAGE_DRIVER  buildah storage driver (default vfs)
#   DRY_RUN=1       print the build command instead of running it
set -euo pipefail

IMAGE=${1:-localhost/tasks:dev}
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT_DIR"

if [ -z "${BUILDER:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then BUILDER=docker; else BUILDER=buildah; fi
fi

: "${VERSION:=$(sed -nE 's/^version = "(.*)"/\1/p' pyproject.toml | head -n1)}"
: "${GIT_REVISION:=$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
# The commit's date, not the clock's: builds of one commit carry the same metadata, so the layer
# cache serves them (see the buildah branch below).
: "${BUILD_DATE:=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)}"
: "${SOURCE_URL:=$(git remote get-url origin 2>/dev/null || true)}"
CA_FILE=${CA_FILE-${SSL_CERT_FILE:-}}

args=(--build-arg "VERSION=$VERSION" --build-arg "GIT_REVISION=$GIT_REVISION"
      --build-arg "BUILD_DATE=$BUILD_DATE" --build-arg "SOURCE_URL=$SOURCE_URL"
      --file Dockerfile --tag "$IMAGE")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${TARGET:-}" ] && args+=(--target "$TARGET")
[ -n "$CA_FILE" ] && [ -s "$CA_FILE" ] && args+=(--secret "id=ca,src=$CA_FILE")

buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
case "$BUILDER" in
  docker) build=(docker build "${args[@]}" .) ;;
  # --pull=false: use a base already in the store (the stand-in), pull only when missing.
  buildah) build=("${buildah[@]}" build --isolation chroot --layers --pull=false "${args[@]}" .) ;;
  *) echo "build.sh: BUILDER must be docker or buildah, not $BUILDER" >&2; exit 2 ;;
esac
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${build[@]}"; echo; exit 0
fi
echo "building $IMAGE with $BUILDER (base: ${BASE_IMAGE:-Dockerfile default}, version $VERSION)"
if [ "$BUILDER" = docker ]; then
  DOCKER_BUILDKIT=1 exec "${build[@]}"
fi
# The labels and env come from the Dockerfile alone. buildah's --layers cache keys LABEL/ENV steps
# on their text, not on the build args they expand (containers/buildah#5501), so a cached step may
# hold another build's version or date: then the image is rebuilt without the cache, and whatever
# the Dockerfile makes of the args is what the image gets.
"${build[@]}"
# shellcheck disable=SC2016  # a Go template, not a shell expansion
meta=$("${buildah[@]}" inspect --type image --format \
  '{{range $k, $v := .OCIv1.Config.Labels}}{{$k}}={{$v}}{{println}}{{end}}{{range .OCIv1.Config.Env}}{{.}}{{println}}{{end}}' \
  "$IMAGE")
for want in "org.opencontainers.image.version=$VERSION" "org.opencontainers.image.revision=$GIT_REVISION" \
            "org.opencontainers.image.created=$BUILD_DATE" "TASKS_VERSION=$VERSION" \
            "TASKS_GIT_REVISION=$GIT_REVISION" "TASKS_BUILD_DATE=$BUILD_DATE"; do
  if ! grep -qxF -- "$want" <<<"$meta"; then
    echo "build.sh: the layer cache gave a stale $want; rebuilding without the cache" >&2
    exec "${buildah[@]}" build --isolation chroot --layers --no-cache --pull=false "${args[@]}" .
  fi
done
