"""Upgrades that change how the app reaches Redis, rendered by Helm against the real API server
(rung 4), where `lookup` sees what is deployed.

The migrate hook runs pre-upgrade, before the bundled Redis restarts with a changed auth: it must
authenticate as the running server expects, while the new pods use the new password. An upgrade
onto a bundled Redis that does not exist yet must fail at render, before anything changes.
(tests/e2e/node/ runs such upgrades against a real Redis.)
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.e2e.kube import CHART, E2E_VALUES

pytestmark = pytest.mark.e2e

RELEASE = "tasks"
REDIS = "tasks-redis"
GENERATED = {"name": REDIS, "key": "redis-password"}


def password_refs(manifest: str) -> dict[str, dict | None]:
    """kind/name -> the Secret reference of the Redis password each workload's pod template
    gives its first container (TASKS_REDIS_PASSWORD, or REDIS_PASSWORD for Redis), or None."""
    refs: dict[str, dict | None] = {}
    for doc in yaml.safe_load_all(manifest):
        if not doc or doc["kind"] not in {"Deployment", "StatefulSet", "Job", "CronJob"}:
            continue
        spec = doc["spec"]
        pod = (spec["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else spec)["template"]
        env = pod["spec"]["containers"][0].get("env", [])
        found = [
            e["valueFrom"]["secretKeyRef"]
            for e in env
            if e["name"] in {"TASKS_REDIS_PASSWORD", "REDIS_PASSWORD"}
        ]
        refs[f"{doc['kind']}/{doc['metadata']['name']}"] = found[0] if found else None
    return refs


def upgrade_plan(helm, namespace: str, *overrides: str) -> dict[str, dict | None]:
    """What `helm upgrade` would apply, rendered by the server with its lookups (--dry-run=server):
    the password references of the release's workloads and of its hooks."""
    sets = [arg for value in overrides for arg in ("--set", value)]
    out = helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES), *sets,
        "--dry-run=server", "-o", "json",
    ).stdout  # fmt: skip
    release = json.loads(out)
    hooks = "\n---\n".join(hook["manifest"] for hook in release["hooks"])
    return password_refs(release["manifest"] + "\n---\n" + hooks)


@pytest.mark.factor("III", "IV")
def test_an_upgrade_that_changes_redis_auth_migrates_as_the_running_redis_expects(
    namespace, helm, kubectl
):
    helm(
        "install", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES),
        "--wait", "--timeout", "3m",
    )  # fmt: skip

    # Auth off: Redis and the new pods lose the password; the hook still authenticates, with
    # the Secret the running Redis was started with (it exists until the upgrade removes it).
    plan = upgrade_plan(helm, namespace, "redis.auth.enabled=false")
    assert plan["StatefulSet/tasks-redis"] is None
    assert plan["Deployment/tasks"] is None
    assert plan["CronJob/tasks-cleanup"] is None
    assert plan["Job/tasks-migrate"] == GENERATED

    # Another Secret: the new pods and Redis use it, the hook the running one.
    kubectl(
        "create", "secret", "generic", "rotated", "-n", namespace,
        "--from-literal=password=another-password",
    )  # fmt: skip
    plan = upgrade_plan(
        helm,
        namespace,
        "redis.auth.existingSecret=rotated",
        "redis.auth.existingSecretPasswordKey=password",
    )
    rotated = {"name": "rotated", "key": "password"}
    assert plan["StatefulSet/tasks-redis"] == plan["Deployment/tasks"] == rotated
    assert plan["Job/tasks-migrate"] == GENERATED

    # Once Redis runs without a password, turning auth back on: the hook sends none.
    helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES),
        "--set", "redis.auth.enabled=false", "--wait", "--timeout", "3m",
    )  # fmt: skip
    plan = upgrade_plan(helm, namespace, "redis.auth.enabled=true")
    assert plan["Deployment/tasks"] == plan["StatefulSet/tasks-redis"] == GENERATED
    assert plan["Job/tasks-migrate"] is None

    # An upgrade that leaves auth alone: the hook and the pods agree, as on install.
    plan = upgrade_plan(helm, namespace, "redis.auth.enabled=false", "config.logLevel=debug")
    assert plan["Job/tasks-migrate"] is None and plan["Deployment/tasks"] is None


@pytest.mark.factor("IV")
def test_moving_a_release_onto_the_bundled_redis_is_refused_before_anything_changes(
    namespace, helm
):
    external = [
        "--set", "redis.enabled=false", "--set", "externalRedis.url=redis://managed:6379/0",
        "--set", "networkPolicy.restrictEgress=false",
    ]  # fmt: skip
    helm(
        "install", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES), *external,
        "--wait", "--timeout", "3m",
    )  # fmt: skip

    started = time.monotonic()
    refused = helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES),
        "--set", "redis.enabled=true", "--wait", "--timeout", "3m",
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert refused.returncode != 0
    assert f"moves the release to a new bundled Redis ({REDIS})" in refused.stderr
    assert "migrate.enabled=false" in refused.stderr
    # Refused by the render, not after the hook waited out its deadline (migrate.activeDeadline).
    assert elapsed < 60, f"the refusal took {elapsed:.0f}s"
    history = json.loads(helm("history", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "deployed")]

    # The documented way through: the data moved by export/import, the hook off for this upgrade.
    helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "-f", str(E2E_VALUES),
        "--set", "redis.enabled=true", "--set", "migrate.enabled=false",
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    history = json.loads(helm("history", RELEASE, "-n", namespace, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
