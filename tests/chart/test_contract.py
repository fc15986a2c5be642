"""Rung 2 (contract): the processes start and work with exactly the env the chart renders.

The env of each container is resolved the way the kubelet would (envFrom, then env, from the
rendered ConfigMaps and Secrets); only the Redis address is pointed at a local test Redis (started
with the password the chart rendered) and PORT at a free port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx2
import pytest

from tests.chart.helpers import (
    EXISTING_SECRETS,
    ROOT,
    VALUE_FILES,
    Obj,
    Rendered,
    app_workloads,
    container,
    rendered,
    values_id,
)
from tests.manifests import pod_spec, resolve_env, settings_from_env
from tests.support import RedisServer, ServiceProcess, base_env, empty_cwd, free_port

pytestmark = pytest.mark.usefixtures("helm3")

# Values files the processes are started with: the defaults (generated Redis password, writes
# open) and production (API keys, longer drain).
RUN_WITH = [None, "production-values.yaml"]
# Env the user adds through extraEnv in a CI file (not a settings field, by design).
USER_ENV = {"PYTHONFAULTHANDLER"}


def settings_env_names() -> set[str]:
    from service.settings import Settings, env_name

    return {env_name(field) for field in Settings.model_fields}


@pytest.fixture(scope="module", params=RUN_WITH, ids=values_id)
def release(request: pytest.FixtureRequest) -> Iterator[tuple[Rendered, RedisServer]]:
    """A render and a real Redis that requires the password the render put in its Secret."""
    r = rendered(request.param)
    password = r.secret_data("tasks-redis")["redis-password"]
    server = RedisServer(password=password)
    server.start()
    yield r, server
    server.stop()


def process_env(r: Rendered, c: Obj, redis: RedisServer) -> dict[str, str]:
    env = resolve_env(r.objects, c, EXISTING_SECRETS)
    url = urlsplit(env["TASKS_REDIS_URL"])
    env["TASKS_REDIS_URL"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{redis.port}"))
    env["PORT"], env["TASKS_METRICS_PORT"] = str(free_port()), str(free_port())
    return base_env(**env)


def command_of(c: Obj) -> list[str]:
    argv = [*c.get("command", []), *c.get("args", [])]
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


# --- the names ------------------------------------------------------------------------------


@pytest.mark.factor("III")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_every_env_name_the_chart_sets_is_a_settings_field(values_file: str | None) -> None:
    known = settings_env_names()
    r = rendered(values_file)
    for component, obj in app_workloads(r).items():
        names = set(resolve_env(r.objects, container(obj), EXISTING_SECRETS)) - USER_ENV
        assert names <= known, f"{component}: not settings fields: {sorted(names - known)}"
        # Build facts belong to the image, not to the release.
        assert not names & {"TASKS_VERSION", "TASKS_GIT_REVISION", "TASKS_BUILD_DATE"}


@pytest.mark.factor("III")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_settings_accept_every_rendered_env(values_file: str | None) -> None:
    r = rendered(values_file)
    for obj in app_workloads(r).values():
        env = resolve_env(r.objects, container(obj), EXISTING_SECRETS)
        settings = settings_from_env(env)
        assert settings.store == "redis"
        assert settings.port == int(env["PORT"])


# --- the processes ----------------------------------------------------------------------------


@pytest.mark.factor("III", "VII", "IX")
def test_api_serves_probes_metrics_and_crud_with_the_rendered_env(
    release: tuple[Rendered, RedisServer],
) -> None:
    r, redis = release
    deployment = r.of_kind("Deployment")[0]
    c = container(deployment)
    env = process_env(r, c, redis)
    service = ServiceProcess(env)
    try:
        service.wait_ready(timeout=20)
        # Every probe path of the Deployment, on the port its named port resolves to.
        port = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert port["http"] == int(resolve_env(r.objects, c, EXISTING_SECRETS)["PORT"])
        base = service.base_url
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] == "http"
            assert httpx2.get(base + get["path"], timeout=5).status_code == 200, get["path"]
        # /metrics on the port the `metrics` container port names, never on the http one.
        assert port["metrics"] == int(
            resolve_env(r.objects, c, EXISTING_SECRETS)["TASKS_METRICS_PORT"]
        )
        assert httpx2.get(service.metrics_url, timeout=5).status_code == 200
        assert httpx2.get(base + "/metrics", timeout=5).status_code == 404
        assert httpx2.get(base + "/version", timeout=5).status_code == 200
        _crud(base, env.get("TASKS_API_KEYS", ""))
        _helm_test_pod_passes(r, base)
    finally:
        started = time.monotonic()
        code = service.stop()
        took = time.monotonic() - started
    assert code == 0, service.output()
    assert took < pod_spec(deployment)["terminationGracePeriodSeconds"]  # type: ignore[index]


def _crud(base: str, api_keys: str) -> None:
    key = api_keys.split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx2.Client(base_url=base, timeout=5, headers=headers) as client:
        if key:
            assert httpx2.post(base + "/v1/tasks", json={"title": "x"}).status_code == 401
        created = client.post("/v1/tasks", json={"title": "contract"})
        assert created.status_code == 201, created.text
        path = f"/v1/tasks/{created.json()['id']}"
        assert client.get(path).json()["title"] == "contract"
        assert client.patch(path, json={"title": "contract, updated"}).status_code == 200
        assert client.delete(path).status_code == 204
        assert client.get(path).status_code == 404


def _helm_test_pod_passes(r: Rendered, base: str) -> None:
    """The `helm test` pod's own script, with its own env, against the running API."""
    (pod,) = r.of_kind("Pod")
    c = container(pod)
    env = resolve_env(r.objects, c, EXISTING_SECRETS)
    env["TASKS_URL"] = base
    result = subprocess.run(
        command_of(c), env=base_env(**env), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.factor("XII", "V")
@pytest.mark.parametrize("component", ["migrate", "cleanup"])
def test_admin_job_commands_exit_zero_with_the_rendered_env(
    release: tuple[Rendered, RedisServer], component: str
) -> None:
    r, redis = release
    if not (ROOT / "jobs" / "__main__.py").exists():
        pytest.fail("jobs/__main__.py does not exist yet (the jobs issue adds it)", pytrace=False)
    c = container(app_workloads(r)[component])
    result = subprocess.run(
        command_of(c),
        env={**process_env(r, c, redis), "PYTHONPATH": str(ROOT)},  # the image's WORKDIR
        cwd=empty_cwd(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
