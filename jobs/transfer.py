"""`python -m jobs export` / `import`: every task as JSON lines, streamed in batches.

Export writes one task per line on stdout (its summary goes to stderr); import validates each
line of stdin and upserts the valid ones, keeping every field (ids, timestamps, status) as
given. Export, flush, import round-trips exactly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.runtime import Command, JobFailed, Summary, add_batch_size, shared_store
from service.domain import DESCRIPTION_MAX, ID_PATTERN, TITLE_MAX, Status, Task, to_json
from service.settings import Settings
from service.store import TaskStore

log = logging.getLogger("tasks.jobs.transfer")


# --- export -------------------------------------------------------------------------------


async def export(args: argparse.Namespace, settings: Settings) -> Summary:
    out = sys.stdout.buffer
    exported = 0
    async with shared_store(settings) as store:
        await store.ping()
        after: str | None = None
        while ids := await store.scan_ids(status=None, after=after, limit=args.batch_size):
            after = ids[-1]
            tasks = await store.get_many(ids)  # a task deleted meanwhile is simply absent
            try:
                out.write(b"".join(to_json(task) + b"\n" for task in tasks))
                out.flush()
            except BrokenPipeError:
                raise JobFailed("stdout was closed", {"exported": exported}) from None
            exported += len(tasks)
    return {"exported": exported}


# --- import -------------------------------------------------------------------------------


class TaskRecord(BaseModel):
    """One imported line: a complete task, checked against the rules the API enforces."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ID_PATTERN.pattern)]
    title: Annotated[str, Field(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, Field(max_length=DESCRIPTION_MAX)]
    status: Status
    created_at: AwareDatetime
    updated_at: AwareDatetime
    completed_at: AwareDatetime | None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.status is Status.done) != (self.completed_at is not None):
            raise ValueError("completed_at must be set when status is done, and only then")
        if self.updated_at < self.created_at:
            raise ValueError("updated_at is before created_at")
        return self

    def to_task(self) -> Task:
        def utc(value: AwareDatetime) -> AwareDatetime:
            return value.astimezone(UTC)

        return Task(
            id=self.id,
            title=self.title,
            description=self.description,
            status=self.status,
            created_at=utc(self.created_at),
            updated_at=utc(self.updated_at),
            completed_at=utc(self.completed_at) if self.completed_at is not None else None,
        )


def parse_line(line: bytes) -> Task:
    """The task on one line, or ValueError saying why not."""
    try:
        return TaskRecord.model_validate_json(line).to_task()
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"])
        why = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"{where}: {why}{more}" if where else f"{why}{more}") from None


async def import_(args: argparse.Namespace, settings: Settings) -> Summary:
    lines = invalid = imported = 0
    pending: list[Task] = []
    async with shared_store(settings) as store:
        await store.ping()
        for number, line in enumerate(sys.stdin.buffer, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) carry nothing
            lines += 1
            try:
                pending.append(parse_line(line))
            except ValueError as exc:
                invalid += 1
                print(f"line {number}: {exc}", file=sys.stderr, flush=True)
                continue
            if len(pending) >= args.batch_size:
                imported += await _write(store, pending, args.dry_run)
        imported += await _write(store, pending, args.dry_run)
    counts: Summary = {
        "dry_run": args.dry_run,
        "lines": lines,
        "valid": lines - invalid,
        "invalid": invalid,
        "imported": imported,
    }
    if invalid:
        raise JobFailed(f"{invalid} invalid lines (see `line N:` above)", counts)
    return counts


async def _write(store: TaskStore, pending: list[Task], dry_run: bool) -> int:
    """Upsert one batch (nothing on a dry run); how many were written."""
    written = 0 if dry_run else len(pending)
    if written:
        await store.put_many(pending)
    pending.clear()
    return written


# --- the commands -------------------------------------------------------------------------


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_size(parser)


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="validate every line, write none")
    add_batch_size(parser)


EXPORT = Command(
    name="export",
    help="write every task as JSON lines to stdout (the summary goes to stderr)",
    add_arguments=_export_arguments,
    run=export,
    summary_to_stderr=True,
)
IMPORT = Command(
    name="import",
    help="upsert tasks from JSON lines on stdin; a bad line is reported as `line N: <why>`",
    add_arguments=_import_arguments,
    run=import_,
)
