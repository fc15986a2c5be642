"""Fixtures for the docker tests (rung 6): the user's own tools against a Docker daemon of ours.

pytest runs inside the daemon's network and mount namespace (`make e2e-kind`, or `make docker-up`
then `python -m tests.e2e.cluster --docker exec -- .venv/bin/pytest -m kind tests/e2e/kind`), so
ports that `docker run -p` publishes are reachable from the tests, and `docker` on PATH is
Debian's client talking to that daemon (tests/e2e/cluster/docker.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import State, netns
from tests.e2e.cluster import docker as docker_harness

# The artifact skaffold.yaml builds; the chart and the kustomize base deploy it under this name.
ARTIFACT = "ghcr.io/example/tasks"
CA_FILE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="session")
def docker_daemon() -> State:
    paths = docker_harness.default_paths()
    state = State.load(paths)
    how = (
        "run `make e2e-kind` (or `make docker-up`, then "
        "`python -m tests.e2e.cluster --docker exec -- .venv/bin/pytest -m kind tests/e2e/kind`)"
    )
    if not state or not state.holder:
        pytest.fail(f"the docker daemon is not up: {how}", pytrace=False)
    if not netns.is_inside(state.namespaces):
        pytest.fail(f"pytest is not inside the daemon's namespaces: {how}", pytrace=False)
    if os.environ.get("DOCKER_HOST") != f"unix://{docker_harness.sock(paths)}":
        pytest.fail(f"DOCKER_HOST does not point at the harness's daemon: {how}", pytrace=False)
    return state


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI on PATH (Debian's, set by the harness), as a user runs it."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return proc
