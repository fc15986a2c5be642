"""What every job shares: the command record, its summary, its errors and the shared store."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from service.settings import Settings
from service.store import TaskStore, open_store

Summary = dict[str, str | int | float | bool | None]
"""The counts a job reports; the runner adds "job", "duration_ms" and, on failure, "error"."""


class UsageError(Exception):
    """Bad usage or configuration: exit 2."""


class JobFailed(Exception):
    """The job could not do its work: exit 1, with whatever it counted so far."""

    def __init__(self, reason: str, counts: Summary | None = None) -> None:
        super().__init__(reason)
        self.counts = counts or {}


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand of `python -m jobs`.

    `overrides` turns flags into settings overrides (validated by the settings class itself);
    `flag_of` names the flag behind an overridden field, for its error message.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, Summary]]
    overrides: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    flag_of: dict[str, str] = field(default_factory=dict)
    summary_to_stderr: bool = False  # `export`: stdout carries the data alone


@asynccontextmanager
async def shared_store(settings: Settings) -> AsyncIterator[TaskStore]:
    """The store the service uses, which must be shared: a job in its own process sees nothing
    of another process's memory store."""
    if settings.store != "redis":
        raise UsageError(
            f"TASKS_STORE is {settings.store!r}: a job runs in its own process, so the memory "
            "store gives it no shared tasks to act on; set TASKS_STORE=redis"
        )
    store = open_store(settings)
    try:
        yield store
    finally:
        await store.close()


BATCH = 500
"""Tasks per batch: bounds a job's memory however many tasks the store holds."""


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=BATCH, help=f"tasks per batch ({BATCH})"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value
