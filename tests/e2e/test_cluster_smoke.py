"""Smoke tests of the local control plane itself (rung 4): before the chart's e2e tests trust it,
prove it is a real Kubernetes 1.34 — real scheduler and controllers, real admission — with kwok
playing the kubelets."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.cluster import controlplane, kwok
from tests.e2e.kube import get_json, wait_until

# The first test also starts the cluster when none is up; helm --wait allows minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

IMAGE = "registry.invalid/tasks:e2e"  # never pulled: kwok runs no containers


def restricted_container(name: str = "app") -> dict:
    """A container that passes the `restricted` Pod Security Standard."""
    return {
        "name": name,
        "image": IMAGE,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


@pytest.mark.harness
def test_version_is_pinned_kubernetes_1_34(k8s, kubectl):
    """/version (what Helm's .Capabilities.KubeVersion reads) and the pinned kubectl: 1.34."""
    from kubernetes import client

    server = client.VersionApi(k8s).get_code()
    assert server.git_version.startswith(controlplane.KUBE_VERSION_PREFIX), server
    assert (server.major, server.minor) == ("1", "34")

    versions = json.loads(kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == server.git_version  # one pinned build
    assert versions["serverVersion"]["gitVersion"] == server.git_version


@pytest.mark.harness
def test_nodes_are_kwok_nodes_in_three_zones(kubectl):
    nodes = get_json(kubectl, "nodes")["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(kwok.NODES) <= set(by_name)
    zones = {by_name[n]["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in kwok.NODES}
    assert zones == set(kwok.ZONES)
    for name in kwok.NODES:
        ready = [c for c in by_name[name]["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", by_name[name]["status"]


@pytest.mark.harness
def test_deployment_becomes_available_spread_over_zones(kubectl, namespace):
    """Deployment controller -> ReplicaSet -> Pods -> scheduler (zone spread) -> kwok: Ready."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{**restricted_container(), "ports": [{"containerPort": 8080}]}],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"app": "web"}},
                        }
                    ],
                },
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(deployment))
    kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s", timeout=90)

    dep = get_json(kubectl, "deployment", "web", "-n", namespace)
    available = [c for c in dep["status"]["conditions"] if c["type"] == "Available"]
    assert available and available[0]["status"] == "True", dep["status"]
    assert dep["status"]["readyReplicas"] == 3

    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert all(p["status"].get("podIP") for p in pods)  # kwok's pod-ready stage assigned IPs
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert nodes == set(kwok.NODES), "the scheduler spreads one replica per zone"


@pytest.mark.harness
def test_job_created_from_cronjob_completes(kubectl, namespace):
    """`kubectl create job --from=cronjob/x` (the pinned kubectl) and the Job controller plus kwok's
    pod-complete stage run it to completion. The timeZone field needs the embedded tzdata."""
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "x", "namespace": namespace},
        "spec": {
            "schedule": "0 3 1 1 *",
            "timeZone": "Europe/Berlin",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    **restricted_container("cleanup"),
                                    "args": ["python", "-m", "jobs", "cleanup"],
                                }
                            ],
                        },
                    },
                },
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(cronjob))
    out = kubectl("create", "job", "--from=cronjob/x", "x-manual-1", "-n", namespace).stdout
    assert "job.batch/x-manual-1 created" in out

    kubectl(
        "wait",
        "--for=condition=Complete",
        "job/x-manual-1",
        "-n",
        namespace,
        "--timeout=60s",
        timeout=90,
    )
    job = get_json(kubectl, "job", "x-manual-1", "-n", namespace)
    assert job["status"]["succeeded"] == 1
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("CronJob", "x")
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"

    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "job-name=x-manual-1")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]


@pytest.mark.harness
def test_pod_security_admission_rejects_privileged_pod(k8s, kubectl):
    """Admission is the real API server's: a `restricted` namespace refuses a privileged pod
    and admits a compliant one."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s)
    name = f"e2e-restricted-{int(time.time() * 1000) % 10**8}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name, labels={"pod-security.kubernetes.io/enforce": "restricted"}
            )
        )
    )
    try:
        privileged = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {
                "containers": [
                    {"name": "c", "image": IMAGE, "securityContext": {"privileged": True}}
                ]
            },
        }
        with pytest.raises(ApiException) as err:
            core.create_namespaced_pod(name, privileged)
        assert err.value.status == 403
        message = json.loads(err.value.body)["message"]
        assert 'violates PodSecurity "restricted:latest"' in message
        assert 'privileged (container "c" must not set securityContext.privileged=true)' in message

        compliant = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "compliant"},
            "spec": {"containers": [restricted_container()]},
        }
        # The ServiceAccount admission plugin needs the namespace's default ServiceAccount, which
        # the controller-manager creates moments after the namespace.
        wait_until(
            "the compliant pod to be admitted",
            lambda: core.create_namespaced_pod(name, compliant),
            timeout=30,
        )
        wait_until(
            "the compliant pod to run",
            lambda: core.read_namespaced_pod("compliant", name).status.phase == "Running",
        )
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
