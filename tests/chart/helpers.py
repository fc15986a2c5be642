"""Render the chart with the pinned helm and look at the result as Kubernetes objects (pyyaml)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.manifests import Obj, find, pod_spec, secret_data
from tests.support import ROOT, require_tool

CHART = ROOT / "deploy" / "helm" / "tasks"
SUBCHART = CHART / "charts" / "redis"
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
# Every value file the static rung checks: None is the chart's defaults.
VALUE_FILES: list[str | None] = [None, *CI_VALUES]
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
RELEASE = "tasks"
NAMESPACE = "tasks-ns"
# Kinds with no schema in the Kubernetes OpenAPI (CRDs); checked by assertions instead.
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}


def helm_bin(major: int = 3) -> str:
    return require_tool("helm" if major == 3 else "helm4", "make tools builds it")


def run_helm(args: list[str], major: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_bin(major), *args], capture_output=True, text=True, timeout=120, check=False
    )


def values_args(values_file: str | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(CHART / "ci" / values_file)] if values_file else []
    for item in sets:
        args += ["--set", item]
    return args


@functools.cache
def template(
    values_file: str | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
    sets: tuple[str, ...] = (),
    major: int = 3,
    release: str = RELEASE,
) -> str:
    """`helm template` output (cached per arguments: each distinct render runs helm once)."""
    args = [
        "template",
        release,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        *values_args(values_file, sets),
    ]
    result = run_helm(args, major)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result.stdout


@functools.cache
def notes(
    values_file: str | None = None, sets: tuple[str, ...] = (), release: str = RELEASE
) -> str:
    """NOTES.txt as `helm install` would print it, rendered offline.

    `helm install --dry-run` needs a cluster, and `helm template` drops NOTES.txt; but NOTES.txt is
    parsed into the same template set as every manifest. So a throwaway copy of the chart gets one
    extra template that includes it into a ConfigMap, and `helm template --show-only` renders that.
    """
    with tempfile.TemporaryDirectory(prefix="tasks-chart-") as tmp:
        chart = Path(tmp) / "tasks"
        shutil.copytree(CHART, chart)
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
            '  notes: {{ include "tasks/templates/NOTES.txt" . | quote }}\n'
        )
        result = run_helm(
            [
                "template",
                release,
                str(chart),
                "--namespace",
                NAMESPACE,
                "--show-only",
                "templates/zz-notes.yaml",
                *values_args(values_file, sets),
            ]
        )
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


@dataclass(frozen=True)
class Rendered:
    """The objects of one render, with the lookups the tests need."""

    objects: tuple[Obj, ...]

    @classmethod
    def parse(cls, text: str) -> Rendered:
        return cls(tuple(doc for doc in yaml.safe_load_all(text) if doc))

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> Obj | None:
        return find(self.objects, kind, name)

    def pod_templates(self) -> Iterator[tuple[Obj, Obj]]:
        """(owner object, pod spec) for every pod the render can create."""
        for obj in self.objects:
            spec = pod_spec(obj)
            if spec is not None:
                yield obj, spec

    def pod_template_meta(self, obj: Obj) -> Obj:
        kind = obj["kind"]
        if kind == "Pod":
            return dict(obj["metadata"])
        if kind == "CronJob":
            return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"])
        return dict(obj["spec"]["template"]["metadata"])

    def secret_data(self, name: str) -> dict[str, str]:
        return secret_data(self.get("Secret", name))


@functools.cache
def rendered(
    values_file: str | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
    sets: tuple[str, ...] = (),
    release: str = RELEASE,
) -> Rendered:
    return Rendered.parse(template(values_file, kube_version, sets, release=release))


def schema_problems(objects: tuple[Obj, ...], kube_version: str) -> list[str]:
    """What the strict OpenAPI schema of `kube_version` refuses in `objects` (CRD kinds skipped)."""
    problems = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {err.message}")
    return problems


def container(obj: Obj, name: str | None = None) -> Obj:
    spec = pod_spec(obj)
    assert spec is not None, f"{obj['kind']} has no pod template"
    containers = spec["containers"]
    if name is None:
        assert len(containers) == 1
        return dict(containers[0])
    return dict(next(c for c in containers if c["name"] == name))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def values_id(values_file: str | None) -> str:
    """A test id for a values file; None is the chart's defaults."""
    return values_file or "defaults"


# Stand-ins for the Secrets the CI value files expect the user to have created (existingSecret).
EXISTING_SECRETS: dict[str, dict[str, str]] = {
    "managed-redis": {"password": "managed-redis-password-4b1d"},
    "tasks-app-secrets": {"TASKS_API_KEYS": "existing-key-7c2e"},
    "dev-redis": {"pw": "dev-redis-password-2f9a"},
    "tasks-redis-auth": {"redis-password": "gitops-redis-password-8d3e"},
}


def app_workloads(r: Rendered) -> dict[str, Obj]:
    """The objects that run the app image with the app's env: API, cleanup CronJob, migrate hook."""
    found = {}
    for obj in r.objects:
        component = (
            r.pod_template_meta(obj).get("labels", {}).get("app.kubernetes.io/component")
            if pod_spec(obj) is not None
            else None
        )
        if component in ("api", "cleanup", "migrate"):
            found[component] = obj
    return found


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
