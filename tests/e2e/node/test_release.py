"""The chart on a real node (rung 5): one release of the default chart (bundled Redis with auth and
persistence, the migrate hook) through its life, with real containers, probes, Service routing,
DNS, volumes and restricted Pod Security. Tests run in order and share the release."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from tests.e2e.kube import CHART, get_json, wait_until
from tests.e2e.node.conftest import FACTS

# Installs wait for real pods; the rollout tests run load for minutes.
pytestmark = [pytest.mark.node, pytest.mark.timeout(900)]

NODE_VALUES = CHART / "ci" / "node-values.yaml"
RELEASE = "tasks"
API = "app.kubernetes.io/instance=tasks,app.kubernetes.io/component=api"
REDIS = "app.kubernetes.io/instance=tasks,app.kubernetes.io/component=redis"
# Done tasks older than this are the cleanup job's: short, so the test need not wait days.
RETENTION = "2s"
INSTALL_BOUND = 240  # seconds for `helm install --wait`, image import and PVC binding included


def pods(kubectl, ns: str, selector: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return get_json(kubectl, "pods", "-n", ns, "-l", selector)["items"]  # type: ignore[no-any-return]


def all_ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all(s["ready"] for s in statuses)


def restarts(pod: dict[str, Any]) -> int:
    return sum(s["restartCount"] for s in pod.get("status", {}).get("containerStatuses") or [])


@pytest.fixture(scope="module")
def release(helm, kubectl, module_namespace, local_volume):  # type: ignore[no-untyped-def]
    """`helm install --wait` of the chart with its defaults, on the real node."""
    ns = module_namespace
    local_volume(ns, f"data-{RELEASE}-redis-0")
    t0 = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), "-n", ns, "-f", str(NODE_VALUES),
        "--set", f"config.cleanupRetention={RETENTION}",
        "--wait", "--timeout", f"{INSTALL_BOUND}s", timeout=INSTALL_BOUND + 30,
    )  # fmt: skip
    FACTS["helm install --wait (default chart)"] = f"{time.monotonic() - t0:.1f} s"
    yield ns
    helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m", check=False)


@pytest.fixture(scope="module")
def api(kubectl, release) -> httpx2.Client:  # type: ignore[no-untyped-def]
    """The API through its Service's ClusterIP (kube-proxy's rules, from the node)."""
    svc = get_json(kubectl, "service", RELEASE, "-n", release)
    port = svc["spec"]["ports"][0]["port"]
    return httpx2.Client(base_url=f"http://{svc['spec']['clusterIP']}:{port}", timeout=10)


def exec_in(kubectl, ns: str, pod: str, *cmd: str, check: bool = True):  # type: ignore[no-untyped-def]
    return kubectl("exec", "-n", ns, pod, "-c", "api", "--", *cmd, check=check)


@pytest.mark.factor("IX", "V")
def test_install_brings_every_pod_ready_without_a_restart(kubectl, release):
    ns = release
    everything = pods(kubectl, ns, "app.kubernetes.io/instance=tasks")
    running = [p for p in everything if p["status"]["phase"] == "Running"]
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in running} == {
        "api",
        "redis",
    }
    assert len(pods(kubectl, ns, API)) == 2  # replicaCount
    (node,) = get_json(kubectl, "nodes")["items"]
    for pod in running:
        assert all_ready(pod), pod["metadata"]["name"]
        assert restarts(pod) == 0, pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == node["metadata"]["name"]
    pvc = get_json(kubectl, "pvc", f"data-{RELEASE}-redis-0", "-n", ns)
    assert pvc["status"]["phase"] == "Bound"


@pytest.mark.factor("V", "IX")
def test_the_app_runs_as_uid_10001_on_a_read_only_root(kubectl, release):
    pod = pods(kubectl, release, API)[0]["metadata"]["name"]
    assert exec_in(kubectl, release, pod, "id", "-u").stdout.strip() == "10001"
    denied = exec_in(kubectl, release, pod, "touch", "/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    assert exec_in(kubectl, release, pod, "touch", "/tmp/probe").returncode == 0


@pytest.mark.factor("III")
def test_the_container_env_holds_the_configmap_and_secret_values(kubectl, release):
    ns = release
    pod = pods(kubectl, ns, API)[0]["metadata"]["name"]
    env = dict(
        line.split("=", 1)
        for line in exec_in(kubectl, ns, pod, "env").stdout.splitlines()
        if "=" in line
    )
    config = get_json(kubectl, "configmap", RELEASE, "-n", ns)["data"]
    for key, value in config.items():
        assert env.get(key) == value, key
    assert env["TASKS_CLEANUP_RETENTION"] == RETENTION
    secret = get_json(kubectl, "secret", f"{RELEASE}-redis", "-n", ns)["data"]
    password = base64.b64decode(secret["redis-password"]).decode()
    assert env["TASKS_REDIS_PASSWORD"] == password and len(password) >= 16


@pytest.mark.factor("IV", "VII")
def test_the_api_answers_through_its_cluster_ip_and_reaches_redis_by_name(api, kubectl, release):
    """/readyz is 200 only when the app reached Redis: by the Service name `tasks-redis` (cluster
    DNS), through its ClusterIP (kube-proxy), with the password from the Secret."""
    assert api.get("/readyz").status_code == 200
    created = api.post("/v1/tasks", json={"title": "through the ClusterIP"})
    assert created.status_code == 201, created.text
    assert api.get(f"/v1/tasks/{created.json()['id']}").json()["title"] == "through the ClusterIP"
    config = get_json(kubectl, "configmap", RELEASE, "-n", release)["data"]
    assert config["TASKS_REDIS_URL"].startswith(f"redis://{RELEASE}-redis:"), config


@pytest.mark.factor("V")
def test_helm_test_passes(helm, release):
    # The chart's test pod is deleted once it succeeds (hook-delete-policy): no --logs.
    out = helm("test", RELEASE, "-n", release, "--timeout", "2m").stdout
    assert "Phase:          Succeeded" in out, out


def seed_expired(api: httpx2.Client, n_done: int) -> tuple[list[str], str]:
    """n_done tasks moved to done (expired once RETENTION passes) and one open task."""
    done = []
    for i in range(n_done):
        task = api.post("/v1/tasks", json={"title": f"expired {i}"}).json()
        assert api.patch(f"/v1/tasks/{task['id']}", json={"status": "done"}).status_code == 200
        done.append(task["id"])
    keep = api.post("/v1/tasks", json={"title": "still open"}).json()["id"]
    time.sleep(3)  # > RETENTION
    return done, keep


def job_summary(kubectl, ns: str, job: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    kubectl(
        "wait", "--for=condition=Complete", f"job/{job}", "-n", ns, "--timeout=120s", timeout=150
    )
    lines = kubectl("logs", "-n", ns, f"job/{job}").stdout.strip().splitlines()
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@pytest.mark.factor("XII")
def test_kubectl_create_job_from_the_cronjob_cleans_up_expired_tasks(api, kubectl, release):
    done, keep = seed_expired(api, 3)
    job = f"tasks-cleanup-manual-{uuid.uuid4().hex[:5]}"
    kubectl("create", "job", f"--from=cronjob/{RELEASE}-cleanup", job, "-n", release)
    summary = job_summary(kubectl, release, job)
    assert summary["job"] == "cleanup" and summary["deleted"] >= 3, summary
    for task_id in done:
        assert api.get(f"/v1/tasks/{task_id}").status_code == 404
    assert api.get(f"/v1/tasks/{keep}").status_code == 200


@pytest.mark.factor("XII")
def test_jobs_launch_cleanup_runs_it_and_reports(api, kubeconfig, kubectl, release):
    from tests.e2e.test_launch import launch

    done, keep = seed_expired(api, 2)
    code, summary, stderr = launch(kubeconfig, "cleanup", "--release", RELEASE, "-n", release)
    assert code == 0 and summary["succeeded"] == 1, (summary, stderr)
    assert job_summary(kubectl, release, summary["name"])["deleted"] == 2
    assert all(api.get(f"/v1/tasks/{t}").status_code == 404 for t in done)
    assert api.get(f"/v1/tasks/{keep}").status_code == 200


@pytest.mark.factor("IV", "VI")
def test_redis_keeps_every_task_when_its_pod_is_deleted(api, kubectl, release):
    """AOF on the PVC: the StatefulSet's new pod reloads every write; the API pods recover by
    themselves (no restart)."""
    ns = release
    ids = [api.post("/v1/tasks", json={"title": f"durable {i}"}).json()["id"] for i in range(20)]
    before = {p["metadata"]["name"]: restarts(p) for p in pods(kubectl, ns, API)}
    old = pods(kubectl, ns, REDIS)[0]["metadata"]["uid"]
    t0 = time.monotonic()
    kubectl("delete", "pod", f"{RELEASE}-redis-0", "-n", ns, "--wait=true", timeout=90)
    wait_until(
        "a new, ready Redis pod",
        lambda: [
            p for p in pods(kubectl, ns, REDIS) if p["metadata"]["uid"] != old and all_ready(p)
        ],
        timeout=120,
    )
    wait_until("the API to be ready again", lambda: api.get("/readyz").status_code == 200, 60)
    FACTS["Redis pod deleted -> API ready again"] = f"{time.monotonic() - t0:.1f} s"
    assert all(api.get(f"/v1/tasks/{i}").status_code == 200 for i in ids)
    after = {p["metadata"]["name"]: restarts(p) for p in pods(kubectl, ns, API)}
    assert after == before, "the API pods were not restarted"


def _why(response: httpx2.Response | None) -> str:
    """A failed answer's problem type and detail, so a failure says which one it was."""
    if response is None or "json" not in response.headers.get("content-type", ""):
        return ""
    body = response.json()
    return f" {body.get('type', '')}: {body.get('detail', '')}"


