"""Render the bundle the way users do (pinned kustomize, pinned helm) and pick objects apart."""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.manifests import Obj
from tests.support import ROOT, require_tool

KUSTOMIZE_DIR = ROOT / "deploy" / "kustomize"
CHART_DIR = ROOT / "deploy" / "helm" / "tasks"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
# The chart supports Kubernetes >= 1.30 and is tested on 1.30 and 1.37: validate at both ends,
# as its tests do.
KUBE_VERSIONS = ("1.30.0", "1.37.0")


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stderr}", pytrace=False)
    return proc.stdout


def load_all(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def kustomize_build(kustomization: str) -> tuple[Obj, ...]:
    """`kustomize build deploy/kustomize/<kustomization>` with the pinned kustomize (make tools)."""
    kustomize = require_tool("kustomize", "make tools builds the pinned kustomize")
    args = [kustomize, "build", str(KUSTOMIZE_DIR / kustomization)]
    out = _run(args, f"kustomize build {kustomization}")
    return tuple(load_all(out))


def require_chart() -> None:
    if not (CHART_DIR / "Chart.yaml").exists():
        pytest.fail(f"{CHART_DIR.relative_to(ROOT)}/Chart.yaml is missing", pytrace=False)


@functools.cache
def helm_template(*set_args: str, show_only: tuple[str, ...] = ()) -> tuple[Obj, ...]:
    """`helm template tasks deploy/helm/tasks --set ...` with the pinned helm; hooks included."""
    require_chart()
    helm = require_tool("helm", "make tools builds the pinned helm")
    args = [helm, "template", "tasks", str(CHART_DIR), "--namespace", "default"]
    for item in set_args:
        args += ["--set", item]
    for path in show_only:
        args += ["--show-only", path]
    return tuple(load_all(_run(args, "helm template")))


@functools.cache
def chart_values() -> Obj:
    require_chart()
    values: Obj = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return values


def redis_subchart_values() -> Obj:
    path = CHART_DIR / "charts" / "redis" / "values.yaml"
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing", pytrace=False)
    values: Obj = yaml.safe_load(path.read_text())
    return values


def chart_meta() -> Obj:
    require_chart()
    meta: Obj = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    return meta


def one(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    assert len(found) == 1, f"expected one {kind} {name or ''}, have: {names}"
    return found[0]


def by_kind(objs: tuple[Obj, ...] | list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def generated(objs: tuple[Obj, ...] | list[Obj], kind: str, name: str) -> Obj:
    """The one ConfigMap/Secret a kustomize generator named `<name>-<content hash>`."""
    found = [
        o
        for o in by_kind(objs, kind)
        if re.fullmatch(rf"{name}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated {kind} {name}-<hash>"
    return found[0]


def workloads(objs: tuple[Obj, ...] | list[Obj]) -> Iterator[Obj]:
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
            yield o


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize `envs:` file: KEY=VALUE lines, # comments."""
    pairs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs
