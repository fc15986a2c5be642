"""Shared fixtures for the control-plane e2e tests (rung 4 of the proof ladder).

The session fixture `e2e_cluster` reuses a cluster that `make cluster-up` started (and leaves it
running), or starts one with tests/e2e/cluster.py and stops it at the end of the session. Without
the binaries (`make cluster-tools` builds them) the tests fail with a message that says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import pytest

from tests.e2e import cluster


@pytest.fixture(scope="session")
def e2e_cluster():
    """The running cluster's State (server URL, ports, pids, kubeconfig path)."""
    paths = cluster.Paths()
    state = cluster.State.load(paths)
    if cluster.healthy(paths, state):
        yield state  # started by `make cluster-up`: whoever started it stops it
        return
    needed = (
        "etcd",
        "kube",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
    )
    missing = [b for b in needed if not os.access(cluster.TOOLS_BIN / b, os.X_OK)]
    if missing:
        msg = (
            f"control-plane binaries missing from {cluster.TOOLS_BIN}: {missing}; "
            "run `make cluster-tools`"
        )
        pytest.fail(msg, pytrace=False)
    state = cluster.up(paths)
    try:
        yield state
    finally:
        cluster.down(paths)


@pytest.fixture(scope="session")
def kubeconfig(e2e_cluster) -> str:
    return e2e_cluster.kubeconfig


@pytest.fixture(scope="session")
def k8s(kubeconfig):
    """A kubernetes.client.ApiClient for the e2e cluster (never the user's ~/.kube/config)."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubectl(kubeconfig):
    """Run the pinned kubectl (.tools/bin/kubectl) against the e2e cluster.

    kubectl("get", "pods", "-n", ns) -> CompletedProcess (text); a non-zero exit raises
    AssertionError unless check=False.
    """
    binary = str(cluster.TOOLS_BIN / "kubectl")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(cluster.Paths().root)  # no ~/.kube cache or kuberc from the real home

    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 60):
        proc = subprocess.run(
            [binary, f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc

    return run


@pytest.fixture
def namespace(k8s, kubectl, request):
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    from kubernetes import client

    test_name = request.node.name.lower().removeprefix("test_")
    slug = re.sub(r"[^a-z0-9]+", "-", test_name)[:40].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:5]}"
    meta = client.V1ObjectMeta(name=name)
    core = client.CoreV1Api(k8s)
    core.create_namespace(client.V1Namespace(metadata=meta))
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(
        name, field_selector="metadata.name=default"
    ).items:
        if time.monotonic() > deadline:
            pytest.fail(f"no default ServiceAccount in namespace {name} after 30s")
        time.sleep(0.2)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
