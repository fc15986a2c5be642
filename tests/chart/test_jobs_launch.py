"""`python -m jobs launch cleanup --release <r>` finds the chart's CronJob by its labels, whatever
name the chart gave it (long release names cut it), and nothing else's."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from jobs.launch import find_release_cronjob
from jobs.runtime import UsageError
from tests.chart.helpers import Obj, rendered

pytestmark = pytest.mark.usefixtures("helm3")


@dataclass
class _Raw:
    data: bytes


class FakeBatch:
    """BatchV1Api's list call over a fixed set of CronJobs, honouring an equality selector."""

    def __init__(self, cronjobs: list[Obj]) -> None:
        self.cronjobs = cronjobs
        self.selectors: list[str] = []

    def list_namespaced_cron_job(
        self, namespace: str, label_selector: str, _preload_content: bool
    ) -> _Raw:
        assert _preload_content is False  # launch reads the raw JSON
        self.selectors.append(label_selector)
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        items = [
            c for c in self.cronjobs if wanted.items() <= c["metadata"].get("labels", {}).items()
        ]
        return _Raw(json.dumps({"items": items}).encode())


def _cronjobs(*releases: str) -> list[Obj]:
    return [c for r in releases for c in rendered(release=r).of_kind("CronJob")]


@pytest.mark.factor("XII")
@pytest.mark.parametrize(
    "release", ["prod", "tasks", "a-53-character-release-name-for-the-tasks-api-x-12345"]
)
def test_launch_finds_the_release_cronjob_by_its_labels(release: str) -> None:
    batch = FakeBatch(_cronjobs("other", release, "tasks-staging"))
    found = find_release_cronjob(batch, "ns", release, "cleanup")
    (expected,) = rendered(release=release).of_kind("CronJob")
    assert found["metadata"]["name"] == expected["metadata"]["name"]
    assert batch.selectors == [
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=cleanup"
    ]


@pytest.mark.factor("XII")
def test_launch_names_the_selector_when_no_cronjob_matches() -> None:
    batch = FakeBatch(_cronjobs("tasks"))
    with pytest.raises(UsageError) as err:
        find_release_cronjob(batch, "ns", "prod", "cleanup")
    assert str(err.value) == (
        "no CronJob labelled app.kubernetes.io/instance=prod,app.kubernetes.io/component=cleanup"
        " in namespace ns (kustomize installs name it plain: --cronjob)"
    )
