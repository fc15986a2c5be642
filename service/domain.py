"""The task model and its rules: ids, timestamps, what a create or a patch does to a task."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, NamedTuple, cast

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

TITLE_MAX = 200
DESCRIPTION_MAX = 10_000
ID_PATTERN = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class Status(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    done = "done"


class Task(BaseModel):
    """A task as stored and as served."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    description: str
    status: Status
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class TaskCreate(BaseModel):
    """The body of POST /v1/tasks."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, Field(max_length=DESCRIPTION_MAX)] = ""
    status: Status = Status.todo

    def fingerprint(self) -> str:
        """Identifies the request body for Idempotency-Key comparison (formatting-insensitive)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class TaskPatch(BaseModel):
    """The body of PATCH /v1/tasks/{id}: only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    # `SkipJsonSchema[None]`: None is only the "not given" default, never a value a client may
    # send (see _no_nulls), so the published schema does not offer null.
    title: Annotated[str, Field(min_length=1, max_length=TITLE_MAX)] | SkipJsonSchema[None] = None
    description: Annotated[str, Field(max_length=DESCRIPTION_MAX)] | SkipJsonSchema[None] = None
    status: Status | SkipJsonSchema[None] = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None:
                    raise ValueError(f"{name} may be omitted but not null")
        return data


class Page(BaseModel):
    """One page of a listing; `next_cursor` is None on the last page."""

    items: list[Task]
    next_cursor: str | None


class PageJson(NamedTuple):
    """One page of a listing as a store reads it for the API: `items`, the tasks' JSON array,
    byte for byte the model's; `next_cursor` as in `Page`."""

    items: bytes
    next_cursor: str | None


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdGenerator:
    """ULID-style ids (48-bit milliseconds + 80 random bits, Crockford base32, lowercase).

    Ids sort by creation time, and strictly increase within a process, which is what makes
    keyset pagination stable while tasks are being added.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._random = 0  # the last id's
        self._head = ""  # the last id but its final two characters (the random part's low 10 bits)

    def new(self, ms: int, accept: Callable[[str], bool] | None = None) -> str:
        """The next id, made at `ms` milliseconds since the epoch; with `accept`, the next one
        it accepts (about one in n of them, for a store that needs the id in one of n shards)."""
        with self._lock:
            if ms > self._last_ms:
                self._start(ms)
            else:  # the same millisecond (or the clock stepped back): the next of its ids
                self._step()
            task_id = self._encoded()
            while accept is not None and not accept(task_id):
                self._step()
                task_id = self._encoded()
        return task_id

    def _start(self, ms: int) -> None:
        self._last_ms, self._random = ms, int.from_bytes(os.urandom(10), "big")
        self._head = ""

    def _step(self) -> None:
        self._random += 1
        if self._random >> 80:  # past the millisecond's last id: the next one's first
            self._start(self._last_ms + 1)

    def _encoded(self) -> str:
        # Ids made in one millisecond count up: only the last two characters change, but one
        # time in 1,024 (a carry), when the rest is encoded again.
        low = self._random & 1023
        if not self._head or not low:
            self._head = _encode_time(self._last_ms) + _encode_random(self._random)[:14]
        return self._head + _PAIRS[low]


# Two characters per 10 bits: half the lookups of one per 5 (an id is made on every
# create). An id is 130 bits, 2 zero bits then the 48 of the time and the 80 random ones.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def _encode_time(ms: int) -> str:  # once a millisecond
    return "".join([_PAIRS[ms >> shift & 1023] for shift in (40, 30, 20, 10, 0)])


def _encode_random(r: int) -> str:  # unrolled: on every create
    p = _PAIRS
    return (
        p[r >> 70 & 1023]
        + p[r >> 60 & 1023]
        + p[r >> 50 & 1023]
        + p[r >> 40 & 1023]
        + p[r >> 30 & 1023]
        + p[r >> 20 & 1023]
        + p[r >> 10 & 1023]
        + p[r & 1023]
    )


_ids = IdGenerator()


def json_time(at: datetime) -> str:
    """A datetime as a task's JSON writes it, and a store keeps it."""
    return cast(str, pydantic_core.to_jsonable_python(at))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """Microseconds since the epoch."""
    return (at - EPOCH) // _MICROSECOND


def _json_micros(us: int) -> str:
    """`json_time` of the UTC time `us` microseconds after the epoch, made without a datetime
    (a create's clock reading is an integer)."""
    seconds, fraction = divmod(us, 1_000_000)
    second = _json_second(seconds)
    return f"{second}.{fraction:06d}Z" if fraction else second + "Z"


@functools.lru_cache(maxsize=1)  # the creates of one second share it
def _json_second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat()[:19]


