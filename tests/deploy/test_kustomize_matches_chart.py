"""The kustomize bundle and the Helm chart are two hand-written views of one app: this test keeps
them from drifting. It renders the chart (`helm template`, hooks included) with values resembling
the dev overlay, builds the overlay, and compares each workload pair field by field:

  Deployment tasks    <-> Deployment tasks
  CronJob cleanup     <-> CronJob tasks-cleanup
  Job migrate         <-> Job tasks-migrate (the chart's hook)
  StatefulSet redis   <-> StatefulSet tasks-redis (the redis subchart)

Compared: image, pull policy, command/args, ports, probes, container and pod security contexts,
env names (env + envFrom resolved through the rendered ConfigMaps and Secrets), the settings those
envs produce, volumes and mounts, service account token and service links, grace period, the
Service ports (the API's and /metrics'), the API's ingress NetworkPolicy, CronJob/Job policies,
and the prod overlay's HPA, PDB and resources against the chart's defaults. Deliberate
differences are listed, with their reason, in ALLOWED.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.settings import Settings, env_name
from tests.deploy.render import (
    Obj,
    by_kind,
    helm_template,
    kustomize_build,
    one,
)
from tests.manifests import pod_spec, resolve_env, secret_env_names, settings_from_env

DEV_LIKE = (
    "replicaCount=1",
    "config.logLevel=debug",
    "apiKeys={dev-only-api-key}",
    "image.tag=dev",
)
PROD_LIKE = ("autoscaling.enabled=true", "podDisruptionBudget.enabled=true")
PAIRS = [
    (("Deployment", "tasks"), ("Deployment", "tasks")),
    (("CronJob", "cleanup"), ("CronJob", "tasks-cleanup")),
    (("Job", "migrate"), ("Job", "tasks-migrate")),
]
CONTAINER_FIELDS = (
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "ports",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "securityContext",
    "volumeMounts",
)
POD_FIELDS = (
    "securityContext",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "volumes",
)
# The one setting that differs by design: each bundle points at its own Redis Service's name.
ALLOWED = {"TASKS_REDIS_URL": "the Redis Service is `redis` in kustomize, `tasks-redis` in Helm"}


@pytest.fixture(scope="module")
def chart() -> tuple[Obj, ...]:
    return helm_template(*DEV_LIKE)


@pytest.fixture(scope="module")
def dev() -> tuple[Obj, ...]:
    return kustomize_build("overlays/dev")


def container_of(obj: Obj) -> Obj:
    (container,) = pod_spec(obj)["containers"]
    return container


def settings_from(env: dict[str, str]) -> dict[str, Any]:
    """The settings the app would load from this env (non-secret part), as a plain dict."""
    return settings_from_env(env).model_dump(exclude={"redis_password", "api_keys"})


@pytest.mark.factor("X")
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[p[0][1] for p in PAIRS])
def test_containers_match_the_chart_field_by_field(
    chart: tuple[Obj, ...], dev: tuple[Obj, ...], ours: tuple[str, str], theirs: tuple[str, str]
) -> None:
    mine, helm = container_of(one(dev, *ours)), container_of(one(chart, *theirs))
    diffs = {f: (mine.get(f), helm.get(f)) for f in CONTAINER_FIELDS if mine.get(f) != helm.get(f)}
    assert diffs == {}


@pytest.mark.factor("X")
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[p[0][1] for p in PAIRS])
def test_pods_match_the_chart_field_by_field(
    chart: tuple[Obj, ...], dev: tuple[Obj, ...], ours: tuple[str, str], theirs: tuple[str, str]
) -> None:
    mine, helm = pod_spec(one(dev, *ours)), pod_spec(one(chart, *theirs))
    diffs = {f: (mine.get(f), helm.get(f)) for f in POD_FIELDS if mine.get(f) != helm.get(f)}
    assert diffs == {}
    # Each names its own ServiceAccount, and both create it with the token off.
    for objs, spec in ((dev, mine), (chart, helm)):
        account = one(objs, "ServiceAccount", spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False


@pytest.mark.factor("III", "X")
@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[p[0][1] for p in PAIRS])
def test_env_names_and_the_settings_they_produce_match_the_chart(
    chart: tuple[Obj, ...], dev: tuple[Obj, ...], ours: tuple[str, str], theirs: tuple[str, str]
) -> None:
    mine = resolve_env(dev, container_of(one(dev, *ours)))
    helm = resolve_env(chart, container_of(one(chart, *theirs)))
    assert sorted(mine) == sorted(helm)
    # Every name is a setting of the app (no typo survives), secrets included.
    known = {env_name(field) for field in Settings.model_fields}
    assert set(mine) <= known, set(mine) - known
    assert {"TASKS_REDIS_PASSWORD", "TASKS_API_KEYS"} <= set(mine)
    assert "TASKS_REDIS_PASSWORD" in secret_env_names(dev, container_of(one(dev, *ours))), (
        "the Redis password comes from a Secret"
    )
    # Values: compared as the settings they load into ("1.0" and "1" are the same timeout).
    loaded_mine, loaded_helm = settings_from(mine), settings_from(helm)
    differing = {k for k in loaded_mine if loaded_mine[k] != loaded_helm[k]}
    assert {env_name(k) for k in differing} <= set(ALLOWED), differing
    assert loaded_mine["redis_url"] == "redis://redis:6379/0"
    assert loaded_helm["redis_url"] == "redis://tasks-redis:6379/0"


@pytest.mark.factor("IV")
def test_the_redis_url_of_each_bundle_names_its_own_redis_service(
    chart: tuple[Obj, ...], dev: tuple[Obj, ...]
) -> None:
    for objs, service in ((dev, "redis"), (chart, "tasks-redis")):
        one(objs, "Service", service)
        env = resolve_env(objs, container_of(one(objs, "Deployment", "tasks")))
        assert env["TASKS_REDIS_URL"] == f"redis://{service}:6379/0"


@pytest.mark.factor("VII", "X")
def test_services_expose_the_same_port(chart: tuple[Obj, ...], dev: tuple[Obj, ...]) -> None:
    mine, helm = one(dev, "Service", "tasks"), one(chart, "Service", "tasks")
    assert mine["spec"]["ports"] == helm["spec"]["ports"]
    assert mine["spec"]["type"] == helm["spec"]["type"]


@pytest.mark.factor("VII", "X")
def test_api_ingress_policies_match_the_chart(chart: tuple[Obj, ...], dev: tuple[Obj, ...]) -> None:
    """The API port from anywhere; the metrics port only from the `monitoring` namespace."""
    mine, helm = (one(objs, "NetworkPolicy", "tasks")["spec"]["ingress"] for objs in (dev, chart))
    assert mine == helm
    assert [rule["ports"][0]["port"] for rule in mine] == ["http", "metrics"]
    assert "from" not in mine[0] and mine[1]["from"]


@pytest.mark.factor("XII")
def test_job_policies_match_the_chart(chart: tuple[Obj, ...], dev: tuple[Obj, ...]) -> None:
    mine, helm = (
        one(dev, "CronJob", "cleanup")["spec"],
        one(chart, "CronJob", "tasks-cleanup")["spec"],
    )
    for field in (
        "schedule",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ):
        assert mine[field] == helm[field], field
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert mine["jobTemplate"]["spec"][field] == helm["jobTemplate"]["spec"][field], field
    migrate, hook = one(dev, "Job", "migrate")["spec"], one(chart, "Job", "tasks-migrate")["spec"]
    assert migrate["backoffLimit"] == hook["backoffLimit"]
    # Not compared: activeDeadlineSeconds (the hook's must stay below `helm --timeout`) and the
    # ttlSecondsAfterFinished that only the kustomize Job needs (see job-migrate.yaml).


@pytest.mark.factor("IV", "X")
def test_redis_matches_the_charts_redis(chart: tuple[Obj, ...], dev: tuple[Obj, ...]) -> None:
    mine_set, helm_set = one(dev, "StatefulSet", "redis"), one(chart, "StatefulSet", "tasks-redis")
    mine, helm = container_of(mine_set), container_of(helm_set)
    for field in (
        "image",
        "imagePullPolicy",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "securityContext",
        "resources",
    ):
        assert mine[field] == helm[field], field
    assert sorted(e["name"] for e in mine["env"]) == sorted(e["name"] for e in helm["env"])
    for field in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert pod_spec(mine_set)[field] == pod_spec(helm_set)[field], field
    claims = [c["spec"] for c in mine_set["spec"]["volumeClaimTemplates"]]
    assert claims == [c["spec"] for c in helm_set["spec"]["volumeClaimTemplates"]]


@pytest.mark.factor("VIII", "X")
def test_prod_overlay_scaling_and_resources_match_the_charts_defaults() -> None:
    prod = kustomize_build("overlays/prod")
    chart = helm_template(*PROD_LIKE)
    hpa = {**one(prod, "HorizontalPodAutoscaler", "tasks")["spec"]}
    assert hpa == one(chart, "HorizontalPodAutoscaler", "tasks")["spec"]
    pdb, helm_pdb = (
        one(prod, "PodDisruptionBudget", "tasks"),
        one(chart, "PodDisruptionBudget", "tasks"),
    )
    assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == {
        k: v for k, v in helm_pdb["spec"].items() if k != "selector"
    }
    assert "replicas" not in one(chart, "Deployment", "tasks")["spec"]
    for ours, theirs in PAIRS:
        mine, helm = container_of(one(prod, *ours)), container_of(one(chart, *theirs))
        assert mine["resources"] == helm["resources"], ours


@pytest.mark.factor("X")
def test_base_runs_the_charts_default_image() -> None:
    """Base = chart defaults: image.repository at the chart's appVersion."""
    base = kustomize_build("base")
    helm = helm_template()
    images = {container_of(o)["image"] for o in by_kind(base, "Deployment") + by_kind(base, "Job")}
    assert images == {container_of(one(helm, "Deployment", "tasks"))["image"]}


