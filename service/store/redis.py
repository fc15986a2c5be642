"""The Redis store (redis-py asyncio + hiredis): one connection pool per process.

Key space (every key starts with the configured prefix, default `tasks:`):

    <prefix>meta:layout             "1": version of this layout (migrations bump it)
    <prefix>task:<id>               hash: the task's fields ("" for a null completed_at)
    <prefix>index:all               sorted set of ids, all scores 0, so ordered by id = by creation
    <prefix>index:status:<status>   the same, per status
    <prefix>idempotency:<sha256>    "<body fingerprint>\\n<task json>", expiring after the TTL

Multi-key changes run in MULTI/EXEC; read-modify-write (PATCH) WATCHes the task key.
Listing reads one index range and then only the hashes of that page.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping
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
from service.store.base import LAYOUT_VERSION, Created, Idempotency

T = TypeVar("T")

# What an unreachable, slow, restarting or failing-over Redis looks like: answer 503, not 500.
_UNAVAILABLE = (
    ConnectionError,
    TimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    asyncio.TimeoutError,
)


def connect(url: str, *, password: str | None, timeout: float) -> aioredis.Redis:
    """A client with its own pool; nothing connects until the first command."""
    options: dict[str, Any] = {
        **parse_url(url),
        "socket_timeout": timeout,
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
        self._layout_checked = False

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
        if self._layout_checked:
            await self._redis.ping()
        else:
            # First successful contact: record the layout version if this is a fresh database.
            await self._redis.set(self._keys.layout, LAYOUT_VERSION, nx=True)
            self._layout_checked = True

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    async def create(self, task: Task, idempotency: Idempotency | None = None) -> Created:
        return await self._bounded(self._create(task, idempotency))

    async def _create(self, task: Task, idempotency: Idempotency | None) -> Created:
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
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.task(task_id))
            pipe.zrem(self._keys.all, task_id)
            for status in Status:
                pipe.zrem(self._keys.status(status), task_id)
            deleted, *_ = await self._bounded(pipe.execute())
        if not deleted:
            raise TaskNotFound()
