"""runc_caps.py, the docker harness's runtime, on specs like the ones dockerd writes (no daemon
needed: `make test` runs these)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cluster import runc_caps

ALL = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"]


@pytest.mark.harness
def test_it_finds_the_spec_in_every_form_runc_takes() -> None:
    for argv in (["create", "--bundle", "/b", "id"], ["create", "-b", "/b", "id"],
                 ["--root", "/r", "create", "--bundle=/b", "id"]):  # fmt: skip
        assert runc_caps.option(argv, "--bundle", "-b") == "/b"
    assert runc_caps.option(["exec", "--process", "/p.json", "id"], "--process", "-p") == "/p.json"
    assert runc_caps.option(["start", "id"], "--bundle", "-b") is None


@pytest.mark.harness
def test_it_drops_only_the_missing_capabilities_from_bundle_and_process_specs(
    tmp_path: Path,
) -> None:
    caps = {k: list(ALL) for k in ("bounding", "effective", "permitted")}
    bundle = tmp_path / "config.json"
    bundle.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"capabilities": caps}}))
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh"], "capabilities": caps}))
    runc_caps.strip(bundle, {"CAP_SYS_RESOURCE"}, nested=True)
    runc_caps.strip(process, {"CAP_SYS_RESOURCE"}, nested=False)
    for spec in (json.loads(bundle.read_text())["process"], json.loads(process.read_text())):
        assert spec["capabilities"] == {k: ["CAP_CHOWN", "CAP_SYS_ADMIN"] for k in caps}
    assert json.loads(bundle.read_text())["ociVersion"] == "1.0.2"
    assert json.loads(process.read_text())["args"] == ["sh"]


@pytest.mark.harness
def test_missing_is_what_this_process_cannot_hold() -> None:
    status = Path("/proc/self/status").read_text()
    bounding = int(status.split("CapBnd:")[1].split()[0], 16)
    missing = runc_caps.missing()
    for bit, name in enumerate(runc_caps.NAMES):
        assert (f"CAP_{name}" in missing) == (not bounding >> bit & 1)
