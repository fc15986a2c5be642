"""Two builds against one real Redis: the layout window lets an upgrade migrate while old pods
serve, and a rollback become ready; only a contraction (or a breaking change) stops them.

The old build is this one, as the API runs it (`create_app`). The new build is this store code
given a longer history of migrations (test-only ones on top of MIGRATIONS), the seam
`RedisTaskStore(layout=...)` and `migrate(store, migrations)` exist for.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.domain import Status, TaskCreate, TaskPatch, new_fields
from service.settings import Settings
from service.store.base import LAYOUT_VERSION, LayoutMismatch, LayoutWindow
from service.store.migrations import (
    BUILD_LAYOUT,
    MIGRATIONS,
    Change,
    Migrated,
    Migration,
    build_layout,
    migrate,
)
from service.store.redis import RedisTaskStore, connect
from tests.e2e.cluster.images import next_layout_sources
from tests.support import ROOT

T = TypeVar("T")
N = LAYOUT_VERSION


async def _index_titles(store: RedisTaskStore) -> int:
    """A test-only expansion: a new key beside the data, which older builds never look at."""
    ids = await store.scan_ids(status=None, after=None, limit=1000)
    tasks = await store.get_many(ids)
    if tasks:
        await store.client.hset(
            f"{store.keys.prefix}test:titles", mapping={t.id: t.title for t in tasks}
        )
    return len(tasks)


async def _drop_title_index(store: RedisTaskStore) -> int:
    """A test-only contraction (or breaking change): removes what the expansion added."""
    return int(await store.client.delete(f"{store.keys.prefix}test:titles"))


EXPAND = Migration(N + 1, "test-only: index titles", _index_titles)
CONTRACT = Migration(N + 2, "test-only: drop the title index", _drop_title_index, Change.CONTRACT)
LATER = Migration(N + 3, "test-only: index titles again", _index_titles)
BREAK = Migration(N + 1, "test-only: drop the title index", _drop_title_index, Change.BREAKING)


def new_build(settings: Settings, migrations: Sequence[Migration]) -> RedisTaskStore:
    """The store of a build whose history is `migrations`, on the same Redis and prefix."""
    client = connect(settings.redis_url, password=None, timeout=settings.redis_timeout_seconds)
    return RedisTaskStore(
        client,
        prefix=settings.redis_key_prefix,
        timeout=settings.redis_timeout_seconds,
        layout=build_layout(migrations),
    )


def as_build(
    settings: Settings,
    migrations: Sequence[Migration],
    body: Callable[[RedisTaskStore], Awaitable[T]],
) -> T:
    async def run() -> T:
        store = new_build(settings, migrations)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def migrate_as(
    settings: Settings, migrations: Sequence[Migration], *, contract: bool = False
) -> Migrated:
    """What the new build's migrate hook (or `migrate --contract`) does."""
    return as_build(
        settings, migrations, lambda store: migrate(store, migrations, contract=contract)
    )


@contextmanager
def old_build(settings: Settings) -> Iterator[TestClient]:
    """A pod of this build: the real app, its lifespan started."""
    with TestClient(create_app(settings)) as client:
        yield client


def assert_serves(client: TestClient, title: str) -> None:
    """Ready, and every kind of request answered: create, read, patch, list, delete."""
    assert client.get("/readyz").status_code == 200
    created = client.post("/v1/tasks", json={"title": title})
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert client.get(location).json()["title"] == title
    assert client.patch(location, json={"status": "done"}).status_code == 200
    assert client.get("/v1/tasks?status=done").status_code == 200
    assert client.delete(location).status_code == 204


def assert_stopped(client: TestClient) -> None:
    """Not ready, and writes refused with 503: the data is no longer this build's to write."""
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"] == "layout-mismatch"
    assert "newer than this build" in ready.json()["detail"]
    written = client.post("/v1/tasks", json={"title": "refused"})
    assert written.status_code == 503
    assert "newer than this build" in written.json()["detail"]


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings("redis")  # type: ignore[no-any-return]


