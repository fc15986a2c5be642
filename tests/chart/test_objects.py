"""Rung 1 (static): assertions on the rendered objects - what the chart promises its users."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.chart.helpers import (
    CHART,
    EXISTING_SECRETS,
    NAMESPACE,
    VALUE_FILES,
    Obj,
    Rendered,
    app_workloads,
    container,
    load_yaml,
    matches,
    notes,
    rendered,
    run_helm,
    values_id,
)
from tests.manifests import pod_spec, resolve_env

pytestmark = pytest.mark.usefixtures("helm3")


# --- factor V and III: one image, one env ------------------------------------------------------


@pytest.mark.factor("V", "III", "XII")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_api_cleanup_and_migrate_share_image_and_env(values_file: str | None) -> None:
    r = rendered(values_file)
    workloads = app_workloads(r)
    assert {"api", "cleanup"} <= set(workloads)
    if values_file != "dev-values.yaml":  # the dev file turns the migrate hook off
        assert "migrate" in workloads
    containers = {name: container(obj) for name, obj in workloads.items()}
    images = {c["image"] for c in containers.values()}
    assert len(images) == 1, images
    (test_pod,) = r.of_kind("Pod")
    assert container(test_pod)["image"] in images
    env_from = [json.dumps(c["envFrom"], sort_keys=True) for c in containers.values()]
    assert len(set(env_from)) == 1, env_from
    pull = {c["imagePullPolicy"] for c in containers.values()}
    assert len(pull) == 1
    # What each process actually sees is identical too (the migrate hook repeats the ConfigMap
    # as explicit env: see job-migrate.yaml).
    envs = [_env(r, c) for c in containers.values()]
    assert all(env == envs[0] for env in envs), envs


def _env(r: Rendered, c: Obj) -> dict[str, str]:
    return resolve_env(r.objects, c, EXISTING_SECRETS)


@pytest.mark.factor("V")
def test_image_reference_follows_tag_and_digest() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    default = container(rendered().get("Deployment", "tasks"))["image"]
    assert default == f"ghcr.io/example/tasks:{chart['appVersion']}"
    prod = container(rendered("production-values.yaml").get("Deployment", "tasks"))["image"]
    assert re.fullmatch(r"ghcr\.io/example/tasks:1\.2\.3@sha256:[0-9a-f]{64}", prod)


@pytest.mark.factor("III")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_config_comes_from_a_configmap_and_secrets_by_reference(values_file: str | None) -> None:
    r = rendered(values_file)
    deployment = next(o for o in r.of_kind("Deployment"))
    c = container(deployment)
    config_ref, secret_ref = c["envFrom"][0]["configMapRef"], c["envFrom"][1]["secretRef"]
    configmap = r.get("ConfigMap", config_ref["name"])
    assert all(k == "PORT" or k.startswith("TASKS_") for k in configmap["data"])
    assert not any(k in configmap["data"] for k in ("TASKS_REDIS_PASSWORD", "TASKS_API_KEYS"))
    assert configmap["data"]["TASKS_STORE"] == "redis"
    if values_file == "external-redis-values.yaml":
        assert secret_ref["name"] == "tasks-app-secrets"
        assert r.find("Secret", "tasks") is None
    else:
        assert r.get("Secret", secret_ref["name"])["type"] == "Opaque"
    # The only inline env is the Redis password, by reference (and the user's extraEnv).
    for item in c.get("env", []):
        assert "valueFrom" in item or item["name"] == "PYTHONFAULTHANDLER", item


@pytest.mark.factor("III")
def test_api_keys_go_to_the_secret() -> None:
    r = rendered("production-values.yaml")
    assert r.secret_data("tasks")["TASKS_API_KEYS"] == "prod-key-one-9f8e7d6c,prod-key-two-1a2b3c4d"


# --- no secret outside a Secret --------------------------------------------------------------


def _leaks(r: Rendered, secrets: list[str]) -> list[str]:
    found = []
    for obj in r.objects:
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        for value in secrets:
            for form in (value, base64.b64encode(value.encode()).decode()):
                if form in text:
                    found.append(f"{obj['kind']}/{obj['metadata']['name']} contains {value!r}")
    return found


@pytest.mark.factor("III")
def test_generated_redis_password_appears_in_no_object_but_its_secret() -> None:
    r = rendered()
    password = r.secret_data("tasks-redis")["redis-password"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert not _leaks(r, [password])


@pytest.mark.factor("III")
def test_explicit_secrets_appear_in_no_object_but_secrets() -> None:
    password, key = "s3cret-redis-pw-5d8e", "api-key-6f1c"
    sets = (f"redis.auth.password={password}", f"apiKeys[0]={key}")
    r = rendered("production-values.yaml", sets=sets)
    assert r.secret_data("tasks-redis")["redis-password"] == password
    assert key in r.secret_data("tasks")["TASKS_API_KEYS"]
    assert not _leaks(r, [password, key, "prod-key-one-9f8e7d6c", "prod-key-two-1a2b3c4d"])


@pytest.mark.factor("III")
def test_redis_config_holds_no_password() -> None:
    r = rendered(sets=("redis.auth.password=pw-in-config-check",))
    config = r.get("ConfigMap", "tasks-redis")["data"]["redis.conf"]
    assert "requirepass" not in config and "pw-in-config-check" not in config
    assert "appendonly yes" in config and "maxmemory-policy noeviction" in config


# --- restricted pods --------------------------------------------------------------------------

ALLOWED_VOLUMES = {
    "configMap",
    "emptyDir",
    "secret",
    "projected",
    "downwardAPI",
    "persistentVolumeClaim",
    "ephemeral",
    "name",
}


@pytest.mark.factor("V")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_every_pod_meets_the_restricted_pod_security_standard(values_file: str | None) -> None:
    r = rendered(values_file)
    pods = list(r.pod_templates())
    assert {o["kind"] for o, _ in pods} >= {"Deployment", "CronJob", "Pod"}
    if values_file != "external-redis-values.yaml":
        assert "StatefulSet" in {o["kind"] for o, _ in pods}
    for obj, spec in pods:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("enableServiceLinks") is False, where
        assert spec.get("automountServiceAccountToken") is False, where
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), where
        for volume in spec.get("volumes", []):
            assert set(volume) <= ALLOWED_VOLUMES, f"{where}: {volume}"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert not sc.get("privileged"), where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
            assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"
            assert c["resources"].get("limits", {}).get("memory"), f"{where}: no memory limit"
            writable = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
            if obj["kind"] != "StatefulSet":
                assert writable == {"/tmp"}, f"{where}: writable {writable}"
                assert sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001, where


# --- factor VI/VIII: HPA, PDB, stateless API --------------------------------------------------


@pytest.mark.factor("VI", "VIII")
def test_hpa_owns_the_replica_count() -> None:
    r = rendered("production-values.yaml")
    deployment = r.get("Deployment", "tasks")
    assert "replicas" not in deployment["spec"]
    hpa = r.get("HorizontalPodAutoscaler", "tasks")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tasks",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 65, "memory": 75}
    assert {"scaleUp", "scaleDown"} <= set(hpa["spec"]["behavior"])
    # Without the HPA the Deployment states its replicas and there is no HPA.
    plain = rendered()
    assert plain.get("Deployment", "tasks")["spec"]["replicas"] == 2
    assert not plain.of_kind("HorizontalPodAutoscaler")


@pytest.mark.factor("VI", "VIII")
def test_api_pods_keep_no_state_in_the_pod() -> None:
    for values_file in VALUE_FILES:
        deployment = rendered(values_file).of_kind("Deployment")[0]
        for volume in pod_spec(deployment)["volumes"]:  # type: ignore[index]
            assert set(volume) == {"name", "emptyDir"}, volume


@pytest.mark.factor("IX")
def test_pdb_and_topology_spread_select_only_api_pods() -> None:
    r = rendered("production-values.yaml")
    api_labels = r.pod_template_meta(r.get("Deployment", "tasks"))["labels"]
    pdb = r.get("PodDisruptionBudget", "tasks")
    assert pdb["spec"]["minAvailable"] == 2
    assert matches(pdb["spec"]["selector"]["matchLabels"], api_labels)
    for constraint in pod_spec(rendered().get("Deployment", "tasks"))["topologySpreadConstraints"]:  # type: ignore[index]
        assert matches(constraint["labelSelector"]["matchLabels"], api_labels)
    assert not rendered().of_kind("PodDisruptionBudget")


@pytest.mark.factor("VII")
def test_service_selects_only_the_api_pods() -> None:
    r = rendered()
    service = r.get("Service", "tasks")
    selector = service["spec"]["selector"]
    for obj, _ in r.pod_templates():
        labels = r.pod_template_meta(obj)["labels"]
        assert matches(selector, labels) == (obj["kind"] == "Deployment"), obj["metadata"]["name"]
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", "http"),
        ("metrics", "metrics"),
    ]


# --- factor IX: probes and shutdown -----------------------------------------------------------


@pytest.mark.factor("IX")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_probes_and_grace_period(values_file: str | None) -> None:
    r = rendered(values_file)
    deployment = r.of_kind("Deployment")[0]
    c = container(deployment)
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    env = _env(r, c)
    assert c["ports"] == [
        {"name": "http", "containerPort": int(env["PORT"]), "protocol": "TCP"},
        {"name": "metrics", "containerPort": int(env["TASKS_METRICS_PORT"]), "protocol": "TCP"},
    ]
    drain = float(env["TASKS_SHUTDOWN_DELAY_SECONDS"]) + float(
        env["TASKS_GRACEFUL_TIMEOUT_SECONDS"]
    )
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > drain  # type: ignore[index]
    # The delay the values ask for (5 s by default), not merely some delay.
    config = {
        **load_yaml(CHART / "values.yaml")["config"],
        **(load_yaml(CHART / "ci" / values_file).get("config", {}) if values_file else {}),
    }
    assert float(env["TASKS_SHUTDOWN_DELAY_SECONDS"]) == config["shutdownDelaySeconds"] > 0


@pytest.mark.factor("III")
def test_checksum_annotation_rolls_pods_on_config_change() -> None:
    def checksums(*sets: str) -> dict[str, str]:
        meta = rendered(sets=tuple(sets)).pod_template_meta(
            rendered(sets=tuple(sets)).get("Deployment", "tasks")
        )
        return {k: v for k, v in meta["annotations"].items() if k.startswith("checksum/")}

    base = checksums()
    assert set(base) == {"checksum/config", "checksum/secret", "checksum/redis-auth"}
    assert checksums("config.logLevel=debug")["checksum/config"] != base["checksum/config"]
    assert checksums("apiKeys[0]=k1")["checksum/secret"] != base["checksum/secret"]
    assert checksums("redis.auth.password=p")["checksum/redis-auth"] != base["checksum/redis-auth"]
    assert checksums("replicaCount=5") == base  # not config: no roll


# --- factor XII: admin processes ----------------------------------------------------------------


@pytest.mark.factor("XII")
def test_cleanup_cronjob() -> None:
    r = rendered("production-values.yaml")
    cron = r.get("CronJob", "tasks-cleanup")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["schedule"] == "*/30 * * * *"  # production-values.yaml's
    # Every other policy as values.yaml (and so the chart README's table) gives it.
    defaults = load_yaml(CHART / "values.yaml")["cleanup"]
    history = ("successfulJobsHistoryLimit", "failedJobsHistoryLimit")
    for field in ("startingDeadlineSeconds", *history):
        assert spec[field] == defaults[field], field
    job = spec["jobTemplate"]["spec"]
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert job[field] == defaults[field], field
    assert pod_spec(cron)["restartPolicy"] == "Never"  # type: ignore[index]
    c = container(cron)
    assert c["command"] + c["args"] == ["python", "-m", "jobs", "cleanup"]
    assert "timeZone" not in rendered().get("CronJob", "tasks-cleanup")["spec"]


@pytest.mark.factor("XII")
def test_migrate_hook_runs_after_install_and_before_upgrade() -> None:
    job = rendered().get("Job", "tasks-migrate")
    annotations = job["metadata"]["annotations"]
    # Not pre-install: the bundled Redis (and the ConfigMap/Secret) do not exist before install.
    assert annotations["helm.sh/hook"] == "post-install,pre-upgrade"
    # A finished hook's Job is deleted: a succeeded one at once, a failed one before the next.
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert annotations == load_yaml(CHART / "values.yaml")["migrate"]["hookAnnotations"]
    # Six retries with back-off cover Redis still starting on first install.
    assert job["spec"]["backoffLimit"] == 6
    assert job["spec"]["activeDeadlineSeconds"] == 280  # fails before helm's default --timeout
    c = container(job)
    assert c["command"] + c["args"] == ["python", "-m", "jobs", "migrate"]


@pytest.mark.factor("XII")
@pytest.mark.parametrize(
    ("values_file", "fullname"),
    [(None, "tasks"), ("dev-values.yaml", "todo")],
    ids=["tasks", "todo"],
)
def test_notes_print_the_exact_admin_command(values_file: str | None, fullname: str) -> None:
    text = notes(values_file)
    command = (
        f"kubectl create job --from=cronjob/{fullname}-cleanup "
        f"{fullname}-cleanup-manual-1 -n {NAMESPACE}"
    )
    assert command in text
    assert rendered(values_file).get("CronJob", f"{fullname}-cleanup")


@pytest.mark.factor("V")
def test_helm_test_pod_does_a_crud_round_trip_through_the_service() -> None:
    r = rendered()
    (pod,) = r.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod)
    env = {e["name"]: e for e in c["env"]}
    service = r.get("Service", "tasks")
    assert env["TASKS_URL"]["value"] == f"http://tasks:{service['spec']['ports'][0]['port']}"
    script = c["args"][0]
    for method in ("POST", "GET", "PATCH", "DELETE"):
        assert f'"{method}"' in script


# --- factor IV: the backing service is attached by config ---------------------------------------


@pytest.mark.factor("XII")
def test_names_follow_fullname_and_part() -> None:
    r = rendered()
    names = {(o["kind"], o["metadata"]["name"]) for o in r.objects}
    assert {
        ("Deployment", "tasks"),
        ("Service", "tasks"),
        ("ConfigMap", "tasks"),
        ("StatefulSet", "tasks-redis"),
        ("Service", "tasks-redis"),
        ("Secret", "tasks-redis"),
        ("CronJob", "tasks-cleanup"),
        ("Job", "tasks-migrate"),
    } <= names


@pytest.mark.factor("IV")
@pytest.mark.parametrize(
    ("release", "values_file"), [("tasks", None), ("demo", None), ("tasks", "dev-values.yaml")]
)
def test_app_points_at_the_redis_the_subchart_renders(
    release: str, values_file: str | None
) -> None:
    """The parent mirrors the subchart's naming rule; this proves they agree."""
    r = rendered(values_file, release=release)
    (statefulset,) = r.of_kind("StatefulSet")
    redis_labels = r.pod_template_meta(statefulset)["labels"]
    services = [
        s
        for s in r.of_kind("Service")
        if s["spec"].get("clusterIP") != "None" and matches(s["spec"]["selector"], redis_labels)
    ]
    (redis_service,) = services
    deployment = r.of_kind("Deployment")[0]
    env = _env(r, container(deployment))
    port = redis_service["spec"]["ports"][0]["port"]
    assert env["TASKS_REDIS_URL"] == f"redis://{redis_service['metadata']['name']}:{port}/0"
    redis_password = _env(r, container(statefulset))["REDIS_PASSWORD"]
    assert env["TASKS_REDIS_PASSWORD"] == redis_password
    if values_file is None:
        assert redis_service["metadata"]["name"] == f"{release}-redis"