def _selected_components(objs: tuple[Obj, ...], policy: Obj) -> set[str]:
    selector = policy["spec"]["podSelector"]["matchLabels"]
    found = set()
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        meta = (
            obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
            if obj["kind"] == "CronJob"
            else obj["metadata"]
            if obj["kind"] == "Pod"
            else obj["spec"]["template"]["metadata"]
        )
        labels = meta.get("labels", {})
        if selector.items() <= labels.items():
            found.add(labels.get("app.kubernetes.io/component", obj["kind"]))
    return found


@pytest.mark.factor("X")
def test_egress_policies_match_the_chart(chart: tuple[Obj, ...], dev: tuple[Obj, ...]) -> None:
    """The API and jobs reach only DNS and Redis, Redis only DNS, in both bundles."""
    for objs, egress, redis in (
        (dev, "tasks-egress", "redis"),
        (chart, "tasks-egress", "tasks-redis"),
    ):
        policy = one(objs, "NetworkPolicy", egress)
        assert policy["spec"]["policyTypes"] == ["Egress"]
        assert _selected_components(objs, policy) == {"api", "cleanup", "migrate"}
        dns, to_redis = policy["spec"]["egress"]
        (peer,) = to_redis["to"]
        statefulset = one(objs, "StatefulSet", redis)
        redis_labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert peer["podSelector"]["matchLabels"].items() <= redis_labels.items()
        assert to_redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
        assert one(objs, "NetworkPolicy", redis)["spec"]["egress"] == [dns]
    mine, helm = (
        one(objs, "NetworkPolicy", "tasks-egress")["spec"]["egress"][0] for objs in (dev, chart)
    )
    assert mine == helm
