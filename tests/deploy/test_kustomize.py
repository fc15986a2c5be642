"""deploy/kustomize: base and overlays build with the pinned kustomize, every object passes the
Kubernetes OpenAPI schemas (strict), and the objects keep the contract users rely on."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import kubernetes_validate
import pytest

from service.settings import Settings, env_name
from tests.deploy.render import (
    KUBE_VERSIONS,
    KUSTOMIZATIONS,
    KUSTOMIZE_DIR,
    Obj,
    by_kind,
    generated,
    kustomize_build,
    one,
    read_env_file,
    redis_subchart_values,
    workloads,
)
from tests.manifests import pod_spec, settings_from_env
from tests.support import ROOT

# Settings that come from the Secret `tasks`, never from the ConfigMap.
SECRET_ENV = {"TASKS_REDIS_PASSWORD", "TASKS_API_KEYS"}
# Settings the image itself sets (build metadata, read by /version): a ConfigMap must not mask them.
IMAGE_ENV = {"TASKS_VERSION", "TASKS_GIT_REVISION", "TASKS_BUILD_DATE"}
# Where a cluster deliberately differs from the settings' local defaults (design.md).
CLUSTER_OVERRIDES = {
    "TASKS_STORE": "redis",
    "TASKS_REDIS_URL": "redis://redis:6379/0",
    "TASKS_SHUTDOWN_DELAY_SECONDS": "5",
}
APP_COMMANDS = {
    ("Deployment", "tasks"): ["python", "-m", "service"],
    ("CronJob", "cleanup"): ["python", "-m", "jobs", "cleanup"],
    ("Job", "migrate"): ["python", "-m", "jobs", "migrate"],
}


def app_workloads(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in workloads(objs) if (o["kind"], o["metadata"]["name"]) in APP_COMMANDS]


def settings_env_names() -> set[str]:
    return {env_name(field) for field in Settings.model_fields}


@pytest.mark.factor("V")
@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_passes_the_strict_kubernetes_schema(kustomization: str, version: str) -> None:
    objs = kustomize_build(kustomization)
    assert objs
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            errors.append(f"{where}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


@pytest.mark.factor("XII")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_plain_names_so_the_literal_commands_work(kustomization: str) -> None:
    objs = kustomize_build(kustomization)
    for kind, name in [
        ("Deployment", "tasks"),
        ("Service", "tasks"),
        ("ServiceAccount", "tasks"),
        ("CronJob", "cleanup"),
        ("Job", "migrate"),
        ("NetworkPolicy", "tasks"),
    ]:
        one(objs, kind, name)
    # The generated ConfigMap is `tasks-<content hash>`: a config change rolls the pods.
    config = generated(objs, "ConfigMap", "tasks")
    assert re.fullmatch(r"tasks-[a-z0-9]{10}", config["metadata"]["name"])


def image_cmd() -> list[str]:
    """The Dockerfile's last CMD (exec form): what a container without `command` runs."""
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmds, "Dockerfile has no exec-form CMD"
    argv: list[str] = json.loads(cmds[-1])
    return argv


@pytest.mark.factor("XII")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_app_workloads_run_their_command_on_one_image_with_one_env(kustomization: str) -> None:
    objs = kustomize_build(kustomization)
    apps = app_workloads(objs)
    assert len(apps) == 3
    images, env_froms = set(), []
    for obj in apps:
        (container,) = pod_spec(obj)["containers"]
        argv = container.get("command", image_cmd()) + container.get("args", [])
        assert argv == APP_COMMANDS[(obj["kind"], obj["metadata"]["name"])]
        images.add(container["image"])
        env_froms.append(container["envFrom"])
    assert len(images) == 1, f"the API and the jobs must share one image: {images}"
    assert all(e == env_froms[0] for e in env_froms), "the API and the jobs must share one env"


@pytest.mark.factor("V")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_is_restricted(kustomization: str) -> None:
    """Pod Security Standard `restricted`, read-only root, no token, no service links: Redis too."""
    for obj in workloads(kustomize_build(kustomization)):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod_sc["runAsUser"] != 0, where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where


@pytest.mark.factor("V")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_app_pods_run_as_the_image_user_with_a_writable_tmp_only(kustomization: str) -> None:
    for obj in app_workloads(kustomize_build(kustomization)):
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["runAsGroup"] == 10001
        (container,) = spec["containers"]
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


