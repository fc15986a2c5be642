"""The kustomize dev overlay on a real node (rung 5), then the design's literal admin command:
`kubectl create job --from=cronjob/cleanup manual-1`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.kube import KUSTOMIZE, get_json, kustomize_build
from tests.e2e.node.test_release import all_ready, pods, restarts

# Installs wait for real pods; the rollout tests run load for minutes.
pytestmark = [pytest.mark.node, pytest.mark.timeout(900)]


def build_dev_overlay(workdir: Path) -> str:
    """The dev overlay as a user on an offline cluster would apply it: unchanged, with its images
    pointed at what this node holds (kustomize's own `images:` override in a wrapping
    kustomization) instead of the registry names."""
    (workdir / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(KUSTOMIZE / "overlays" / "dev", workdir)],
                "images": [
                    {
                        "name": "ghcr.io/example/tasks",
                        "newName": "localhost/tasks",
                        "newTag": "dev",
                    },
                    {
                        "name": "docker.io/library/redis",
                        "newName": "localhost/tasks-redis",
                        "newTag": "7.0-stand-in",
                    },
                ],
            }
        )
    )
    return kustomize_build(workdir, "--load-restrictor", "LoadRestrictionsNone")


@pytest.mark.factor("X", "XII")
def test_dev_overlay_runs_and_kubectl_create_job_from_cronjob_cleanup_completes(
    kubectl, namespace, local_volume, tmp_path
):
    ns = namespace
    local_volume(ns, "data-redis-0")
    kubectl("apply", "-n", ns, "-f", "-", input=build_dev_overlay(tmp_path))
    kubectl("rollout", "status", "statefulset/redis", "-n", ns, "--timeout=180s", timeout=200)
    kubectl("rollout", "status", "deployment/tasks", "-n", ns, "--timeout=180s", timeout=200)
    kubectl(
        "wait", "--for=condition=Complete", "job/migrate", "-n", ns, "--timeout=120s", timeout=150
    )
    for pod in pods(kubectl, ns, "app.kubernetes.io/part-of=tasks"):
        if pod["status"]["phase"] == "Running":  # the API and Redis (migrate has completed)
            assert all_ready(pod) and restarts(pod) == 0, pod["metadata"]["name"]

    kubectl("create", "job", "--from=cronjob/cleanup", "manual-1", "-n", ns)
    kubectl(
        "wait", "--for=condition=Complete", "job/manual-1", "-n", ns, "--timeout=120s", timeout=150
    )
    summary = json.loads(kubectl("logs", "-n", ns, "job/manual-1").stdout.strip().splitlines()[-1])
    assert summary["job"] == "cleanup" and "error" not in summary, summary
    assert get_json(kubectl, "pvc", "data-redis-0", "-n", ns)["status"]["phase"] == "Bound"