@dataclass
class Load:
    """Constant traffic on the ClusterIP from a few threads, bounded in time and count: creates
    (each 201 remembered) and reads. Counts what clients saw."""

    base_url: str
    threads: int = 4
    max_seconds: float = 300
    max_requests: int = 40_000
    statuses: Counter[str] = field(default_factory=Counter)
    created: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx2.Client(base_url=self.base_url, timeout=10) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if sum(self.statuses.values()) >= self.max_requests:
                        return
                i += 1
                r = None
                try:
                    if i % 2:
                        r = client.post("/v1/tasks", json={"title": f"load {i}"})
                        ok = r.status_code == 201
                    else:
                        r = client.get("/v1/tasks", params={"limit": 5})
                        ok = r.status_code == 200
                    outcome = str(r.status_code)
                except httpx2.HTTPError as e:
                    ok, outcome = False, type(e).__name__
                with self._lock:
                    self.statuses[outcome] += 1
                    if ok and i % 2:
                        self.created.append(r.json()["id"])
                    elif not ok:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {outcome}{_why(r)}")
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(30)


@pytest.mark.factor("IX", "VIII")
def test_upgrade_pod_deletion_and_rollback_under_load_fail_no_request(api, helm, kubectl, release):
    """A `helm upgrade` that rolls every API pod, then `kubectl delete pod` of one, then `helm
    rollback`: readiness, the shutdown delay and draining keep every request answered."""
    ns = release
    with Load(str(api.base_url)) as load:
        time.sleep(3)
        helm(
            "upgrade", RELEASE, str(CHART), "-n", ns, "-f", str(NODE_VALUES),
            "--set", f"config.cleanupRetention={RETENTION}",
            "--set", "podAnnotations.rollout=second", "--wait", "--timeout", "4m", timeout=270,
        )  # fmt: skip
        victim = pods(kubectl, ns, API)[0]["metadata"]["name"]
        kubectl("delete", "pod", victim, "-n", ns, "--wait=true", timeout=90)
        kubectl(
            "rollout", "status", f"deployment/{RELEASE}", "-n", ns, "--timeout=120s", timeout=150
        )
        helm("rollback", RELEASE, "1", "-n", ns, "--wait", "--timeout", "4m", timeout=270)
        time.sleep(3)
    total = sum(load.statuses.values())
    missing = [i for i in load.created if api.get(f"/v1/tasks/{i}").status_code != 200]
    FACTS["upgrade + pod delete + rollback under load"] = (
        f"{total} requests {dict(load.statuses)}, {len(load.failures)} failed; "
        f"{len(load.created)} writes acknowledged, {len(missing)} lost"
    )
    assert total > 200, load.statuses
    assert not load.failures, f"{len(load.failures)} of {total} failed: {load.failures[:20]}"
    assert not missing


