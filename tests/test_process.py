"""`python -m service` as a real process: config errors, port binding, shutdown, outages, logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from tests.conftest import StartService
from tests.support import (
    RedisServer,
    ServiceProcess,
    redis_env,
    service_env,
    wait_until,
)

PROBLEM = "application/problem+json"
# "Fast" means well short of a hang or a client's own timeout, with room for a loaded 2-core
# machine; bench/ measures the real figures (a refused store answers in milliseconds).
FAST = 5.0
# The shutdown delay of the drain test: long enough that a loaded machine flips readiness within it.
DELAY = 3.0


def in_flight(service: ServiceProcess) -> float:
    metrics = httpx2.get(service.metrics_url).text
    line = next(m for m in metrics.splitlines() if m.startswith("tasks_http_requests_in_flight "))
    return float(line.split()[1])  # the metrics listener's own requests are not counted


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --- config (III) ---------------------------------------------------------------------------


@pytest.mark.factor("III")
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TASKS_STORE": "postgres"}, "TASKS_STORE"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"TASKS_REDIS_URL": "http://:s3cret-value@redis:6379/0"}, "TASKS_REDIS_URL"),
        ({"TASKS_REDIS_URL": "redis://:s3cret-value@redis:port/0"}, "TASKS_REDIS_URL"),
        ({"TASKS_LOG_LEVEL": "loud"}, "TASKS_LOG_LEVEL"),
        ({"TASKS_REDIS_TIMEOUT_SECONDS": "0"}, "TASKS_REDIS_TIMEOUT_SECONDS"),
        ({"TASKS_CLEANUP_RETENTION": "2w"}, "TASKS_CLEANUP_RETENTION"),
        # API keys fail closed: a value with no key in it, or a short key, never opens writes.
        ({"TASKS_API_KEYS": ","}, "TASKS_API_KEYS"),
        ({"TASKS_API_KEYS": " ,  , "}, "TASKS_API_KEYS"),
        ({"TASKS_API_KEYS": "   "}, "TASKS_API_KEYS"),
        ({"TASKS_API_KEYS": "s3cret-value"}, "TASKS_API_KEYS"),
        ({"TASKS_API_KEYS": "s3cret-value-long-enough,s3cret"}, "TASKS_API_KEYS"),
        ({"TASKS_REDIS_MAX_CONNECTIONS": "0"}, "TASKS_REDIS_MAX_CONNECTIONS"),
        ({"TASKS_MAX_BODY_BYTES": "10"}, "TASKS_MAX_BODY_BYTES"),
        # /metrics always has a port of its own: none, another word, or the API's is refused.
        ({"TASKS_METRICS_PORT": "0"}, "TASKS_METRICS_PORT"),
        ({"TASKS_METRICS_PORT": ""}, "TASKS_METRICS_PORT"),
        ({"TASKS_METRICS_PORT": "metrics"}, "TASKS_METRICS_PORT"),
        ({"TASKS_METRICS_PORT": "65536"}, "TASKS_METRICS_PORT"),
        ({"PORT": "8181", "TASKS_METRICS_PORT": "8181"}, "TASKS_METRICS_PORT"),
    ],
)
def test_invalid_config_exits_2_with_one_line_naming_the_variable(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env=service_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"config error: {variable}: "), result.stderr
    assert "s3cret-value" not in result.stderr


@pytest.mark.factor("III")
def test_dotenv_in_the_working_directory_is_read_and_env_vars_win(
    tmp_path: Path, start_service: StartService
) -> None:
    (tmp_path / ".env").write_text("TASKS_GIT_REVISION=from-dotenv\nTASKS_BUILD_DATE=dotenv\n")

    service = start_service(TASKS_BUILD_DATE="from-env")

    version = httpx2.get(service.base_url + "/version").json()
    assert version["git_revision"] == "from-dotenv" and version["build_date"] == "from-env"


# --- port binding, processes, fast start (VI, VII, IX) ---------------------------------------


@pytest.mark.factor("VI", "VII")
def test_two_processes_on_their_own_ports_share_one_redis(
    private_redis: RedisServer, start_service: StartService
) -> None:
    one = start_service(**redis_env(private_redis))
    two = start_service(**redis_env(private_redis))
    assert one.port != two.port

    created = httpx2.post(one.base_url + "/v1/tasks", json={"title": "shared"})

    assert httpx2.get(two.base_url + created.headers["location"]).json() == created.json()
    patched = httpx2.patch(two.base_url + created.headers["location"], json={"status": "done"})
    assert httpx2.get(one.base_url + "/v1/tasks?status=done").json()["items"] == [patched.json()]


@pytest.mark.factor("VII")
def test_metrics_are_served_on_the_metrics_port_and_not_on_the_app_port(
    start_service: StartService,
) -> None:
    service = start_service()
    assert service.metrics_port != service.port
    assert httpx2.get(service.base_url + "/v1/tasks").status_code == 200

    scraped = httpx2.get(service.metrics_url)

    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    assert 'tasks_http_requests_total{method="GET",route="/v1/tasks",status="200"} 1.0' in (
        scraped.text
    )
    assert httpx2.get(service.base_url + "/metrics").status_code == 404
    metrics_root = f"http://127.0.0.1:{service.metrics_port}"
    for path in ("/", "/v1/tasks", "/readyz"):  # the metrics port serves nothing of the API
        assert httpx2.get(metrics_root + path).status_code == 404, path


@pytest.mark.factor("VII")
def test_a_metrics_port_in_use_stops_the_process_before_the_api_binds(
    start_service: StartService,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = start_service(
            wait=False, TASKS_HOST="127.0.0.1", TASKS_METRICS_PORT=str(taken.getsockname()[1])
        )
        assert service.proc.wait(timeout=20) != 0
    assert not accepts_connections(service.port)
    assert "address already in use" in service.output().lower()


@pytest.mark.factor("IX")
def test_process_is_ready_fast(start_service: StartService) -> None:
    started = time.monotonic()
    start_service()
    # A bound a loaded 2-core machine meets (it took ~1 s idle and up to 3 s with a parallel build);
    # bench/ measures start-to-ready precisely (target: 1 s).
    assert time.monotonic() - started < 10.0


# --- shutdown (IX) --------------------------------------------------------------------------


@pytest.mark.factor("IX")
def test_sigterm_turns_readyz_503_drains_the_in_flight_request_and_exits_0_closing_both_ports(
    private_redis: RedisServer, start_service: StartService
) -> None:
    service = start_service(
        **redis_env(private_redis, TASKS_REDIS_TIMEOUT_SECONDS="15"),
        TASKS_SHUTDOWN_DELAY_SECONDS=str(DELAY),
    )
    location = httpx2.post(service.base_url + "/v1/tasks", json={"title": "slow"}).headers[
        "location"
    ]
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)  # every store call now waits: a slow request

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx2.get, service.base_url + location, timeout=30)
        wait_until(lambda: in_flight(service) >= 1, timeout=5, what="the slow request in flight")

        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        readyz = httpx2.get(service.base_url + "/readyz")
        assert time.monotonic() - signalled < DELAY, "readyz must flip at once, within the delay"
        assert readyz.status_code == 503 and readyz.json()["checks"]["draining"] is True

        wait_until(lambda: not accepts_connections(service.port), timeout=5, what="listener closed")
        assert time.monotonic() - signalled >= DELAY, "the listener stayed open for the delay"
        assert not slow.done()
        assert in_flight(service) == 1, "the metrics listener outlives the API's, drain included"
        os.kill(private_redis.proc.pid, signal.SIGCONT)

        assert slow.result().status_code == 200
    assert service.proc.wait(timeout=10) == 0
    assert "store closed" in service.messages()
    assert not accepts_connections(service.port)
    assert not accepts_connections(service.metrics_port)


@pytest.mark.factor("IX")
def test_while_draining_responses_close_keep_alive_connections(
    start_service: StartService,
) -> None:
    """Clients on a kept-alive connection are told to reconnect (to a pod still ready) during the
    shutdown delay, before the listener closes under them."""
    service = start_service(TASKS_SHUTDOWN_DELAY_SECONDS="30")
    with httpx2.Client(base_url=service.base_url) as client:
        before = client.get("/livez")
        assert before.headers.get("connection") != "close"
        service.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: client.get("/readyz").status_code == 503, timeout=5, what="draining")
        during = client.get("/livez")
        assert during.status_code == 200 and during.headers["connection"] == "close"
    service.proc.send_signal(signal.SIGINT)  # the delay is long: skip it


@pytest.mark.factor("IX")
def test_a_second_sigint_exits_at_once(start_service: StartService) -> None:
    service = start_service(TASKS_SHUTDOWN_DELAY_SECONDS="60")

    service.proc.send_signal(signal.SIGINT)
    wait_until(lambda: httpx2.get(service.base_url + "/readyz").status_code == 503, timeout=10)
    service.proc.send_signal(signal.SIGINT)

    assert service.proc.wait(timeout=10) == 130  # not the 60 s delay


# --- backing service outage (IV, IX) --------------------------------------------------------


@pytest.mark.factor("IV", "IX")
def test_redis_outage_gives_fast_503s_and_the_service_recovers_without_restart(
    private_redis: RedisServer, start_service: StartService
) -> None:
    service = start_service(**redis_env(private_redis))
    url = service.base_url
    location = httpx2.post(url + "/v1/tasks", json={"title": "before"}).headers["location"]

    private_redis.stop()

    for method, path in [("GET", location), ("POST", "/v1/tasks"), ("GET", "/v1/tasks")]:
        started = time.monotonic()
        response = httpx2.request(method, url + path, json={"title": "during"}, timeout=30)
        assert time.monotonic() - started < FAST, (method, path)
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM
    started = time.monotonic()
    readyz = httpx2.get(url + "/readyz", timeout=30)
    assert readyz.status_code == 503
    assert readyz.json()["checks"] == {"draining": False, "store": "unreachable"}
    assert time.monotonic() - started < FAST
    assert httpx2.get(url + "/livez").status_code == 200

    private_redis.start()  # same port, empty data

    wait_until(lambda: httpx2.get(url + "/readyz").status_code == 200, timeout=5, what="recovery")
    created = httpx2.post(url + "/v1/tasks", json={"title": "after"})
    assert created.status_code == 201
    assert httpx2.get(url + created.headers["location"]).status_code == 200
    assert service.proc.poll() is None


# An ACL user with only what the app needs: its keys, and the command groups the chart README names.
APP_ACL = "~tasks:* +@read +@write +@scripting +@keyspace +@connection +role"


@pytest.fixture
def acl_redis() -> Iterator[RedisServer]:
    """A redis-server whose `default` user needs a password and which has an ACL user `tasks`."""
    server = RedisServer(password="default-password")
    server.start()
    server.client().execute_command(
        "ACL", "SETUSER", "tasks", "on", ">tasks-password", *APP_ACL.split()
    )
    yield server
    server.stop()


@pytest.mark.factor("III", "IV")
def test_an_acl_user_serves_the_api_and_a_wrong_one_fails_fast_with_503(
    acl_redis: RedisServer, start_service: StartService
) -> None:
    as_user = redis_env(acl_redis, TASKS_REDIS_PASSWORD="tasks-password")
    service = start_service(**as_user, TASKS_REDIS_USERNAME="tasks")
    created = httpx2.post(service.base_url + "/v1/tasks", json={"title": "as an ACL user"})
    assert created.status_code == 201
    assert httpx2.get(service.base_url + created.headers["location"]).status_code == 200
    assert acl_redis.client().exists(f"tasks:task:{created.json()['id']}") == 1

    wrong = start_service(wait=False, **as_user, TASKS_REDIS_USERNAME="nobody")
    wait_until(lambda: accepts_connections(wrong.port), timeout=15, what="the listener")
    for path in ("/readyz", "/v1/tasks"):
        started = time.monotonic()
        response = httpx2.get(wrong.base_url + path, timeout=30)
        assert time.monotonic() - started < FAST, path
        assert response.status_code == 503 and response.headers["content-type"] == PROBLEM
    assert "tasks-password" not in wrong.output()


@pytest.mark.factor("IV", "XII")
def test_the_admin_jobs_run_as_the_acl_user(acl_redis: RedisServer, tmp_path: Path) -> None:
    env = service_env(
        **redis_env(acl_redis, TASKS_REDIS_PASSWORD="tasks-password"),
        TASKS_REDIS_USERNAME="tasks",
    )
    for job in ("migrate", "cleanup"):  # the chart's hook Job and CronJob
        result = subprocess.run(
            [sys.executable, "-m", "jobs", job],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (job, result.stderr)
        assert json.loads(result.stdout.splitlines()[-1])["job"] == job


# --- logs (XI) ------------------------------------------------------------------------------


@pytest.mark.factor("XI")
def test_stdout_is_json_lines_with_one_access_line_per_request(
    start_service: StartService,
) -> None:
    service = start_service()
    created = httpx2.post(
        service.base_url + "/v1/tasks", json={"title": "x"}, headers={"X-Request-ID": "req-42"}
    )
    fetched = httpx2.get(service.base_url + created.headers["location"])
    assert created.headers["x-request-id"] == "req-42"
    generated = fetched.headers["x-request-id"]
    assert service.stop() == 0

    lines = [json.loads(line) for line in service.output().splitlines()]  # each line is JSON

    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    access = [line for line in lines if line["logger"] == "tasks.access"]
    ids = [line["request_id"] for line in access]
    # One line per request: the two above, and the readiness polls of the start, no more.
    assert ids.count("req-42") == ids.count(generated) == 1, ids
    assert len(ids) == len(set(ids)), "a request was logged twice"
    by_id = {line["request_id"]: line for line in access}
    assert by_id["req-42"]["method"] == "POST" and by_id["req-42"]["route"] == "/v1/tasks"
    assert by_id["req-42"]["status"] == 201
    assert by_id[generated]["route"] == "/v1/tasks/{task_id}"
    assert by_id[generated]["status"] == 200 and by_id[generated]["duration_ms"] >= 0


# --- README claims: bounds, secrets, where logs go ------------------------------------------


@pytest.mark.factor("III")
def test_a_config_error_exits_before_any_port_is_bound(tmp_path: Path) -> None:
    """Both ports are held by the test: a process that bound before validating its settings
    would fail on the bind, not with the config error."""
    with socket.socket() as api, socket.socket() as metrics:
        for held in (api, metrics):
            held.bind(("127.0.0.1", 0))
            held.listen()
        env = service_env(
            PORT=str(api.getsockname()[1]),
            TASKS_METRICS_PORT=str(metrics.getsockname()[1]),
            TASKS_LOG_LEVEL="loud",
        )
        result = subprocess.run(
            [sys.executable, "-m", "service"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("config error: ")
    ]
    assert "TASKS_LOG_LEVEL" in result.stderr and "in use" not in result.stderr.lower()


GRACE = 2  # TASKS_GRACEFUL_TIMEOUT_SECONDS of the test below


@pytest.mark.factor("IX")
def test_draining_is_bounded_by_the_graceful_timeout(
    private_redis: RedisServer, start_service: StartService
) -> None:
    """A request that would take a minute (Redis frozen, a 60 s store timeout) does not hold
    the shutdown past TASKS_GRACEFUL_TIMEOUT_SECONDS."""
    service = start_service(
        **redis_env(private_redis, TASKS_REDIS_TIMEOUT_SECONDS="60"),
        TASKS_GRACEFUL_TIMEOUT_SECONDS=str(GRACE),
    )
    private_redis.freeze()
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(httpx2.get, service.base_url + "/v1/tasks", timeout=90)
        wait_until(lambda: in_flight(service) >= 1, timeout=10, what="the stuck request")
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(timeout=45)
        took = time.monotonic() - signalled
        private_redis.thaw()
        with contextlib.suppress(httpx2.HTTPError):
            stuck.result()
    # At least the grace period, and well short of the 20 s default: the setting, not the
    # default, bounded the drain (the request alone would have taken a minute).
    print(f"shutdown with a stuck request took {took:.2f} s (grace {GRACE} s)")
    assert GRACE <= took < GRACE + 10, took
    assert not accepts_connections(service.port)


@pytest.mark.factor("III", "XI")
def test_the_redis_password_is_never_logged(start_service: StartService) -> None:
    """Debug logging, a failed login, an outage and a shutdown: the password never shows."""
    password = "never-logged-" + os.urandom(8).hex()
    server = RedisServer(password=password)
    server.start()
    try:
        service = start_service(
            **redis_env(server, TASKS_REDIS_PASSWORD=password), TASKS_LOG_LEVEL="debug"
        )
        assert httpx2.post(service.base_url + "/v1/tasks", json={"title": "x"}).status_code == 201
        admin = server.client()
        admin.config_set("requirepass", password + "-rotated")  # the app's login now fails
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
        assert httpx2.get(service.base_url + "/v1/tasks").status_code == 503
        server.stop()
        assert httpx2.get(service.base_url + "/readyz").status_code == 503
        assert service.stop() == 0
    finally:
        server.stop()
    output = service.output()
    assert "store unavailable" in service.messages()  # the failures were logged, without it
    assert password not in output


def open_paths(pid: int) -> set[str]:
    """The paths a process has open (sockets and pipes aside). A descriptor closed between the
    listing and its readlink (a connection ending) is skipped."""
    paths = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if (target := os.readlink(fd)).startswith("/"):
                paths.add(target)
    return paths


@pytest.mark.factor("XI")
def test_the_process_writes_no_log_file(tmp_path: Path, private_redis: RedisServer) -> None:
    """Its logs go to stdout only: while it serves, no regular file is open but the stdout it
    was given, and nothing is written to its working directory."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    service = ServiceProcess(
        service_env(**redis_env(private_redis), TASKS_LOG_LEVEL="debug"), cwd=workdir
    )
    try:
        service.wait_ready()
        httpx2.post(service.base_url + "/v1/tasks", json={"title": "x"})
        httpx2.get(service.base_url + "/no/such/route")
        open_files = open_paths(service.proc.pid) - {"/dev/null", "/dev/urandom"}
        assert open_files == {service.log.name}, open_files
    finally:
        assert service.stop() == 0
    assert list(workdir.iterdir()) == []
    assert "store closed" in service.messages()