@pytest.mark.factor("IV")
def test_an_external_redis_cluster_renders_cluster_mode_seed_nodes_and_shards_the_app_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.settings import load_settings

    seeds = "rediss://node-a.example.com:6379,rediss://node-b.example.com:6379"
    r = rendered(
        sets=(
            "redis.enabled=false",
            "externalRedis.mode=cluster",
            f"externalRedis.url={seeds.replace(',', chr(92) + ',')}",
            "externalRedis.shards=32",
            "networkPolicy.restrictEgress=false",
        )
    )
    data = r.get("ConfigMap", "tasks")["data"]
    assert data["TASKS_REDIS_MODE"] == "cluster" and data["TASKS_REDIS_URL"] == seeds
    assert data["TASKS_REDIS_SHARDS"] == "32"
    assert rendered().get("ConfigMap", "tasks")["data"]["TASKS_REDIS_MODE"] == "standalone"
    for name, value in data.items():  # the app starts with exactly this config
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert (settings.redis_mode, settings.redis_shards) == ("cluster", 32)


@pytest.mark.factor("IV")
def test_external_redis_changes_only_the_redis_address_user_and_password() -> None:
    url = "rediss://managed.example.com:6380/0"
    external = rendered(
        sets=(
            "redis.enabled=false",
            f"externalRedis.url={url}",
            "externalRedis.username=tasks-app",
            "externalRedis.existingSecret=managed-redis",
            "externalRedis.existingSecretPasswordKey=password",
            "networkPolicy.restrictEgress=false",
        )
    )
    bundled = rendered()
    assert not external.of_kind("StatefulSet")
    assert not any(o["metadata"]["name"].endswith("-redis") for o in external.objects)
    env = _env(external, container(external.get("Deployment", "tasks")))
    assert env["TASKS_REDIS_URL"] == url
    assert env["TASKS_REDIS_PASSWORD"] == EXISTING_SECRETS["managed-redis"]["password"]
    # The ACL user is plain config (the ConfigMap); only its password is a secret.
    assert external.get("ConfigMap", "tasks")["data"]["TASKS_REDIS_USERNAME"] == "tasks-app"
    assert (
        _env(bundled, container(bundled.get("Deployment", "tasks")))["TASKS_REDIS_USERNAME"] == ""
    )
    for kind, name in [
        ("Deployment", "tasks"),
        ("CronJob", "tasks-cleanup"),
        ("Job", "tasks-migrate"),
    ]:
        a, b = (
            json.loads(json.dumps(external.get(kind, name))),
            json.loads(json.dumps(bundled.get(kind, name))),
        )
        for obj in (a, b):
            c = container(obj)
            c.pop("env", None)
            pod = pod_spec(obj)
            pod["containers"] = [c]  # type: ignore[index]
            obj["_pod"] = pod
            obj.pop("spec")
            obj["_pod"].pop("annotations", None)
        ma, mb = a.pop("_pod"), b.pop("_pod")
        assert ma == mb, f"{kind}/{name} differs beyond the Redis env"
    config_a = external.get("ConfigMap", "tasks")["data"]
    config_b = bundled.get("ConfigMap", "tasks")["data"]
    assert {k for k in config_a if config_a[k] != config_b[k]} == {
        "TASKS_REDIS_URL",
        "TASKS_REDIS_USERNAME",
    }


