"""Where tasks live: `open_store(settings)` picks the implementation the settings name."""

from __future__ import annotations

from service.settings import Settings
from service.store.base import LAYOUT_VERSION, Created, Idempotency, TaskStore

__all__ = ["LAYOUT_VERSION", "Created", "Idempotency", "TaskStore", "open_store"]


def open_store(settings: Settings) -> TaskStore:
    """The configured store. Nothing connects yet (Redis connects on first use), so a process
    starts, and reports not-ready, while its backing service is down."""
    if settings.store == "redis":
        from service.store.redis import RedisTaskStore, connect

        password = settings.redis_password
        client = connect(
            settings.redis_url,
            password=password.get_secret_value() if password is not None else None,
            timeout=settings.redis_timeout_seconds,
        )
        return RedisTaskStore(
            client, prefix=settings.redis_key_prefix, timeout=settings.redis_timeout_seconds
        )
    from service.store.memory import MemoryTaskStore

    return MemoryTaskStore()
