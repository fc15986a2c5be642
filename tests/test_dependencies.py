"""Factor II: every dependency is declared, locked to one hashed version, and installed only so."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.factor("II")

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, list[str]]:
    """Each requirement of a lock file and the hashes that follow it."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / path).read_text().splitlines():
        if match := REQUIREMENT.match(line):
            current = norm(match.group(1))
            entries[current] = []
        elif current and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current].append(hashed.group(1))
        elif line and not line.startswith(("#", " ")):
            pytest.fail(f"{path}: not a pinned requirement: {line!r}")
    return entries


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_requirement_is_one_version_with_hashes_and_no_local_source(lock) -> None:
    text = (ROOT / lock).read_text()
    entries = locked(lock)
    assert entries, f"{lock} pins nothing"
    assert all(entries.values()), [n for n, h in entries.items() if not h]
    for forbidden in ("--find-links", "file://", "--index-url", "--extra-index-url", "-e "):
        assert forbidden not in text, f"{lock} names a source: {forbidden}"


def test_every_declared_dependency_is_in_the_lock_and_dev_locks_a_superset() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    for spec in project["dependencies"]:
        name = norm(re.split(r"[\[<>=;! ]", spec, maxsplit=1)[0])
        assert name in runtime, f"{name} is declared but not locked"
    for spec in project["optional-dependencies"]["dev"]:
        name = norm(re.split(r"[\[<>=;! ]", spec, maxsplit=1)[0])
        assert name == "tasks" or name in dev, f"{name} is a dev dependency but not locked"
    assert {n: runtime[n] for n in runtime} == {n: dev[n] for n in runtime}, "one version each"


def test_the_venv_and_the_image_install_only_the_lock_and_verify_its_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --quiet --require-hashes --no-deps -r requirements-dev.lock" in makefile
    install = re.search(
        r"-m pip --isolated install(.*?)-r /tmp/requirements\.lock", dockerfile, re.S
    )
    assert install, "the Dockerfile installs no lock"
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(install.group(1).split())
