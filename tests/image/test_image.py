"""Rung 3 of the proof ladder: the Dockerfile, built with buildah on a local stand-in base, run as
the image says (its Cmd, Env, WorkingDir and User) on a read-only root filesystem."""

from __future__ import annotations

import io
import json
import platform
import re
import signal
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import httpx2
import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.image.artifacts import BuildSecret, BuiltImage, Layer
from tests.image.runner import ImageRootfs, resolve_user
from tests.support import ROOT, RedisServer, ServiceProcess, free_port

# The first test pays for the image build (a cold build takes minutes on a loaded machine).
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

SHUTDOWN_DELAY = 1.0
SHUTDOWN_GRACE = 10.0

PROBE_DISTRIBUTIONS = """
import importlib.metadata, json, platform, sys
dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
print(json.dumps({"python": platform.python_version(), "prefix": sys.prefix, "dists": dists}))
"""


class Container(ServiceProcess):
    """The image's default command in a container, its output in a file, reached on 127.0.0.1."""

    def __init__(self, rootfs: ImageRootfs, env: dict[str, str]) -> None:
        self.rootfs = rootfs
        ports = {"PORT": str(free_port()), "TASKS_METRICS_PORT": str(free_port())}
        super().__init__({**ports, **env}, args=["container", *rootfs.config.cmd])

    def spawn(self, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        return self.rootfs.popen(env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def ids(self) -> dict[str, list[int]]:
        """Uid/Gid/Groups of the container's main process, as the host kernel sees them."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {
            key: [int(v) for v in rest.split()]
            for key, rest in re.findall(r"^(Uid|Gid|Groups):(.*)$", status, re.M)
        }


@pytest.fixture
def start(image_rootfs: ImageRootfs):  # type: ignore[no-untyped-def]
    started: list[Container] = []

    def _start(**env: str) -> Container:
        container = Container(image_rootfs, env)
        started.append(container)
        return container

    yield _start
    for container in started:
        container.stop()


# --- what the image says about itself -----------------------------------------------------------


@pytest.mark.factor("V")
def test_image_config_runs_the_api_as_a_fixed_non_root_user(image_rootfs: ImageRootfs) -> None:
    config = image_rootfs.config
    assert config.cmd == ["python", "-m", "service"]
    assert config.entrypoint == []
    assert config.user == "10001:10001"
    assert resolve_user(image_rootfs.path, config.user)[:2] == (10001, 10001)
    assert sorted(config.exposed_ports) == ["8080/tcp", "9090/tcp"]  # the API, /metrics
    assert config.working_dir == "/app"
    assert config.env["PYTHONUNBUFFERED"] == "1"
    assert config.env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.factor("V")
def test_release_metadata_is_in_labels_and_env(
    image_rootfs: ImageRootfs, built_image: BuiltImage
) -> None:
    args, config = built_image.build_args, image_rootfs.config
    assert config.labels["org.opencontainers.image.version"] == args["VERSION"]
    assert config.labels["org.opencontainers.image.revision"] == args["GIT_REVISION"]
    assert config.labels["org.opencontainers.image.created"] == args["BUILD_DATE"]
    assert config.labels["org.opencontainers.image.source"] == args["SOURCE_URL"]
    assert config.env["TASKS_VERSION"] == args["VERSION"]
    assert config.env["TASKS_GIT_REVISION"] == args["GIT_REVISION"]
    assert config.env["TASKS_BUILD_DATE"] == args["BUILD_DATE"]


@pytest.mark.factor("V")
def test_the_build_adds_no_label_or_env_of_its_own() -> None:
    """The metadata test above reads what the Dockerfile alone made of the build args."""
    script = (ROOT / "tests" / "image" / "build.sh").read_text()
    assert not re.search(r"--(label|env)\b", script)


@pytest.mark.factor("II")
def test_venv_holds_exactly_the_locked_dependencies(image_rootfs: ImageRootfs) -> None:
    probe = image_rootfs.run(["python", "-c", PROBE_DISTRIBUTIONS])
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["prefix"] == "/opt/venv"

    environment = {
        "python_version": ".".join(found["python"].split(".")[:2]),
        "python_full_version": found["python"],
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": platform.machine(),
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    locked = set()
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+))?", line)
        if match and (not match[3] or Marker(match[3].strip()).evaluate(environment)):
            locked.add(f"{canonicalize_name(match[1])}=={match[2]}")
    installed = {
        f"{canonicalize_name(d.split('==')[0])}=={d.split('==')[1]}" for d in found["dists"]
    }
    # pip and setuptools are removed after the install: nothing is installed at run time.
    assert installed == locked


@pytest.mark.factor("V")
def test_no_compiler_and_no_pip_in_the_runtime(image_rootfs: ImageRootfs) -> None:
    for tool in ("gcc", "cc", "c++", "make"):
        assert not (image_rootfs.path / "usr/bin" / tool).exists(), tool
    assert not list((image_rootfs.path / "opt/venv").glob("lib/python3*/site-packages/pip"))
    assert sorted(p.name for p in (image_rootfs.path / "app").iterdir()) == ["jobs", "service"]


# --- running it ---------------------------------------------------------------------------------


@pytest.mark.factor("V")
def test_root_filesystem_is_read_only_except_tmp(image_rootfs: ImageRootfs) -> None:
    probe = image_rootfs.run(
        [
            "python",
            "-c",
            (
                "import os\n"
                "open('/tmp/ok', 'w').write('x')\n"
                "for path in ('/app/x', '/opt/venv/x', '/x', '/var/tmp/x'):\n"
                "    try:\n"
                "        open(path, 'w')\n"
                "    except OSError:\n"
                "        pass\n"
                "    else:\n"
                "        raise SystemExit(f'{path} is writable')\n"
                "print(os.getuid(), os.getgid(), os.getgroups())\n"
            ),
        ]
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.split() == ["10001", "10001", "[]"]


@pytest.mark.factor("V", "VII")
def test_default_command_serves_readyz_as_the_image_user(start, built_image: BuiltImage) -> None:  # type: ignore[no-untyped-def]
    container = start(TASKS_STORE="memory")
    container.wait_ready()
    ids = container.ids()
    assert ids["Uid"][0] != 0
    assert ids["Uid"] == [10001] * 4 and ids["Gid"] == [10001] * 4 and ids["Groups"] == []

    version = httpx2.get(container.base_url + "/version", timeout=5)
    assert version.status_code == 200
    # /version reports what the build args fed in, each under its own name.
    args = built_image.build_args
    assert version.json() == {
        "version": args["VERSION"],
        "git_revision": args["GIT_REVISION"],
        "build_date": args["BUILD_DATE"],
    }


@pytest.mark.factor("V", "IV")
def test_default_command_is_ready_against_redis(start, redis_server: RedisServer) -> None:  # type: ignore[no-untyped-def]
    container = start(TASKS_STORE="redis", TASKS_REDIS_URL=redis_server.url)
    container.wait_ready()
    assert httpx2.get(container.base_url + "/readyz", timeout=5).status_code == 200


@pytest.mark.factor("IX")
def test_sigterm_exits_zero_within_the_shutdown_delay(start) -> None:  # type: ignore[no-untyped-def]
    container = start(TASKS_STORE="memory", TASKS_SHUTDOWN_DELAY_SECONDS=str(SHUTDOWN_DELAY))
    container.wait_ready()
    container.proc.send_signal(signal.SIGTERM)
    try:
        code = container.proc.wait(timeout=SHUTDOWN_DELAY + SHUTDOWN_GRACE)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"still running {SHUTDOWN_DELAY + SHUTDOWN_GRACE}s after SIGTERM:\n{container.output()}"
        )
    assert code == 0, container.output()


@pytest.mark.factor("XII")
def test_jobs_cleanup_runs_from_the_same_image(
    image_rootfs: ImageRootfs, redis_server: RedisServer
) -> None:
    done = image_rootfs.run(
        ["python", "-m", "jobs", "cleanup"],
        env={"TASKS_STORE": "redis", "TASKS_REDIS_URL": redis_server.url},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no output:\n{done.stderr}"
    summary = json.loads(lines[-1])
    # The cleanup's own summary, on the settings' default retention (7 days): the image adds
    # no config of its own.
    assert summary["job"] == "cleanup" and "error" not in summary, summary
    assert summary["retention_seconds"] == 7 * 24 * 3600 and summary["dry_run"] is False


# --- what the layers hold -----------------------------------------------------------------------


def _leaks(layers: list[Layer], secret: BuildSecret) -> list[str]:
    found = []
    for layer in layers:
        for member, tar in layer.members():
            name = member.name.removeprefix("./")
            if name.startswith("run/secrets/") and member.size:
                found.append(f"{layer.digest}: {name} (a secret mount's content)")
            if not member.isfile() or member.size == 0:
                continue
            fileobj = tar.extractfile(member)
            data = fileobj.read() if fileobj else b""
            found += [
                f"{layer.digest}: {name} holds {what}"
                for what, marker in secret.markers.items()
                if marker in data
            ]
    return found


@pytest.mark.harness
def test_layer_scan_finds_a_planted_secret(build_secret: BuildSecret, tmp_path: Path) -> None:
    """The scan below can only pass honestly if it would fail on a leak: plant each kind."""
    secret = build_secret.path.read_bytes()
    certs = build_secret.path.read_text().split("-----END CERTIFICATE-----\n")
    planted = {
        "etc/ssl/ca.pem": secret,
        "canary.pem": (certs[-2] + "-----END CERTIFICATE-----\n").encode(),
    }
    layer_tar = tmp_path / "layer.tar"
    with tarfile.open(layer_tar, "w") as tar:
        for name, data in planted.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = _leaks([Layer("sha256:planted", layer_tar)], build_secret)
    assert any("ca.pem holds the secret file's exact bytes" in f for f in found), found
    assert any(f.startswith("sha256:planted: canary.pem holds certificate") for f in found), found
    # The host bundle's own non-Mozilla certificates (a proxy CA) are markers too, when present.
    assert len(build_secret.markers) >= 2


@pytest.mark.factor("V")
def test_no_secret_or_ca_material_in_any_layer(
    image_layers: list[Layer], build_stage_layers: list[Layer], build_secret: BuildSecret
) -> None:
    # The build stage is where the secret was mounted; the final image is what ships.
    seen: set[str] = set()
    layers = [
        x for x in image_layers + build_stage_layers if not (x.digest in seen or seen.add(x.digest))
    ]
    assert _leaks(layers, build_secret) == []


@pytest.mark.factor("V")
def test_no_caches_tests_or_local_files_in_the_image(image_layers: list[Layer]) -> None:
    bad = re.compile(
        r"(^|/)(\.git|\.env|\.cache|tests|\.pytest_cache)(/|$)"
        r"|^root/.|^app/(?!service(/|$)|jobs(/|$))"
    )
    found = []
    for layer in image_layers[1:]:  # ours; the base is Debian's
        for member, _ in layer.members():
            name = member.name.removeprefix("./")
            if name.startswith("opt/venv/") and "/tests/" in name:
                continue  # some third-party wheels ship their own tests
            if bad.search(name):
                found.append(name)
    assert found == []
