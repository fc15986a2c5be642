"""`make image` gives the build the proxy CA as the `ca` build secret: `$SSL_CERT_FILE` by
default, `CA_FILE=<file>` instead, `CA_FILE=` none (the README's promise). The build itself, and
that the secret never lands in a layer, are tested in test_image.py; these read the command
`make image` runs (`DRY_RUN=1`), for each builder."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, require_tool


def build_command(**env: str) -> list[str]:
    make = require_tool("make", "make system-deps installs make")
    base = {k: v for k, v in os.environ.items() if k not in ("CA_FILE", "SSL_CERT_FILE")}
    result = subprocess.run(
        [make, "-s", "-C", str(ROOT), "image", "DRY_RUN=1"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return shlex.split(line)


def secrets(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--secret"]


@pytest.mark.factor("V")
@pytest.mark.parametrize("builder", ["buildah", "docker"])
def test_make_image_passes_ssl_cert_file_as_the_ca_secret_and_ca_file_overrides_it(
    builder: str, tmp_path: Path
) -> None:
    bundle, other, empty = tmp_path / "bundle.pem", tmp_path / "other.pem", tmp_path / "empty.pem"
    bundle.write_text("a CA bundle\n")
    other.write_text("another CA\n")
    empty.write_text("")

    default = build_command(BUILDER=builder, SSL_CERT_FILE=str(bundle))
    assert default[:2] == [builder, "build"] or default[:3] == [builder, "--storage-driver", "vfs"]
    assert secrets(default) == [f"id=ca,src={bundle}"]
    assert default[-1] == "." and "Dockerfile" in default

    chosen = build_command(BUILDER=builder, SSL_CERT_FILE=str(bundle), CA_FILE=str(other))
    assert secrets(chosen) == [f"id=ca,src={other}"]
    # CA_FILE= turns it off; so does a CA file that is missing or empty.
    assert secrets(build_command(BUILDER=builder, SSL_CERT_FILE=str(bundle), CA_FILE="")) == []
    assert secrets(build_command(BUILDER=builder, SSL_CERT_FILE=str(empty))) == []
    assert secrets(build_command(BUILDER=builder)) == []
