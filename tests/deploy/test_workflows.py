"""GitHub Actions: actionlint passes, every action is pinned to a full commit SHA with its version
in a comment, permissions are least-privilege, every `make` target and repo path a workflow uses
exists, and each workflow does what the README promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.render import chart_values
from tests.support import ROOT, require_tool

WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$")
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40})$")
VERSION_COMMENT = re.compile(r"^\s+# v\d+(\.\d+){0,2}$")


def load(path: Path) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _job_scripts(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def run_scripts(path: Path) -> str:
    return "\n".join(step.get("run", "") for step in steps(load(path)))


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


@pytest.mark.harness
def test_the_three_workflows_exist() -> None:
    assert {p.name for p in FILES} == {"ci.yml", "release.yml", "e2e.yml"}


@pytest.mark.harness
def test_actionlint_passes() -> None:
    actionlint = require_tool("actionlint", "make tools builds the pinned actionlint")
    proc = subprocess.run(
        [actionlint, "-no-color", *map(str, FILES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.harness
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_full_sha_with_its_version_in_a_comment(path: Path) -> None:
    lines = [m for line in path.read_text().splitlines() if (m := USES.match(line))]
    assert lines, f"{path.name} uses no action?"
    for match in lines:
        ref = match["ref"]
        assert PINNED.match(ref), f"{path.name}: {ref} is not owner/repo@<40-hex sha>"
        assert VERSION_COMMENT.match(match["comment"]), f"{path.name}: {ref} lacks `# vX.Y.Z`"


@pytest.mark.harness
def test_one_action_one_sha_across_workflows() -> None:
    pins: dict[str, set[str]] = {}
    for path in FILES:
        for line in path.read_text().splitlines():
            if (m := USES.match(line)) and (p := PINNED.match(m["ref"])):
                pins.setdefault(p["action"], set()).add(p["sha"] + m["comment"].strip())
    assert {a: s for a, s in pins.items() if len(s) > 1} == {}


@pytest.mark.harness
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_permissions_are_least_privilege(path: Path) -> None:
    workflow = load(path)
    assert "permissions" in workflow, "every workflow states its token's permissions"
    grants: list[dict[str, str]] = [workflow["permissions"] or {}]
    grants += [job.get("permissions", {}) for job in workflow["jobs"].values()]
    writes = {scope for grant in grants for scope, level in grant.items() if level == "write"}
    if path.name == "release.yml":
        assert workflow["permissions"] == {}, "release: nothing by default, per job only"
        assert writes == {"packages", "id-token", "attestations"}
        jobs = workflow["jobs"]
        # The gate only reads workflow runs; only the jobs that sign ask for an OIDC token.
        assert jobs["gate"]["permissions"] == {"actions": "read"}
        signing = {name for name, job in jobs.items() if "cosign sign" in _job_scripts(job)}
        assert {n for n, j in jobs.items() if "id-token" in j.get("permissions", {})} == signing
    else:
        assert workflow["permissions"] == {"contents": "read"}
        assert writes == set()


@pytest.mark.harness
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_make_target_a_workflow_calls_exists(path: Path) -> None:
    called = set(re.findall(r"\bmake\s+([A-Za-z0-9_-]+)", run_scripts(path)))
    assert called - makefile_targets() == set()


@pytest.mark.harness
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_repo_path_a_workflow_names_exists(path: Path) -> None:
    text = run_scripts(path)
    named = set(re.findall(r"(?<![\w/])((?:deploy|\.github|tests)/[\w./-]*[\w/])", text))
    named |= {"Dockerfile"} if "docker build" in text else set()
    assert [p for p in named if not (ROOT / p).exists()] == []
    # Tools run from .tools/bin or .venv/bin are ones `make tools` / `make venv` provide.
    makefile = (ROOT / "Makefile").read_text()
    for tool in re.findall(r"\.tools/bin/([\w-]+)", text):
        assert f"$(BIN)/{tool}-" in makefile, f"make tools does not build {tool}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for tool in re.findall(r"\.venv/bin/([\w-]+)", text):
        assert tool in pyproject, f"make venv does not install {tool}"


@pytest.mark.harness
def test_ci_lints_tests_with_redis_and_builds_without_pushing() -> None:
    ci = load(WORKFLOWS / "ci.yml")
    assert {"pull_request", "push"} <= set(ci["on"])
    text = run_scripts(WORKFLOWS / "ci.yml")
    assert re.search(r"^make lint$", text, re.M)
    # `make lint` is the one lint entry point, for CI and developers alike.
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert lint is not None
    for command in ("ruff check", "mypy", "hadolint Dockerfile", "actionlint", "helm lint"):
        assert command in lint.group(1), command
    assert "sudo make system-deps" in text, "redis-server for the tests"
    # As root, or the image tests (buildah, mount namespaces) fail on the runner.
    assert re.search(r'^sudo -E env "PATH=\$PATH" make test$', text, re.M)
    builds = [s for s in steps(ci) if s.get("uses", "").startswith("docker/build-push-action@")]
    assert [b["with"]["push"] for b in builds] == [False]


@pytest.mark.harness
def test_ci_gates_on_the_twelve_factor_scorecard_over_the_test_and_e2e_reports() -> None:
    """The factors job reads the very reports `make test` and `make e2e` wrote in their jobs."""
    jobs = load(WORKFLOWS / "ci.yml")["jobs"]
    assert set(jobs["factors"]["needs"]) == {"test", "e2e"}
    assert re.search(r'^make factors FACTOR_RUNS="test e2e"$', _job_scripts(jobs["factors"]), re.M)
    assert re.search(r"^make e2e$", _job_scripts(jobs["e2e"]), re.M)
    reports = re.search(r"^REPORTS := \$\(CURDIR\)/(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert reports is not None
    for run in ("test", "e2e"):
        uploads = [s for s in jobs[run]["steps"] if "upload-artifact@" in s.get("uses", "")]
        assert [u["with"]["path"] for u in uploads] == [f"{reports.group(1)}/{run}.xml"], run
    (download,) = [s for s in jobs["factors"]["steps"] if "download-artifact@" in s.get("uses", "")]
    assert download["with"]["path"] == reports.group(1)
    assert download["with"]["merge-multiple"] is True


@pytest.mark.factor("V")
def test_release_builds_once_and_publishes_the_pair_image_digest_and_chart_version() -> None:
    release = load(WORKFLOWS / "release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    (build,) = [
        s for s in steps(release) if s.get("uses", "").startswith("docker/build-push-action@")
    ]
    inputs = build["with"]
    assert inputs["push"] is True
    assert set(inputs["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert inputs["sbom"] is True
    assert inputs["provenance"] == "mode=max"
    assert release["jobs"]["chart"]["needs"] == "image"
    assert "steps.build.outputs.digest" in release["jobs"]["image"]["outputs"]["digest"]
    text = run_scripts(WORKFLOWS / "release.yml")
    assert '--version "$VERSION" --app-version "$VERSION"' in text
    assert re.search(r"helm push .*oci://", text.replace('"$charts"', "oci://"))
    # The digest is pinned into the packaged chart's values: keys the chart really has.
    for key in re.findall(r"\.image\.(\w+) = strenv", text):
        assert key in chart_values()["image"], key
    assert {"repository", "tag", "digest"} <= set(re.findall(r"\.image\.(\w+) = strenv", text))


@pytest.mark.factor("V")
def test_release_helm_is_the_pinned_helm() -> None:
    pinned = re.search(r"^HELM_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert pinned
    for path in FILES:
        for step in steps(load(path)):
            if step.get("uses", "").startswith("azure/setup-helm@"):
                assert step["with"]["version"] == pinned[1], path.name


@pytest.mark.harness
def test_e2e_installs_tests_and_runs_the_cronjob_for_the_chart_then_the_dev_overlay() -> None:
    e2e = load(WORKFLOWS / "e2e.yml")
    assert any(s.get("uses", "").startswith("helm/kind-action@") for s in steps(e2e))
    text = run_scripts(WORKFLOWS / "e2e.yml")
    expected = [
        'kind load docker-image "$IMAGE"',
        "helm install tasks deploy/helm/tasks -f .github/e2e/helm-values.yaml --wait",
        "helm test tasks",
        "kubectl create job --from=cronjob/tasks-cleanup",
        "kubectl wait --for=condition=complete job/tasks-cleanup-e2e",
        "kubectl apply -k deploy/kustomize/overlays/dev",
        "create job --from=cronjob/cleanup manual-1",
        "--for=condition=complete job/manual-1",
    ]
    positions = [text.find(command) for command in expected]
    assert -1 not in positions, [c for c, p in zip(expected, positions, strict=True) if p < 0]
    assert positions == sorted(positions), "chart first, then the overlay, in this order"


@pytest.mark.harness
def test_e2e_image_is_the_one_both_the_chart_values_and_the_dev_overlay_run() -> None:
    image = load(WORKFLOWS / "e2e.yml")["env"]["IMAGE"]
    values = yaml.safe_load((ROOT / ".github" / "e2e" / "helm-values.yaml").read_text())
    assert f"{values['image']['repository']}:{values['image']['tag']}" == image
    for key, value in values["image"].items():
        assert key in chart_values()["image"], key
        assert isinstance(value, type(chart_values()["image"][key])), key
    for key in values:
        assert key in chart_values(), key
    dev = yaml.safe_load(
        (ROOT / "deploy" / "kustomize" / "overlays" / "dev" / "kustomization.yaml").read_text()
    )
    (override,) = dev["images"]
    assert f"{override['name']}:{override['newTag']}" == image


@pytest.mark.harness
def test_e2e_helm_values_pass_the_charts_schema_and_run_the_loaded_image() -> None:
    helm = require_tool("helm", "make tools builds the pinned helm")
    proc = subprocess.run(
        [helm, "template", "tasks", "deploy/helm/tasks", "-f", ".github/e2e/helm-values.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    image = load(WORKFLOWS / "e2e.yml")["env"]["IMAGE"]
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    app = [
        c
        for o in objs
        if o["kind"] in ("Deployment", "CronJob", "Job")
        for c in (
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            if o["kind"] == "CronJob"
            else o["spec"]["template"]["spec"]["containers"]
        )
    ]
    assert len(app) == 3
    assert {(c["image"], c["imagePullPolicy"]) for c in app} == {(image, "Never")}


# --- the release's supply chain ----------------------------------------------------------------


def _step(job: dict[str, Any], uses: str) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if s.get("uses", "").startswith(f"{uses}@")]
    return step


@pytest.mark.factor("V")
def test_release_runs_only_for_a_commit_whose_ci_and_e2e_passed() -> None:
    release = load(WORKFLOWS / "release.yml")
    jobs = release["jobs"]
    assert jobs["image"]["needs"] == "gate" and jobs["chart"]["needs"] == "image"
    gate = _job_scripts(jobs["gate"])
    for workflow in re.findall(r"for workflow in ([\w. ]+); do", gate)[0].split():
        assert (WORKFLOWS / workflow).exists(), workflow
    assert set(re.findall(r"for workflow in ([\w. ]+); do", gate)[0].split()) == {
        "ci.yml",
        "e2e.yml",
    }
    assert "head_sha=${GITHUB_SHA}&status=success" in gate
    assert "exit 1" in gate
    # ci and e2e both run on pushes to main, so a commit released from main has those runs.
    for name in ("ci.yml", "e2e.yml"):
        assert "main" in load(WORKFLOWS / name)["on"]["push"]["branches"], name


@pytest.mark.factor("V")
def test_release_builds_on_the_base_image_pinned_by_digest() -> None:
    release = load(WORKFLOWS / "release.yml")
    pinned = release["env"]["BASE_IMAGE"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert default is not None
    assert re.fullmatch(re.escape(default[1]) + r"@sha256:[0-9a-f]{64}", pinned), pinned
    build = _step(release["jobs"]["image"], "docker/build-push-action")
    assert "BASE_IMAGE=${{ env.BASE_IMAGE }}" in build["with"]["build-args"].splitlines()
    # Checked before the build: a single-platform digest would build arm64 on an amd64 base.
    check = _job_scripts(release["jobs"]["image"])
    assert 'imagetools inspect --raw "$BASE_IMAGE"' in check
    assert '"linux/amd64"' in check and '"linux/arm64"' in check


@pytest.mark.factor("V")
def test_release_signs_the_image_and_the_chart_and_attests_their_provenance() -> None:
    jobs = load(WORKFLOWS / "release.yml")["jobs"]
    image, chart = jobs["image"], jobs["chart"]
    # The image: SBOM and max provenance attached by the build, then a keyless signature on the
    # pushed digest (never a tag, which can move).
    build = _step(image, "docker/build-push-action")
    assert build["with"]["sbom"] is True and build["with"]["provenance"] == "mode=max"
    sign_image = next(s for s in image["steps"] if "cosign sign" in s.get("run", ""))
    assert sign_image["run"] == 'cosign sign --yes "${REPOSITORY}@${DIGEST}"'
    assert sign_image["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    # The chart: signed and attested by the digest `helm push` reported.
    push = next(s for s in chart["steps"] if s.get("id") == "push")
    assert "Digest:" in push["run"] and '"digest=${chart_digest}"' in push["run"]
    sign_chart = next(s for s in chart["steps"] if "cosign sign" in s.get("run", ""))
    assert sign_chart["run"] == 'cosign sign --yes "${CHART}@${CHART_DIGEST}"'
    assert sign_chart["env"]["CHART_DIGEST"] == "${{ steps.push.outputs.digest }}"
    attest = _step(chart, "actions/attest-build-provenance")
    assert attest["with"] == {
        "subject-name": "${{ steps.push.outputs.name }}",
        "subject-digest": "${{ steps.push.outputs.digest }}",
        "push-to-registry": True,
    }
    for job in (image, chart):
        names = [s.get("uses", "").split("@")[0] for s in job["steps"]]
        assert names.index("sigstore/cosign-installer") < next(
            i for i, s in enumerate(job["steps"]) if "cosign sign" in s.get("run", "")
        )
