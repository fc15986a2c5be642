"""Store-level promises: the Redis key space, atomic compare-and-set, processes sharing state."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import hypothesis
import pydantic
import pydantic_core
import pytest
from fastapi.testclient import TestClient
from hypothesis import strategies as st

from service.app import create_app
from service.domain import (
    _CROCKFORD,
    ID_PATTERN,
    TITLE_MAX,
    IdGenerator,
    Page,
    Status,
    Task,
    TaskCreate,
    TaskPatch,
    _encode_random,
    _encode_time,
    apply_patch,
    etag,
    fields_json,
    from_fields,
    json_time,
    micros,
    new_fields,
    page_json,
    task_fields,
    task_json,
    to_json,
)
from service.errors import PreconditionFailed, StoreUnavailable, Unavailability
from service.observability.metrics import Metrics
from service.store import TaskStore, open_store
from service.store.base import LAYOUT_VERSION, LayoutWindow, TaskList
from service.store.instrumented import InstrumentedStore
from service.store.memory import MemoryTaskStore
from service.store.redis import RedisTaskStore, _from_hash, _json_fields, _to_hash
from tests.support import RedisServer, with_store


@pytest.mark.factor("IV")
def test_every_redis_key_starts_with_the_prefix_and_the_layout_is_recorded(
    private_redis: RedisServer, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """On a Redis of its own, every key there is the app's: none may lack the prefix."""
    settings = make_settings("redis", redis_url=private_redis.url, redis_key_prefix="prefix-test:")
    plain = private_redis.client()
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        task = client.post("/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "k"})
        client.patch(task.headers["location"], json={"status": "done"})
        client.get("/v1/tasks?status=done")
        client.delete(client.post("/v1/tasks", json={"title": "gone"}).headers["location"])

    ours = set(plain.keys("*"))
    assert all(k.startswith("prefix-test:") for k in ours), ours
    assert ours == {
        "prefix-test:meta:layout",
        "prefix-test:meta:layout-min",
        f"prefix-test:task:{task.json()['id']}",
        "prefix-test:index:all",
        "prefix-test:index:status:done",
        "prefix-test:index:completed",  # done tasks by completion time
        *[k for k in ours if k.startswith("prefix-test:idempotency:")],
    }
    assert any(k.startswith("prefix-test:idempotency:") for k in ours)
    assert plain.get("prefix-test:meta:layout") == str(LAYOUT_VERSION)
    # TASKS_IDEMPOTENCY_TTL_SECONDS (86400 by default), set when the key was stored.
    assert 86400 - 60 <= plain.ttl(next(k for k in ours if ":idempotency:" in k)) <= 86400


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
            created = await store.create(new_fields(TaskCreate(title="contended")))
            task_id = created.task.id
            held = frozenset({(await store.get_json(task_id)).etag})

            async def writer(i: int) -> str:
                try:
                    await store.patch(task_id, TaskPatch(title=f"writer {i}"), held)
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


def _protocol_operations() -> set[str]:
    """Every operation of the TaskStore protocol (close releases; it is not an operation)."""
    return {
        name
        for name, member in vars(TaskStore).items()
        if inspect.iscoroutinefunction(member) and name != "close"
    }


def _store_series(metrics: Metrics, name: str) -> dict[str, float]:
    """operation label -> value of one store metric."""
    samples = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            samples[labels.split('operation="')[1].split('"')[0]] = float(value)
    return samples


@pytest.mark.factor("IV")
def test_instrumented_store_implements_and_times_every_protocol_operation(
    store_kind: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics(version="t", git_revision="t", build_date="t")

    async def every_operation() -> None:
        store: TaskStore = InstrumentedStore(open_store(make_settings(store_kind)), metrics)
        try:
            await store.ping()
            kept = (await store.create(new_fields(TaskCreate(title="kept")))).task
            gone = (await store.create(new_fields(TaskCreate(title="gone")))).task
            assert await store.get(kept.id) == kept
            assert await store.get_json(kept.id) == (to_json(kept), etag(task_fields(kept)))
            page = await store.list(status=None, limit=5, before=None)
            assert page.items == b"[" + to_json(gone) + b"," + to_json(kept) + b"]"
            done = await store.patch(kept.id, TaskPatch(status="done"))
            await store.delete(gone.id)
            assert await store.scan_ids(status=None, after=None, limit=5) == [kept.id]
            assert done.completed_at is not None
            later = done.completed_at + timedelta(seconds=1)
            completed = await store.scan_completed(before=later, after=None, limit=5)
            assert completed == [(done.completed_at, kept.id)]
            assert await store.get_many([kept.id, gone.id]) == [done]
            await store.put_many([done])
            assert await store.delete_unchanged([done]) == [kept.id]
            await store.put_many([done])
            assert await store.delete_completed(before=later, limit=5) == (1, 1)
            window = LayoutWindow(LAYOUT_VERSION, LAYOUT_VERSION)
            await store.set_layout(window)
            assert await store.layout() == window
            token = await store.acquire_lock("job", 5)
            assert token is not None
            assert await store.renew_lock("job", token, 5)
            assert await store.release_lock("job", token)
        finally:
            await store.close()

    asyncio.run(every_operation())

    timed = _store_series(metrics, "tasks_store_operation_duration_seconds_count")
    assert set(timed) == _protocol_operations()
    assert all(count >= 1 for count in timed.values())


@pytest.mark.factor("IV")
def test_instrumented_store_counts_operations_that_found_the_store_down() -> None:
    class Down(MemoryTaskStore):
        async def get_many(self, task_ids: Sequence[str]) -> TaskList:
            raise StoreUnavailable(Unavailability.connection)

    metrics = Metrics(version="t", git_revision="t", build_date="t")
    store = InstrumentedStore(Down(), metrics)

    with pytest.raises(StoreUnavailable):
        asyncio.run(store.get_many(["x"]))

    assert _store_series(metrics, "tasks_store_errors_total") == {"get_many": 1.0}
    assert _store_series(metrics, "tasks_store_operation_duration_seconds_count") == {
        "get_many": 1.0
    }


@pytest.mark.factor("IV")
def test_a_filtered_list_returns_only_tasks_that_have_the_status(
    redis_server: RedisServer, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """The moment between a task's move to done and its index update, held still: the todo
    index still names a task whose hash says done. The listing checks every row it returns."""
    settings = make_settings("redis")
    with TestClient(create_app(settings)) as client:
        todo = client.post("/v1/tasks", json={"title": "still todo"}).json()
        moved = client.post("/v1/tasks", json={"title": "moved", "status": "done"}).json()
        stale_index = f"{settings.redis_key_prefix}index:status:todo"
        redis_server.client().zadd(stale_index, {moved["id"]: 0})

        listed = client.get("/v1/tasks?status=todo").json()["items"]

    assert [t["id"] for t in listed] == [todo["id"]]


@pytest.mark.factor("III", "IV")
def test_an_idempotency_key_is_remembered_for_the_configured_ttl(
    private_redis: RedisServer, make_settings
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("redis", redis_url=private_redis.url, idempotency_ttl_seconds=120)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/tasks", json={"title": "x"}, headers={"Idempotency-Key": "ttl"})
    plain = private_redis.client()
    (key,) = [k for k in plain.keys("*") if ":idempotency:" in k]
    assert 60 <= plain.ttl(key) <= 120


_CHARACTERS = st.characters(blacklist_categories=("Cs",))  # what UTF-8 (and Redis) can hold
_TEXT = st.text(_CHARACTERS)
_WHEN = st.datetimes(timezones=st.just(UTC))


@pytest.mark.factor("X")
@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    title=_TEXT,
    description=_TEXT,
    status=st.sampled_from(Status),
    created=_WHEN,
    updated=_WHEN,
    completed=st.none() | _WHEN,
)
def test_a_task_read_as_json_from_its_hash_is_byte_for_byte_the_models_json(
    title: str,
    description: str,
    status: Status,
    created: datetime,
    updated: datetime,
    completed: datetime | None,
) -> None:
    """GET serves the JSON the Redis store writes straight from the hash; every other path (a
    PATCH's If-Match, the ETag a write returns) hashes the model's JSON. One task, two ETags
    would fail every conditional request."""
    task = Task(
        id="0" * 26,
        title=title,
        description=description,
        status=status,
        created_at=created,
        updated_at=updated,
        completed_at=completed,
    )
    stored = _to_hash(task)
    row: list[str | None] = list(task_fields(task))  # as HMGET reads it
    (fields,) = _json_fields([row])
    assert pydantic_core.to_json(fields) == to_json(task) == to_json(_from_hash(stored))
    assert fields_json(task_fields(task)) == task_json(task)  # what a create answers
    assert from_fields(task_fields(task)) == task
    # A list page, from such rows, is the Page model's JSON.
    for cursor in (None, title):
        page = page_json(pydantic_core.to_json(_json_fields([row, row])), cursor)
        assert page == Page(items=[task, task], next_cursor=cursor).model_dump_json().encode()
    # A hash without completed_at (never written by a build that knew it) reads as null.
    if completed is None:
        assert _json_fields([[*row[:-1], None]]) == _json_fields([row])


@pytest.mark.factor("X")
@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    title=st.text(_CHARACTERS, min_size=1, max_size=TITLE_MAX),
    status=st.sampled_from(Status),
    now=_WHEN,
)
def test_a_new_task_is_stored_as_the_model_would_be(
    title: str, status: Status, now: datetime
) -> None:
    """A create builds its fields and its answer without the model: they are the model's."""
    fields = new_fields(TaskCreate(title=title, description=title[::-1], status=status), now)
    done = status is Status.done
    model = Task(
        id=fields.id,
        title=title,
        description=title[::-1],
        status=status,
        created_at=now,
        updated_at=now,
        completed_at=now if done else None,
    )
    assert task_fields(model) == fields
    assert fields_json(fields) == task_json(model)


_ID_PARTS = st.tuples(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))


def _base32(text: str) -> int:
    """The number Crockford base32 `text` writes, 5 bits a character."""
    return sum(_CROCKFORD.index(c) << (5 * i) for i, c in enumerate(reversed(text)))


@pytest.mark.factor("X")
@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(one=_ID_PARTS, other=_ID_PARTS)
def test_an_id_is_its_milliseconds_and_random_bits_in_crockford_base32_and_sorts_by_them(
    one: tuple[int, int], other: tuple[int, int]
) -> None:
    """Ids sort as their creation times (keyset pagination relies on it), 5 bits a character."""
    task_id = _encode_time(one[0]) + _encode_random(one[1])
    assert ID_PATTERN.match(task_id)
    assert _base32(task_id) == (one[0] << 80) | one[1]
    assert (task_id < _encode_time(other[0]) + _encode_random(other[1])) == (one < other)


@pytest.mark.factor("X")
def test_a_new_task_takes_its_id_and_times_from_one_reading_of_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its id's milliseconds are those of its created_at, which is now, as its JSON writes it."""
    # A generator of its own: others' tasks made at any time they chose (a test's "now") move
    # the process-wide one's last millisecond, which ids never go back from.
    monkeypatch.setattr("service.domain._ids", IdGenerator())
    before = datetime.now(UTC)
    fields = new_fields(TaskCreate(title="now", status=Status.done))
    after = datetime.now(UTC)
    created = datetime.fromisoformat(fields.created_at)
    assert before <= created <= after
    assert fields.created_at == fields.updated_at == fields.completed_at == json_time(created)
    assert fields.id[:10] == _encode_time(micros(created) // 1000)


@pytest.mark.factor("X")
@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    steps=st.lists(st.integers(-3, 3), min_size=1, max_size=50),
    shards=st.integers(1, 4),
    # random bits as drawn, and some a few short of a carry out of the low 10 bits (or of all)
    drawn=st.integers(0, 2**80 - 1)
    | st.integers(0, 2**70 - 1).map(lambda h: h << 10 | 1020)
    | st.integers(2**80 - 40, 2**80 - 1),
)
def test_ids_strictly_increase_in_a_process_even_within_a_millisecond_or_when_the_clock_steps_back(
    steps: list[int], shards: int, drawn: int
) -> None:
    """Each id follows the one before, whatever the clock does: a millisecond already used
    (or one before it) continues that millisecond's count. With `accept`, each is the next
    one accepted. Each is its millisecond and its random bits, encoded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.urandom", lambda n: drawn.to_bytes(n, "big"))
        ids = IdGenerator()
        at, latest, previous = 1_700_000_000_000, 0, ""
        for step in steps:
            at += step
            latest = max(latest, at)
            task_id = ids.new(at, lambda i: zlib.crc32(i.encode()) % shards == 0)  # as a store's
            assert task_id > previous and ID_PATTERN.match(task_id)
            ms, random = _base32(task_id[:10]), _base32(task_id[10:])
            assert task_id == _encode_time(ms) + _encode_random(random)
            # a later millisecond only past the last random bits of one
            assert ms == latest if drawn < 2**79 else ms >= latest
            assert zlib.crc32(task_id.encode()) % shards == 0
            previous = task_id


@pytest.mark.factor("X")
def test_a_task_reads_the_same_whatever_order_its_hash_keeps_its_fields(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Redis keeps no field order once a hash grows: GET and a list page read fields by name."""

    async def body(store: TaskStore) -> None:
        assert isinstance(store, RedisTaskStore)
        task = (await store.create(new_fields(TaskCreate(title="in any order")))).task
        key = store.keys.task(task.id)
        await store.client.delete(key)
        await store.client.hset(key, mapping=dict(reversed(_to_hash(task).items())))
        assert await store.get(task.id) == task
        assert await store.get_json(task.id) == (to_json(task), etag(task_fields(task)))
        page = await store.list(status=None, limit=5, before=None)
        assert page.items == b"[" + to_json(task) + b"]"

    with_store(make_settings("redis"), body)


@pytest.mark.factor("IV")
@pytest.mark.parametrize("mode", ["redis", "cluster"])
def test_a_redis_that_forgot_the_scripts_is_sent_them_again(mode: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """A restarted Redis, or a replica promoted in a failover, may never have loaded the store's
    scripts: each call answered NOSCRIPT loads its script and runs it."""

    async def body(store: TaskStore) -> None:
        assert isinstance(store, RedisTaskStore)
        kept = await store.create(new_fields(TaskCreate(title="kept")))
        await store.client.script_flush()
        gone = await store.create(new_fields(TaskCreate(title="gone")))
        await store.client.script_flush()
        done = await store.patch(kept.id, TaskPatch(status=Status.done))
        await store.client.script_flush()
        await store.delete(gone.id, frozenset({gone.json.etag}))
        await store.client.script_flush()
        page = await store.list(status=None, limit=5, before=None)
        assert page.items == b"[" + to_json(done) + b"]"

    with_store(make_settings(mode), body)


_PATCHES = st.fixed_dictionaries(
    {},
    optional={
        "title": st.sampled_from(["same", "other"]) | _TEXT.filter(bool).map(lambda t: t[:200]),
        "description": st.sampled_from(["", "same"]) | _TEXT.map(lambda t: t[:200]),
        "status": st.sampled_from(Status),
    },
).map(lambda fields: TaskPatch(**fields))
_PATCH_CASES = st.lists(
    st.tuples(
        st.builds(
            TaskCreate,
            title=st.sampled_from(["same", "x"]),
            description=st.sampled_from(["", "same"]),
            status=st.sampled_from(Status),
        ),
        _PATCHES,
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.factor("X")
@hypothesis.settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(cases=_PATCH_CASES)
def test_a_patch_is_apply_patch_in_every_store_and_if_match_holds_to_the_etag_served(
    store_kind: str, make_settings, cases: list[tuple[TaskCreate, TaskPatch, timedelta]]
) -> None:  # type: ignore[no-untyped-def]
    """Redis patches in a script (one round trip, If-Match included), which computes the ETag
    itself: the task written, what the indexes say of it, and which ETags a conditional patch
    accepts are those of the model's rules (`apply_patch`, `etag`) in every store."""
    start = datetime(2026, 1, 1, tzinfo=UTC)

    async def body(store: TaskStore) -> None:
        expected: dict[str, Task] = {}
        for create, patch, later in cases:
            task = (await store.create(new_fields(create, start))).task
            served = await store.get_json(task.id)
            assert served.etag == etag(task_fields(task))
            another = etag(task_fields(task.model_copy(update={"title": task.title + "\0"})))
            with pytest.raises(PreconditionFailed):
                await store.patch(task.id, patch, frozenset({another, "W/" + served.etag}))
            result = await store.patch(task.id, patch, frozenset({served.etag}), start + later)
            assert result == apply_patch(task, patch, start + later) == await store.get(task.id)
            expected[task.id] = result
        for status in Status:
            ids = await store.scan_ids(status=status, after=None, limit=1000)
            assert set(ids) == {i for i, t in expected.items() if t.status is status}
        completed = await store.scan_completed(
            before=start + timedelta(days=500), after=None, limit=1000
        )
        assert completed == sorted(
            (t.completed_at, i) for i, t in expected.items() if t.completed_at is not None
        )

    example = f"test:{uuid.uuid4().hex[:12]}:"  # hypothesis runs many in one test
    with_store(make_settings(store_kind, redis_key_prefix=example), body)


@pytest.mark.factor("X")
def test_an_etag_in_the_form_earlier_builds_issued_still_names_the_task_in_redis(
    make_settings,
) -> None:  # type: ignore[no-untyped-def]
    """Earlier builds' ETag was a hash of the task's JSON: a client that read the task from a
    pod of the previous release, during a rolling upgrade, can still write it conditionally,
    and is refused once the task changed."""

    def earlier(task: Task) -> frozenset[str]:
        return frozenset({'"' + hashlib.blake2b(to_json(task), digest_size=10).hexdigest() + '"'})

    async def body(store: TaskStore) -> None:
        task = (await store.create(new_fields(TaskCreate(title="read before the upgrade")))).task
        patched = await store.patch(task.id, TaskPatch(title="written after"), earlier(task))
        assert patched.title == "written after"
        with pytest.raises(PreconditionFailed):
            await store.patch(task.id, TaskPatch(status=Status.done), earlier(task))
        with pytest.raises(PreconditionFailed):
            await store.delete(task.id, earlier(task))
        await store.delete(task.id, earlier(patched))
        assert await store.get_many([task.id]) == []

    with_store(make_settings("redis"), body)


@pytest.mark.factor("X")
def test_a_patch_of_a_hash_missing_a_field_fails_at_once_and_writes_nothing(make_settings) -> None:  # type: ignore[no-untyped-def]
    """No writer leaves such a hash; should one exist, a patch says what is wrong (as a read
    does) rather than retrying until its timeout, and leaves the hash as it was."""

    async def body(store: TaskStore) -> None:
        assert isinstance(store, RedisTaskStore)
        task = (await store.create(new_fields(TaskCreate(title="damaged")))).task
        key = store.keys.task(task.id)
        await store.client.hdel(key, "description")
        before = await store.client.hgetall(key)
        with pytest.raises(pydantic.ValidationError, match="description"):
            await asyncio.wait_for(store.patch(task.id, TaskPatch(title="mended?")), 5)
        assert await store.client.hgetall(key) == before

    with_store(make_settings("redis"), body)
