"""skaffold.yaml: valid against the official v4beta14 schema (vendored in tests/schemas), and every
name and path in it points at something real: the chart's image values, the Dockerfile, the chart,
the kustomize dev overlay, the Service it port-forwards."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.render import KUSTOMIZE_DIR, chart_values, helm_template, kustomize_build, one
from tests.support import ROOT

SCHEMA = ROOT / "tests" / "schemas" / "skaffold-v4beta14.json"
# The upstream file's digest, recorded in tests/schemas/README.md: replacing it is deliberate.
SCHEMA_SHA256 = "7c29a621995d2c6143d3c423c8e3d3dfb25703a49fd1cf77644b54168414b39e"


def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    return config


def template_name(image: str) -> str:
    """Skaffold's template suffix for an artifact: `/ - . :` become `_`."""
    return re.sub(r"[/\-.:]", "_", image)


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} is not a value of the chart"
        node = node[part]
    return node


@pytest.mark.factor("X")
def test_skaffold_yaml_is_valid_against_the_official_v4beta14_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    config = skaffold()
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert config["kind"] == "Config"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message[:300]}" for e in errors)
    # The schema is strict (additionalProperties: false): a misspelt key would not slip through.
    config["deploy"]["helm"]["releases"][0]["chartpath"] = "typo"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(config))


@pytest.mark.harness
def test_vendored_schema_is_the_upstream_copy() -> None:
    text = (ROOT / "tests" / "schemas" / "README.md").read_text()
    assert "skaffold-v4beta14.json" in text and "Apache-2.0" in text and SCHEMA_SHA256 in text
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


@pytest.mark.factor("V")
def test_the_artifact_is_the_charts_image_and_the_kustomize_image() -> None:
    (artifact,) = skaffold()["build"]["artifacts"]
    image = artifact["image"]
    assert image == chart_values()["image"]["repository"]
    base = yaml.safe_load((KUSTOMIZE_DIR / "base" / "kustomization.yaml").read_text())
    assert [i["name"] for i in base["images"]] == [image]
    (release,) = skaffold()["deploy"]["helm"]["releases"]
    suffix = template_name(image)
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{suffix}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{suffix}}}}}",
    }
    for key in [*release["setValueTemplates"], *release.get("setValues", {})]:
        lookup(chart_values(), key)


@pytest.mark.factor("X")
def test_the_values_skaffold_sets_pass_the_charts_schema() -> None:
    (release,) = skaffold()["deploy"]["helm"]["releases"]
    sets = [f"{k}={v}" for k, v in release.get("setValues", {}).items()]
    sets += ["image.repository=registry.invalid/tasks", "image.tag=abc123"]
    deployment = one(helm_template(*sets), "Deployment", "tasks")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.invalid/tasks:abc123"


@pytest.mark.factor("X")
def test_local_build_is_never_pushed() -> None:
    assert skaffold()["build"]["local"]["push"] is False


@pytest.mark.factor("X")
def test_every_path_it_names_exists() -> None:
    config = skaffold()
    paths: list[Path] = []
    for artifact in config["build"]["artifacts"]:
        context = ROOT / artifact.get("context", ".")
        paths += [context, context / artifact.get("docker", {}).get("dockerfile", "Dockerfile")]
    for release in config["deploy"]["helm"]["releases"]:
        paths += [ROOT / release["chartPath"] / "Chart.yaml"]
        paths += [ROOT / f for f in release.get("valuesFiles", [])]
    for profile in config.get("profiles", []):
        for path in profile.get("manifests", {}).get("kustomize", {}).get("paths", []):
            paths.append(ROOT / path / "kustomization.yaml")
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    assert not missing
    assert len(paths) >= 4


@pytest.mark.factor("X")
def test_dev_loop_rebuilds_on_service_and_jobs_changes() -> None:
    """Skaffold watches what the Dockerfile COPYs; no file sync (read-only root, no --reload)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in ("service/", "jobs/"):
        assert re.search(rf"^COPY\s+{source}\s", dockerfile, re.M), f"Dockerfile must COPY {source}"
    (artifact,) = skaffold()["build"]["artifacts"]
    assert "sync" not in artifact
    assert artifact.get("context", ".") == "."


@pytest.mark.factor("X")
def test_port_forward_reaches_the_service_of_both_deploy_paths_on_8080_and_9090() -> None:
    api, metrics = skaffold()["portForward"]
    for forward in (api, metrics):
        assert forward["resourceType"] == "service"
        assert forward["resourceName"] == "tasks"
    assert (api["localPort"], metrics["localPort"]) == (8080, 9090)
    values = chart_values()
    assert [api["port"], metrics["port"]] == [
        values["service"]["port"],
        values["metrics"]["servicePort"],
    ]
    service = one(kustomize_build("overlays/dev"), "Service", "tasks")
    assert [p["port"] for p in service["spec"]["ports"]] == [api["port"], metrics["port"]]


@pytest.mark.factor("X")
def test_kustomize_profile_swaps_the_chart_for_the_dev_overlay() -> None:
    config = skaffold()
    (profile,) = [p for p in config["profiles"] if p["name"] == "kustomize"]
    assert profile["manifests"]["kustomize"]["paths"] == ["deploy/kustomize/overlays/dev"]
    # Only kubectl deploys it; --force re-creates the (immutable) migrate Job on each rebuild.
    assert profile["deploy"] == {"kubectl": {"flags": {"apply": ["--force"]}}}
    # Each JSON patch must hit a path that exists, or skaffold refuses the profile.
    for patch in profile["patches"]:
        assert patch["op"] == "remove"
        node: Any = config
        for part in patch["path"].strip("/").split("/"):
            assert part in node, patch["path"]
            node = node[part]
