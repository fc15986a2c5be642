"""The store operations the admin jobs build on, on both stores, and the data layout guard."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.domain import Status, Task, TaskCreate, TaskPatch, task_fields
from service.store import TaskStore
from service.store.base import LAYOUT_VERSION, LayoutMismatch, LayoutWindow, Swept
from service.store.migrations import BUILD_LAYOUT
from tests.support import new_task, with_store

T = TypeVar("T")
NOW = datetime(2026, 1, 15, 12, 0, 0, 123456, tzinfo=UTC)


def task(title: str = "t", status: Status = Status.todo, at: datetime = NOW) -> Task:
    return new_task(TaskCreate(title=title, status=status), now=at)


@pytest.mark.factor("XII", "X")
def test_scan_ids_walks_an_index_in_id_order_in_bounded_batches(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    tasks = [task(str(i), Status.done if i % 3 == 0 else Status.todo) for i in range(25)]

    async def walk(store: TaskStore) -> tuple[list[list[str]], list[str]]:
        await store.put_many(tasks)
        batches, after = [], None
        while ids := await store.scan_ids(status=None, after=after, limit=10):
            batches.append(ids)
            after = ids[-1]
            if len(batches) == 1:  # deleting behind the cursor changes nothing ahead of it
                await store.delete(ids[0])
        done = await store.scan_ids(status=Status.done, after=None, limit=100)
        return batches, done

    batches, done = with_store(make_settings(store_kind), walk)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [i for b in batches for i in b] == sorted(t.id for t in tasks)
    first = min(t.id for t in tasks)  # the one deleted mid-walk
    assert done == sorted(t.id for t in tasks if t.status is Status.done and t.id != first)


@pytest.mark.factor("XII", "X")
def test_put_many_upserts_every_field_and_moves_the_status_index(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    original = task("first")
    moved = original.model_copy(
        update={"title": "moved", "status": Status.done, "completed_at": NOW + timedelta(1)}
    )
    other = task("other", Status.in_progress, NOW.replace(microsecond=0))

    async def scenario(store: TaskStore) -> tuple[list[Task], list[str], list[str]]:
        await store.put_many([original, other])
        await store.put_many([moved])
        got = await store.get_many([moved.id, "absent", other.id])
        todo = await store.scan_ids(status=Status.todo, after=None, limit=10)
        done = await store.scan_ids(status=Status.done, after=None, limit=10)
        return got, todo, done

    got, todo, done = with_store(make_settings(store_kind), scenario)
    assert got == [moved, other]  # every field, timestamps included; absent ids skipped
    assert todo == [] and done == [moved.id]


@pytest.mark.factor("XII", "X")
def test_every_write_keeps_the_completion_time_index(store_kind: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Create, patch, delete, put_many and delete_unchanged: the index holds exactly the done
    tasks, at their completed_at, and `scan_completed` reads up to the bound, not past it."""
    created = task("created done", Status.done, NOW - timedelta(hours=5))
    completed = task("completed by a patch", Status.todo, NOW - timedelta(hours=9))
    reopened = task("re-opened", Status.done, NOW - timedelta(hours=4))
    deleted = task("deleted", Status.done, NOW - timedelta(hours=3))
    imported = task("imported", Status.done, NOW - timedelta(hours=2))
    purged = task("purged", Status.done, NOW - timedelta(hours=1))
    recent = task("recent", Status.done, NOW + timedelta(hours=1))

    async def scenario(store: TaskStore) -> list[tuple[datetime, str]]:
        for one in (created, completed, reopened, deleted):
            await store.create(task_fields(one))
        at = NOW - timedelta(hours=6)
        await store.patch(completed.id, TaskPatch(status="done"), now=at)
        await store.patch(reopened.id, TaskPatch(status=Status.todo))
        await store.patch(created.id, TaskPatch(title="edited"))
        await store.delete(deleted.id)
        await store.put_many([imported, purged, recent])
        await store.delete_unchanged([purged])
        # put_many over a done task that is no longer done takes it out
        await store.put_many(
            [imported.model_copy(update={"status": Status.todo, "completed_at": None})]
        )
        return await store.scan_completed(before=NOW, after=None, limit=10)

    found = with_store(make_settings(store_kind), scenario)
    assert found == [
        (NOW - timedelta(hours=6), completed.id),
        (NOW - timedelta(hours=5), created.id),
    ]