@pytest.mark.factor("XII", "IX", "X")
def test_the_old_build_keeps_serving_while_and_after_an_expansion_migrates(
    settings: Settings,
) -> None:
    with old_build(settings) as old:
        kept = old.post("/v1/tasks", json={"title": "before the upgrade"}).json()
        run = migrate_as(settings, [*MIGRATIONS, EXPAND])  # the new build's pre-upgrade hook
        assert (run.before, run.after) == (LayoutWindow(N, N), LayoutWindow(N + 1, N))
        assert run.applied == 1 and run.changed == 1
        assert_serves(old, "during the rollout")

        async def new_pod(store: RedisTaskStore) -> list[str]:
            await store.ping()  # ready too: old and new pods share the data
            await store.create(new_fields(TaskCreate(title="written by the new build")))
            await store.patch(kept["id"], TaskPatch(title="renamed"))
            ids = await store.scan_ids(status=None, after=None, limit=10)
            return [t.title for t in await store.get_many(ids)]

        titles = as_build(settings, [*MIGRATIONS, EXPAND], new_pod)
        assert titles == ["renamed", "written by the new build"]
        assert [t["title"] for t in old.get("/v1/tasks").json()["items"]] == [
            "written by the new build",
            "renamed",
        ]


@pytest.mark.factor("XII", "IX")
def test_a_rollback_after_an_expansion_becomes_ready(settings: Settings) -> None:
    with old_build(settings) as old:
        assert old.get("/readyz").status_code == 200
    migrate_as(settings, [*MIGRATIONS, EXPAND])
    as_build(
        settings, [*MIGRATIONS, EXPAND], lambda s: s.create(new_fields(TaskCreate(title="new")))
    )

    with old_build(settings) as rolled_back:  # a fresh pod of the old build
        assert_serves(rolled_back, "after the rollback")
        assert [t["title"] for t in rolled_back.get("/v1/tasks").json()["items"]] == ["new"]
    plain = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = settings.redis_key_prefix
    assert plain.mget(f"{prefix}meta:layout", f"{prefix}meta:layout-min") == [str(N + 1), str(N)]


@pytest.mark.factor("XII")
def test_the_old_builds_migrate_leaves_data_it_is_admitted_to_as_it_is(settings: Settings) -> None:
    migrate_as(settings, [*MIGRATIONS, EXPAND])
    run = migrate_as(settings, MIGRATIONS)  # e.g. `helm upgrade` back to the old image tag
    assert run.after == LayoutWindow(N + 1, N) and run.applied == 0


@pytest.mark.factor("XII", "IX")
def test_a_breaking_migration_stops_the_old_build_as_before(settings: Settings) -> None:
    with old_build(settings) as old:
        assert old.get("/readyz").status_code == 200
        run = migrate_as(settings, [*MIGRATIONS, BREAK])
        assert run.after == LayoutWindow(N + 1, N + 1)
        assert_stopped(old)
    with old_build(settings) as rolled_back:
        assert_stopped(rolled_back)


@pytest.mark.factor("XII", "IX")
def test_a_contraction_waits_for_the_contract_phase_then_stops_the_old_build(
    settings: Settings,
) -> None:
    history = [*MIGRATIONS, EXPAND, CONTRACT]
    with old_build(settings) as old:
        assert old.get("/readyz").status_code == 200
        hook = migrate_as(settings, history)  # the pre-upgrade hook expands only
        assert hook.after == LayoutWindow(N + 1, N) and hook.pending == 1
        assert_serves(old, "while the new pods roll")
        # The new build serves the data before its contraction too, so its pods become ready.
        as_build(settings, history, lambda store: store.ping())

        contract = migrate_as(settings, history, contract=True)  # once every pod is new
        assert contract.after == LayoutWindow(N + 2, N + 2) and contract.pending == 0
        assert_stopped(old)
    as_build(settings, history, lambda store: store.ping())
    with pytest.raises(LayoutMismatch, match="newer than this build understands"):
        migrate_as(settings, [*MIGRATIONS, EXPAND])  # the release before cannot come back