@pytest.mark.factor("III", "IV")
@pytest.mark.parametrize(
    ("url_user", "username"),
    [("tasks", None), ("nobody", "tasks")],
    ids=["the-urls-user", "the-setting-over-the-urls"],
)
def test_the_redis_user_comes_from_the_url_unless_the_setting_names_one(
    acl_redis: RedisServer, make_settings, url_user: str, username: str | None
) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from service.app import create_app

    settings = make_settings(
        "redis",
        redis_url=f"redis://{url_user}@127.0.0.1:{acl_redis.port}/0",
        redis_password="tasks-password",
        redis_username=username,
        redis_key_prefix="tasks:",
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/tasks", json={"title": "x"}).status_code == 201
        users = [c["user"] for c in acl_redis.client().client_list()]
    # The app's pooled connections, and this test's own (as `default`).
    assert users.count("default") == 1 and set(users) == {"default", "tasks"}, users


@pytest.mark.factor("VII")
def test_the_process_binds_the_configured_host_only(start_service: StartService) -> None:
    """TASKS_HOST=127.0.0.2 (loopback too): the API answers there and not on 127.0.0.1."""
    service = start_service(wait=False, TASKS_HOST="127.0.0.2")
    url = f"http://127.0.0.2:{service.port}"
    wait_until(lambda: accepts_on("127.0.0.2", service.port), timeout=30, what="the listener")
    assert httpx2.get(url + "/livez").status_code == 200
    assert not accepts_connections(service.port)  # 127.0.0.1


def accepts_on(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
