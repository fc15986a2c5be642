"""The Redis store (redis-py asyncio + hiredis): one connection pool per process.

Key space (every key starts with the configured prefix, default `tasks:`):

    <prefix>meta:layout             "1": version of this layout (migrations bump it)
    <prefix>task:<id>               hash: the task's fields ("" for a null completed_at)
    <prefix>index:all               sorted set of ids, all scores 0, so ordered by id = by creation
    <prefix>index:status:<status>   the same, per status
    <prefix>idempotency:<sha256>    "<body fingerprint>\\n<task json>", expiring after the TTL
    <prefix>lock:<name>             a job's lock: a random token, expiring (SET NX PX)

Multi-key changes run in MULTI/EXEC; read-modify-write (PATCH) WATCHes the task key.
Listing reads one index range and then only the hashes of that page.

Layout guard: the layout version is checked on every ping and, at most a second stale, before
every write. An empty database gets LAYOUT_VERSION recorded; any other version than this build's
raises `LayoutMismatch`, so a rolled-back pod never writes a layout it does not know.
Older layouts and the migrations that upgrade them are in `service.store.migrations`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    ReadOnlyError,
    TimeoutError,
    WatchError,
)

from service.domain import Page, Status, Task
from service.errors import IdempotencyKeyReused, StoreUnavailable, TaskNotFound
from service.store.base import (
    LAYOUT_VERSION,
    Created,
    Idempotency,
    IdList,
    LayoutMismatch,
    TaskList,
)

T = TypeVar("T")
_Rows = list[dict[str, str]]

# What an unreachable, slow, restarting or failing-over Redis looks like: answer 503, not 500.
_UNAVAILABLE = (
    ConnectionError,
    TimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    asyncio.TimeoutError,
)


def connect(
    url: str, *, password: str | None, timeout: float, socket_timeouts: bool = True
) -> aioredis.Redis:
    """A client with its own pool; nothing connects until the first command. Connecting is
    bounded by `timeout`, and so is each socket read and write unless `socket_timeouts` is off
    (for callers that bound whole operations themselves, as RedisTaskStore does)."""
    options: dict[str, Any] = {
        **parse_url(url),
        "socket_timeout": timeout if socket_timeouts else None,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),  # one bounded attempt: the caller answers 503
        "decode_responses": True,
        "max_connections": 256,
    }
    if password is not None:
        options["password"] = password
    return aioredis.Redis(connection_pool=ConnectionPool(**options), retry=Retry(NoBackoff(), 0))


class RedisKeys:
    """Every key the store writes, in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.layout = f"{prefix}meta:layout"
        self.all = f"{prefix}index:all"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def status(self, status: Status) -> str:
        return f"{self.prefix}index:status:{status.value}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}idempotency:{hashlib.sha256(key.encode()).hexdigest()}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def indexes(self) -> list[str]:
        """The id index and every status index (a delete removes the id from all of them)."""
        return [self.all, *(self.status(s) for s in Status)]


# Redis-side checks that must be atomic with the write they guard.
# KEYS of the batch scripts: the index keys (RedisKeys.indexes: all, then one per status), then
# one task key per task.
_INDEXES = 1 + len(Status)
_DELETE_UNCHANGED = f"""
local n = #KEYS - {_INDEXES}
local deleted = {{}}
for i = 1, n do
  local base = (i - 1) * 4
  local current = redis.call('HMGET', KEYS[{_INDEXES} + i], 'status', 'updated_at', 'completed_at')
  if current[1] == ARGV[base + 2] and current[2] == ARGV[base + 3]
      and current[3] == ARGV[base + 4] then
    redis.call('DEL', KEYS[{_INDEXES} + i])
    for k = 1, {_INDEXES} do redis.call('ZREM', KEYS[k], ARGV[base + 1]) end
    deleted[#deleted + 1] = ARGV[base + 1]
  end
end
return deleted
"""
_FIELDS = tuple(Task.model_fields)
assert _FIELDS[0] == "id"
# ARGV per task: its status index's position in KEYS (2 on), then the fields in _FIELDS order
# (id first).
_LUA_FIELD_NAMES = "local names = {" + ", ".join(f"'{name}'" for name in _FIELDS) + "}"
_PUT = (
    _LUA_FIELD_NAMES
    + f"""
local width = 1 + #names
for i = 1, #KEYS - {_INDEXES} do
  local base = (i - 1) * width
  local id = ARGV[base + 2]
  local fields = {{}}
  for f = 1, #names do
    fields[2 * f - 1] = names[f]
    fields[2 * f] = ARGV[base + 1 + f]
  end
  redis.call('DEL', KEYS[{_INDEXES} + i])
  redis.call('HSET', KEYS[{_INDEXES} + i], unpack(fields))
  redis.call('ZADD', KEYS[1], 0, id)
  for k = 2, {_INDEXES} do
    if k == tonumber(ARGV[base + 1]) then
      redis.call('ZADD', KEYS[k], 0, id)
    else
      redis.call('ZREM', KEYS[k], id)
    end
  end
end
return #KEYS - {_INDEXES}
"""
)
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LAYOUT_RECHECK_SECONDS = 1.0


