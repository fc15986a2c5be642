"""`python -m jobs migrate`: bring the stored data layout to this build's version.

Runs as a Helm hook right after Redis is created, so it first waits (bounded by `--wait`) for
the store to answer. Concurrent runs serialize on a lock; a second run finds nothing to do.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from contextlib import suppress

from jobs.runtime import Command, JobFailed, Summary, seconds, shared_store
from service.errors import StoreUnavailable
from service.settings import Settings
from service.store.base import LAYOUT_VERSION
from service.store.migrations import MigrationFailed, migrate
from service.store.redis import RedisTaskStore

log = logging.getLogger("tasks.jobs.migrate")

LOCK = "migrate"
LOCK_TTL_SECONDS = 300.0
WAIT_SECONDS = 60.0


async def wait_for_store(store: RedisTaskStore, deadline: float) -> None:
    """Retry until the store answers, with back-off, until the deadline."""
    delay = 0.25
    while True:
        try:
            await store.layout_version()
            return
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobFailed(f"the store did not answer in time ({exc})") from exc
            log.warning("waiting for the store", extra={"reason": str(exc), "left_s": round(left)})
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


async def wait_for_lock(store: RedisTaskStore, deadline: float) -> str:
    """The migrate lock; another run holding it is waited for, until the deadline."""
    while (token := await store.acquire_lock(LOCK, LOCK_TTL_SECONDS)) is None:
        if time.monotonic() >= deadline:
            raise JobFailed("another migrate holds the lock")
        log.info("another migrate is running: waiting for it")
        await asyncio.sleep(0.2)
    return token


async def run(args: argparse.Namespace, settings: Settings) -> Summary:
    deadline = time.monotonic() + args.wait
    async with shared_store(settings) as store:
        assert isinstance(store, RedisTaskStore)  # shared_store admits Redis only
        await wait_for_store(store, deadline)
        token = await wait_for_lock(store, deadline)
        try:
            result = await migrate(store)
        except MigrationFailed as exc:
            raise JobFailed(str(exc)) from exc
        finally:
            with suppress(StoreUnavailable):
                await store.release_lock(LOCK, token)
    log.info(
        "layout up to date",
        extra={"from": result.before, "to": result.after, "applied": result.applied},
    )
    return {
        "from": result.before,
        "to": result.after,
        "applied": result.applied,
        "converted": result.changed,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=seconds,
        default=WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the store to answer ({WAIT_SECONDS:g})",
    )


COMMAND = Command(
    name="migrate",
    help=f"migrate the stored data layout to version {LAYOUT_VERSION} (idempotent)",
    add_arguments=_arguments,
    run=run,
)
