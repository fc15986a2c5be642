"""`python -m jobs launch` (jobs/launch.py) against the real API server: the Job it builds is the
one `kubectl create job --from=cronjob/...` builds, it runs to completion, and its exit code tells
the Job's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.kube import CHART, E2E_VALUES, ROOT, get_json, without_generated_labels
from tests.support import empty_cwd

# The first test also starts the cluster when none is up; helm --wait allows minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CRONJOB = "tasks-cleanup"


@pytest.fixture(scope="module")
def installed(helm, module_namespace):
    """The chart installed as release `tasks` (its CronJob, ServiceAccount, Redis...)."""
    helm(
        "install", "tasks", str(CHART), "-n", module_namespace, "-f", str(E2E_VALUES),
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    yield module_namespace
    helm("uninstall", "tasks", "-n", module_namespace, check=False)


def launch(kubeconfig: str, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Run `python -m jobs launch ...`; return exit code, the summary (last stdout line), stderr."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("TASKS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs", "launch", *args, "--kubeconfig", kubeconfig],
        capture_output=True,
        text=True,
        cwd=empty_cwd(),
        env=env,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no summary on stdout; stderr:\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr


def _normalized(job: dict) -> dict:
    """A dry-run Job minus what differs between any two creations: uid (also in the generated
    selector and labels), timestamps, and managedFields (the field manager's name)."""
    uid = job["metadata"]["uid"]
    text = json.dumps(job).replace(uid, "<uid>")
    job = json.loads(text)
    for key in ("creationTimestamp", "managedFields", "resourceVersion", "generation"):
        job["metadata"].pop(key, None)
    return job


@pytest.mark.factor("XII")
def test_the_job_is_built_exactly_like_kubectl_create_job_from(installed, k8s, kubectl):
    """Same name, both created with a server-side dry run: kubectl's Job and launch's are equal."""
    from kubernetes import client

    from jobs.launch import job_from_cronjob

    ns = installed
    by_kubectl = json.loads(
        kubectl(
            "create", "job", f"--from=cronjob/{CRONJOB}", "same-name", "-n", ns,
            "--dry-run=server", "-o", "json",
        ).stdout
    )  # fmt: skip
    cronjob = get_json(kubectl, "cronjob", CRONJOB, "-n", ns)
    body = job_from_cronjob(cronjob, "same-name")
    raw = client.BatchV1Api(k8s).create_namespaced_job(
        ns, body, dry_run="All", _preload_content=False
    )
    by_launch = json.loads(raw.data)
    assert _normalized(by_launch) == _normalized(by_kubectl)
    assert by_launch["metadata"]["ownerReferences"][0]["uid"] == cronjob["metadata"]["uid"]


@pytest.mark.factor("XII", "V")
def test_launch_runs_the_cronjobs_template_to_completion(installed, kubeconfig, kubectl):
    ns = installed
    code, summary, stderr = launch(kubeconfig, "cleanup", "--release", "tasks", "-n", ns)
    assert code == 0, (summary, stderr)
    assert summary["job"] == "launch"
    assert (summary["succeeded"], summary["failed"]) == (1, 0)
    assert summary["cronjob"] == CRONJOB and summary["namespace"] == ns
    assert summary["name"].startswith(f"{CRONJOB}-manual-")
    assert isinstance(summary["duration_ms"], int)
    for line in stderr.strip().splitlines():
        json.loads(line)  # logs are JSON lines on stderr

    cron = get_json(kubectl, "cronjob", CRONJOB, "-n", ns)
    job = get_json(kubectl, "job", summary["name"], "-n", ns)
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": CRONJOB,
            "uid": cron["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert (
        job["metadata"]["labels"].items()
        >= cron["spec"]["jobTemplate"]["metadata"]["labels"].items()
    )
    assert (
        without_generated_labels(job["spec"]["template"])
        == (cron["spec"]["jobTemplate"]["spec"]["template"])
    )
    assert job["status"]["succeeded"] == 1


@pytest.mark.factor("XII")
def test_launch_exits_1_when_the_job_fails(installed, kubeconfig, kubectl):
    """A CronJob whose pods can never be scheduled and whose Job has a 3 s deadline: the Job
    controller fails it (DeadlineExceeded), and launch reports that with exit 1."""
    ns = installed
    cron = get_json(kubectl, "cronjob", CRONJOB, "-n", ns)
    doomed = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "doomed", "namespace": ns},
        "spec": json.loads(json.dumps(cron["spec"])),
    }
    job_spec = doomed["spec"]["jobTemplate"]["spec"]
    job_spec["activeDeadlineSeconds"] = 3
    job_spec["backoffLimit"] = 0
    job_spec["template"]["spec"]["nodeSelector"] = {"example.com/no-such-node": "true"}
    kubectl("apply", "-f", "-", input=json.dumps(doomed))

    code, summary, _ = launch(kubeconfig, "cleanup", "--cronjob", "doomed", "-n", ns)
    assert code == 1, summary
    assert "DeadlineExceeded" in summary["error"], summary
    assert summary["succeeded"] == 0
    job = get_json(kubectl, "job", summary["name"], "-n", ns)
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])


@pytest.mark.factor("XII")
def test_launch_timeout_exits_1_and_missing_cronjob_exits_2(installed, kubeconfig):
    ns = installed
    code, summary, _ = launch(
        kubeconfig, "cleanup", "--release", "tasks", "-n", ns, "--timeout", "0"
    )
    assert code == 1 and "timed out after 0s" in summary["error"], summary

    code, summary, stderr = launch(kubeconfig, "cleanup", "--release", "nope", "-n", ns)
    assert code == 2, summary
    assert summary["error"] == (
        "no CronJob labelled app.kubernetes.io/instance=nope,app.kubernetes.io/component=cleanup"
        f" in namespace {ns} (kustomize installs name it plain: --cronjob)"
    )
    assert summary["error"] in stderr
