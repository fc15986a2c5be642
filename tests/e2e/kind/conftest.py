"""Fixtures for the docker and kind tests (rung 6): the user's own tools against a Docker daemon
of ours.

pytest runs inside the daemon's network and mount namespace (`make e2e-kind`, or `make docker-up`
then `python -m tests.e2e.cluster --docker exec -- .venv/bin/pytest -m kind tests/e2e/kind`), so
ports that `docker run -p` publishes, and the API server of the kind cluster, are reachable from
the tests, and `docker` on PATH is Debian's client talking to that daemon
(tests/e2e/cluster/docker.py). `kind_cluster` is the cluster users create (`kind create cluster
--name tasks`), made by the harness (tests/e2e/cluster/kind.py) on the node image of `make
kind-node-image`; the kubectl and helm fixtures of tests/e2e/conftest.py serve it through the
`kubeconfig` override below.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import State, images
from tests.e2e.cluster import docker as docker_harness
from tests.e2e.cluster import kind as kind_harness
from tests.e2e.conftest import harness_state
from tests.e2e.kube import CHART
from tests.support import ROOT, require_tool

# The artifact skaffold.yaml builds; the chart and the kustomize base deploy it under this name.
ARTIFACT = "ghcr.io/example/tasks"
CA_FILE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
KIND_CLUSTER = kind_harness.CLUSTER
# The version and tag `docker build` gives the image in built_image.
VERSION = "0.0.0-e2e-kind"
TAG = f"{ARTIFACT}:e2e-kind"
# Figures the tests measured, printed at the end of the run.
FACTS: dict[str, str] = {}


@pytest.fixture(scope="session")
def docker_daemon() -> State:
    paths = docker_harness.default_paths()
    how = (
        "run `make e2e-kind` (or `make docker-up`, then "
        "`python -m tests.e2e.cluster --docker exec -- .venv/bin/pytest -m kind tests/e2e/kind`)"
    )
    state = harness_state(
        paths, "the docker daemon", how, lambda s: docker_harness.healthy(paths, s)
    )
    if os.environ.get("DOCKER_HOST") != f"unix://{docker_harness.sock(paths)}":
        pytest.fail(f"DOCKER_HOST does not point at the harness's daemon: {how}", pytrace=False)
    return state


def _run(
    argv: list[str], timeout: float, check: bool, **kw: object
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(  # type: ignore[call-overload]
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc  # type: ignore[no-any-return]


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI on PATH (Debian's, set by the harness), as a user runs it."""
    return _run(["docker", *args], timeout, check)


def tool(
    name: str, *args: str, timeout: float = 300, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """A pinned tool (.tools/bin) run as a user runs it; a failure shows its output."""
    exe = require_tool(name, "make kind-tools builds the pinned skaffold and kind")
    return _run([exe, *args], timeout, check, **kw)


@pytest.fixture(scope="session")
def built_image(docker_daemon: State) -> str:
    """`docker build` in the checkout: BuildKit (the daemon's default), the stand-in base as the
    base-image build arg, the proxy CA as the `ca` build secret (as tests/image/build.sh does)."""
    args = ["build", "--tag", TAG, "--build-arg", f"VERSION={VERSION}"]
    args += ["--build-arg", f"BASE_IMAGE={docker_harness.STANDIN_BASE}"]
    if CA_FILE.is_file():
        args += ["--secret", f"id=ca,src={CA_FILE}"]
    proc = subprocess.run(
        ["docker", *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"docker build failed:\n{proc.stderr[-4000:]}", pytrace=False)
    # BuildKit's own progress names the frontend it ran: the one the `# syntax=` line names.
    assert re.search(
        rf"resolve image config for \S*docker.io/{docker_harness.frontend_ref()}\b", proc.stderr
    )
    return TAG


@pytest.fixture(scope="session")
def kind_cluster(docker_daemon: State) -> Path:
    """The cluster users create (`kind create cluster --name tasks`), made by `make e2e-kind` or
    `make kind-up` (tests/e2e/cluster/kind.py) on the node image of `make kind-node-image`: its
    kubeconfig."""
    paths = docker_harness.default_paths()
    if not docker_daemon.kubeconfig or not kind_harness.node_ready(paths):
        pytest.fail(
            "the kind cluster is not up: run `make e2e-kind` (or `make kind-up`, then "
            "`python -m tests.e2e.cluster --kind exec -- .venv/bin/pytest -m kind tests/e2e/kind`)",
            pytrace=False,
        )
    FACTS["kind up: create (node Ready) and load the suite's images"] = (
        f"{docker_daemon.up_seconds} s"
    )
    return kind_harness.kubeconfig(paths)


@pytest.fixture(scope="session")
def kubeconfig(kind_cluster: Path) -> str:
    """The kind cluster's, for the kubectl and helm fixtures of tests/e2e/conftest.py."""
    return str(kind_cluster)


@pytest.fixture(scope="session")
def chart_redis_image(kind_cluster: Path) -> str:
    """The chart's default Redis image, in the cluster: no registry is reachable, so the Redis
    stand-in the daemon loaded at `up` is tagged with that name in this daemon (as the stand-in
    base is tagged as the Dockerfile's default) and `kind load`ed, as a user loads local images."""
    values = yaml.safe_load((CHART / "charts" / "redis" / "values.yaml").read_text())["image"]
    ref = f"{values['repository']}:{values['tag']}"
    docker("tag", images.REDIS, ref)
    tool("kind", "load", "docker-image", ref, "--name", KIND_CLUSTER)
    return ref


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if FACTS:
        terminalreporter.section("kind")
        for key, value in FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")