class TaskFields(NamedTuple):
    """A task in the form a store keeps it: each field as its JSON writes it (`completed_at` ""
    when None). A task's ETag is computed from these (`etag`), and its JSON can be (`fields_json`),
    so a create or a read need not build the model."""

    id: str
    title: str
    description: str
    status: str
    created_at: str
    updated_at: str
    completed_at: str


_NAMES = TaskFields._fields
assert tuple(Task.model_fields) == _NAMES, "a store keeps the model's fields, in order"


def new_fields(body: TaskCreate, now: datetime | None = None) -> TaskFields:
    """A new task from a create request; creating it as done marks it completed now (`now`,
    for tests, is written in UTC as the clock's reading is)."""
    us = time.time_ns() // 1000 if now is None else micros(now)  # one reading: id and times
    at = _json_micros(us)
    done = body.status is Status.done
    return TaskFields(
        _ids.new(us // 1000),
        body.title,
        body.description,
        body.status.value,
        at,
        at,
        at if done else "",
    )


def from_fields(fields: TaskFields) -> Task:
    """The model of a task a store keeps (validated)."""
    return Task.model_validate({**fields._asdict(), "completed_at": fields.completed_at or None})


def with_new_id(fields: TaskFields, accept: Callable[[str], bool]) -> TaskFields:
    """The task under the next id `accept` takes (still after every id this process gave)."""
    ms = micros(datetime.fromisoformat(fields.created_at)) // 1000
    return fields._replace(id=_ids.new(ms, accept))


def apply_patch(task: Task, patch: TaskPatch, now: datetime | None = None) -> Task:
    """The task after a partial update; unchanged (same object) when the patch changes nothing.

    Moving to done sets `completed_at`; moving away from done clears it.
    """
    changes = patch.model_dump(exclude_unset=True)
    if all(getattr(task, name) == value for name, value in changes.items()):
        return task
    now = now or utcnow()
    status = changes.get("status", task.status)
    completed_at = task.completed_at
    if status is Status.done and task.status is not Status.done:
        completed_at = now
    elif status is not Status.done:
        completed_at = None
    return task.model_copy(update={**changes, "updated_at": now, "completed_at": completed_at})


def to_json(task: Task) -> bytes:
    return task.__pydantic_serializer__.to_json(task)


def tasks_json(tasks: list[Task]) -> bytes:
    return b"[" + b",".join(map(to_json, tasks)) + b"]"


def page_json(items: bytes, next_cursor: str | None) -> bytes:
    """`Page(items=..., next_cursor=...).model_dump_json()` for items already in JSON, byte
    for byte (a test holds them equal)."""
    return b'{"items":' + items + b',"next_cursor":' + pydantic_core.to_json(next_cursor) + b"}"


class TaskJson(NamedTuple):
    """A task as GET serves it: its JSON, byte for byte `to_json`, and its ETag."""

    body: bytes
    etag: str


def task_fields(task: Task) -> TaskFields:
    """The task as a store keeps it."""
    fields = task.model_dump(mode="json")
    fields["completed_at"] = fields["completed_at"] or ""
    return TaskFields(**fields)


def task_json(task: Task) -> TaskJson:
    """The task as GET serves it."""
    return TaskJson(to_json(task), etag(task_fields(task)))


def fields_json(fields: TaskFields) -> TaskJson:
    """`task_json` of the task with these fields, without building the model."""
    return TaskJson(pydantic_core.to_json(json_object(fields)), etag(fields))


def json_object(fields: Sequence[str | None]) -> dict[str, str | None]:
    """The task's JSON object from all its fields (`TaskFields` order; `completed_at` "" is
    null): each is in its JSON form already, so pydantic-core writes the dict byte for byte as
    the model (a test holds them equal)."""
    task = dict(zip(_NAMES, fields, strict=False))  # zip's length check is costly
    task["completed_at"] = task["completed_at"] or None
    return task


def etag(fields: Sequence[str | None]) -> str:
    """A strong validator for a task, from `task_fields` (as stored; None counts as "").

    Computed from the fields rather than the JSON so that a store can compute it too: Redis
    does, in the scripts of conditional writes (`service.store.redis._LUA_ETAG`), which makes
    an If-Match write one round trip. The fields are length-prefixed: no two tasks share the
    string hashed."""
    text = "".join([f"{len(f)}:{f}" if f else "0:" for f in fields])
    if text.isascii():  # a character is a byte: the lengths are the bytes'
        data = text.encode()
    else:
        data = b"".join(b"%d:%s" % (len(v), v) for v in [(f or "").encode() for f in fields])
    return '"' + hashlib.sha1(data, usedforsecurity=False).hexdigest()[:20] + '"'
