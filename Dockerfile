# syntax=docker/dockerfile:1
# One image serves the API (`python -m service`, the default command) and runs every admin job
# (`python -m jobs cleanup|migrate|export|import`). Build (see `make image`):
#
#   docker build -t tasks:dev --build-arg VERSION=... --build-arg GIT_REVISION=... --build-arg BUILD_DATE=... .
#
# Behind a TLS-intercepting proxy, pass its CA as a build secret; it is mounted for the pip step only
# and never lands in a layer:  --secret id=ca,src=/path/to/proxy-ca.pem

# Pinned to a minor version for local builds; the release passes this tag pinned by digest
# (BASE_IMAGE in .github/workflows/release.yml).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: the locked dependencies in a venv, the code byte-compiled ---------------------------
FROM ${BASE_IMAGE} AS build

COPY requirements.lock /tmp/requirements.lock
# `pip --isolated` ignores any pip config or PIP_* variable that could leak in from the builder.
# Hashes and wheels only (`--only-binary`): nothing is compiled, no pip cache is written.
# pip and setuptools leave the venv afterwards: the runtime never installs anything.
RUN --mount=type=secret,id=ca \
    set -eu; \
    set --; \
    if [ -s /run/secrets/ca ]; then set -- --cert=/run/secrets/ca; fi; \
    python -m venv /opt/venv; \
    /opt/venv/bin/python -m pip --isolated install "$@" --no-cache-dir --disable-pip-version-check \
        --no-input --require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.lock; \
    /opt/venv/bin/python -m pip --isolated uninstall --yes --no-input pip setuptools; \
    rm /tmp/requirements.lock

COPY service/ /app/service/
COPY jobs/ /app/jobs/
# The root filesystem is read-only at run time: compile now, nothing is written later.
RUN python -m compileall -q /app

# --- runtime: the venv and the code on the slim base, as a fixed non-root user --------------------
FROM ${BASE_IMAGE} AS runtime

RUN groupadd --system --gid 10001 tasks \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tasks

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

# Release metadata after the layers, so a new version, revision or date rebuilds none of them.
ARG VERSION=0.0.0-dev \
    GIT_REVISION=unknown \
    BUILD_DATE=unknown \
    SOURCE_URL=""
LABEL org.opencontainers.image.title="tasks" \
      org.opencontainers.image.description="A small 12-factor tasks API (FastAPI, Redis)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.created="${BUILD_DATE}"
# PYTHONPATH=/app: `python -m service` / `python -m jobs` work whatever workingDir a pod sets.
# TASKS_VERSION, TASKS_GIT_REVISION, TASKS_BUILD_DATE are what /version reports.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    TASKS_VERSION=${VERSION} \
    TASKS_GIT_REVISION=${GIT_REVISION} \
    TASKS_BUILD_DATE=${BUILD_DATE}

WORKDIR /app
USER 10001:10001
# The API ($PORT) and /metrics ($TASKS_METRICS_PORT), each on its own listener.
EXPOSE 8080 9090
CMD ["python", "-m", "service"]