# --- NetworkPolicy ------------------------------------------------------------------------------

DNS_RULE = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


@pytest.mark.factor("IV", "VII")
def test_network_policies_open_the_api_port_and_redis_only_to_its_clients() -> None:
    r = rendered()
    api_policy = r.get("NetworkPolicy", "tasks")
    api_labels = r.pod_template_meta(r.get("Deployment", "tasks"))["labels"]
    assert matches(api_policy["spec"]["podSelector"]["matchLabels"], api_labels)
    api_rule, metrics_rule = api_policy["spec"]["ingress"]
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in api_rule  # the API from anywhere
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": monitoring}}]

    redis_policy = r.get("NetworkPolicy", "tasks-redis")
    redis_labels = r.pod_template_meta(r.get("StatefulSet", "tasks-redis"))["labels"]
    assert matches(redis_policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    assert redis_policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert redis_policy["spec"]["egress"] == [DNS_RULE]
    (rule,) = redis_policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # same namespace only
    clients = {
        r.pod_template_meta(o)["labels"].get("app.kubernetes.io/component")
        for o, _ in r.pod_templates()
        if matches(peer["podSelector"]["matchLabels"], r.pod_template_meta(o)["labels"])
    }
    assert clients == {"api", "cleanup", "migrate"}


@pytest.mark.factor("VII")
def test_production_restricts_api_ingress_sources() -> None:
    r = rendered("production-values.yaml")
    rule, metrics_rule = r.get("NetworkPolicy", "tasks")["spec"]["ingress"]
    assert len(rule["from"]) == 2  # the ingress controller, and the test pod below
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert (
        metrics_rule["from"]
        == load_yaml(CHART / "ci" / "production-values.yaml")["networkPolicy"]["metricsFrom"]
    )
    # `helm test` still reaches the API: its pod is an allowed peer.
    (test_pod,) = r.of_kind("Pod")
    test_labels = test_pod["metadata"]["labels"]
    assert any(
        matches(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), test_labels)
        for p in rule["from"]
    )
    assert not rendered("dev-values.yaml").of_kind("NetworkPolicy")


