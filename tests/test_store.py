"""Store-level promises: the Redis key space, atomic compare-and-set, processes sharing state."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.domain import TaskCreate, TaskPatch, apply_patch, new_task
from service.errors import PreconditionFailed
from service.store import open_store
from service.store.base import LAYOUT_VERSION
from tests.support import RedisServer


@pytest.mark.factor("IV")
def test_every_redis_key_starts_with_the_prefix_and_the_layout_is_recorded(
    redis_server: RedisServer, make_settings
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis", redis_key_prefix="prefix-test:")
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for key in plain.scan_iter("prefix-test:*"):
        plain.delete(key)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        task = client.post("/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "k"})
        client.patch(task.headers["location"], json={"status": "done"})

    keys = set(plain.keys("*"))
    ours = {k for k in keys if k.startswith("prefix-test:")}
    assert ours == {
        "prefix-test:meta:layout",
        f"prefix-test:task:{task.json()['id']}",
        "prefix-test:index:all",
        "prefix-test:index:status:done",
        *[k for k in ours if k.startswith("prefix-test:idempotency:")],
    }
    assert any(k.startswith("prefix-test:idempotency:") for k in ours)
    assert plain.get("prefix-test:meta:layout") == str(LAYOUT_VERSION)
    assert 0 < plain.ttl(next(k for k in ours if ":idempotency:" in k)) <= 86400


@pytest.mark.factor("IV")
def test_redis_password_setting_overrides_the_url(make_settings) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(password="right-password")
    server.start()
    try:
        url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        settings = make_settings("redis", redis_url=url, redis_password="right-password")
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


@pytest.mark.factor("VIII", "X")
def test_concurrent_conditional_patches_let_exactly_one_win(store_kind: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """If-Match is compare-and-set in the store: of N writers holding the same ETag, one wins."""

    async def race() -> list[str]:
        store = open_store(make_settings(store_kind))
        try:
            created = await store.create(new_task(TaskCreate(title="contended")))
            task_id = created.task.id
            original = created.task

            def change_if_unchanged(i: int):  # type: ignore[no-untyped-def]
                def change(current):  # type: ignore[no-untyped-def]
                    if current != original:
                        raise PreconditionFailed()
                    return apply_patch(current, TaskPatch(title=f"writer {i}"))

                return change

            async def writer(i: int) -> str:
                try:
                    await store.update(task_id, change_if_unchanged(i))
                    return "won"
                except PreconditionFailed:
                    return "lost"

            return await asyncio.gather(*(writer(i) for i in range(10)))
        finally:
            await store.close()

    results = asyncio.run(race())
    assert results.count("won") == 1 and results.count("lost") == 9


@pytest.mark.factor("VI", "VIII")
def test_two_app_instances_on_one_redis_see_the_same_tasks(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis")
    with (
        TestClient(create_app(settings)) as one,
        TestClient(create_app(settings)) as two,
        ThreadPoolExecutor(4) as pool,
    ):
        posted = list(
            pool.map(
                lambda i: (one, two)[i % 2].post("/v1/tasks", json={"title": str(i)}), range(20)
            )
        )
        assert all(r.status_code == 201 for r in posted)
        from_one = one.get("/v1/tasks?limit=100").json()["items"]
        from_two = two.get("/v1/tasks?limit=100").json()["items"]
    assert from_one == from_two and len(from_one) == 20
