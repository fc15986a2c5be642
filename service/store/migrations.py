"""The Redis data layout's history: an ordered list of idempotent migrations, and the runner.

Layout 0 (before the layout was versioned; there is no `<prefix>meta:layout`):

    <prefix>ids                     set of task ids
    <prefix>task:<id>               string: the task as JSON

Layout 1 is the one `service.store.redis` documents (hashes, id and status indexes). Each
migration moves the data from `version - 1` to `version` in batches, and is safe to re-run after a
crash: a task is converted and removed from the old structure in one transaction. The runner
records the layout after each step, so running it again is a no-op.

The window. Next to the layout the store records the oldest build layout that may still read
and write the data (`<prefix>meta:layout-min`). A build serves (ready, writes allowed) while the
window admits it and the data is at least at the layout it needs (`BuildLayout.serves`), so
during an upgrade the old pods and the new ones share the data, and a rollback becomes ready.

Writing a migration: every one says what kind of `Change` it is.

- EXPAND (the default, and the norm): it only adds, or rewrites the data into a form every build
  in the window still reads and writes correctly, and this build keeps writing whatever those
  builds read. The window's floor stays. It runs in the pre-upgrade hook while old pods serve.
- CONTRACT: it removes what only builds older than it use, and the build that ships it works
  with and without it (every build since the expansion it completes stops reading the old
  form). It moves the floor to its version, so the previous builds stop serving and a rollback
  to them is refused. As the build's last migration, the hook leaves it pending: run
  `python -m jobs migrate --contract` once every pod runs this build and rolling back is no
  longer wanted. Only the last can wait: a build needs every migration before its last.
- BREAKING: neither (as 0 -> 1: no older build reads the new form, and this build reads only
  it). It moves the floor to its version and runs in the hook: old pods stop serving until the
  new ones are ready, a short outage. Prefer an expansion now and a contraction a release later.

So a change of shape ships in two releases: release N expands (adds the new form, writes both,
reads the new with a fallback to the old), release N + 1 contracts (drops the old form). An
upgrade from before release N + 1 to a build with migrations after the contraction applies it
in the hook, since the new build needs it (logged as a warning): old pods from before the
contraction stop serving, as with a breaking change.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

from redis.exceptions import WatchError

from service.domain import Task
from service.store.base import LAYOUT_VERSION, BuildLayout, LayoutMismatch, LayoutWindow
from service.store.redis import REDIS_FAILURES, RedisTaskStore, _to_hash, unavailable

log = logging.getLogger("tasks.migrations")

BATCH = 500


class MigrationFailed(Exception):
    """The data could not be migrated (the message says which task and why)."""


class Change(enum.Enum):
    """What a migration does to the builds before it (the rules are in the module docstring)."""

    EXPAND = "expand"  # they keep serving: the window's floor stays
    CONTRACT = "contract"  # they stop; this build serves before and after it: run last, apart
    BREAKING = "breaking"  # they stop; this build needs it: runs in the hook, a short outage


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[RedisTaskStore], Awaitable[int]]  # returns how many items it changed
    change: Change = Change.EXPAND

    def window_after(self, before: LayoutWindow) -> LayoutWindow:
        """The stored window once this migration ran on data in `before`."""
        keeps = self.change is Change.EXPAND
        return LayoutWindow(self.version, before.min_compatible if keeps else self.version)


def _legacy_ids_key(store: RedisTaskStore) -> str:
    return f"{store.keys.prefix}ids"


async def legacy_data_present(store: RedisTaskStore) -> bool:
    """Whether the database holds layout-0 data (which has no version key of its own)."""
    return bool(await store.client.exists(_legacy_ids_key(store)))


async def _tasks_to_hashes(store: RedisTaskStore) -> int:
    """Layout 0 -> 1: each JSON string becomes a hash, indexed by id and by status."""
    redis, legacy = store.client, _legacy_ids_key(store)
    converted = 0
    cursor = 0
    while True:
        cursor, batch = await redis.sscan(legacy, cursor, count=BATCH)
        if batch:
            converted += await _convert(store, cast(list[str], batch))
        if cursor == 0:
            break
    left = await redis.scard(legacy)
    if left:
        raise MigrationFailed(f"{left} layout-0 tasks were not converted (written during the run?)")
    return converted


async def _convert(store: RedisTaskStore, ids: list[str]) -> int:
    """One batch, atomically: a task written concurrently makes the batch retry."""
    redis, keys, legacy = store.client, store.keys, _legacy_ids_key(store)
    task_keys = [keys.task(i) for i in ids]
    async with redis.pipeline(transaction=True) as tx:
        while True:
            try:
                await tx.watch(*task_keys)
                async with redis.pipeline(transaction=False) as read:
                    for key in task_keys:
                        read.type(key)
                    types = cast(list[str], await read.execute())
                    for key, kind in zip(task_keys, types, strict=True):
                        if kind == "string":
                            read.get(key)
                    values = iter(cast(list[str], await read.execute()))
                tx.multi()  # type: ignore[no-untyped-call]
                converted = 0
                for task_id, key, kind in zip(ids, task_keys, types, strict=True):
                    if kind == "string":
                        task = _parse_v0(task_id, next(values))
                        tx.delete(key)
                        tx.hset(key, mapping=_to_hash(task))
                        shard = keys.shard_of(task_id)  # standalone: the one shard
                        tx.zadd(shard.all, {task_id: 0})
                        tx.zadd(shard.status(task.status), {task_id: 0})
                        converted += 1
                    # "hash": already layout 1; "none": deleted, a stale id. Either way: done.
                    tx.srem(legacy, task_id)
                await tx.execute()
                return converted
            except WatchError:
                continue


def _parse_v0(task_id: str, raw: str) -> Task:
    try:
        task = Task.model_validate_json(raw)
    except ValueError as exc:
        raise MigrationFailed(f"task {task_id}: not a valid layout-0 task ({exc})") from None
    if task.id != task_id:
        raise MigrationFailed(f"task {task_id}: its JSON says id {task.id}")
    return task


def build_layout(migrations: Sequence[Migration]) -> BuildLayout:
    """The layouts served by a build whose history is `migrations` (in order, from 1)."""
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    last = migrations[-1]
    floors = [m.version for m in migrations if m.change is not Change.EXPAND]
    return BuildLayout(
        version=last.version,
        needs=last.version - 1 if last.change is Change.CONTRACT else last.version,
        fresh_min=floors[-1] if floors else 1,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks as hashes, indexed by id and by status", _tasks_to_hashes, Change.BREAKING),
)
assert [m.version for m in MIGRATIONS] == list(range(1, LAYOUT_VERSION + 1))
BUILD_LAYOUT = build_layout(MIGRATIONS)
"""The data layouts this build serves (what `open_store` gives the Redis store)."""


@dataclass(frozen=True, slots=True)
class Migrated:
    """What a run did: the stored window before and after, steps applied, items changed, and
    how many contracting steps it left for `migrate --contract`."""

    before: LayoutWindow | None
    after: LayoutWindow
    applied: int
    changed: int
    pending: int


async def migrate(
    store: RedisTaskStore, migrations: Sequence[Migration] = MIGRATIONS, *, contract: bool = False
) -> Migrated:
    """Bring the stored layout to what the store's build writes, one recorded step at a time;
    a contraction the build can run without waits for `contract`. The caller holds the migrate
    lock. Data that has contracted past the build raises LayoutMismatch; data newer than the
    build but within its window is left as it is."""
    build = store.build
    if build != build_layout(migrations):
        raise ValueError("the store's build layout is not the one these migrations describe")
    before = await store.layout()
    if before is None:  # an empty database: nothing to convert
        fresh = LayoutWindow(build.version, build.fresh_min)
        await store.set_layout(fresh)
        return Migrated(before, fresh, applied=0, changed=0, pending=0)
    if before.min_compatible > build.version:
        raise LayoutMismatch(before, build)
    window, applied, changed = before, 0, 0
    for migration in migrations:
        if migration.version <= window.current:
            continue
        deferrable = migration.change is Change.CONTRACT and migration.version > build.needs
        if deferrable and not contract:
            break  # old pods may still serve: left for `migrate --contract`
        extra = {"version": migration.version, "description": migration.description}
        if migration.change is Change.EXPAND:
            log.info("applying migration", extra=extra)
        else:  # logged before the step: builds older than it stop serving from here on
            log.warning(
                f"applying {migration.change.value} migration: builds older than layout "
                f"{migration.version} stop serving",
                extra=extra,
            )
        try:
            changed += await migration.apply(store)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None
        window = migration.window_after(window)
        await store.set_layout(window)
        applied += 1
    pending = sum(1 for m in migrations if m.version > window.current)
    return Migrated(before, window, applied=applied, changed=changed, pending=pending)
