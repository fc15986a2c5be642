"""Fixtures for the real-node tests (rung 5): containers of ours run under a real kubelet.

pytest runs inside the node's network and mount namespace (`make e2e-node`, or `make node-up` then
`python -m tests.e2e.cluster --node exec -- .venv/bin/pytest -m node tests/e2e/node`), so the API
server, Service ClusterIPs and pod IPs are all reachable from the tests. The kubectl, helm and k8s
fixtures of tests/e2e/conftest.py serve this cluster through the `e2e_cluster` override below.

`make e2e-kind` runs the same suite, unchanged, on its kind cluster (TASKS_E2E_CLUSTER=kind):
pytest then runs in the Docker daemon's namespace, where the harness routes the cluster's Service
and pod ranges to the kind node, and the cluster's default StorageClass (local-path) provisions
the claims that `local_volume` makes volumes for on rung 5.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import State
from tests.e2e.cluster import kind as kind_cluster
from tests.e2e.cluster import node as node_cluster
from tests.e2e.conftest import _namespace_name, harness_state

ON_KIND = os.environ.get("TASKS_E2E_CLUSTER") == "kind"
# Figures the tests measured, printed at the end of the run.
FACTS: dict[str, str] = {}
# Every namespace of this rung enforces the restricted Pod Security Standard, for real.
PSS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def e2e_cluster() -> State:
    if ON_KIND:
        return _kind_cluster()
    paths = node_cluster.default_paths()
    how = (
        "run `make e2e-node` (or `make node-up`, then "
        "`python -m tests.e2e.cluster --node exec -- .venv/bin/pytest -m node tests/e2e/node`)"
    )
    return harness_state(paths, "the node cluster", how, lambda s: node_cluster.healthy(paths, s))


def _kind_cluster() -> State:
    paths = kind_cluster.default_paths()
    how = (
        "run `make e2e-kind` (or `make kind-up`, then `TASKS_E2E_CLUSTER=kind python -m "
        "tests.e2e.cluster --kind exec -- .venv/bin/pytest -m node tests/e2e/node`)"
    )
    return harness_state(
        paths,
        "the kind cluster",
        how,
        lambda s: bool(s.kubeconfig) and kind_cluster.node_ready(paths),
    )


def _restricted_namespace(kubectl, name: str) -> str:  # type: ignore[no-untyped-def]
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": PSS}}
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    deadline = time.monotonic() + 30
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no default ServiceAccount in namespace {name} after 30s")
        time.sleep(0.2)
    return name


@pytest.fixture
def namespace(kubectl, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = _restricted_namespace(kubectl, _namespace_name(request.node.name))
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def module_namespace(kubectl, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = _restricted_namespace(
        kubectl, _namespace_name(request.module.__name__.rsplit(".", 1)[-1])
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def local_volume(kubectl):  # type: ignore[no-untyped-def]
    """local_volume(namespace, claim) -> PV name: a static local PersistentVolume on the node,
    reserved for that claim; deleted (with its directory) at the end of the session. On kind,
    nothing: local-path provisions the claim (no PV name is known in advance)."""
    paths = node_cluster.default_paths()
    made: list[str] = []

    def make(namespace: str, claim: str) -> str:
        if ON_KIND:
            return ""
        name = f"{namespace}-{claim}"[:63]
        pv: dict[str, Any] = node_cluster.local_pv(paths, name, namespace, claim)
        kubectl("apply", "-f", "-", input=json.dumps(pv))
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "pv", name, "--wait=false", check=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if FACTS:
        terminalreporter.section("real node (kind)" if ON_KIND else "real node")
        for key, value in FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")
