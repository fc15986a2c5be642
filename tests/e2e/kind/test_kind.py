"""The user's own loop, for real (rung 6): a kind cluster on the node image built here, then the
project as its README tells a user to run it: `skaffold run` (the chart, `helm test`), the kustomize
profile with `kubectl create job --from=cronjob/cleanup`. Tests run in order and share the cluster;
each removes what it deployed (`skaffold delete`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.cluster import TOOLS_BIN, kindnode
from tests.e2e.cluster.procs import free_ports
from tests.e2e.kind.conftest import ARTIFACT, FACTS, KIND_CLUSTER, docker, tool
from tests.e2e.kube import KUSTOMIZE, get_json, wait_until
from tests.e2e.node.test_release import job_summary
from tests.support import ROOT

pytestmark = [pytest.mark.kind, pytest.mark.timeout(900)]

CONTEXT = f"kind-{KIND_CLUSTER}"


def skaffold_env(kubeconfig: str, home: Path) -> dict[str, str]:
    """The kind cluster's kubeconfig and a HOME of the test's (skaffold's config and caches)."""
    return {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "HOME": str(home),
        "SKAFFOLD_UPDATE_CHECK": "false",
        "SKAFFOLD_INTERACTIVE": "false",
    }


def skaffold(kubeconfig: str, home: Path, *args: str, timeout: float = 600) -> str:
    proc = tool(
        "skaffold", *args, "--kube-context", CONTEXT, cwd=ROOT, env=skaffold_env(kubeconfig, home),
        timeout=timeout,
    )  # fmt: skip
    return proc.stdout + proc.stderr


@contextlib.contextmanager
def port_forward(kubeconfig: str, ns: str, target: str, port: int) -> Iterator[httpx2.Client]:
    """`kubectl port-forward` to target:port; an HTTP client on the local end."""
    (local,) = free_ports(1)
    proc = subprocess.Popen(
        [TOOLS_BIN / "kubectl", f"--kubeconfig={kubeconfig}", "port-forward", "-n", ns, target,
         f"{local}:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{local}", timeout=10) as client:
            wait_until(f"port-forward to {target}", lambda: _answers(client), timeout=30)
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(client: httpx2.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx2.TransportError:
        return False


def pods_of(kubectl, ns: str, selector: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return get_json(kubectl, "pods", "-n", ns, "-l", selector)["items"]  # type: ignore[no-any-return]


@pytest.mark.factor("X")
def test_kind_creates_a_ready_cluster_from_the_node_image(kubectl) -> None:  # type: ignore[no-untyped-def]
    """One node, Ready, running what the node image holds: every kube-system pod (the control
    plane, etcd, kube-proxy, CoreDNS) and the default StorageClass's provisioner become Ready."""
    (node,) = get_json(kubectl, "nodes")["items"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == kindnode.versions()["kubernetes"]
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert node["metadata"]["name"] == f"{KIND_CLUSTER}-control-plane"

    def all_ready() -> bool:
        pods = get_json(kubectl, "pods", "-A")["items"]
        names = {p["metadata"]["name"].rsplit("-", 2)[0] for p in pods}
        ready = all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
            for p in pods
        )
        return ready and {"coredns", "local-path-provisioner"} <= names

    t0 = time.monotonic()
    wait_until("every kube-system and local-path-storage pod Ready", all_ready, timeout=180)
    FACTS["system pods Ready after the node"] = f"{time.monotonic() - t0:.1f} s"
    classes = get_json(kubectl, "storageclasses")["items"]
    default = [c for c in classes if c["metadata"].get("annotations", {}).get(
        "storageclass.kubernetes.io/is-default-class") == "true"]  # fmt: skip
    assert [c["provisioner"] for c in default] == ["rancher.io/local-path"]


@pytest.mark.factor("V", "X")
def test_skaffold_run_deploys_the_chart_and_helm_test_passes(  # type: ignore[no-untyped-def]
    kubeconfig, kubectl, helm, chart_redis_image, tmp_path
) -> None:
    """`skaffold run` as the README gives it: skaffold builds the artifact with docker, `kind load`s
    it (a kind-* context) and installs the chart; the release serves, `helm test` passes, and
    `kubectl create job --from=cronjob/tasks-cleanup` completes with its JSON summary."""
    t0 = time.monotonic()
    out = skaffold(kubeconfig, tmp_path, "run", "--tag", "e2e-kind-run")
    FACTS["skaffold run (build, kind load, helm install)"] = f"{time.monotonic() - t0:.1f} s"
    try:
        assert "Loading images into kind cluster nodes" in out, out[-3000:]
        (deployment,) = get_json(kubectl, "deployments", "-n", "default", "-l",
                                 "app.kubernetes.io/component=api")["items"]  # fmt: skip
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith(f"{ARTIFACT}:"), image
        assert helm("test", "tasks", "-n", "default", "--timeout", "3m").returncode == 0
        with port_forward(kubeconfig, "default", "svc/tasks", 80) as api:
            title = f"made through kind {uuid.uuid4().hex[:6]}"
            created = api.post("/v1/tasks", json={"title": title})
            assert created.status_code == 201, created.text
            got = api.get(f"/v1/tasks/{created.json()['id']}")
            assert got.json()["title"] == title
        job = f"cleanup-{uuid.uuid4().hex[:5]}"
        kubectl("create", "job", "--from=cronjob/tasks-cleanup", job, "-n", "default")
        summary = job_summary(kubectl, "default", job)
        assert summary["job"] == "cleanup", summary
    finally:
        skaffold(kubeconfig, tmp_path, "delete")
    wait_until(
        "the release's pods to be gone",
        lambda: not pods_of(kubectl, "default", "app.kubernetes.io/instance=tasks"),
        timeout=120,
    )


SUMMARY = 'summary="A small, fast, twelve-factor tasks API."'
LOOP_BOUND = 240.0  # seconds from a saved edit to the new value served (measured: FACTS)


def checkout_copy(dest: Path) -> Path:
    """The project's files (tracked, and new ones not ignored) in a directory of the test's, so
    the loop edits a copy, never the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@contextlib.contextmanager
def skaffold_dev(kubeconfig: str, home: Path, cwd: Path, *args: str) -> Iterator[Path]:
    """`skaffold dev` running in cwd; yields its log file. Stopped with Ctrl-C (SIGINT), as a
    user stops it, which makes skaffold remove what it deployed; fails if it does not exit."""
    log = home / "skaffold-dev.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [TOOLS_BIN / "skaffold", "dev", "--kube-context", CONTEXT, *args],
            cwd=cwd, env=skaffold_env(kubeconfig, home), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(f"skaffold dev ignored Ctrl-C for 180 s:\n{log.read_text()[-3000:]}")
            assert code == 0, log.read_text()[-3000:]


def forwarded_port(log: Path) -> int | None:
    """The local port skaffold forwards the Service's port 80 to (printed once forwarding is up)."""
    found = re.findall(r"service/tasks in namespace [\w-]*, remote port 80 -> http://127\.0\.0\.1:(\d+)",
                       log.read_text())  # fmt: skip
    return int(found[-1]) if found else None


def served_summary(log: Path) -> str | None:
    port = forwarded_port(log)
    if not port:
        return None
    try:
        r = httpx2.get(f"http://127.0.0.1:{port}/openapi.json", timeout=3)
    except httpx2.TransportError:
        return None
    return r.json()["info"]["summary"] if r.status_code == 200 else None


@pytest.mark.factor("V", "X")
def test_skaffold_dev_rebuilds_and_serves_an_edit_then_cleans_up_on_ctrl_c(  # type: ignore[no-untyped-def]
    kubeconfig, kubectl, helm, chart_redis_image, tmp_path
) -> None:
    """The inner loop: `skaffold dev --port-forward` deploys the chart; an edit to what the API
    serves (the OpenAPI summary in service/app.py) is rebuilt, loaded into kind and rolled out,
    and the new value comes through skaffold's own port-forward within LOOP_BOUND; Ctrl-C
    uninstalls the release."""
    work = checkout_copy(tmp_path / "checkout")
    app = work / "service" / "app.py"
    assert SUMMARY in app.read_text()
    with skaffold_dev(kubeconfig, tmp_path, work, "--port-forward=user") as log:
        t0 = time.monotonic()
        wait_until(
            "the first deploy to serve through skaffold's port-forward",
            lambda: served_summary(log) == "A small, fast, twelve-factor tasks API.",
            timeout=600,
        )
        FACTS["skaffold dev: first deploy served"] = f"{time.monotonic() - t0:.1f} s"
        edited = f"Edited under skaffold dev {uuid.uuid4().hex[:6]}."
        app.write_text(app.read_text().replace(SUMMARY, f'summary="{edited}"'))
        t0 = time.monotonic()
        wait_until(
            "the edit to be served", lambda: served_summary(log) == edited, timeout=LOOP_BOUND
        )
        loop = time.monotonic() - t0
        FACTS["skaffold dev: edit saved -> new value served"] = f"{loop:.1f} s"
        text = log.read_text()
        assert text.count("Loading images into kind cluster nodes") >= 2, text[-3000:]
    assert "Cleaning up..." in log.read_text()
    wait_until(
        "skaffold dev's release to be gone",
        lambda: "tasks" not in helm("list", "-n", "default", "-q").stdout.split(),
        timeout=60,
    )


@pytest.mark.factor("X", "XII")
def test_the_kustomize_profile_runs_and_kubectl_create_job_from_cronjob_cleanup_completes(  # type: ignore[no-untyped-def]
    kubeconfig, kubectl, chart_redis_image, tmp_path
) -> None:
    """`skaffold run -p kustomize` (the dev overlay), then the design's literal admin command."""
    skaffold(kubeconfig, tmp_path, "run", "-p", "kustomize", "--tag", "e2e-kind-kustomize")
    try:
        kubectl("rollout", "status", "deployment/tasks", "-n", "default", "--timeout=180s",
                timeout=200)  # fmt: skip
        kubectl("create", "job", "--from=cronjob/cleanup", "manual-1", "-n", "default")
        summary = job_summary(kubectl, "default", "manual-1")
        assert summary["job"] == "cleanup" and "error" not in summary, summary
        assert (
            get_json(kubectl, "pvc", "data-redis-0", "-n", "default")["status"]["phase"] == "Bound"
        )
    finally:
        skaffold(kubeconfig, tmp_path, "delete", "-p", "kustomize")


@pytest.mark.factor("V", "XII")
def test_the_readme_kustomize_path_runs_the_docker_build_loaded_into_kind(  # type: ignore[no-untyped-def]
    kubectl, built_image, chart_redis_image
) -> None:
    """The README's dev path, command by command: the `docker build` image as
    ghcr.io/example/tasks:dev, `kind load docker-image`, `kubectl apply -k
    deploy/kustomize/overlays/dev`, `kubectl rollout status deployment/tasks`, `kubectl create job
    --from=cronjob/cleanup manual-1` (in a namespace of its own)."""
    dev = f"{ARTIFACT}:dev"
    docker("tag", built_image, dev)
    tool("kind", "load", "docker-image", dev, "--name", KIND_CLUSTER)
    ns = f"readme-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", ns)
    try:
        kubectl("apply", "-k", str(KUSTOMIZE / "overlays" / "dev"), "-n", ns)
        kubectl("rollout", "status", "deployment/tasks", "-n", ns, "--timeout=180s", timeout=200)
        (pod,) = pods_of(kubectl, ns, "app.kubernetes.io/component=api")
        assert pod["spec"]["containers"][0]["image"] == dev
        kubectl("create", "job", "--from=cronjob/cleanup", "manual-1", "-n", ns)
        summary = job_summary(kubectl, ns, "manual-1")
        assert summary["job"] == "cleanup" and "error" not in summary, summary
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