# --- /metrics on its own port -----------------------------------------------------------------


@pytest.mark.factor("VII", "III")
def test_metrics_have_a_container_and_service_port_of_their_own() -> None:
    r = rendered(sets=("metrics.port=9464", "metrics.servicePort=9100"))
    c = container(r.get("Deployment", "tasks"))
    assert _env(r, c)["TASKS_METRICS_PORT"] == "9464"
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in c["ports"]
    ports = {p["name"]: p for p in r.get("Service", "tasks")["spec"]["ports"]}
    assert ports["metrics"] == {
        "name": "metrics",
        "port": 9100,
        "targetPort": "metrics",
        "protocol": "TCP",
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("metrics.port=8080",), "metrics.port (8080) must differ from containerPort"),
        (("metrics.servicePort=80",), "metrics.servicePort (80) must differ from service.port"),
    ],
)
@pytest.mark.factor("VII")
def test_metrics_sharing_the_api_port_is_refused_at_render(
    sets: tuple[str, ...], message: str
) -> None:
    result = run_helm(["template", "tasks", str(CHART), *(a for s in sets for a in ("--set", s))])
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.factor("VII")
def test_the_service_monitor_scrapes_the_metrics_port_and_ingress_and_route_never_reach_it() -> (
    None
):
    r = rendered(
        sets=(
            "metrics.serviceMonitor.enabled=true",
            "ingress.enabled=true",
            "httpRoute.enabled=true",
        )
    )
    service = r.get("Service", "tasks")
    by_name = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    (endpoint,) = r.get("ServiceMonitor", "tasks")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    ingress = r.get("Ingress", "tasks")
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends and all(b == {"name": "tasks", "port": {"name": "http"}} for b in backends)
    refs = [
        ref for rule in r.get("HTTPRoute", "tasks")["spec"]["rules"] for ref in rule["backendRefs"]
    ]
    assert refs and all(ref == {"name": "tasks", "port": by_name["http"]} for ref in refs)
    assert by_name["http"] != by_name["metrics"]