def _to_hash(task: Task) -> dict[Any, str]:
    fields = task.model_dump(mode="json")
    fields["completed_at"] = fields["completed_at"] or ""
    return fields


def _from_hash(fields: Mapping[str, str]) -> Task:
    return Task.model_validate({**fields, "completed_at": fields.get("completed_at") or None})


class RedisTaskStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout: float) -> None:
        self._redis = client
        self._keys = RedisKeys(prefix)
        self._timeout = timeout
        self._layout_checked_at: float | None = None
        self._delete_unchanged = client.register_script(_DELETE_UNCHANGED)
        self._put = client.register_script(_PUT)
        self._renew_lock = client.register_script(_RENEW_LOCK)
        self._release_lock = client.register_script(_RELEASE_LOCK)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client (for migrations, which know older layouts)."""
        return self._redis

    @property
    def keys(self) -> RedisKeys:
        return self._keys

    async def _bounded(self, operation: Awaitable[T]) -> T:
        """Run one store operation within the timeout; an outage becomes StoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                return await operation
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        await self._bounded(self._ping())

    async def _ping(self) -> None:
        await self._check_layout()

    async def _check_layout(self) -> None:
        """Raise LayoutMismatch unless the stored layout is this build's; record it when the
        database is empty."""
        stored = await self._layout_version()
        if stored is None:
            await self._redis.set(self._keys.layout, LAYOUT_VERSION, nx=True)
            stored = await self._layout_version()
        self._layout_checked_at = None
        if stored != LAYOUT_VERSION:
            raise LayoutMismatch(stored or 0)
        self._layout_checked_at = time.monotonic()

    async def _guard_write(self) -> None:
        """Before a write: the layout check, unless one passed within the last second."""
        checked = self._layout_checked_at
        if checked is None or time.monotonic() - checked > _LAYOUT_RECHECK_SECONDS:
            await self._check_layout()

    async def layout_version(self) -> int | None:
        return await self._bounded(self._layout_version())

    async def _layout_version(self) -> int | None:
        from service.store.migrations import legacy_data_present

        stored = cast(str | None, await self._redis.get(self._keys.layout))
        if stored is not None:
            return int(stored)
        return 0 if await legacy_data_present(self) else None

    async def set_layout_version(self, version: int) -> None:
        await self._bounded(self._redis.set(self._keys.layout, version))
        self._layout_checked_at = None

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        return await self._bounded(self._create(task, idempotency))

    async def _create(self, task: Task, idempotency: Idempotency | None) -> Created:
        await self._guard_write()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idempotency is not None:
                        key = self._keys.idempotency(idempotency.key)
                        await pipe.watch(key)
                        remembered = cast(str | None, await pipe.get(key))
                        if remembered is not None:
                            return self._replay(remembered, idempotency)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        record = idempotency.fingerprint + "\n" + task.model_dump_json()
                        pipe.set(key, record, ex=idempotency.ttl_seconds)
                    pipe.hset(self._keys.task(task.id), mapping=_to_hash(task))
                    pipe.zadd(self._keys.all, {task.id: 0})
                    pipe.zadd(self._keys.status(task.status), {task.id: 0})
                    await pipe.execute()
                    return Created(task)
                except WatchError:
                    continue  # a concurrent request with the same key won: replay its answer

    @staticmethod
    def _replay(remembered: str, idempotency: Idempotency) -> Created:
        fingerprint, _, first = remembered.partition("\n")
        if fingerprint != idempotency.fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another body")
        return Created(Task.model_validate_json(first), replayed=True)

    async def get(self, task_id: str) -> Task:
        fields = cast(
            dict[str, str], await self._bounded(self._redis.hgetall(self._keys.task(task_id)))
        )
        if not fields:
            raise TaskNotFound()
        return _from_hash(fields)

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> Page:
        return await self._bounded(self._list(status, limit, before))

    async def _list(self, status: Status | None, limit: int, before: str | None) -> Page:
        index = self._keys.all if status is None else self._keys.status(status)
        upper = "+" if before is None else f"({before}"
        ids = cast(
            list[str], await self._redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
        )
        has_more = len(ids) > limit
        ids = ids[:limit]
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self._keys.task(task_id))
            rows: list[dict[str, str]] = await pipe.execute() if ids else []
        # A task deleted between the two reads is simply absent from this page.
        return Page(
            items=[_from_hash(row) for row in rows if row],
            next_cursor=ids[-1] if has_more else None,
        )

    async def update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        return await self._bounded(self._update(task_id, change))

    async def _update(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        await self._guard_write()
        key = self._keys.task(task_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    fields = cast(dict[str, str], await pipe.hgetall(key))
                    if not fields:
                        raise TaskNotFound()
                    current = _from_hash(fields)
                    new = change(current)
                    if new is current:
                        return current
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, mapping=_to_hash(new))
                    if new.status is not current.status:
                        pipe.zrem(self._keys.status(current.status), task_id)
                        pipe.zadd(self._keys.status(new.status), {task_id: 0})
                    await pipe.execute()
                    return new
                except WatchError:
                    continue  # written concurrently: re-read and re-apply

    async def delete(self, task_id: str) -> None:
        await self._bounded(self._delete(task_id))

    async def _delete(self, task_id: str) -> None:
        await self._guard_write()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.task(task_id))
            for index in self._keys.indexes():
                pipe.zrem(index, task_id)
            deleted, *_ = await pipe.execute()
        if not deleted:
            raise TaskNotFound()

    # --- for the admin jobs ---------------------------------------------------------------

    async def scan_ids(self, *, status: Status | None, after: str | None, limit: int) -> IdList:
        index = self._keys.all if status is None else self._keys.status(status)
        lower = "-" if after is None else f"({after}"
        call = self._redis.zrangebylex(index, lower, "+", start=0, num=limit)
        return cast(IdList, await self._bounded(call))

    async def get_many(self, task_ids: Sequence[str]) -> TaskList:
        if not task_ids:
            return []
        return await self._bounded(self._get_many(task_ids))

    async def _get_many(self, task_ids: Sequence[str]) -> TaskList:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self._keys.task(task_id))
            rows: _Rows = await pipe.execute()
        return [_from_hash(row) for row in rows if row]

    async def delete_unchanged(self, tasks: Sequence[Task]) -> IdList:
        if not tasks:
            return []
        return await self._bounded(self._delete_unchanged_batch(tasks))

    async def _delete_unchanged_batch(self, tasks: Sequence[Task]) -> IdList:
        await self._guard_write()
        keys = [*self._keys.indexes(), *(self._keys.task(t.id) for t in tasks)]
        args: list[str] = []
        for task in tasks:
            fields = _to_hash(task)
            args += [task.id, fields["status"], fields["updated_at"], fields["completed_at"]]
        deleted = await self._delete_unchanged(keys=keys, args=args)
        return cast(IdList, deleted)

    async def put_many(self, tasks: Sequence[Task]) -> None:
        if tasks:
            await self._bounded(self._put_many(tasks))

    async def _put_many(self, tasks: Sequence[Task]) -> None:
        await self._guard_write()
        indexes = self._keys.indexes()  # all, then one per status in Status order
        position = {status: indexes.index(self._keys.status(status)) + 1 for status in Status}
        keys, args = list(indexes), list[str | int]()
        for task in tasks:
            fields = _to_hash(task)
            keys.append(self._keys.task(task.id))
            args += [position[task.status], *(fields[name] for name in _FIELDS)]
        await self._put(keys=keys, args=args)  # one script: the batch is atomic

    async def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        token = secrets.token_hex(16)
        call = self._redis.set(self._keys.lock(name), token, nx=True, px=_ms(ttl_seconds))
        return token if await self._bounded(call) else None

    async def renew_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        call = self._renew_lock(keys=[self._keys.lock(name)], args=[token, _ms(ttl_seconds)])
        return bool(await self._bounded(call))

    async def release_lock(self, name: str, token: str) -> bool:
        call = self._release_lock(keys=[self._keys.lock(name)], args=[token])
        return bool(await self._bounded(call))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
