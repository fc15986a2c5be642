"""The API server's own verdict on every way this bundle can be installed (rung 4): every CI values
file and both kustomize overlays pass a server-side dry run (validation, defaulting, admission);
the dev overlay applies and becomes available; bad values are stopped by the values schema before
the server sees anything; Helm 4 installs the chart too."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.chart.helpers import CI_VALUES
from tests.e2e.kube import (
    CHART,
    E2E_VALUES,
    KUSTOMIZE,
    condition,
    get_json,
    kustomize_build,
    namespaced_objects,
    wait_until,
    without_generated_labels,
)

# The first test also starts the cluster when none is up; helm --wait allows minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The Prometheus Operator's CRD is not part of Kubernetes. To let the server dry-run
# production-values.yaml's ServiceMonitor, serve the kind with an open schema: the API server
# checks the object's envelope only (tests/chart checks its fields).
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def servicemonitor_kind(kubectl):
    kubectl("apply", "-f", "-", input=json.dumps(SERVICEMONITOR_CRD))
    kubectl(
        "wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=30s",
    )  # fmt: skip
    # Discovery (which kubectl caches) must see the new kind before a dry run can map it.
    wait_until(
        "ServiceMonitor in discovery",
        lambda: "servicemonitors" in kubectl("api-resources", "-o", "name").stdout,
    )
    yield
    kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=false", check=False)


def server_dry_run(kubectl, namespace: str, manifest: str) -> list[str]:  # type: ignore[no-untyped-def]
    """`kubectl apply --dry-run=server`: the objects the server would have created.

    A dry run persists nothing, so a bare Pod (the chart's `helm test` pod) would be refused by
    the ServiceAccount admission plugin for want of its ServiceAccount, which Helm and kubectl
    always create first. So the manifest's ServiceAccounts are created for real first, and
    deleted afterwards."""
    accounts = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ServiceAccount"]
    for account in accounts:
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(account))
    try:
        out = kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-o", "name", "-f", "-", input=manifest
        ).stdout
    finally:
        for account in accounts:
            name = account["metadata"]["name"]
            kubectl("delete", "serviceaccount", name, "-n", namespace, "--wait=true")
    return out.split()


def kustomize_overlay(overlay: str) -> str:
    return kustomize_build(KUSTOMIZE / "overlays" / overlay)


@pytest.mark.factor("V", "X")
@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda v: v or "defaults")
def test_helm_render_passes_a_server_dry_run(
    values_file, helm, kubectl, module_namespace, servicemonitor_kind
):
    """What Helm would send (hooks and the test pod included), rendered for this server's version
    (`helm template --kube-version` from /version), accepted by the server without persisting."""
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    args = ["-f", str(CHART / "ci" / values_file)] if values_file else []
    manifest = helm(
        "template", "tasks", str(CHART), "-n", module_namespace, "--kube-version", version, *args
    ).stdout
    created = server_dry_run(kubectl, module_namespace, manifest)
    assert any(name.startswith("deployment.apps/") for name in created), created
    assert len(created) == manifest.count("\nkind: "), created
    assert not namespaced_objects(kubectl, module_namespace), "a dry run persisted something"


@pytest.mark.factor("V", "X")
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kustomize_overlay_passes_a_server_dry_run(overlay, kubectl, module_namespace):
    if overlay == "prod":
        # No Secret is generated for prod: the README's one command creates it first.
        secret = kubectl(
            "create", "secret", "generic", "tasks", "-n", module_namespace,
            "--from-literal=TASKS_REDIS_PASSWORD=e2e",
            "--from-literal=TASKS_API_KEYS=e2e-only-api-key-0001",
            "--dry-run=client", "-o", "json",
        ).stdout  # fmt: skip
        kubectl("apply", "-f", "-", input=secret)
    try:
        manifest = kustomize_overlay(overlay)
        created = server_dry_run(kubectl, module_namespace, manifest)
        for name in ("deployment.apps/tasks", "cronjob.batch/cleanup", "job.batch/migrate",
                     "statefulset.apps/redis"):  # fmt: skip
            assert name in created, created
        if overlay == "prod":
            assert {
                "horizontalpodautoscaler.autoscaling/tasks",
                "poddisruptionbudget.policy/tasks",
            } <= set(created)
    finally:
        kubectl("delete", "secret", "tasks", "-n", module_namespace, "--ignore-not-found")


@pytest.mark.factor("X", "XII")
def test_kustomize_dev_overlay_applies_and_becomes_available(kubectl, kubeconfig, namespace):
    """`kubectl apply -k overlays/dev` (built with the pinned kustomize): the API and Redis become
    available, the plain migrate Job completes, and the design's literal admin command works:
    `kubectl create job --from=cronjob/cleanup manual-1`, and `jobs launch --cronjob cleanup`."""
    from tests.e2e.test_launch import launch

    ns = namespace
    # Redis keeps its data on a PVC (the component's volumeClaimTemplate) and nothing provisions
    # volumes here: a PV made for exactly this claim, before the claim exists, binds at once.
    kubectl("apply", "-f", "-", input=json.dumps(reserved_pv(f"{ns}-redis", ns, "data-redis-0")))
    kubectl("apply", "-n", ns, "-f", "-", input=kustomize_overlay("dev"))
    kubectl("rollout", "status", "deployment/tasks", "-n", ns, "--timeout=90s", timeout=120)
    kubectl("rollout", "status", "statefulset/redis", "-n", ns, "--timeout=90s", timeout=120)
    dep = get_json(kubectl, "deployment", "tasks", "-n", ns)
    assert condition(dep, "Available") == "True"
    assert dep["status"]["readyReplicas"] == 1  # the dev overlay's one replica
    kubectl("wait", "--for=condition=Complete", "job/migrate", "-n", ns, "--timeout=60s")

    kubectl("create", "job", "--from=cronjob/cleanup", "manual-1", "-n", ns)
    kubectl("wait", "--for=condition=Complete", "job/manual-1", "-n", ns, "--timeout=60s")
    cron = get_json(kubectl, "cronjob", "cleanup", "-n", ns)
    job = get_json(kubectl, "job", "manual-1", "-n", ns)
    assert (
        without_generated_labels(job["spec"]["template"])
        == (cron["spec"]["jobTemplate"]["spec"]["template"])
    )

    code, summary, _ = launch(kubeconfig, "cleanup", "--cronjob", "cleanup", "-n", ns)
    assert code == 0 and summary["succeeded"] == 1, summary
    pvc = get_json(kubectl, "pvc", "data-redis-0", "-n", ns)
    assert pvc["status"]["phase"] == "Bound"
    kubectl("delete", "pv", f"{ns}-redis", "--wait=false")  # removed once the namespace is gone


def reserved_pv(name: str, namespace: str, claim: str, size: str = "1Gi") -> dict:
    """A hostPath PV (never mounted: no container runs) reserved for one claim (claimRef)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"e2e.tasks/pv": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/{name}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


@pytest.mark.factor("III")
@pytest.mark.parametrize("major", [3, 4])
def test_bad_values_are_stopped_before_the_server_sees_them(major, helm, kubectl, namespace):
    proc = helm(
        "install", "tasks", str(CHART), "-n", namespace, "-f", str(E2E_VALUES),
        "--set", "replicaCount=abc", "--wait", "--timeout", "1m", check=False, major=major,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert "replicaCount" in proc.stderr, proc.stderr
    # No release record (Helm keeps it in a Secret), no object at all.
    assert json.loads(helm("list", "-n", namespace, "-a", "-o", "json").stdout) == []
    assert namespaced_objects(kubectl, namespace) == set()


@pytest.mark.factor("V")
def test_helm4_installs_upgrades_and_uninstalls(helm, kubectl, namespace):
    """Helm 4 (server-side apply, kstatus waiting) on the same chart and values."""
    ns = namespace
    helm4 = lambda *a, **kw: helm(*a, major=4, **kw)  # noqa: E731
    helm4(
        "install", "tasks", str(CHART), "-n", ns, "-f", str(E2E_VALUES),
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    status = json.loads(helm4("status", "tasks", "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    assert condition(get_json(kubectl, "deployment", "tasks", "-n", ns), "Available") == "True"
    helm4(
        "upgrade", "tasks", str(CHART), "-n", ns, "-f", str(E2E_VALUES),
        "--set", "config.logLevel=debug", "--wait", "--timeout", "3m",
    )  # fmt: skip
    assert get_json(kubectl, "configmap", "tasks", "-n", ns)["data"]["TASKS_LOG_LEVEL"] == "debug"
    helm4("uninstall", "tasks", "-n", ns, "--wait", "--timeout", "2m")
    wait_until(
        "every object of the Helm 4 release to be gone",
        lambda: not namespaced_objects(kubectl, ns),
    )