@pytest.mark.factor("VII")
def test_metrics_port_admits_only_the_metrics_peers() -> None:
    prometheus = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    custom = rendered(sets=("networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus",))
    _, rule = custom.get("NetworkPolicy", "tasks")["spec"]["ingress"]
    assert rule == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [prometheus]}
    # Only an explicit empty list opens it to anyone (as ingressFrom does for the API port).
    result = run_helm(
        ["template", "tasks", str(CHART), "--set-json", "networkPolicy.metricsFrom=[]"]
    )
    assert result.returncode == 0, result.stderr
    anywhere = Rendered.parse(result.stdout)
    _, rule = anywhere.get("NetworkPolicy", "tasks")["spec"]["ingress"]
    assert rule == {"ports": [{"port": "metrics", "protocol": "TCP"}]}


# --- the Redis subchart ------------------------------------------------------------------------


@pytest.mark.factor("IV")
def test_redis_statefulset_authenticates_its_probes_and_persists() -> None:
    r = rendered()
    statefulset = r.get("StatefulSet", "tasks-redis")
    c = container(statefulset)
    assert c["image"] == "docker.io/library/redis:8.2.2-alpine"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env["REDISCLI_AUTH"] == {"name": "tasks-redis", "key": "redis-password"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(c[probe]["exec"]["command"])
        assert "redis-cli" in command and "PONG" in command
    assert "requirepass" in c["args"][0] and "$REDIS_PASSWORD" in c["args"][0]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # Persistence off: an emptyDir instead, no claim.
    dev = rendered("dev-values.yaml").get("StatefulSet", "todo-store")
    assert "volumeClaimTemplates" not in dev["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(dev)["volumes"]  # type: ignore[index]
    assert container(dev)["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "dev-redis",
        "key": "pw",
    }
    assert rendered("dev-values.yaml").find("Secret", "todo-store") is None


@pytest.mark.factor("IV")
def test_redis_auth_can_be_turned_off() -> None:
    r = rendered(sets=("redis.auth.enabled=false",))
    assert r.find("Secret", "tasks-redis") is None
    assert "env" not in container(r.get("StatefulSet", "tasks-redis"))
    assert "TASKS_REDIS_PASSWORD" not in _env(r, container(r.get("Deployment", "tasks")))
    assert "protected-mode no" in r.get("ConfigMap", "tasks-redis")["data"]["redis.conf"]


def _selected(r: Rendered, policy: Obj) -> set[str]:
    """Components of the pods a NetworkPolicy selects."""
    selector = policy["spec"]["podSelector"]["matchLabels"]
    return {
        r.pod_template_meta(o)["labels"].get("app.kubernetes.io/component", o["kind"])
        for o, _ in r.pod_templates()
        if matches(selector, r.pod_template_meta(o)["labels"])
    }


@pytest.mark.factor("IV")
def test_api_and_jobs_may_open_connections_only_to_dns_and_redis() -> None:
    r = rendered()
    (policy,) = [p for p in r.of_kind("NetworkPolicy") if p["spec"]["policyTypes"] == ["Egress"]]
    assert _selected(r, policy) == {"api", "cleanup", "migrate"}
    dns, to_redis = policy["spec"]["egress"]
    assert dns == DNS_RULE
    (peer,) = to_redis["to"]
    assert set(peer) == {"podSelector"}
    redis_labels = r.pod_template_meta(r.get("StatefulSet", "tasks-redis"))["labels"]
    assert matches(peer["podSelector"]["matchLabels"], redis_labels)
    assert not matches(
        peer["podSelector"]["matchLabels"],
        r.pod_template_meta(r.get("Deployment", "tasks"))["labels"],
    )
    assert to_redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    # The Redis pods: DNS only, whatever the app's egress setting.
    assert _selected(r, r.get("NetworkPolicy", "tasks-redis")) == {"redis"}
    open_egress = rendered(sets=("networkPolicy.restrictEgress=false",))
    assert open_egress.find("NetworkPolicy", "tasks-egress") is None
    assert open_egress.get("NetworkPolicy", "tasks-redis")["spec"]["egress"] == [DNS_RULE]


@pytest.mark.factor("IV")
def test_dns_egress_can_be_pinned_to_the_cluster_dns() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    r = rendered(
        sets=(
            "networkPolicy.dnsTo[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name"
            "=kube-system",
        )
    )
    for name in ("tasks-egress", "tasks-redis"):
        (dns, *_) = r.get("NetworkPolicy", name)["spec"]["egress"]
        assert dns == {**DNS_RULE, "to": [peer]}


@pytest.mark.factor("IV")
def test_external_redis_egress_comes_from_extra_egress_or_is_refused() -> None:
    r = rendered("external-redis-values.yaml")
    policy = r.get("NetworkPolicy", "tasks-egress")
    dns, external = policy["spec"]["egress"]
    assert dns == DNS_RULE
    assert (
        external
        == load_yaml(CHART / "ci" / "external-redis-values.yaml")["networkPolicy"]["extraEgress"][0]
    )
    result = run_helm(
        [
            "template",
            "tasks",
            str(CHART),
            "--set",
            "redis.enabled=false",
            "--set",
            "externalRedis.url=redis://r.example.com:6379/0",
        ]
    )
    assert result.returncode != 0
    assert "networkPolicy.extraEgress" in result.stderr
    assert "networkPolicy.restrictEgress=false" in result.stderr


# --- HTTPRoute -----------------------------------------------------------------------------------


@pytest.mark.factor("VII")
def test_http_route_is_off_by_default_and_routes_to_the_api_service() -> None:
    assert not rendered().of_kind("HTTPRoute")
    r = rendered(
        sets=(
            "httpRoute.enabled=true",
            "httpRoute.hostnames[0]=tasks.example.com",
            "httpRoute.parentRefs[0].name=public",
            "httpRoute.parentRefs[0].namespace=gateways",
        )
    )
    route = r.get("HTTPRoute", "tasks")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert spec["hostnames"] == ["tasks.example.com"]
    (rule,) = spec["rules"]
    service = r.get("Service", "tasks")
    assert rule["backendRefs"] == [{"name": "tasks", "port": service["spec"]["ports"][0]["port"]}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]


# --- extra volumes, and the job and test pods' metadata -----------------------------------------

CA_VOLUME = {"name": "redis-ca", "configMap": {"name": "redis-ca"}}
CA_MOUNT = {"name": "redis-ca", "mountPath": "/etc/tasks/ca", "readOnly": True}


@pytest.mark.factor("XII")
def test_extra_volumes_reach_the_api_and_job_pods_only() -> None:
    r = rendered(
        sets=(
            "extraVolumes[0].name=redis-ca",
            "extraVolumes[0].configMap.name=redis-ca",
            "extraVolumeMounts[0].name=redis-ca",
            "extraVolumeMounts[0].mountPath=/etc/tasks/ca",
            "extraVolumeMounts[0].readOnly=true",
        )
    )
    workloads = app_workloads(r)
    assert set(workloads) == {"api", "cleanup", "migrate"}
    for component, obj in workloads.items():
        assert CA_VOLUME in pod_spec(obj)["volumes"], component  # type: ignore[index]
        assert CA_MOUNT in container(obj)["volumeMounts"], component
    (test_pod,) = r.of_kind("Pod")
    assert CA_VOLUME not in pod_spec(test_pod)["volumes"]  # type: ignore[index]


@pytest.mark.factor("XII")
@pytest.mark.parametrize("block", ["cleanup", "migrate", "test"])
def test_job_and_test_pods_take_annotations_labels_and_a_priority_class(block: str) -> None:
    r = rendered(
        sets=(
            f"{block}.podAnnotations.example\\.com/owner=platform",
            f"{block}.podLabels.team=platform",
            f"{block}.priorityClassName=batch-low",
        )
    )
    component = {"test": "test"}.get(block, block)
    (obj,) = [
        o
        for o, _ in r.pod_templates()
        if r.pod_template_meta(o)["labels"].get("app.kubernetes.io/component") == component
    ]
    meta = r.pod_template_meta(obj)
    assert meta["annotations"]["example.com/owner"] == "platform"
    assert meta["labels"]["team"] == "platform"
    assert pod_spec(obj)["priorityClassName"] == "batch-low"  # type: ignore[index]
    # Only that pod: the API pods keep their own settings.
    api = r.get("Deployment", "tasks")
    assert "example.com/owner" not in r.pod_template_meta(api)["annotations"]
    assert "priorityClassName" not in pod_spec(api)  # type: ignore[operator]


@pytest.mark.factor("XII")
def test_migrate_hook_annotations_can_be_replaced_for_argo_cd() -> None:
    r = rendered(
        sets=(
            "migrate.hookAnnotations.helm\\.sh/hook=null",
            "migrate.hookAnnotations.helm\\.sh/hook-weight=null",
            "migrate.hookAnnotations.helm\\.sh/hook-delete-policy=null",
            "migrate.hookAnnotations.argocd\\.argoproj\\.io/hook=Sync",
            "migrate.hookAnnotations.argocd\\.argoproj\\.io/hook-delete-policy=BeforeHookCreation",
        )
    )
    assert r.get("Job", "tasks-migrate")["metadata"]["annotations"] == {
        "argocd.argoproj.io/hook": "Sync",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
    }


# --- GitOps: no password generated where nothing can be looked up -------------------------------


@pytest.mark.factor("III")
def test_gitops_values_need_an_existing_redis_secret() -> None:
    result = run_helm(
        ["template", "tasks", str(CHART), "--set", "redis.auth.generatePassword=false"]
    )
    assert result.returncode != 0
    assert "redis.auth.existingSecret" in result.stderr
    r = rendered(
        sets=("redis.auth.generatePassword=false", "redis.auth.existingSecret=tasks-redis-auth")
    )
    assert r.find("Secret", "tasks-redis") is None
    ref = container(r.get("StatefulSet", "tasks-redis"))["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "tasks-redis-auth"


# --- disruption and spreading -------------------------------------------------------------------


@pytest.mark.factor("IX")
def test_pdb_lets_unhealthy_pods_be_evicted() -> None:
    pdb = rendered("production-values.yaml").get("PodDisruptionBudget", "tasks")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.factor("VIII")
def test_topology_spread_fills_in_only_what_an_entry_leaves_out() -> None:
    r = rendered(
        sets=(
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
            "topologySpreadConstraints[0].labelSelector.matchExpressions[0].key=tier",
            "topologySpreadConstraints[0].labelSelector.matchExpressions[0].operator=Exists",
            "topologySpreadConstraints[1].maxSkew=2",
            "topologySpreadConstraints[1].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[1].whenUnsatisfiable=ScheduleAnyway",
            "topologySpreadConstraints[1].matchLabelKeys=null",
        )
    )
    own, filled = pod_spec(r.get("Deployment", "tasks"))["topologySpreadConstraints"]  # type: ignore[index]
    assert own["labelSelector"] == {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    assert own["matchLabelKeys"] == ["pod-template-hash"]
    api_labels = r.pod_template_meta(r.get("Deployment", "tasks"))["labels"]
    assert matches(filled["labelSelector"]["matchLabels"], api_labels)
    for constraint in pod_spec(rendered().get("Deployment", "tasks"))["topologySpreadConstraints"]:  # type: ignore[index]
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


# --- the Redis subchart: image digest and what uninstall keeps ------------------------------------


@pytest.mark.factor("IV")
def test_redis_image_can_be_pinned_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    r = rendered(sets=(f"redis.image.digest={digest}",))
    image = container(r.get("StatefulSet", "tasks-redis"))["image"]
    assert image == f"docker.io/library/redis:8.2.2-alpine@{digest}"


@pytest.mark.factor("IV")
def test_redis_pvc_is_retained_on_uninstall_unless_told_otherwise() -> None:
    policy = rendered().get("StatefulSet", "tasks-redis")["spec"][
        "persistentVolumeClaimRetentionPolicy"
    ]
    assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    deleting = rendered(sets=("redis.persistence.retentionPolicy.whenDeleted=Delete",))
    spec = deleting.get("StatefulSet", "tasks-redis")["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    ephemeral = rendered("dev-values.yaml").get("StatefulSet", "todo-store")["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in ephemeral
