"""The Redis data layout's history: an ordered list of idempotent migrations, and the runner.

Layout 0 (before the layout was versioned; there is no `<prefix>meta:layout`):

    <prefix>ids                     set of task ids
    <prefix>task:<id>               string: the task as JSON

Layout 1 is the one `service.store.redis` documents (hashes, id and status indexes). Each
migration moves the data from `version - 1` to `version` in batches, and is safe to re-run after a
crash: a task is converted and removed from the old structure in one transaction. The runner
records the version after each step, so running it again is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.exceptions import WatchError

from service.domain import Task
from service.store.base import LAYOUT_VERSION, LayoutMismatch
from service.store.redis import REDIS_FAILURES, RedisTaskStore, _to_hash, unavailable

log = logging.getLogger("tasks.migrations")

BATCH = 500


class MigrationFailed(Exception):
    """The data could not be migrated (the message says which task and why)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[RedisTaskStore], Awaitable[int]]  # returns how many items it changed


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
                        tx.zadd(keys.all, {task_id: 0})
                        tx.zadd(keys.status(task.status), {task_id: 0})
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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks as hashes, indexed by id and by status", _tasks_to_hashes),
)
assert [m.version for m in MIGRATIONS] == list(range(1, LAYOUT_VERSION + 1))


@dataclass(frozen=True, slots=True)
class Migrated:
    """What a run did: the layout before and after, steps applied, items changed."""

    before: int | None
    after: int
    applied: int
    changed: int


async def migrate(store: RedisTaskStore) -> Migrated:
    """Bring the stored layout to LAYOUT_VERSION, one recorded step at a time. The caller holds
    the migrate lock. A layout newer than this build raises LayoutMismatch."""
    before = await store.layout_version()
    if before is None:  # an empty database: nothing to convert
        await store.set_layout_version(LAYOUT_VERSION)
        return Migrated(before, LAYOUT_VERSION, applied=0, changed=0)
    if before > LAYOUT_VERSION:
        raise LayoutMismatch(before)
    current, applied, changed = before, 0, 0
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        log.info(
            "applying migration",
            extra={"version": migration.version, "description": migration.description},
        )
        try:
            changed += await migration.apply(store)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None
        await store.set_layout_version(migration.version)
        current, applied = migration.version, applied + 1
    return Migrated(before, current, applied=applied, changed=changed)
