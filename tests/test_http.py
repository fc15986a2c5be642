"""HTTP semantics (RFC 9110) and hostile input: HEAD, 405 + Allow, conditional requests, media
types, malformed ids, bounded bodies and headers, write access before the body, and errors that
keep their request id. In process on both stores, and as a real process where the server's own
behaviour (connections, memory, logs) is the point."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from service.api.problems import answer
from service.app import create_app
from service.domain import DESCRIPTION_MAX, TITLE_MAX, TaskCreate, TaskPatch, new_fields
from service.errors import PreconditionFailed, TasksError, Unavailability
from service.settings import DEFAULT_MAX_BODY_BYTES
from service.store import open_store
from service.store.base import BuildLayout, LayoutWindow
from tests.conftest import StartService
from tests.support import RedisServer, ServiceProcess, free_port, redis_env

PROBLEM = "application/problem+json"
KEY = "a-key-of-sixteen-or-more"
UNKNOWN_ID = "01aaaaaaaaaaaaaaaaaaaaaaaa"
pytestmark = [pytest.mark.factor("X"), pytest.mark.timeout(120)]


def assert_problem(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"title": "a task", **body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# --- methods --------------------------------------------------------------------------------


def test_head_answers_every_get_route_with_the_get_headers_and_no_body(client: TestClient) -> None:
    task = create(client)
    paths = sorted(
        route.path.replace("{task_id}", task["id"])
        for route in client.app.routes  # type: ignore[attr-defined]
        if "GET" in (getattr(route, "methods", None) or ())
    )
    assert "/v1/tasks/" + task["id"] in paths and "/readyz" in paths

    for path in paths:
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path.startswith("/v1/"):
            assert head.headers["content-length"] == get.headers["content-length"]
    assert client.head(f"/v1/tasks/{task['id']}").headers["etag"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/tasks", "GET, HEAD, POST"),
        ("DELETE", "/v1/tasks", "GET, HEAD, POST"),
        ("PUT", f"/v1/tasks/{UNKNOWN_ID}", "DELETE, GET, HEAD, PATCH"),
        ("POST", f"/v1/tasks/{UNKNOWN_ID}", "DELETE, GET, HEAD, PATCH"),
        ("POST", "/readyz", "GET, HEAD"),
    ],
)
def test_405_lists_every_method_of_the_path_in_allow(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, json={"title": "x"})
    assert_problem(response, 405)
    assert response.headers["allow"] == allow


# --- conditional requests -------------------------------------------------------------------


def test_if_none_match_compares_weakly(client: TestClient) -> None:
    task = create(client)
    url = f"/v1/tasks/{task['id']}"
    etag = client.get(url).headers["etag"]

    for header in (etag, f"W/{etag}", f'"other", W/{etag}', "*"):
        response = client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_delete_with_a_stale_etag_returns_412_and_keeps_the_task(client: TestClient) -> None:
    task = create(client)
    url = f"/v1/tasks/{task['id']}"
    stale = client.get(url).headers["etag"]
    client.patch(url, json={"title": "changed"})

    assert_problem(client.delete(url, headers={"If-Match": stale}), 412)
    assert_problem(client.delete(url, headers={"If-Match": f"W/{stale}"}), 412)  # strong only
    assert client.get(url).json()["title"] == "changed"

    current = client.get(url).headers["etag"]
    assert client.delete(url, headers={"If-Match": current}).status_code == 204
    assert_problem(client.get(url), 404)


@pytest.mark.factor("VIII")
def test_conditional_deletes_and_patches_on_one_etag_let_exactly_one_win(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """If-Match on DELETE is compare-and-set in the store, like on PATCH: of writers that hold
    the same ETag, one deletes or patches, the others are refused."""

    async def race() -> list[str]:
        store = open_store(make_settings(store_kind))
        try:
            original = (await store.create(new_fields(TaskCreate(title="contended")))).task

            held = frozenset({(await store.get_json(original.id)).etag})

            async def deleter() -> str:
                try:
                    await store.delete(original.id, held)
                    return "deleted"
                except PreconditionFailed:
                    return "refused"
                except Exception as exc:  # TaskNotFound: the winner deleted it
                    return type(exc).__name__

            async def patcher(i: int) -> str:
                try:
                    await store.patch(original.id, TaskPatch(title=f"writer {i}"), held)
                    return "patched"
                except PreconditionFailed:
                    return "refused"
                except Exception as exc:
                    return type(exc).__name__

            calls = [deleter() if i % 2 else patcher(i) for i in range(10)]
            return await asyncio.gather(*calls)
        finally:
            await store.close()

    results = asyncio.run(race())
    winners = [r for r in results if r in ("deleted", "patched")]
    assert len(winners) == 1, results
    assert set(results) - {"deleted", "patched"} <= {"refused", "TaskNotFound"}


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"title=x", "application/x-www-form-urlencoded"),
        (b'{"title": "x"}', "text/plain"),
        (b"", None),
    ],
    ids=["form", "text", "none"],
)
def test_a_body_that_is_not_json_is_415_naming_what_is_accepted(
    client: TestClient, content: bytes, content_type: str | None
) -> None:
    task = create(client)
    headers = {"content-type": content_type} if content_type else {}

    post = client.post("/v1/tasks", content=content, headers=headers)
    patch = client.patch(f"/v1/tasks/{task['id']}", content=content, headers=headers)

    assert_problem(post, 415)
    assert post.headers["accept-post"] == "application/json"
    assert_problem(patch, 415)
    assert patch.headers["accept-patch"] == "application/json"


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/merge-patch+json", "application/vnd.x+json"],
)
def test_any_json_media_type_is_accepted_for_writes(client: TestClient, content_type: str) -> None:
    """`application/json` or any `application/*+json`, as the README says."""
    headers = {"content-type": content_type}

    post = client.post("/v1/tasks", content=b'{"title": "x"}', headers=headers)
    assert post.status_code == 201, post.text
    patch = client.patch(post.headers["location"], content=b'{"status": "done"}', headers=headers)
    assert patch.status_code == 200 and patch.json()["status"] == "done", patch.text


def test_the_largest_valid_task_fits_the_default_body_limit(client: TestClient) -> None:
    """Every character a JSON-escaped surrogate pair: the longest a valid task can be."""
    emoji = "\\ud83d\\ude00"  # 12 bytes on the wire, one character once parsed
    title, description = emoji * TITLE_MAX, emoji * DESCRIPTION_MAX
    body = f'{{"title": "{title}", "description": "{description}", "status": "in_progress"}}'
    assert len(body) <= DEFAULT_MAX_BODY_BYTES
    response = client.post(
        "/v1/tasks", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert len(response.json()["description"]) == DESCRIPTION_MAX


def test_a_body_over_the_limit_is_413_whether_declared_or_counted(make_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(max_body_bytes=2048))) as client:
        declared = client.post("/v1/tasks", json={"title": "x", "description": "y" * 3000})

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it comes
            yield b'{"title": "x", "description": "'
            for _ in range(10):
                yield b"y" * 512
            yield b'"}'

        counted = client.post(
            "/v1/tasks", content=chunks(), headers={"content-type": "application/json"}
        )
        fits = client.post("/v1/tasks", json={"title": "x", "description": "y" * 1900})

    for response in (declared, counted):
        assert_problem(response, 413)
        assert response.headers["connection"] == "close"
    assert fits.status_code == 201


def test_malformed_task_ids_are_404_without_asking_the_store(make_settings) -> None:  # type: ignore[no-untyped-def]
    """The store here is a Redis that is not there: an id that reached it would answer 503."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings("redis", redis_url=nowhere)
    with TestClient(create_app(settings)) as client:
        for bad in (
            "x",
            "not-an-id",
            "01AAAAAAAAAAAAAAAAAAAAAAAA",
            "0" * 27,
            "%00",
            "01aaaaaaaaaaaaaaaaaaaaaaa!",
        ):
            url = f"/v1/tasks/{bad}"
            assert_problem(client.get(url), 404)
            assert client.head(url).status_code == 404
            assert_problem(client.patch(url, json={"title": "x"}), 404)
            assert_problem(client.delete(url), 404)
        assert_problem(client.get(f"/v1/tasks/{UNKNOWN_ID}"), 503)  # a well-formed id does


