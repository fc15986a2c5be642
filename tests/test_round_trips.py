"""Round trips to Redis per API call, counted with MONITOR on a real redis-server, so a change
that adds one (a read before a write, a second lookup) fails here rather than only in `bench/`.

Each call is made three times and the fewest round trips count: the first use of a Lua script
costs a NOSCRIPT answer and a SCRIPT LOAD once per process, and a write may re-read the layout
window (at most once a second); neither is the call's own cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from tests.support import RedisServer

Call = Callable[[TestClient, Any], httpx2.Response]  # (the app, what `prepare` made for this call)
END = "ECHO round-trips-end"


@pytest.fixture
def app_on_redis(private_redis: RedisServer, make_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from service.app import create_app

    settings = make_settings("redis", redis_url=private_redis.url)
    with TestClient(create_app(settings)) as client:
        yield client


def new_task(client: TestClient) -> str:
    response = client.post("/v1/tasks", json={"title": "counted"})
    assert response.status_code == 201
    return str(response.json()["id"])


def round_trips(
    redis: RedisServer, client: TestClient, call: Call, prepare: Callable[[TestClient], Any]
) -> list[str]:
    """The commands the app sent to Redis for one call (not those a Lua script ran inside it),
    on what `prepare` made for it beforehand (by default a task of its own)."""
    prepared = prepare(client)
    marker = redis.client()
    marker.ping()  # connected (and its handshake done) before MONITOR starts
    with redis.client().monitor() as monitor:
        response = call(client, prepared)
        assert response.status_code < 300, response.text
        marker.echo("round-trips-end")
        sent = []
        while (command := monitor.next_command())["command"] != END:
            if command["client_type"] != "lua":
                sent.append(command["command"].split(" ", 1)[0])
    marker.close()
    return sent


def fewest(
    redis: RedisServer,
    client: TestClient,
    call: Call,
    prepare: Callable[[TestClient], Any] = new_task,
) -> list[str]:
    return min((round_trips(redis, client, call, prepare) for _ in range(3)), key=len)


CALLS: dict[str, tuple[Call, int]] = {
    "GET one task": (lambda c, task: c.get(f"/v1/tasks/{task}"), 1),
    "POST": (lambda c, _: c.post("/v1/tasks", json={"title": "a"}), 1),
    "POST with Idempotency-Key": (
        lambda c, task: c.post("/v1/tasks", json={"title": "a"}, headers={"Idempotency-Key": task}),
        1,
    ),
    "PATCH": (lambda c, task: c.patch(f"/v1/tasks/{task}", json={"status": "done"}), 1),
    "DELETE": (lambda c, task: c.delete(f"/v1/tasks/{task}"), 1),
    "list page of 50": (lambda c, _: c.get("/v1/tasks?limit=50"), 1),
    "empty list page": (lambda c, _: c.get("/v1/tasks?status=done"), 1),
}


@pytest.mark.factor("IV")
@pytest.mark.parametrize("name", CALLS)
def test_round_trips_per_call(name: str, app_on_redis: TestClient, private_redis: RedisServer):
    call, budget = CALLS[name]
    for _ in range(60):  # the list page is full
        new_task(app_on_redis)
    sent = fewest(private_redis, app_on_redis, call)
    assert len(sent) <= budget, f"{name}: {sent}"


CONDITIONAL: dict[str, Call] = {
    "PATCH": lambda c, tagged: c.patch(
        f"/v1/tasks/{tagged[0]}", json={"title": "b"}, headers={"If-Match": tagged[1]}
    ),
    "DELETE": lambda c, tagged: c.delete(f"/v1/tasks/{tagged[0]}", headers={"If-Match": tagged[1]}),
}


@pytest.mark.factor("IV")
@pytest.mark.parametrize("method", CONDITIONAL)
def test_a_write_with_if_match_is_one_round_trip(
    method: str, app_on_redis: TestClient, private_redis: RedisServer
) -> None:
    """The script checks the ETag itself: no read before the write."""

    def tagged_task(client: TestClient) -> tuple[str, str]:
        task = new_task(client)
        return task, client.get(f"/v1/tasks/{task}").headers["etag"]

    assert fewest(private_redis, app_on_redis, CONDITIONAL[method], tagged_task) == ["EVALSHA"]