@pytest.mark.harness
def test_the_namespace_enforces_restricted_pod_security(kubectl, release):
    """Admission enforces PSS here for real: a privileged pod is refused in this namespace."""
    labels = get_json(kubectl, "namespace", release)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "localhost/tasks:dev",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    refused = kubectl("apply", "-n", release, "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


@pytest.mark.factor("III", "IV")
def test_upgrades_that_turn_redis_auth_off_and_on_keep_every_task(api, helm, kubectl, release):
    """The migrate hook runs before Redis restarts with the changed auth, so it authenticates as
    the running server expects: with the old password when auth goes off, with none when it comes
    back on (a newly generated one, whose Secret the upgrade creates only after the hooks)."""
    ns = release
    ids = [api.post("/v1/tasks", json={"title": f"auth {i}"}).json()["id"] for i in range(10)]
    for auth in ("false", "true"):
        t0 = time.monotonic()
        helm(
            "upgrade", RELEASE, str(CHART), "-n", ns, "-f", str(NODE_VALUES),
            "--set", f"config.cleanupRetention={RETENTION}", "--set", f"redis.auth.enabled={auth}",
            "--wait", "--timeout", "4m", timeout=270,
        )  # fmt: skip
        FACTS[f"upgrade with redis.auth.enabled={auth}"] = f"{time.monotonic() - t0:.1f} s"
        env = get_json(kubectl, "statefulset", f"{RELEASE}-redis", "-n", ns)["spec"]["template"]
        names = {e["name"] for e in env["spec"]["containers"][0].get("env", [])}
        assert ("REDIS_PASSWORD" in names) == (auth == "true")
        # Until they are gone, the previous pods (the old password against the restarted Redis)
        # may still be reached and answer 503: the short outage the chart README states.
        wait_until(
            "the previous API pods to be gone",
            lambda: (
                not [p for p in pods(kubectl, ns, API) if p["metadata"].get("deletionTimestamp")]
            ),
            timeout=120,
        )
        wait_until("the API to be ready", lambda: api.get("/readyz").status_code == 200, 120)
        assert [api.get(f"/v1/tasks/{i}").status_code for i in ids] == [200] * len(ids)
        assert api.post("/v1/tasks", json={"title": f"auth={auth}"}).status_code == 201


@pytest.mark.factor("IX", "XII")
def test_an_upgrade_that_migrates_the_data_layout_fails_no_request(api, helm, kubectl, release):
    """`helm upgrade` to a build one data layout ahead (images.NEXT_LAYOUT: a no-op expansion),
    under load: the migrate hook runs while the old pods serve, and nobody notices; then `helm
    rollback` becomes ready (the expansion's window admits the old build). Last in this module:
    it leaves the data at the newer layout."""
    ns = release
    with Load(str(api.base_url)) as load:
        time.sleep(3)
        helm(
            "upgrade", RELEASE, str(CHART), "-n", ns, "-f", str(NODE_VALUES),
            "--set", f"config.cleanupRetention={RETENTION}", "--set", "image.tag=next-layout",
            "--wait", "--timeout", "4m", timeout=270,
        )  # fmt: skip
        time.sleep(3)
    total = sum(load.statuses.values())
    FACTS["layout-changing upgrade under load"] = (
        f"{total} requests {dict(load.statuses)}, {len(load.failures)} failed"
    )
    assert total > 100, load.statuses
    assert not load.failures, f"{len(load.failures)} of {total} failed: {load.failures[:10]}"
    helm("rollback", RELEASE, "-n", ns, "--wait", "--timeout", "3m", timeout=200)

    def rolled_back() -> bool:
        # Terminating pods of the newer build may still answer (readiness 503) while they drain.
        live = [p for p in pods(kubectl, ns, API) if not p["metadata"].get("deletionTimestamp")]
        return bool(live) and all(
            all_ready(p) and p["spec"]["containers"][0]["image"].endswith(":dev") for p in live
        )

    wait_until("the rolled-back pods to be ready", rolled_back, timeout=120)
    assert api.post("/v1/tasks", json={"title": "after the rollback"}).status_code == 201