def test_every_status_an_operation_answers_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documented = {
        (path, method): set(operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    assert documented[("/v1/tasks", "post")] >= {"201", "400", "401", "413", "415", "422", "503"}
    assert documented[("/v1/tasks", "get")] >= {"200", "400", "422", "503"}
    assert documented[("/v1/tasks/{task_id}", "get")] >= {"200", "304", "404", "503"}
    assert documented[("/v1/tasks/{task_id}", "patch")] >= {
        "200", "400", "401", "404", "412", "413", "415", "422", "503"
    }  # fmt: skip
    assert documented[("/v1/tasks/{task_id}", "delete")] >= {"204", "401", "404", "412", "503"}
    assert documented[("/readyz", "get")] >= {"200", "503"}


# --- the real process: memory, connections, logs ----------------------------------------------


def rss_bytes(process: ServiceProcess) -> int:
    status = open(f"/proc/{process.proc.pid}/status").read()  # noqa: SIM115
    kb = next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


class RawHttp:
    """One HTTP/1.1 exchange on a plain socket, so a test controls what is sent and when."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sent = 0

    def __enter__(self) -> RawHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send, unless the server has closed the connection; False then."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.sent += len(data)
        return True

    def answered(self, wait: float = 0.0) -> bool:
        return bool(select.select([self.sock], [], [], wait)[0])

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def data_segments_in(sock: socket.socket) -> int:
    """TCP segments with data this socket has received: `tcpi_data_segs_in` of Linux's
    struct tcp_info (linux/tcp.h), at byte 152."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


@pytest.mark.factor("VII")
def test_a_response_leaves_in_one_tcp_segment(start_service: StartService) -> None:
    """uvicorn writes a response's head and its body apart; the server sends them together:
    one write and one segment for each response, where two would double the system calls and
    packets of every request."""
    service = start_service()
    with RawHttp(service.port) as http:
        body = b'{"title": "one segment"}'
        http.send(
            b"POST /v1/tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, headers, _ = http.response()
        assert status == 201 and data_segments_in(http.sock) == 1
        for n, path in enumerate([headers["location"], "/livez", "/v1/tasks/nope"], start=2):
            http.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            status, _, answer = http.response()
            assert answer and data_segments_in(http.sock) == n  # the answer's head and body
        assert status == 404


HUNDRED_MB = 100 * 1024 * 1024
CHUNK = b"x" * 65536


def post_head(size: int | None, authorization: str | None = None) -> bytes:
    lines = ["POST /v1/tasks HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {size}" if size is not None else "Transfer-Encoding: chunked")
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.factor("IX")
def test_hostile_bodies_are_refused_before_they_are_read_and_cost_no_memory(
    start_service: StartService,
) -> None:
    """20 unauthenticated 100 MB POSTs (10 declared, 10 chunked) and 5 authenticated chunked
    ones: each answered from its head alone (401), or at the first bytes past the limit (413),
    then closed. Bound: the process grows less than 10 MB across all of them."""
    service = start_service(TASKS_API_KEYS=KEY)
    warm = httpx2.post(
        service.base_url + "/v1/tasks",
        json={"title": "warm"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert warm.status_code == 201
    before = rss_bytes(service)

    for i in range(20):
        with RawHttp(service.port) as http:
            http.send(post_head(HUNDRED_MB if i % 2 else None))
            assert http.answered(wait=5), "answered from the head alone, before any body byte"
            status, headers, body = http.response()
            assert status == 401 and headers["content-type"] == PROBLEM
            assert headers["connection"] == "close"
            while http.sent < HUNDRED_MB and http.send(CHUNK):  # the rest goes nowhere
                pass
            assert http.sent < HUNDRED_MB, "the server stopped reading"

    for _ in range(5):
        with RawHttp(service.port) as http:
            http.send(post_head(None, f"Bearer {KEY}"))
            frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
            while http.sent < HUNDRED_MB and not http.answered() and http.send(frame):
                pass
            assert http.sent < HUNDRED_MB
            try:
                status, _, body = http.response()
            except ConnectionResetError:
                continue  # the server closed with our bytes unread; the 413 was lost with them
            assert status == 413 and json.loads(body)["status"] == 413

    growth = rss_bytes(service) - before
    print(f"RSS growth across 25 hostile 100 MB POSTs: {growth / 1e6:.2f} MB")
    assert growth < 10 * 1024 * 1024
    assert httpx2.get(service.base_url + "/readyz").status_code == 200


@pytest.mark.factor("IX")
def test_an_oversized_request_head_is_431_and_costs_no_memory(start_service: StartService) -> None:
    service = start_service(TASKS_MAX_HEADER_BYTES="8192")
    before = rss_bytes(service)

    # A whole head of 9,000 bytes: past the configured 8 KiB, though under the 16 KiB default.
    with RawHttp(service.port) as http:
        http.send(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n")
        status, headers, body = http.response()
    assert status == 431 and headers["connection"] == "close"
    assert "at most 8192 bytes" in json.loads(body)["detail"]

    for _ in range(20):
        with RawHttp(service.port) as http:
            http.send(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: ")
            while http.sent < 10 * 1024 * 1024 and not http.answered() and http.send(CHUNK):
                pass
            status, headers, _ = http.response()
            assert status == 431 and headers["content-type"] == PROBLEM
            assert http.sent < 10 * 1024 * 1024

    assert rss_bytes(service) - before < 10 * 1024 * 1024
    under = httpx2.get(service.base_url + "/livez", headers={"X-Big": "y" * 6000})
    assert under.status_code == 200


@pytest.mark.factor("XI")
def test_an_unhandled_error_is_500_problem_with_its_request_id_logged_once(
    private_redis: RedisServer, start_service: StartService
) -> None:
    """A task hash that is not a task (corrupt data) makes reading it fail in a way no handler
    expects: the client gets 500 problem+json with its request id; the log has one error line
    carrying that id, and nothing from the server about an exception."""
    service = start_service(**redis_env(private_redis))
    private_redis.client().hset(f"tasks:task:{UNKNOWN_ID}", mapping={"title": "half a task"})

    response = httpx2.get(
        f"{service.base_url}/v1/tasks/{UNKNOWN_ID}", headers={"X-Request-ID": "req-500"}
    )

    body = assert_problem(response, 500)
    assert not body.get("detail"), "a bug's answer gives no detail"
    assert response.headers["x-request-id"] == "req-500"
    assert "half a task" not in response.text
    assert service.stop() == 0
    lines = [json.loads(line) for line in service.output().splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "req-500" and "exc" in errors[0]
    assert not [line for line in lines if line["logger"].startswith("uvicorn") and "exc" in line]
    access = [line for line in lines if line["logger"] == "tasks.access"]
    assert [(a["request_id"], a["status"]) for a in access if a["request_id"] == "req-500"] == [
        ("req-500", 500)
    ]


def test_every_error_type_has_exactly_one_problem_answer() -> None:
    """The store and the routes raise domain errors; problems.py alone gives each its status."""

    def leaves(cls: type[TasksError]) -> set[type[TasksError]]:
        return {cls} | {leaf for sub in cls.__subclasses__() for leaf in leaves(sub)}

    samples = {
        "UnsupportedMediaType": ("POST",),
        "StoreUnavailable": (Unavailability.timeout,),
        "LayoutMismatch": (LayoutWindow(2, 2), BuildLayout(1, 1, 1)),
        "ShardCountMismatch": (16, 8),
    }
    # The statuses the README gives; Retry-After on every "try again" answer.
    statuses = {
        "InvalidCursor": 400,
        "Unauthorized": 401,
        "TaskNotFound": 404,
        "PreconditionFailed": 412,
        "BodyTooLarge": 413,
        "UnsupportedMediaType": 415,
        "IdempotencyKeyReused": 422,
        "StoreUnavailable": 503,
        "Overloaded": 503,
        "LayoutMismatch": 503,
        "ShardCountMismatch": 503,
    }
    errors = leaves(TasksError) - {TasksError}
    assert {error.__name__ for error in errors} == set(statuses)
    for error in errors:
        response = answer(error(*samples.get(error.__name__, ())))
        assert response.status_code == statuses[error.__name__], error
        assert response.media_type == PROBLEM
        assert json.loads(bytes(response.body))["status"] == response.status_code
        if error.__name__ in ("StoreUnavailable", "Overloaded"):
            assert response.headers["retry-after"] == "1", error
