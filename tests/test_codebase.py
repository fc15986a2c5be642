"""Factor I: one codebase in revision control, many deploys of the same build."""

from __future__ import annotations

import subprocess
import tomllib

import pytest
import yaml

from service import __version__
from tests.support import ROOT

pytestmark = pytest.mark.factor("I")


def _yaml(path: str) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / path).read_text())


def test_the_project_is_one_git_repository() -> None:
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=ROOT / "deploy",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert top.returncode == 0, top.stderr
    assert top.stdout.strip() == str(ROOT)


def test_one_version_names_the_package_the_image_and_the_chart_app() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = _yaml("deploy/helm/tasks/Chart.yaml")
    kustomize_tags = {
        i["newTag"] for i in _yaml("deploy/kustomize/base/kustomization.yaml")["images"]
    }
    assert pyproject == __version__ == chart["appVersion"]
    assert kustomize_tags == {pyproject}


def test_every_deploy_runs_the_same_image_repository() -> None:
    repository = _yaml("deploy/helm/tasks/values.yaml")["image"]["repository"]
    kustomize = {i["name"] for i in _yaml("deploy/kustomize/base/kustomization.yaml")["images"]}
    skaffold = {a["image"] for a in _yaml("skaffold.yaml")["build"]["artifacts"]}
    assert kustomize == skaffold == {repository}


def test_the_image_build_records_the_commit_it_came_from() -> None:
    script = (ROOT / "tests/image/build.sh").read_text()
    assert "git rev-parse HEAD" in script
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "org.opencontainers.image.revision" in dockerfile
    assert "TASKS_GIT_REVISION" in dockerfile
