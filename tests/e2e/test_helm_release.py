"""One Helm release's whole life on the real control plane (rung 4), in order:
`helm install --wait` with ci/e2e-values.yaml -> what it created -> `kubectl create job --from` ->
`helm upgrade` with a changed config value -> `helm rollback` -> `helm uninstall`.

The tests of this module share one release and run in file order; each reads what the previous
step left. The migrate hook Job deletes itself on success, so a Job watch running during install
and upgrade is the proof that it ran.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.e2e.kube import (
    CHART,
    E2E_VALUES,
    JobWatcher,
    condition,
    get_json,
    namespaced_objects,
    wait_until,
    wait_until_or_false,
    without_generated_labels,
)

# The first test also starts the cluster when none is up; helm --wait allows minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RELEASE = "tasks"
API = "tasks"
REDIS = "tasks-redis"
MIGRATE = "tasks-migrate"
CRONJOB = "tasks-cleanup"
MANUAL_JOB = "tasks-cleanup-manual-1"


class Release:
    """What the tests learn as the release goes through its life."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.install_jobs: JobWatcher | None = None
        self.upgrade_jobs: JobWatcher | None = None
        self.redis_password: bytes = b""
        self.rev1_template_hash = ""
        self.rev2_template_hash = ""


@pytest.fixture(scope="module")
def release(k8s, helm, module_namespace):
    """`helm install tasks deploy/helm/tasks -f ci/e2e-values.yaml --wait`, watching Jobs."""
    state = Release(module_namespace)
    with JobWatcher(k8s, module_namespace) as jobs:
        helm(
            "install", RELEASE, str(CHART), "-n", module_namespace, "-f", str(E2E_VALUES),
            "--wait", "--timeout", "3m",
        )  # fmt: skip
    state.install_jobs = jobs
    yield state
    helm("uninstall", RELEASE, "-n", module_namespace, check=False)


def helm_history(helm, namespace: str) -> list[dict]:
    return json.loads(helm("history", RELEASE, "-n", namespace, "-o", "json").stdout)


def redis_password(kubectl, namespace: str) -> bytes:
    secret = get_json(kubectl, "secret", REDIS, "-n", namespace)
    return base64.b64decode(secret["data"]["redis-password"])


def active_replicasets(kubectl, namespace: str) -> list[dict]:
    sets = get_json(
        kubectl, "replicasets", "-n", namespace, "-l", "app.kubernetes.io/component=api"
    )
    return [rs for rs in sets["items"] if rs["spec"].get("replicas")]


