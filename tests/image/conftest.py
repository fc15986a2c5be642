"""Session fixtures for the image tests: a cached stand-in base, the image built once with buildah
(the proxy CA plus a canary as its build secret), its layers exported, its rootfs mounted."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.artifacts import (
    BuildSecret,
    BuiltImage,
    Layer,
    export_layers,
    pem_bodies,
    prune_stale_build_cache,
)
from tests.image.runner import ImageRootfs
from tests.support import require_tool

HERE = Path(__file__).resolve().parent
STANDIN_TAG = "localhost/tasks-base-python:3.11-stand-in"
IMAGE = "localhost/tasks:image-test"
BUILD_STAGE_IMAGE = "localhost/tasks:image-test-build-stage"
# Values no other build uses, and the same every session, so the layer cache of the last session
# serves this one; build.sh rebuilds without the cache when a cached step holds other values.
BUILD_ARGS = {
    "VERSION": "0.0.0-image-test",
    "GIT_REVISION": "0123456789abcdef0123456789abcdef01234567",
    "BUILD_DATE": "2001-02-03T04:05:06Z",
    "SOURCE_URL": "https://example.invalid/tasks.git",
}
HOST_CA = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
MOZILLA_CAS = Path("/usr/share/ca-certificates/mozilla")
STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")

# Figures for the closing summary (image size, timings).
FACTS: dict[str, str] = {}


def _root_required() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the image tests need root (debootstrap, buildah mount, mount namespaces)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def buildah() -> list[str]:
    _root_required()
    for tool in ("unshare", "setpriv", "mount"):
        require_tool(tool, "util-linux/mount are part of Debian's base system")
    return [
        require_tool("buildah", "make system-deps installs buildah"),
        "--storage-driver",
        STORAGE_DRIVER,
    ]


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return time.monotonic() - start


@pytest.fixture(scope="session")
def standin_base(buildah: list[str]) -> str:
    """Debian bookworm + python3 from debootstrap, imported as a local image; made once, cached."""
    require_tool("debootstrap", "make system-deps installs debootstrap")
    seconds = _run(["bash", str(HERE / "standin.sh"), "python", STANDIN_TAG], "stand-in base image")
    FACTS["stand-in base"] = f"{STANDIN_TAG} ready in {seconds:.0f}s"
    return STANDIN_TAG


@pytest.fixture(scope="session")
def build_secret(tmp_path_factory: pytest.TempPathFactory) -> BuildSecret:
    """The host's CA bundle (it holds the proxy CA where there is one) plus a fresh canary CA.

    Markers: the canary, every certificate of the bundle that is not in Debian's Mozilla set (a
    proxy's CA, a corporate CA), and the exact bytes of the whole file.
    """
    openssl = require_tool("openssl", "make system-deps installs openssl")
    tmp = tmp_path_factory.mktemp("build-secret")
    canary = tmp / "canary.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp / "canary.key"),
            "-out",
            str(canary),
            "-days",
            "1",
            "-subj",
            "/CN=tasks image-test canary CA",
        ],
        check=True,
        capture_output=True,
    )
    host_bundle = HOST_CA.read_text() if HOST_CA.exists() else ""
    secret = tmp / "ca.pem"
    secret.write_text(host_bundle + canary.read_text())

    known = set()
    if MOZILLA_CAS.is_dir():
        for crt in MOZILLA_CAS.glob("*.crt"):
            known.update(pem_bodies(crt.read_text()))
    markers: dict[str, bytes] = {"the secret file's exact bytes": secret.read_bytes()}
    for i, body in enumerate(pem_bodies(secret.read_text())):
        if body in known:
            continue
        lines = body.splitlines()
        # The last full line is signature bytes: unique to that certificate.
        markers[f"certificate #{i} of the secret (not a Mozilla CA)"] = lines[-2].encode()
    return BuildSecret(secret, markers)


def _build(base: str, secret: Path, tag: str, target: str | None) -> float:
    env = {
        **os.environ,
        **BUILD_ARGS,
        "BUILDER": "buildah",
        "BASE_IMAGE": base,
        "CA_FILE": str(secret),
        "STORAGE_DRIVER": STORAGE_DRIVER,
    }
    env.pop("TARGET", None)
    if target:
        env["TARGET"] = target
    return _run(["bash", str(HERE / "build.sh"), tag], f"buildah build of {tag}", env=env)


@pytest.fixture(scope="session")
def built_image(buildah: list[str], standin_base: str, build_secret: BuildSecret) -> BuiltImage:
    """The Dockerfile built with buildah FROM the stand-in base, through the BASE_IMAGE arg."""
    started = time.time()
    seconds = _build(standin_base, build_secret.path, IMAGE, None)
    pruned = prune_stale_build_cache(buildah, older_than=started)
    FACTS["image build"] = (
        f"{IMAGE} built in {seconds:.0f}s (buildah, vfs, --layers); "
        f"{pruned} stale cache images pruned"
    )
    return BuiltImage(IMAGE, dict(BUILD_ARGS))


@pytest.fixture(scope="session")
def build_stage_image(
    buildah: list[str], built_image: BuiltImage, build_secret: BuildSecret, standin_base: str
) -> str:
    """The build stage alone (`--target build`, from the layer cache): where the secret was used."""
    _build(standin_base, build_secret.path, BUILD_STAGE_IMAGE, "build")
    return BUILD_STAGE_IMAGE


@pytest.fixture(scope="session")
def image_layers(
    buildah: list[str], built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> list[Layer]:
    layers = export_layers(buildah, built_image.tag, tmp_path_factory.mktemp("oci") / "final")
    packed, unpacked = [x.size for x in layers], [x.unpacked_size for x in layers]
    FACTS["image size"] = (
        f"{sum(unpacked) / 1e6:.0f} MB unpacked, {sum(packed) / 1e6:.0f} MB compressed, "
        f"{len(layers)} layers; ours (above the one base layer) "
        f"{sum(unpacked[1:]) / 1e6:.0f} MB unpacked, {sum(packed[1:]) / 1e6:.0f} MB compressed"
    )
    return layers


@pytest.fixture(scope="session")
def build_stage_layers(
    buildah: list[str], build_stage_image: str, tmp_path_factory: pytest.TempPathFactory
) -> list[Layer]:
    return export_layers(buildah, build_stage_image, tmp_path_factory.mktemp("oci") / "build")


@pytest.fixture(scope="session")
def image_rootfs(buildah: list[str], built_image: BuiltImage) -> Iterator[ImageRootfs]:
    """The built image mounted once; each test runs its own read-only container on it."""
    rootfs = ImageRootfs(buildah, built_image.tag)
    try:
        yield rootfs
    finally:
        rootfs.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if FACTS:
        terminalreporter.section("container image")
        for key, value in FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")
