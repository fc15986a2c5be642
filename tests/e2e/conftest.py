"""Shared fixtures for the control-plane e2e tests (rung 4 of the proof ladder).

The session fixture `e2e_cluster` reuses a cluster that `make cluster-up` started (and leaves it
running), or starts one (tests/e2e/cluster/kwok.py) and stops it at the end of the session. Without
the binaries (`make cluster-tools` builds them) the tests fail with a message that says so.
tests/e2e/node/ overrides `e2e_cluster` with the real node; every other fixture here serves both.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.cluster import TOOLS_BIN, Paths, State, kwok, netns


@pytest.fixture(scope="session")
def e2e_cluster():
    """The running cluster's State (server URL, ports, pids, kubeconfig path)."""
    paths = kwok.default_paths()
    state = kwok.State.load(paths)
    if kwok.healthy(paths, state):
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
    missing = [b for b in needed if not os.access(TOOLS_BIN / b, os.X_OK)]
    if missing:
        msg = (
            f"control-plane binaries missing from {TOOLS_BIN}: {missing}; run `make cluster-tools`"
        )
        pytest.fail(msg, pytrace=False)
    state = kwok.up(paths)
    try:
        yield state
    finally:
        kwok.down(paths)


def harness_state(paths: Paths, what: str, how: str, healthy: Callable[[State], bool]) -> State:
    """The State of what a harness started (tests/e2e/cluster), for tests that run inside its
    namespaces: fails, saying `how` to start it, unless it is up, pytest is inside, and healthy."""
    state = State.load(paths)
    if not state or not state.holder:
        pytest.fail(f"{what} is not up: {how}", pytrace=False)
    if not netns.is_inside(state.namespaces):
        pytest.fail(f"these tests run inside the namespaces of {what}: {how}", pytrace=False)
    if not healthy(state):
        pytest.fail(f"{what} is not healthy (see {paths.logs}): {how}", pytrace=False)
    return state


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
    binary = str(TOOLS_BIN / "kubectl")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(Path(kubeconfig).parent)  # no ~/.kube cache or kuberc from the real home

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


def create_namespace(k8s, name: str) -> str:
    """Create namespace `name` and wait for its default ServiceAccount (pods need it)."""
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(
        name, field_selector="metadata.name=default"
    ).items:
        if time.monotonic() > deadline:
            pytest.fail(f"no default ServiceAccount in namespace {name} after 30s")
        time.sleep(0.2)
    return name


def _namespace_name(node_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", node_name.lower().removeprefix("test_"))[:40].strip("-")
    return f"e2e-{slug}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(k8s, kubectl, request):
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = create_namespace(k8s, _namespace_name(request.node.name))
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def module_namespace(k8s, kubectl, request):
    """A fresh namespace shared by one test module (e.g. one Helm release's whole life)."""
    name = create_namespace(k8s, _namespace_name(request.module.__name__.rsplit(".", 1)[-1]))
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def helm_env(kubeconfig, tmp_path_factory) -> dict[str, str]:
    """Env for the pinned helm binaries: the e2e kubeconfig, and cache/config/data dirs of their own
    (never the user's repositories, plugins or kubeconfig)."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        KUBECONFIG=kubeconfig,
        HOME=str(home),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


@pytest.fixture(scope="session")
def helm(helm_env):
    """Run the pinned Helm 3 (major=3) or Helm 4 (major=4) against the e2e cluster.

    helm("install", ...) -> CompletedProcess (text); non-zero exit raises unless check=False.
    """

    def run(*args: str, check: bool = True, major: int = 3, timeout: float = 240):
        binary = str(TOOLS_BIN / ("helm" if major == 3 else "helm4"))
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} missing: run `make tools`", pytrace=False)
        proc = subprocess.run(
            [binary, *args], capture_output=True, text=True, env=helm_env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm{'' if major == 3 else '4'} {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stderr}{proc.stdout}"
            )
        return proc

    return run
