"""`python -m jobs migrate [--contract]`: bring the stored data layout to this build's version.

Runs as a Helm hook right after Redis is created, so it first waits (bounded by `--wait`) for
the store to answer. Concurrent runs serialize on a lock; a second run finds nothing to do.
The hook applies what old pods keep serving through (and what this build cannot do without); a
contraction waits for `--contract`, run once every pod is this build's (the rules are in
`service.store.migrations`).
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
            await store.layout()
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
            result = await migrate(store, contract=args.contract)
        except MigrationFailed as exc:
            raise JobFailed(str(exc)) from exc
        finally:
            with suppress(StoreUnavailable):
                await store.release_lock(LOCK, token)
    before = result.before.current if result.before is not None else None
    log.info(
        "layout up to date",
        extra={"from": before, "to": result.after.current, "applied": result.applied},
    )
    if result.pending:
        log.info("a contraction is pending: run `migrate --contract` once every pod is new")
    return {
        "from": before,
        "to": result.after.current,
        "min_compatible": result.after.min_compatible,
        "applied": result.applied,
        "converted": result.changed,
        "pending_contract": result.pending,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=seconds,
        default=WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the store to answer ({WAIT_SECONDS:g})",
    )
    parser.add_argument(
        "--contract",
        action="store_true",
        help="also apply this build's contracting migration: builds older than it stop serving "
        "(run once every pod is this build's)",
    )


COMMAND = Command(
    name="migrate",
    help=f"migrate the stored data layout to version {LAYOUT_VERSION} (idempotent; "
    "--contract: with the contraction, after the rollout)",
    add_arguments=_arguments,
    run=run,
)