def assert_hook_ran(watcher: JobWatcher, phase: str) -> dict:
    """The migrate hook Job was created with the hook annotation, completed, and was then deleted
    by its hook-delete-policy. Returns the Job as it completed."""
    runs = watcher.history(MIGRATE)
    assert len(runs) == 1, f"expected one {MIGRATE} Job during {phase}, saw {list(runs)}"
    (events,) = runs.values()
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "ADDED" and kinds[-1] == "DELETED", kinds
    created = events[0][1]
    annotations = created["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "pre-upgrade"}
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    completed = [obj for _, obj in events if condition(obj, "Complete") == "True"]
    assert completed, f"{MIGRATE} never completed: {[o.get('status') for _, o in events]}"
    assert completed[0]["status"]["succeeded"] == 1
    assert not [obj for _, obj in events if condition(obj, "Failed") == "True"]
    return completed[0]


# --- install ---


@pytest.mark.factor("V", "XII")
def test_install_is_deployed_and_the_migrate_hook_ran(release, helm, kubectl):
    ns = release.namespace
    (rev1,) = helm_history(helm, ns)
    assert (rev1["revision"], rev1["status"], rev1["description"]) == (
        1,
        "deployed",
        "Install complete",
    )
    job = assert_hook_ran(release.install_jobs, "install")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == ["python", "-m", "jobs", "migrate"]
    # Deleted on success: nothing of it is left but its events.
    assert not kubectl("get", "jobs", "-n", ns, "-o", "name").stdout.strip()
    reasons = get_json(
        kubectl, "events", "-n", ns, "--field-selector", f"involvedObject.name={MIGRATE}"
    )["items"]
    assert "Completed" in {e["reason"] for e in reasons}
    release.redis_password = redis_password(kubectl, ns)
    assert len(release.redis_password) == 32


@pytest.mark.factor("VIII", "IX")
def test_deployment_available_and_the_hpa_scales_it_to_min_replicas(release, kubectl):
    """The Deployment has no replicas of its own (the HPA owns the count): the real HPA controller
    raises it to minReplicas, with no metrics server needed for that."""
    ns = release.namespace
    dep = get_json(kubectl, "deployment", API, "-n", ns)
    assert condition(dep, "Available") == "True", dep["status"]
    hpa = get_json(kubectl, "hpa", API, "-n", ns)
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", API)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)

    def scaled():
        d = get_json(kubectl, "deployment", API, "-n", ns)
        s = d["status"]
        return d if d["spec"]["replicas"] == 2 and s.get("availableReplicas") == 2 else None

    wait_until("the HPA to scale the Deployment to minReplicas 2", scaled, timeout=90)
    hpa = get_json(kubectl, "hpa", API, "-n", ns)
    assert hpa["status"]["desiredReplicas"] == 2, hpa["status"]
    assert condition(hpa, "AbleToScale") == "True", hpa["status"]
    release.rev1_template_hash = active_replicasets(kubectl, ns)[0]["metadata"]["labels"][
        "pod-template-hash"
    ]


@pytest.mark.factor("IX")
def test_pdb_covers_the_api_pods(release, kubectl):
    ns = release.namespace

    def healthy():
        pdb = get_json(kubectl, "pdb", API, "-n", ns)
        s = pdb.get("status", {})
        return pdb if s.get("expectedPods") == 2 and s.get("currentHealthy") == 2 else None

    pdb = wait_until("the PDB to count both API pods", healthy)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["status"]["disruptionsAllowed"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


@pytest.mark.factor("VII", "IV")
def test_service_endpoints_are_the_ready_pods(release, kubectl):
    """EndpointSlices (the endpoint-slice controller's, from real pod readiness) list exactly the
    ready API pods on the http and metrics ports, and the Redis pod behind tasks-redis."""
    ns = release.namespace
    for service, selector, ports in (
        (API, "app.kubernetes.io/instance=tasks,app.kubernetes.io/component=api", {8080, 9090}),
        (REDIS, "app.kubernetes.io/instance=tasks,app.kubernetes.io/component=redis", {6379}),
    ):
        pods = get_json(kubectl, "pods", "-n", ns, "-l", selector)["items"]
        want = {p["status"]["podIP"] for p in pods if condition(p, "Ready") == "True"}
        assert want, f"no ready pods for {service}"

        def addresses(service=service, want=want, ports=ports):
            slices = get_json(
                kubectl, "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={service}"
            )["items"]
            ready = {
                a
                for s in slices
                for e in s.get("endpoints") or []
                if e["conditions"].get("ready")
                for a in e["addresses"]
            }
            served = {p["port"] for s in slices for p in s.get("ports") or []}
            return ready == want and served == ports

        wait_until(f"endpoints of Service {service} to be its ready pods", addresses)


@pytest.mark.factor("VII")
def test_network_policies_select_the_api_and_redis_pods(release, kubectl):
    """The policies' selectors, evaluated by the API server's own label selection: the API policy
    picks exactly the API pods (the http port, and the metrics port for its peers); Redis admits
    only its clients, which the API pods and the cleanup CronJob's pods are."""
    ns = release.namespace

    def pods_matching(match_labels: dict[str, str]) -> set[str]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        return {
            p["metadata"]["name"]
            for p in get_json(kubectl, "pods", "-n", ns, "-l", selector)["items"]
        }

    api_pods = pods_matching(
        {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "api"}
    )
    assert len(api_pods) == 2

    api = get_json(kubectl, "networkpolicy", API, "-n", ns)
    assert api["spec"]["policyTypes"] == ["Ingress"]
    assert pods_matching(api["spec"]["podSelector"]["matchLabels"]) == api_pods
    ingress = api["spec"]["ingress"]
    assert [p["port"] for rule in ingress for p in rule["ports"]] == ["http", "metrics"]

    redis = get_json(kubectl, "networkpolicy", REDIS, "-n", ns)
    assert pods_matching(redis["spec"]["podSelector"]["matchLabels"]) == {f"{REDIS}-0"}
    (rule,) = redis["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [6379]
    (peer,) = rule["from"]
    clients = peer["podSelector"]["matchLabels"]
    assert pods_matching(clients) == api_pods  # no Job pods exist right now
    cron = get_json(kubectl, "cronjob", CRONJOB, "-n", ns)
    job_pod_labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert clients.items() <= job_pod_labels.items()


# --- admin process ---


@pytest.mark.factor("XII", "V")
def test_create_job_from_cronjob_runs_its_exact_template(release, kubectl):
    ns = release.namespace
    out = kubectl("create", "job", f"--from=cronjob/{CRONJOB}", MANUAL_JOB, "-n", ns).stdout
    assert f"job.batch/{MANUAL_JOB} created" in out
    kubectl("wait", "--for=condition=Complete", f"job/{MANUAL_JOB}", "-n", ns, "--timeout=60s")

    cron = get_json(kubectl, "cronjob", CRONJOB, "-n", ns)
    job = get_json(kubectl, "job", MANUAL_JOB, "-n", ns)
    assert job["status"]["succeeded"] == 1
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": CRONJOB,
        "uid": cron["metadata"]["uid"],
        "controller": True,
    }
    want = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert without_generated_labels(job["spec"]["template"]) == want
    container = want["spec"]["containers"][0]
    assert container["command"] + container["args"] == ["python", "-m", "jobs", "cleanup"]
    # The same image as the API.
    dep = get_json(kubectl, "deployment", API, "-n", ns)
    assert container["image"] == dep["spec"]["template"]["spec"]["containers"][0]["image"]
    pods = get_json(kubectl, "pods", "-n", ns, "-l", f"job-name={MANUAL_JOB}")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]


# --- upgrade, rollback ---


@pytest.mark.factor("III", "V")
def test_upgrade_with_a_config_change_rolls_the_pods_and_reruns_the_hook(
    release, k8s, helm, kubectl
):
    ns = release.namespace
    old_cm = get_json(kubectl, "configmap", API, "-n", ns)
    assert old_cm["data"]["TASKS_LOG_LEVEL"] == "info"
    with JobWatcher(k8s, ns) as jobs:
        helm(
            "upgrade", RELEASE, str(CHART), "-n", ns, "-f", str(E2E_VALUES),
            "--set", "config.logLevel=debug", "--wait", "--timeout", "3m",
        )  # fmt: skip
    release.upgrade_jobs = jobs

    # pre-upgrade hook: a new Job, with this revision's settings as explicit env.
    job = assert_hook_ran(jobs, "upgrade")
    install_uids = set(release.install_jobs.history(MIGRATE))
    assert job["metadata"]["uid"] not in install_uids
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TASKS_LOG_LEVEL"] == "debug"

    assert get_json(kubectl, "configmap", API, "-n", ns)["data"]["TASKS_LOG_LEVEL"] == "debug"

    def rolled():
        (rs,) = active_replicasets(kubectl, ns)
        dep = get_json(kubectl, "deployment", API, "-n", ns)
        done = dep["status"].get("updatedReplicas") == dep["status"].get("availableReplicas") == 2
        return rs if done and rs["metadata"]["labels"]["pod-template-hash"] else None

    rs = wait_until("the new ReplicaSet to own all replicas", rolled)
    release.rev2_template_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert release.rev2_template_hash != release.rev1_template_hash
    old = get_json(
        kubectl, "replicasets", "-n", ns, "-l", f"pod-template-hash={release.rev1_template_hash}"
    )["items"][0]
    old_sum = old["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    new_sum = rs["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert old_sum != new_sum, "the config checksum is what rolled the pods"
    # The hook ran before the new pods (pre-upgrade): completed no later than the new ReplicaSet.
    assert job["status"]["completionTime"] <= rs["metadata"]["creationTimestamp"]


@pytest.mark.factor("III")
def test_redis_password_is_kept_across_upgrade(release, kubectl):
    assert redis_password(kubectl, release.namespace) == release.redis_password


@pytest.mark.factor("V")
def test_rollback_restores_revision_1_and_keeps_the_password(release, helm, kubectl):
    ns = release.namespace
    helm("rollback", RELEASE, "1", "-n", ns, "--wait", "--timeout", "3m")
    history = helm_history(helm, ns)
    assert [(h["revision"], h["status"]) for h in history] == [
        (1, "superseded"),
        (2, "superseded"),
        (3, "deployed"),
    ]
    assert history[-1]["description"] == "Rollback to 1"
    assert get_json(kubectl, "configmap", API, "-n", ns)["data"]["TASKS_LOG_LEVEL"] == "info"

    def back():
        (rs,) = active_replicasets(kubectl, ns)
        return rs["metadata"]["labels"]["pod-template-hash"] == release.rev1_template_hash

    wait_until("revision 1's ReplicaSet to own the replicas again", back)
    assert redis_password(kubectl, ns) == release.redis_password


# --- uninstall ---


@pytest.mark.factor("V", "IX")
def test_uninstall_leaves_nothing_behind(release, helm, kubectl):
    """Persistence is off in e2e-values.yaml, so the documented leftovers (the Redis PVC) are none:
    after uninstall the namespace holds only its own ServiceAccount and CA ConfigMap. The manual
    Job goes too (the garbage collector follows its ownerReference to the CronJob)."""
    ns = release.namespace
    assert f"job.batch/{MANUAL_JOB}" in namespaced_objects(kubectl, ns)
    out = helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m").stdout
    assert f'release "{RELEASE}" uninstalled' in out
    last: list[set[str]] = []

    def gone() -> bool:
        last[:] = [namespaced_objects(kubectl, ns)]
        return not last[0]

    if not wait_until_or_false(gone, timeout=60):
        pytest.fail(f"left behind after helm uninstall: {sorted(last[0])}")
    assert "not found" in helm("status", RELEASE, "-n", ns, check=False).stderr
