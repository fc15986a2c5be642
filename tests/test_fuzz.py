"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis), against the
real service process on a real Redis: every operation with generated valid and invalid input,
then stateful sequences along the links schemathesis infers (create, then read, patch, delete
what was created). Measured on the loaded 2-core CI machine: about 400 generated requests in
6-10 s with 20 examples per operation."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import StartService
from tests.support import RedisServer, redis_env

EXAMPLES_PER_OPERATION = 20
SEED = 20261201  # a fixed seed: the same requests on every run, so a failure reproduces
CHECKS = [
    "not_a_server_error",  # no 5xx (a 503 would be one: Redis is up throughout)
    "status_code_conformance",  # every status answered is documented
    "content_type_conformance",  # and so is its content type
    "response_headers_conformance",
    "response_schema_conformance",  # bodies match the documented schemas
    "negative_data_rejection",  # invalid input is refused with a 4xx
    "unsupported_method",  # an undocumented method is 405 ...
    "allow_header_conformance",  # ... with an Allow that lists the documented ones
    "use_after_free",  # stateful: a deleted task is gone
    "ensure_resource_availability",  # stateful: a created task can be read
]


@pytest.mark.factor("X")
@pytest.mark.timeout(300)
def test_the_api_honours_its_openapi_document_under_generated_requests(
    private_redis: RedisServer, start_service: StartService, tmp_path: Path
) -> None:
    service = start_service(**redis_env(private_redis))
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "run",
            f"{service.base_url}/openapi.json",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--checks", ",".join(CHECKS),
            "--max-examples", str(EXAMPLES_PER_OPERATION),
            "--seed", str(SEED),
            "--generation-database", "none",
            "--workers", "1",
            "--request-timeout", "10",
            "--report-dir", str(tmp_path),
            "--no-color",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    took = time.monotonic() - started

    generated = re.search(r"(\d+) generated", run.stdout)
    print(f"schemathesis: {generated.group(1) if generated else '?'} requests in {took:.1f} s")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Stateful" in run.stdout and "Scenarios:" in run.stdout, "the stateful phase ran"
    assert generated and int(generated.group(1)) >= 100
