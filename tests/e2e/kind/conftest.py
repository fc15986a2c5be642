"""Fixtures for the docker and kind tests (rung 6): the user's own tools against a Docker daemon
of ours.

pytest runs inside the daemon's network and mount namespace (`make e2e-kind`, or `make docker-up`
then `python -m tests.e2e.cluster --docker exec -- .venv/bin/pytest -m kind tests/e2e/kind`), so
ports that `docker run -p` publishes, and the API server of the kind cluster, are reachable from
the tests, and `docker` on PATH is Debian's client talking to that daemon
(tests/e2e/cluster/docker.py). `kind_cluster` creates the cluster users create (`kind create
cluster --name tasks`) on the node image of `make kind-node-image`; the kubectl and helm fixtures
of tests/e2e/conftest.py serve it through the `kubeconfig` override below.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import State, images, kindnode, netns
from tests.e2e.cluster import docker as docker_harness
from tests.e2e.kube import CHART
from tests.support import require_tool

# The artifact skaffold.yaml builds; the chart and the kustomize base deploy it under this name.
ARTIFACT = "ghcr.io/example/tasks"
CA_FILE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
# The name skaffold.yaml's header and the README give: its kube-context is kind-tasks.
KIND_CLUSTER = "tasks"
# Figures the tests measured, printed at the end of the run.
FACTS: dict[str, str] = {}


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


def tool(
    name: str, *args: str, timeout: float = 300, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """A pinned tool (.tools/bin) run as a user runs it; a failure shows its output."""
    hint = "make kind-tools builds the pinned skaffold and kind"
    proc = subprocess.run(
        [require_tool(name, hint), *args], capture_output=True, text=True, timeout=timeout,
        check=False, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    if check and proc.returncode != 0:
        pytest.fail(
            f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


@pytest.fixture(scope="session")
def kind_cluster(docker_daemon: State, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`kind create cluster --name tasks` with the pinned kind CLI, pointed at the node image of
    `make kind-node-image` (--image) and at the images kubeadm finds in it (--config); its
    kubeconfig goes to a file of the session's, never ~/.kube/config. Deleted at the end."""
    versions = kindnode.versions()
    node = kindnode.refs(versions)["node"]
    archive = images.archived(node)
    if not archive:
        pytest.fail(f"{node} has no archive: run `make kind-node-image`", pytrace=False)
    docker_harness.load_archive(docker_harness.default_paths(), archive)
    workdir = tmp_path_factory.mktemp("kind")
    config, kubeconfig = workdir / "cluster.json", workdir / "kubeconfig"
    config.write_text(kindnode.cluster_config(versions))
    # One a killed run left. kind edits the kubeconfig it is given: always ours.
    tool("kind", "delete", "cluster", "--name", KIND_CLUSTER, "--kubeconfig", str(kubeconfig))
    t0 = time.monotonic()
    tool(
        "kind", "create", "cluster", "--name", KIND_CLUSTER, "--image", node,
        "--config", str(config), "--kubeconfig", str(kubeconfig), "--wait", "180s", timeout=400,
    )  # fmt: skip
    FACTS["kind create cluster --wait (node Ready)"] = f"{time.monotonic() - t0:.1f} s"
    try:
        yield kubeconfig
    finally:
        tool("kind", "delete", "cluster", "--name", KIND_CLUSTER, "--kubeconfig", str(kubeconfig))


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
