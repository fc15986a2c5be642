"""The README's kustomize and kind sections show the exact commands the bundle supports."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.deploy.render import KUSTOMIZE_DIR
from tests.support import ROOT, require_tool


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


@pytest.mark.factor("XII")
def test_kustomize_section_has_the_literal_commands() -> None:
    text = section("Deploy with kustomize")
    for command in (
        "kubectl apply -k deploy/kustomize/overlays/dev",
        "kubectl create job --from=cronjob/cleanup manual-1",
        "kubectl apply -k deploy/kustomize/overlays/prod",
        "kubectl delete job migrate --ignore-not-found",
    ):
        assert command in text, command


@pytest.mark.factor("III")
def test_the_prod_secret_command_creates_exactly_the_keys_the_bundle_reads() -> None:
    text = section("Deploy with kustomize")
    commands = re.findall(r"kubectl create secret generic (\S+)((?:.*\\\n)*.*)", text)
    assert len(commands) == 1, "one command creates the Secret"
    name, rest = commands[0]
    assert name == "tasks"
    keys = set(re.findall(r"--from-literal=(\w+)=", rest))
    dev = (KUSTOMIZE_DIR / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert keys == set(re.findall(r"^\s+- (\w+)=", dev, re.M)) - {"TASKS_LOG_LEVEL"}
    assert keys == {"TASKS_REDIS_PASSWORD", "TASKS_API_KEYS"}


@pytest.mark.factor("X")
def test_kind_section_has_the_exact_commands() -> None:
    text = section("Develop on kind")
    assert re.search(r"^kind create cluster --name tasks$", text, re.M)
    assert re.search(r"^skaffold dev(\s|$)", text, re.M)
    assert re.search(r"^skaffold dev -p kustomize(\s|$)", text, re.M)


def chart_section(title: str) -> str:
    text = (ROOT / "deploy" / "helm" / "tasks" / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"the chart README has no '## {title}' section"
    return match.group(1)


@pytest.mark.factor("V")
def test_chart_upgrades_reset_then_reuse_values() -> None:
    """--reuse-values would keep the old chart's defaults, so keys a new chart adds go missing."""
    text = chart_section("Upgrade and rollback")
    commands = re.findall(r"^helm upgrade .*$", text, re.M)
    assert commands and all("--reset-then-reuse-values" in c for c in commands), commands
    assert not any(re.search(r"--reuse-values\b", c) for c in commands)


@pytest.mark.factor("III")
def test_chart_gitops_example_is_the_ci_values_file_the_tests_render() -> None:
    text = chart_section("GitOps (`helm template`)")
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    ci = ROOT / "deploy" / "helm" / "tasks" / "ci" / "gitops-values.yaml"
    assert yaml.safe_load(block) == yaml.safe_load(ci.read_text())


@pytest.mark.factor("X")
def test_every_make_target_the_readme_names_exists_and_plans() -> None:
    """`make -n <target>` for each `make <target>` in the README: a target that is missing, or
    whose prerequisites name a file no rule makes, fails here rather than on a user's machine."""
    make = require_tool("make", "make system-deps installs make")
    targets = sorted(set(re.findall(r"\bmake ([a-z][a-z0-9-]+)", (ROOT / "README.md").read_text())))
    assert {"test", "e2e", "e2e-node", "factors", "bench"} <= set(targets)
    broken = {}
    for target in targets:
        plan = subprocess.run(
            [make, "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60
        )
        if plan.returncode != 0:
            broken[target] = plan.stderr.strip()
    assert not broken, broken