@pytest.mark.factor("XII", "IX")
def test_an_upgrade_past_a_contraction_applies_it_in_the_hook_and_stops_the_old_build(
    settings: Settings,
) -> None:
    with old_build(settings) as old:
        assert old.get("/readyz").status_code == 200
        hook = migrate_as(settings, [*MIGRATIONS, EXPAND, CONTRACT, LATER])
        assert hook.applied == 3 and hook.pending == 0
        assert hook.after == LayoutWindow(N + 3, N + 2)
        assert_stopped(old)


@pytest.mark.factor("XII")
def test_a_build_that_needs_an_unapplied_migration_is_not_ready(settings: Settings) -> None:
    with old_build(settings) as old:
        assert old.get("/readyz").status_code == 200

    async def new_pod_before_its_hook(store: RedisTaskStore) -> None:
        with pytest.raises(LayoutMismatch, match=rf"data layout {N} is older than this build"):
            await store.ping()
        with pytest.raises(LayoutMismatch):
            await store.create(new_fields(TaskCreate(title="x", status=Status.todo)))

    as_build(settings, [*MIGRATIONS, EXPAND], new_pod_before_its_hook)


@pytest.mark.factor("XII")
def test_an_empty_store_records_the_window_of_the_build_that_meets_it_first(
    settings: Settings,
) -> None:
    async def first_contact(store: RedisTaskStore) -> LayoutWindow | None:
        await store.ping()
        return await store.layout()

    # The floor is that of the history's last non-expansion: the builds since then share it.
    assert as_build(settings, [*MIGRATIONS, EXPAND], first_contact) == LayoutWindow(N + 1, N)
    assert BUILD_LAYOUT.fresh_min == N


@pytest.mark.factor("XII")
def test_build_layouts_follow_the_kinds_of_their_migrations() -> None:
    assert build_layout(MIGRATIONS).version == N == BUILD_LAYOUT.version
    assert BUILD_LAYOUT.needs == N - 1  # its last migration is a contraction it serves without
    expanded = build_layout([*MIGRATIONS, EXPAND])
    assert (expanded.version, expanded.needs, expanded.fresh_min) == (N + 1, N + 1, N)
    contracting = build_layout([*MIGRATIONS, EXPAND, CONTRACT])
    assert (contracting.version, contracting.needs, contracting.fresh_min) == (N + 2, N + 1, N + 2)
    later = build_layout([*MIGRATIONS, EXPAND, CONTRACT, LATER])  # it needs the contraction
    assert (later.version, later.needs, later.fresh_min) == (N + 3, N + 3, N + 2)


@pytest.mark.factor("XII", "IX")
def test_the_node_suites_build_one_layout_ahead_expands_so_this_build_keeps_serving(
    tmp_path: Path,
) -> None:
    """The real-node upgrade test rolls out this code patched one layout ahead: it must be an
    expansion whose window still admits this build, or the old pods would stop serving."""
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("*.pyc"))
    for name, text in next_layout_sources().items():
        (tmp_path / "service" / "store" / name).write_text(text)
    # Its migration's window on data at this build's layout, as the pre-upgrade hook leaves it.
    show = (
        "from service.store.base import LayoutWindow\n"
        "from service.store.migrations import BUILD_LAYOUT, MIGRATIONS\n"
        f"w = MIGRATIONS[-1].window_after(LayoutWindow({N}, {N}))\n"
        "print(BUILD_LAYOUT.version, MIGRATIONS[-1].change.name, w.current, w.min_compatible)"
    )
    ahead = subprocess.run(
        [sys.executable, "-c", show],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    version, kind, current, floor = ahead.stdout.split()
    assert (int(version), kind) == (N + 1, "EXPAND")
    assert BUILD_LAYOUT.serves(LayoutWindow(int(current), int(floor)))
