"""The Redis data layout's history: an ordered list of idempotent migrations, and the runner.

Layout 0 (before the layout was versioned; there is no `<prefix>meta:layout`):

    <prefix>ids                     set of task ids
    <prefix>task:<id>               string: the task as JSON

Layout 1: tasks as hashes, indexed by id and by status. Layout 2 adds the completion-time
index (`<prefix>index:completed`, per shard) and backfills it; builds of layout 1 keep serving and
do not keep it. Layout 3 (a contraction) completes it: from there on cleanup reads it rather than
every done task. `service.store.redis` documents the layout. Each migration moves the data from
`version - 1` to `version` in batches, and is safe to re-run after a crash (a task is converted,
or indexed, in one atomic step). The runner records the layout after each step, so running it
again is a no-op.

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
  One that must see what those builds no longer write (a backfill of an index they did not
  keep) stops them first (`_stop_older_builds`: the floor moves, the layout stays, and their
  writes in flight land), then does its work: a crash in between leaves it to run again.
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

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from redis.commands.core import AsyncScript
from redis.exceptions import WatchError

from service.domain import Status, Task
from service.store.base import (
    COMPLETION_INDEX_LAYOUT,
    LAYOUT_VERSION,
    BuildLayout,
    LayoutMismatch,
    LayoutWindow,
    completion_score,
)
from service.store.redis import REDIS_FAILURES, RedisTaskStore, ShardKeys, _to_hash, unavailable

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


# Put each task of a batch in its shard's completion-time index as read, or out of it.
# KEYS: [1] index:completed, then one task hash per task.
# ARGV: per task, 3 values: its id, its completed_at as read ("" for none), its score.
# A done task still completed as read is added at its score (moved, if its entry is stale), a
# task no longer done (or gone) is removed; one completed again since it was read is left to its
# writer. Returns how many entries it added, moved or removed.
_REINDEX = """
local changed = 0
for i = 1, #KEYS - 1 do
  local id, read, score = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local current = redis.call('HMGET', KEYS[1 + i], 'status', 'completed_at')
  if current[1] ~= 'done' then
    changed = changed + redis.call('ZREM', KEYS[1], id)
  elseif read ~= '' and current[2] == read then
    changed = changed + redis.call('ZADD', KEYS[1], 'CH', score, id)
  end
end
return changed
"""


async def _index_completion_times(store: RedisTaskStore) -> int:
    """Layout 1 -> 2 (and again in 2 -> 3): every done task in its shard's completion-time
    index at its completed_at, and no other task there."""
    script = store.client.register_script(_REINDEX)
    changed = 0
    for shard in store.keys.shards:
        done, after = shard.status(Status.done), "-"
        while ids := cast(
            list[str], await store.client.zrangebylex(done, after, "+", start=0, num=BATCH)
        ):
            changed += await _reindex(store, script, shard, ids)
            after = f"({ids[-1]}"
        cursor = 0
        while True:  # the entries of tasks re-opened or deleted by builds that ignore the index
            cursor, entries = await store.client.zscan(shard.completed, cursor, count=BATCH)
            if entries:
                ids = [cast(str, task_id) for task_id, _ in entries]
                changed += await _reindex(store, script, shard, ids)
            if cursor == 0:
                break
    return changed


async def _reindex(
    store: RedisTaskStore, script: AsyncScript, shard: ShardKeys, ids: list[str]
) -> int:
    """One batch: each task's completed_at read, then the index set from it, atomically per
    task (a task changed in between is left to its writer)."""
    async with store.client.pipeline(transaction=False) as read:
        for task_id in ids:
            read.hget(shard.task(task_id), "completed_at")
        completed = cast(list[str | None], await read.execute())
    args: list[str | int] = []
    for task_id, at in zip(ids, completed, strict=True):
        score = completion_score(datetime.fromisoformat(at)) if at else ""
        args += [task_id, at or "", score]
    keys = [shard.completed, *(shard.task(i) for i in ids)]
    return int(await script(keys=keys, args=args))


async def _stop_older_builds(store: RedisTaskStore, version: int) -> None:
    """The floor moves to `version` (the layout stays), then the writes in flight of the builds
    it no longer admits land: from here on only builds of `version` or newer write."""
    window = await store.layout()
    assert window is not None  # a migration runs on data that has a layout
    await store.set_layout(LayoutWindow(window.current, max(window.min_compatible, version)))
    await asyncio.sleep(store.write_lag_seconds)


async def _complete_the_completion_index(store: RedisTaskStore) -> int:
    """Layout 2 -> 3: builds of layout 1 stop, then the index is backfilled once more, for
    what they completed, re-opened or deleted since layout 2; every writer keeps it from then
    on, so cleanup may read it alone."""
    await _stop_older_builds(store, COMPLETION_INDEX_LAYOUT)
    return await _index_completion_times(store)


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
    Migration(2, "done tasks indexed by completion time", _index_completion_times),
    Migration(
        COMPLETION_INDEX_LAYOUT,
        "every writer keeps the completion-time index: cleanup reads it",
        _complete_the_completion_index,
        Change.CONTRACT,
    ),
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
