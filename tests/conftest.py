"""Suite-wide fixtures, the factor markers' check, and the factor-by-factor evidence report."""

from __future__ import annotations

import subprocess
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.factors import COMMIT_PROPERTY, FACTOR_PROPERTY, FACTORS, HARNESS_PROPERTY
from tests.support import ROOT, RedisClusterServers, RedisServer, ServiceProcess, service_env

_evidence: dict[str, list[tuple[str, str]]] = defaultdict(list)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests that need isolation flush it."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, freeze (SIGSTOP) and restart."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start `python -m service` in an empty working directory (no stray .env), wait for ready."""
    started: list[ServiceProcess] = []

    def start(wait: bool = True, **env: str) -> ServiceProcess:
        process = ServiceProcess(service_env(**env), cwd=tmp_path)
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def _clean_session_redis(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's redis-server is empty again after every test that used it (keys under a
    test's own prefix included), so no test sees another's data and none grows the next."""
    yield
    if "redis_server" in request.fixturenames:
        server: RedisServer = request.getfixturevalue("redis_server")
        if server.proc is not None:
            server.flushall()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test proves a factor (it would fail were the factor broken) or is a test of the
    harness; the markers become JUnit properties, which `make factors` reads."""
    unmarked: list[str] = []
    for item in items:
        factors = sorted({f for mark in item.iter_markers("factor") for f in mark.args})
        harness = item.get_closest_marker("harness") is not None
        for factor in factors:
            if factor not in FACTORS:
                raise pytest.UsageError(f"{item.nodeid}: unknown factor {factor!r}")
        if harness and factors:
            raise pytest.UsageError(f"{item.nodeid}: a harness test proves no factor")
        if not harness and not factors:
            unmarked.append(item.nodeid)
        item.user_properties.extend((FACTOR_PROPERTY, f) for f in factors)
        if harness:
            item.user_properties.append((HARNESS_PROPERTY, "true"))
    if unmarked:
        raise pytest.UsageError(
            "tests without a factor('...') or harness marker:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session", autouse=True)
def _report_commit(record_testsuite_property) -> None:  # type: ignore[no-untyped-def]
    """The commit under test, so `make factors` refuses a report of another commit."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    )
    if head.returncode == 0:
        record_testsuite_property(COMMIT_PROPERTY, head.stdout.strip())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        factors = {f for mark in item.iter_markers("factor") for f in mark.args}
        # An expected failure (xfail) is a known gap, stated in its reason: neither proof nor
        # a regression.
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        for factor in factors:
            _evidence[factor].append((outcome, item.nodeid))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """This run's tally; the gate over every rung's run is `make factors`."""
    if not _evidence:
        return
    tr = terminalreporter
    tr.section("twelve-factor evidence (this run; the gate is `make factors`)")
    for factor, (name, _) in FACTORS.items():
        results = _evidence.get(factor, [])
        passed = sum(1 for outcome, _ in results if outcome == "passed")
        xfailed = sum(1 for outcome, _ in results if outcome == "xfailed")
        failed = len(results) - passed - xfailed
        status = "none" if not passed and not failed else ("ok" if failed == 0 else "FAILING")
        gaps = f", {xfailed} known gap(s) (xfail)" if xfailed else ""
        tr.write_line(f"{factor:>4} {name:<20} {status:<8} {passed} passed, {failed} failed{gaps}")


# --- the service under test, in process, against each store ---------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """One real Redis Cluster for the session (3 primaries, a replica each); tests keep apart
    by key prefix."""
    cluster = RedisClusterServers()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run the test once per store: the same behaviour is required of all (dev/prod parity).
    `cluster` is the Redis store in cluster mode, on the session's Redis Cluster."""
    return str(request.param)


@pytest.fixture
def make_settings(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Settings for an in-process app; `store="redis"` uses the session redis-server and
    `store="cluster"` the session Redis Cluster, under a key prefix of the test's own, so tests
    never see each other's data."""
    from service.settings import Settings

    prefix = f"test:{uuid.uuid4().hex[:12]}:"

    def make(store: str = "memory", **overrides: object) -> Settings:
        values: dict[str, object] = {"store": store, "redis_key_prefix": prefix, **overrides}
        if store == "redis":
            values.setdefault("redis_url", request.getfixturevalue("redis_server").url)
        elif store == "cluster":
            values |= {"store": "redis", "redis_mode": "cluster"}
            values.setdefault("redis_url", request.getfixturevalue("redis_cluster").url)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def client(store_kind: str, make_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The app on one store, lifespan started, as an HTTP client."""
    from service.app import create_app

    with TestClient(create_app(make_settings(store_kind))) as test_client:
        yield test_client