@pytest.mark.factor("XII", "X")
def test_scan_completed_walks_ties_by_id_and_cuts_at_the_microsecond(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """Tasks completed at one instant (an import) are walked in id order, batch by batch, the
    cursor's own entry deleted or kept; the bound is exclusive to the microsecond."""
    same = [task(str(i), Status.done, NOW - timedelta(days=1)) for i in range(23)]
    edge = [
        task("a microsecond before", Status.done, NOW - timedelta(microseconds=1)),
        task("at the bound", Status.done, NOW),
    ]

    async def walk(store: TaskStore) -> list[list[str]]:
        await store.put_many(same + edge)
        batches, after = [], None
        while found := await store.scan_completed(before=NOW, after=after, limit=5):
            batches.append([task_id for _, task_id in found])
            after = found[-1]
            if len(batches) % 2:  # every other batch deleted behind the cursor, its last too
                await store.delete_unchanged(await store.get_many(batches[-1]))
        return batches

    batches = with_store(make_settings(store_kind), walk)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    assert [i for b in batches for i in b] == [*sorted(t.id for t in same), edge[0].id]


@pytest.mark.factor("XII", "VIII", "X")
def test_delete_unchanged_keeps_a_task_modified_since_it_was_read(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    old = [task(str(i), Status.done, NOW - timedelta(days=30)) for i in range(3)]

    async def scenario(store: TaskStore) -> tuple[list[str], list[Task]]:
        await store.put_many(old)
        read = await store.get_many([t.id for t in old])
        # Meanwhile: one is re-opened, one is edited (still done), one is deleted.
        await store.patch(old[0].id, TaskPatch(status=Status.todo))
        await store.patch(old[1].id, TaskPatch(title="edited"))
        await store.delete(old[2].id)
        deleted = await store.delete_unchanged(read)
        return deleted, await store.get_many([t.id for t in old])

    deleted, left = with_store(make_settings(store_kind), scenario)
    assert deleted == []
    assert [t.title for t in left] == ["0", "edited"]
    assert left[0].status is Status.todo

    async def unchanged(store: TaskStore) -> tuple[list[str], list[str], list[str]]:
        fresh = [task("a", Status.done), task("b", Status.done)]
        await store.put_many(fresh)
        deleted = await store.delete_unchanged(await store.get_many([t.id for t in fresh]))
        everything = await store.scan_ids(status=None, after=None, limit=10)
        return deleted, [t.id for t in fresh], everything

    deleted, ids, everything = with_store(make_settings(store_kind), unchanged)
    assert deleted == ids and not set(ids) & set(everything)


@pytest.mark.factor("XII", "X")
def test_delete_completed_takes_the_oldest_expired_in_bounded_passes_and_nothing_else(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """Cleanup's sweep: the expired done tasks go, oldest first, `limit` at a time, with their
    index entries; a task completed at the bound, a re-opened one and open ones stay."""
    expired = [task(f"expired {i}", Status.done, NOW - timedelta(days=9 - i)) for i in range(7)]
    at_bound = task("completed at the bound", Status.done, NOW)
    reopened = task("re-opened", Status.done, NOW - timedelta(days=20))
    open_ = [task("todo"), task("in progress", Status.in_progress, NOW - timedelta(days=30))]

    async def sweep(store: TaskStore) -> tuple[list[Swept], list[str], list[str], list[str]]:
        await store.put_many([*expired, at_bound, reopened, *open_])
        await store.patch(reopened.id, TaskPatch(status=Status.todo))
        passes = []
        while True:
            passes.append(await store.delete_completed(before=NOW, limit=3))
            if not passes[-1].looked:
                break
        left = await store.scan_ids(status=None, after=None, limit=100)
        done = await store.scan_ids(status=Status.done, after=None, limit=100)
        indexed = await store.scan_completed(before=NOW + timedelta(1), after=None, limit=100)
        return passes, left, done, [task_id for _, task_id in indexed]

    settings = make_settings(store_kind)
    passes, left, done, indexed = with_store(settings, sweep)
    if store_kind == "cluster":  # the shards share `limit`: each takes at least one
        assert sum(p.deleted for p in passes) == 7 and passes[-1] == (0, 0)
    else:
        assert passes == [(3, 3), (3, 3), (1, 1), (0, 0)]
    assert left == sorted(t.id for t in (at_bound, reopened, *open_))
    assert done == indexed == [at_bound.id]


@pytest.mark.factor("XII", "X")
def test_delete_completed_drops_an_index_entry_whose_task_is_not_done(make_settings) -> None:  # type: ignore[no-untyped-def]
    """No writer leaves one, but a sweep must not delete such a task, nor stall on its entry."""
    settings = make_settings("redis")
    stray, old = task("todo, yet in the index"), task("old", Status.done, NOW - timedelta(1))

    async def sweep(store: TaskStore) -> tuple[list[Swept], list[str]]:
        await store.put_many([stray, old])
        raw = redis.Redis.from_url(settings.redis_url)
        raw.zadd(f"{settings.redis_key_prefix}index:completed", {stray.id: 1})
        raw.close()
        passes = [await store.delete_completed(before=NOW, limit=10) for _ in range(2)]
        return passes, await store.scan_ids(status=None, after=None, limit=10)

    passes, left = with_store(settings, sweep)
    assert passes == [(2, 1), (0, 0)]
    assert left == [stray.id]


@pytest.mark.factor("XII", "VIII", "X")
def test_a_lock_is_held_by_one_token_until_released_or_expired(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    async def scenario(store: TaskStore) -> None:
        token = await store.acquire_lock("job", 10)
        assert token is not None
        assert await store.acquire_lock("job", 10) is None
        assert await store.acquire_lock("other-job", 10) is not None
        assert not await store.release_lock("job", "not-the-token")
        assert await store.renew_lock("job", token, 0.05)
        await asyncio.sleep(0.1)  # let the lock's own expiry pass
        assert not await store.renew_lock("job", token, 10)
        second = await store.acquire_lock("job", 10)
        assert second is not None and second != token
        assert not await store.release_lock("job", token)
        assert await store.release_lock("job", second)
        assert await store.acquire_lock("job", 10) is not None

    with_store(make_settings(store_kind), scenario)


@pytest.mark.factor("XII", "X")
def test_the_layout_window_is_recorded_on_first_contact(store_kind: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(store: TaskStore) -> tuple[LayoutWindow | None, LayoutWindow | None]:
        before = await store.layout()
        await store.ping()
        return before, await store.layout()

    before, after = with_store(make_settings(store_kind), scenario)
    ours = LayoutWindow(LAYOUT_VERSION, BUILD_LAYOUT.fresh_min)
    assert before == (ours if store_kind == "memory" else None)
    assert after == ours


# --- the layout guard (Redis: the layout is shared with other builds) ------------------------


def contract_past_this_build(plain: redis.Redis, prefix: str) -> None:
    """What a newer build's `migrate --contract` records: a layout no longer for this build."""
    plain.mset(
        {f"{prefix}meta:layout": LAYOUT_VERSION + 1, f"{prefix}meta:layout-min": LAYOUT_VERSION + 1}
    )


@pytest.mark.factor("XII", "IX")
def test_a_layout_contracted_past_the_build_fails_readiness_and_refuses_writes(
    make_settings, redis_server
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis")
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        created = client.post("/v1/tasks", json={"title": "before the upgrade"})
        assert created.status_code == 201
        # A newer build contracted the data; this (rolled-back) pod must step aside.
        contract_past_this_build(plain, settings.redis_key_prefix)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == (
            f"data layout {LAYOUT_VERSION + 1} is newer than this build understands "
            f"({LAYOUT_VERSION})"
        )
        assert ready.json()["checks"]["store"] == "layout-mismatch"
        assert ready.json()["layout"] == {
            "stored": LAYOUT_VERSION + 1,
            "min_compatible": LAYOUT_VERSION + 1,
            "understood": LAYOUT_VERSION,
        }
        for response in (
            client.post("/v1/tasks", json={"title": "x"}),
            client.patch(created.headers["location"], json={"title": "y"}),
            client.delete(created.headers["location"]),
        ):
            assert response.status_code == 503
            assert "newer than this build" in response.json()["detail"]
        # Reading the old task still works; nothing was written.
        assert client.get(created.headers["location"]).json()["title"] == "before the upgrade"
        assert plain.get(f"{settings.redis_key_prefix}meta:layout") == str(LAYOUT_VERSION + 1)


@pytest.mark.factor("XII")
def test_a_write_notices_a_contraction_within_a_second(make_settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis")
    plain = redis.Redis.from_url(redis_server.url, decode_responses=True)

    async def scenario(store: TaskStore) -> None:
        await store.create(task_fields(task("first")))
        contract_past_this_build(plain, settings.redis_key_prefix)
        await asyncio.sleep(1.1)
        with pytest.raises(LayoutMismatch):
            await store.create(task_fields(task("second")))

    with_store(settings, scenario)