@pytest.mark.factor("VII", "IX")
def test_api_binds_port_http_with_probes_and_a_grace_period_that_covers_the_drain() -> None:
    objs = kustomize_build("base")
    deployment = one(objs, "Deployment", "tasks")
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    config = read_env_file(KUSTOMIZE_DIR / "base" / "config.env")
    drain = float(config["TASKS_SHUTDOWN_DELAY_SECONDS"])
    drain += float(config["TASKS_GRACEFUL_TIMEOUT_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > drain
    service = one(objs, "Service", "tasks")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "metrics"]
    assert config["PORT"] == "8080" and config["TASKS_METRICS_PORT"] == "9090"
    api_labels = deployment["spec"]["selector"]["matchLabels"]
    assert one(objs, "NetworkPolicy", "tasks")["spec"]["podSelector"]["matchLabels"] == api_labels


@pytest.mark.factor("III")
def test_config_env_lists_exactly_the_settings_that_are_not_secret() -> None:
    """config.env cannot gain, lose or misspell a variable of the settings class."""
    config = read_env_file(KUSTOMIZE_DIR / "base" / "config.env")
    assert set(config) == settings_env_names() - SECRET_ENV - IMAGE_ENV
    assert settings_env_names() >= SECRET_ENV


@pytest.mark.factor("III", "X")
def test_config_env_values_are_the_settings_defaults_except_the_cluster_overrides() -> None:
    config = read_env_file(KUSTOMIZE_DIR / "base" / "config.env")
    defaults, cluster = settings_from_env({}), settings_from_env(config)
    for field in Settings.model_fields:
        name = env_name(field)
        if name in CLUSTER_OVERRIDES:
            assert config[name] == CLUSTER_OVERRIDES[name]
        elif name in config:
            assert getattr(cluster, field) == getattr(defaults, field), name
    assert cluster.cleanup_retention == timedelta(days=7)


def _refs(spec: Obj) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod spec points at."""
    refs: set[tuple[str, str]] = set()
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                refs.add(("Secret", source["secretRef"]["name"]))
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                refs.add(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                refs.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
    return refs


@pytest.mark.factor("III")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_config_reference_resolves_except_the_operators_secret(kustomization: str) -> None:
    objs = kustomize_build(kustomization)
    present = {(o["kind"], o["metadata"]["name"]) for o in objs}
    missing = set()
    for obj in workloads(objs):
        missing |= _refs(pod_spec(obj)) - present
    expected = set() if kustomization == "overlays/dev" else {("Secret", "tasks")}
    assert missing == expected


@pytest.mark.factor("X")
def test_dev_overlay_one_replica_debug_logs_in_cluster_redis_generated_secret() -> None:
    objs = kustomize_build("overlays/dev")
    assert one(objs, "Deployment", "tasks")["spec"]["replicas"] == 1
    config = generated(objs, "ConfigMap", "tasks")
    assert config["data"]["TASKS_LOG_LEVEL"] == "debug"
    assert config["data"]["TASKS_REDIS_URL"] == "redis://redis:6379/0"
    one(objs, "StatefulSet", "redis")
    one(objs, "Service", "redis")
    (secret,) = by_kind(objs, "Secret")
    assert re.fullmatch(r"tasks-[a-z0-9]{10}", secret["metadata"]["name"])
    assert set(secret["data"]) == SECRET_ENV
    for obj in app_workloads(objs):
        (container,) = pod_spec(obj)["containers"]
        assert container["image"].endswith(":dev")


@pytest.mark.factor("V", "VIII")
def test_prod_overlay_autoscaled_budgeted_sized_pinned_and_without_any_secret() -> None:
    objs = kustomize_build("overlays/prod")
    deployment = one(objs, "Deployment", "tasks")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(objs, "HorizontalPodAutoscaler", "tasks")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tasks"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(objs, "PodDisruptionBudget", "tasks")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    for obj in workloads(objs):
        for container in pod_spec(obj)["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), obj["metadata"]["name"]
            assert "memory" in resources.get("limits", {}), obj["metadata"]["name"]
    for obj in app_workloads(objs):
        (container,) = pod_spec(obj)["containers"]
        image = container["image"]
        assert re.fullmatch(r"[^@:]+(:[^@]+)?@sha256:[0-9a-f]{64}", image), image
    assert by_kind(objs, "Secret") == [], "prod never generates or commits a Secret"
    text = (KUSTOMIZE_DIR / "overlays" / "prod" / "kustomization.yaml").read_text()
    assert "secretGenerator" not in text


@pytest.mark.factor("IV")
@pytest.mark.parametrize("kustomization", ["overlays/dev", "overlays/prod"])
def test_redis_component_is_the_charts_redis_with_auth_aof_and_authenticated_probes(
    kustomization: str,
) -> None:
    objs = kustomize_build(kustomization)
    statefulset = one(objs, "StatefulSet", "redis")
    spec = pod_spec(statefulset)
    (container,) = spec["containers"]
    sub = redis_subchart_values()
    image = sub["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}", "same Redis as the chart"
    assert spec["securityContext"]["runAsUser"] == sub["podSecurityContext"]["runAsUser"]
    assert spec["securityContext"]["runAsGroup"] == sub["podSecurityContext"]["runAsGroup"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert {ref["key"] for ref in env.values()} == {"TASKS_REDIS_PASSWORD"}
    assert len({ref["name"] for ref in env.values()}) == 1
    assert "REDISCLI_AUTH" in env, "probes authenticate through redis-cli's env, not argv"
    script = " ".join(container["command"] + container["args"])
    assert "redis-server /etc/redis/redis.conf -" in script, "config continues on stdin"
    assert 'requirepass "$escaped"' in script, "the password, quoted (test_redis_config.py)"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "redis-cli" in command and "grep -q PONG" in command
    config = generated(objs, "ConfigMap", "redis")
    conf = config["data"]["redis.conf"]
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert "requirepass" not in conf.replace("`requirepass`", "")
    policy = one(objs, "NetworkPolicy", "redis")
    assert policy["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tasks"}}}
    ]
    for obj in app_workloads(objs):
        assert (
            pod_spec(obj)["containers"][0]["envFrom"][1]["secretRef"]["name"]
            == env["REDIS_PASSWORD"]["name"]
        ), "Redis and the app read the same Secret"


@pytest.mark.factor("XII")
def test_migrate_job_can_be_reapplied() -> None:
    """Jobs are immutable: migrate removes itself after it finishes (see job-migrate.yaml)."""
    job = one(kustomize_build("base"), "Job", "migrate")
    assert "generateName" not in job["metadata"]
    # The README: "deletes itself 10 minutes after it finishes".
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    cron = one(kustomize_build("base"), "CronJob", "cleanup")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
