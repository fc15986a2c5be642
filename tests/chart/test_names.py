"""Rung 1 (static): object names fit Kubernetes' limits for every release name Helm accepts, and
no two objects of one kind share a name."""

from __future__ import annotations

import re
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.chart.helpers import (
    CHART,
    EXISTING_SECRETS,
    KUBE_VERSIONS,
    NAMESPACE,
    Rendered,
    container,
    matches,
    notes,
    rendered,
    run_helm,
    schema_problems,
)
from tests.manifests import resolve_env

pytestmark = pytest.mark.usefixtures("helm3")

# Helm accepts release names of up to 53 characters. Past 38 the cleanup CronJob, past 46 the
# Redis StatefulSet would overflow their 52 characters unless the chart cuts the names.
LENGTHS = [1, 38, 47, 53]


def _release(length: int, with_chart_name: bool) -> str:
    """A release name of `length` characters, containing "tasks" or not (the two fullname rules)."""
    stem = "tasks-" if with_chart_name else "rel-"
    return (stem + "x" * 60)[:length] if length > len(stem) else "r" * length


RELEASES = sorted(
    {_release(n, with_chart_name=w) for n in LENGTHS for w in (False, True)}
    # 52 characters containing "tasks": the Redis name cut to 52 is the release name itself.
    | {_release(52, with_chart_name=True)},
    key=lambda r: (len(r), r),
)
# Everything optional on, so every kind the chart can render is named.
EVERYTHING = ("httpRoute.enabled=true",)

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035: Service names
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kind → the longest name Kubernetes lets it work with.
LIMITS = {
    "Service": 63,  # a DNS label
    "CronJob": 52,  # its Jobs are <name>-<11 characters>
    "StatefulSet": 52,  # its pods' controller-revision-hash label is <name>-<10 characters>
    "Job": 63,  # its pods' job-name label
    "Pod": 63,  # its hostname
}


def _render(release: str) -> Rendered:
    return rendered("production-values.yaml", sets=EVERYTHING, release=release)


def _labels(obj: dict, r: Rendered) -> dict[str, str]:
    labels = dict(obj["metadata"].get("labels") or {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
        labels.update(r.pod_template_meta(obj).get("labels") or {})
    return labels


@pytest.mark.factor("V")
@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"{len(r)}-{r[:5]}")
def test_every_name_and_label_fits_its_kubernetes_limit(release: str) -> None:
    r = _render(release)
    problems = []
    for obj in r.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
            problems.append(f"{kind}/{name}: not a DNS subdomain")
        if len(name) > LIMITS.get(kind, 253):
            problems.append(f"{kind}/{name}: {len(name)} > {LIMITS[kind]} characters")
        if kind == "Service" and not DNS_LABEL.match(name):
            problems.append(f"Service/{name}: not a DNS label")
        if kind == "StatefulSet":
            revision_label = f"{name}-{'f' * 10}"
            assert LABEL_VALUE.match(revision_label) and len(revision_label) <= 63
        for key, value in _labels(obj, r).items():
            if len(str(value)) > 63 or not LABEL_VALUE.match(str(value)):
                problems.append(f"{kind}/{name}: label {key}={value!r}")
            key_name = key.rpartition("/")[2]
            if len(key_name) > 63:
                problems.append(f"{kind}/{name}: label key {key!r} too long")
    assert not problems, "\n".join(problems)
    # The strict schema of the newest supported Kubernetes accepts the whole render too.
    assert not schema_problems(r.objects, KUBE_VERSIONS[-1])


@pytest.mark.factor("XII")
@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"{len(r)}-{r[:5]}")
def test_the_manual_job_notes_print_is_a_valid_job_name(release: str) -> None:
    text = notes(release=release)
    match = re.search(r"kubectl create job --from=cronjob/(\S+) (\S+) -n " + NAMESPACE, text)
    assert match, text
    cronjob, job = match.groups()
    assert rendered(release=release).get("CronJob", cronjob)
    assert len(job) <= 63 and DNS_LABEL.match(job), job


@pytest.mark.parametrize(
    "release", ["tasks", "redis", "tasks-redis", "redis-tasks", "my-tasks-redis-blue"]
)
@pytest.mark.factor("V")
def test_no_two_objects_of_one_kind_share_a_name(release: str) -> None:
    r = _render(release)
    counts = Counter((o["kind"], o["metadata"]["name"]) for o in r.objects)
    assert [key for key, n in counts.items() if n > 1] == []
    # The app's Service is the one the Deployment's pods back, Redis's the StatefulSet's.
    (statefulset,) = r.of_kind("StatefulSet")
    (deployment,) = r.of_kind("Deployment")
    assert statefulset["metadata"]["name"] != deployment["metadata"]["name"]


@pytest.mark.factor("IV")
def test_a_release_called_tasks_redis_keeps_app_and_redis_apart() -> None:
    r = _render("tasks-redis")
    api = r.pod_template_meta(r.get("Deployment", "tasks-redis-tasks"))["labels"]
    store = r.pod_template_meta(r.get("StatefulSet", "tasks-redis"))["labels"]
    # Each Service sends its traffic to its own pods only, and the API finds Redis by name.
    api_selector = r.get("Service", "tasks-redis-tasks")["spec"]["selector"]
    store_selector = r.get("Service", "tasks-redis")["spec"]["selector"]
    assert matches(api_selector, api) and not matches(api_selector, store)
    assert matches(store_selector, store) and not matches(store_selector, api)
    deployment = r.get("Deployment", "tasks-redis-tasks")
    env = resolve_env(r.objects, container(deployment), EXISTING_SECRETS)
    assert urlsplit(env["TASKS_REDIS_URL"]).hostname == "tasks-redis"


@pytest.mark.factor("IV")
def test_overrides_that_give_app_and_redis_one_name_are_refused() -> None:
    result = run_helm(
        [
            "template",
            "tasks",
            str(CHART),
            "--set",
            "fullnameOverride=same",
            "--set",
            "redis.fullnameOverride=same",
        ]
    )
    assert result.returncode != 0
    assert 'would both name objects "same"' in result.stderr, result.stderr
    assert "redis.fullnameOverride" in result.stderr


@pytest.mark.factor("V")
@pytest.mark.parametrize("release", ["1st", "blue.green"])
def test_a_release_name_no_service_can_carry_is_refused_with_a_reason(release: str) -> None:
    """Helm accepts these release names; a Service name must be a DNS label (a letter first)."""
    result = run_helm(["template", release, str(CHART)])
    assert result.returncode != 0
    assert "must start with a letter" in result.stderr, result.stderr
    ok = run_helm(
        [
            "template",
            release,
            str(CHART),
            "--set",
            "fullnameOverride=tasks-1st",
            "--set",
            "redis.fullnameOverride=tasks-1st-redis",
        ]
    )
    assert ok.returncode == 0, ok.stderr
