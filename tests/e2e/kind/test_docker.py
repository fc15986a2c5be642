"""The image built with `docker build` from our Dockerfile, as a user builds it, runs with `docker
run` (read-only root, the image's UID 10001) and is ready; skaffold builds the same artifact against
the same daemon (push false)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import State
from tests.e2e.cluster import docker as docker_harness
from tests.e2e.cluster.procs import free_ports, wait_for
from tests.e2e.kind.conftest import ARTIFACT, CA_FILE, VERSION, docker
from tests.support import ROOT, require_tool

pytestmark = [pytest.mark.kind, pytest.mark.timeout(900)]


@pytest.fixture
def container(built_image: str) -> Iterator[tuple[str, int]]:
    (port,) = free_ports(1)
    name = f"tasks-e2e-{port}"
    docker(
        "run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--publish", f"127.0.0.1:{port}:8080", built_image,
    )  # fmt: skip
    try:
        yield name, port
    finally:
        docker("rm", "--force", name, check=False)


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
        return int(r.status), r.read()


@pytest.mark.factor("V", "VII")
def test_docker_run_serves_readyz_as_uid_10001_on_a_read_only_root(
    container: tuple[str, int],
) -> None:
    name, port = container
    _, body = wait_for(
        "/readyz 200", lambda: (r := get(port, "/readyz"))[0] == 200 and r, timeout=60
    )
    assert json.loads(body)["checks"]["store"] == "ok"  # the memory store: the image's default
    assert json.loads(get(port, "/version")[1])["version"] == VERSION
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    denied = docker("exec", name, "touch", "/written", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert docker("exec", name, "touch", "/tmp/written").returncode == 0
    inspect = json.loads(docker("inspect", name).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    assert inspect["Config"]["User"] == "10001:10001"


@pytest.mark.factor("V")
def test_the_build_secret_is_in_no_layer(built_image: str, tmp_path: Path) -> None:
    """The proxy CA went in as a secret mount: no layer of the saved image holds its last
    certificate (a bundle's tail is the least likely to be in the base's own trust store)."""
    if not CA_FILE.is_file():
        pytest.fail(f"{CA_FILE} is missing: the build had no secret to leak", pytrace=False)
    last = CA_FILE.read_bytes().split(b"-----BEGIN CERTIFICATE-----")[-1].split(b"-----END")[0]
    body = b"".join(last.split())[-200:]
    saved = tmp_path / "image.tar"
    docker("save", "--output", str(saved), built_image, timeout=300)
    found = []
    with tarfile.open(saved) as image:
        for member in image.getmembers():
            if not member.name.endswith("layer.tar"):
                continue
            layer = tarfile.open(fileobj=image.extractfile(member))  # noqa: SIM115
            for entry in layer:
                if entry.isfile() and entry.name.startswith("run/secrets/") and entry.size:
                    found.append(f"{member.name}: {entry.name}")
                elif entry.isfile() and 0 < entry.size < 5_000_000:
                    data = layer.extractfile(entry)
                    if data and body in b"".join(data.read().split()):
                        found.append(f"{member.name}: {entry.name}")
    assert found == []


@pytest.mark.factor("V")
def test_skaffold_build_builds_the_artifact_against_the_daemon(
    built_image: str, tmp_path: Path
) -> None:
    """skaffold.yaml as is: `useBuildkit` runs `docker build` on this daemon, push false. The
    Dockerfile's default base is the stand-in here (docker/up tags it so); the pip layer comes
    from the cache of the build above, which had the proxy CA."""
    skaffold = require_tool("skaffold", "make kind-tools builds the pinned skaffold")
    out = tmp_path / "builds.json"
    env = {**os.environ, "HOME": str(tmp_path), "SKAFFOLD_UPDATE_CHECK": "false"}
    proc = subprocess.run(
        [skaffold, "build", "--interactive=false", "--file-output", str(out),
         "--tag", "e2e-skaffold"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (build,) = json.loads(out.read_text())["builds"]
    assert build["imageName"] == ARTIFACT
    # Unpushed, the build is referred to by image ID (what skaffold's deployers then use).
    inspect = json.loads(docker("image", "inspect", f"{ARTIFACT}:e2e-skaffold").stdout)[0]
    assert build["tag"] == f"{ARTIFACT}:{inspect['Id'].removeprefix('sha256:')}"
    assert inspect["Config"]["User"] == "10001:10001"
    assert inspect["Config"]["Labels"]["org.opencontainers.image.version"] == "0.0.0-dev"
    assert "Pushing" not in proc.stdout


@pytest.mark.harness
def test_a_privileged_root_container_runs_and_takes_a_privileged_exec(
    docker_daemon: State,
) -> None:
    """What kind does with every node (`docker run --privileged`, then `docker exec --privileged`
    as root): Docker 20.10 asks for every capability there, runc_caps.py drops the ones this
    machine's bounding set lacks."""
    name = f"tasks-e2e-privileged-{free_ports(1)[0]}"
    image = docker_harness.STANDIN_BASE
    docker("run", "--detach", "--name", name, "--privileged", "--user", "0", image, "sleep", "60")
    try:
        caps = docker("exec", "--privileged", name, "grep", "^CapEff", "/proc/self/status")
        bounding = int(Path("/proc/self/status").read_text().split("CapBnd:")[1].split()[0], 16)
        # Every capability Docker 20.10 knows (up to CAP_AUDIT_READ, 37) that the host can give.
        assert int(caps.stdout.split()[1], 16) == bounding & (1 << 38) - 1
        assert docker("exec", name, "id", "-u").stdout.strip() == "0"
    finally:
        docker("rm", "--force", name, check=False)
