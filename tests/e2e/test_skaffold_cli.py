"""The real skaffold (pinned, `make kind-tools`) reads skaffold.yaml: its effective config names the
artifact and each profile's deploy path, and `skaffold render`, offline and without a cluster, gives
for each deploy path exactly the objects that `helm template` (with skaffold's values) and
`kustomize build deploy/kustomize/overlays/dev` give for the same image. A chartPath or kustomize
path that points elsewhere changes the objects, one that points nowhere fails the render.

No cluster is needed; these run with `make e2e` because the skaffold build (~16 min cold) belongs
with that suite's other builds, not with `make test`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.render import helm_template, kustomize_build, load_all
from tests.manifests import Obj
from tests.support import ROOT, TOOLS_BIN, require_tool

pytestmark = pytest.mark.e2e

TAG = "render-test"
# The chart's generated Redis password differs on every render (helm template cannot look up).
RANDOM = {("Secret", "tasks-redis"): ("data", "redis-password")}


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    return loaded


def artifact() -> str:
    (art,) = config()["build"]["artifacts"]
    image: str = art["image"]
    return image


def skaffold(home: Path, *args: str) -> str:
    """Run the pinned skaffold in the checkout: no update check, no prompt, no kube context;
    helm and kustomize are the pinned ones (skaffold runs them from PATH)."""
    exe = require_tool("skaffold", "make kind-tools builds the pinned skaffold")
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{TOOLS_BIN}:{os.environ.get('PATH', '')}",
        "SKAFFOLD_UPDATE_CHECK": "false",
        "SKAFFOLD_INTERACTIVE": "false",
    }
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(
        [exe, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"skaffold {' '.join(args)} failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout


def render(home: Path, *args: str) -> list[Obj]:
    image = f"{artifact()}:{TAG}"
    args = ("--offline=true", "--digest-source=tag", "--images", image, *args)
    return load_all(skaffold(home, "render", *args))


def keyed(objects: list[Obj] | tuple[Obj, ...]) -> dict[tuple[str, str, str], Obj]:
    """kind, namespace, name -> the object, with the known random values blanked."""
    found: dict[tuple[str, str, str], Obj] = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in found, f"rendered twice: {key}"
        if (field := RANDOM.get((key[0], key[2]))) and field[1] in obj.get(field[0], {}):
            obj = json.loads(json.dumps(obj))
            obj[field[0]][field[1]] = "<random>"
        found[key] = obj
    return found


def assert_same_objects(rendered: list[Obj], expected: list[Obj] | tuple[Obj, ...]) -> None:
    got, want = keyed(rendered), keyed(expected)
    assert sorted(got) == sorted(want)
    differ = [key for key in want if got[key] != want[key]]
    assert not differ, "\n".join(
        f"{key}:\n  skaffold: {json.dumps(got[key], sort_keys=True)[:1500]}\n"
        f"  expected: {json.dumps(want[key], sort_keys=True)[:1500]}"
        for key in differ
    )
    assert len(want) >= 10


def helm_sets() -> list[str]:
    """skaffold.yaml's setValues, and its setValueTemplates with the artifact's repo and tag."""
    (release,) = config()["deploy"]["helm"]["releases"]
    suffix = re.sub(r"[/\-.:]", "_", artifact())
    fields = {f"IMAGE_REPO_{suffix}": artifact(), f"IMAGE_TAG_{suffix}": TAG}

    def fill(template: str) -> str:
        return re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: fields[m.group(1)], template)

    sets = [f"{k}={fill(v)}" for k, v in release["setValueTemplates"].items()]
    return sets + [f"{k}={v}" for k, v in release.get("setValues", {}).items()]


def with_image(objects: tuple[Obj, ...], image: str) -> list[Obj]:
    """The objects with every `image:` of the artifact's repository set to `image`."""
    repo = artifact()

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: image
                if k == "image" and isinstance(v, str) and re.fullmatch(rf"{repo}([:@].*)?", v)
                else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return [walk(obj) for obj in objects]


@pytest.mark.factor("X")
def test_skaffold_reads_the_config_and_names_the_artifact(tmp_path: Path) -> None:
    """`skaffold diagnose --yaml-only`: the config as skaffold resolved it (defaults applied,
    profile patches run). A full `diagnose` inspects the base image in its registry: not offline."""
    effective = yaml.safe_load(skaffold(tmp_path, "diagnose", "--yaml-only"))
    (art,) = effective["build"]["artifacts"]
    assert art["image"] == "ghcr.io/example/tasks"
    assert Path(art["context"]).resolve() == ROOT
    assert (ROOT / art["docker"]["dockerfile"]).is_file()
    assert effective["build"]["local"]["push"] is False
    (release,) = effective["deploy"]["helm"]["releases"]
    assert (Path(release["chartPath"]) / "Chart.yaml").is_file() or (
        ROOT / release["chartPath"] / "Chart.yaml"
    ).is_file()
    profile = yaml.safe_load(skaffold(tmp_path, "diagnose", "--yaml-only", "-p", "kustomize"))
    assert "helm" not in profile["deploy"]
    assert profile["deploy"]["kubectl"]["flags"]["apply"] == ["--force"]
    (path,) = profile["manifests"]["kustomize"]["paths"]
    assert (ROOT / path / "kustomization.yaml").is_file()
    assert skaffold(tmp_path, "version").strip() == "v2.19.0"


@pytest.mark.factor("X")
def test_render_of_the_chart_is_helm_template_with_skaffolds_values(tmp_path: Path) -> None:
    rendered = render(tmp_path)
    assert_same_objects(rendered, helm_template(*helm_sets()))


@pytest.mark.factor("X")
def test_render_of_the_kustomize_profile_is_the_dev_overlay(tmp_path: Path) -> None:
    rendered = render(tmp_path, "-p", "kustomize")
    expected = with_image(kustomize_build("overlays/dev"), f"{artifact()}:{TAG}")
    assert_same_objects(rendered, expected)
