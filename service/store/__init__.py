"""Where tasks live: `open_store(settings)` picks the implementation the settings name."""

from __future__ import annotations

from service.settings import Settings
from service.store.base import LAYOUT_VERSION, Created, Idempotency, TaskStore

__all__ = ["LAYOUT_VERSION", "Created", "Idempotency", "TaskStore", "open_store"]


def open_store(settings: Settings, *, socket_timeouts: bool = True) -> TaskStore:
    """The configured store. Nothing connects yet (Redis connects on first use), so a process
    starts, and reports not-ready, while its backing service is down.

    Every store operation is bounded by TASKS_REDIS_TIMEOUT_SECONDS as a whole. With
    `socket_timeouts` the Redis client also bounds each socket read and write, which code that
    uses the raw client (the migrations) relies on; the API, which only calls store operations,
    turns them off: on Python 3.11 redis-py's write timeout starts an extra asyncio Task per
    command."""
    if settings.store == "redis":
        from service.store.migrations import BUILD_LAYOUT
        from service.store.redis import RedisTaskStore, connect

        password = settings.redis_password
        cluster = settings.redis_mode == "cluster"
        shards = settings.redis_shards if cluster else 1
        client = connect(
            settings.redis_url,
            username=settings.redis_username,
            password=password.get_secret_value() if password is not None else None,
            timeout=settings.redis_timeout_seconds,
            # Cluster: per node, room for every operation to call each shard at once.
            max_connections=settings.redis_max_connections * shards,
            socket_timeouts=socket_timeouts,
            cluster=cluster,
        )
        return RedisTaskStore(
            client,
            prefix=settings.redis_key_prefix,
            timeout=settings.redis_timeout_seconds,
            layout=BUILD_LAYOUT,
            shards=shards,
            concurrency=settings.redis_max_connections,
        )
    from service.store.memory import MemoryTaskStore

    return MemoryTaskStore()
