"""/v1/tasks: create, list (cursor pagination), read, patch and delete (If-Match).

Write access (API keys), body size and HEAD are the edge layer's (`service.api.edge`): they are
settled before FastAPI reads a body. Every status an operation can answer is in its `responses`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import Scope, Send

from service.api.deps import settings_of, store_of
from service.domain import (
    ID_PATTERN,
    Page,
    Status,
    Task,
    TaskCreate,
    TaskPatch,
    apply_patch,
    etag,
    new_task,
    page_json,
    to_json,
)
from service.errors import (
    InvalidCursor,
    PreconditionFailed,
    TaskNotFound,
    UnsupportedMediaType,
)
from service.store import Idempotency, TaskStore

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

JSON = "application/json"
TaskId = Annotated[
    str,
    Path(
        description="The task id (26 characters, sortable by creation); any other is 404",
        # Documented, not enforced by FastAPI (that would answer 422): a malformed id is 404.
        json_schema_extra={"pattern": ID_PATTERN.pattern},
    ),
]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: _PROBLEM for status in statuses}


_WRITE = _problems(401, 503)  # any write: no valid key; the store cannot answer
_BODY = _problems(400, 413, 415, 422)  # any body: not JSON, too large, not JSON at all, invalid
_IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "ETags the client holds; 304 Not Modified when the task's is one of them.",
    "schema": {"type": "string", "title": "If-None-Match"},
}


def encode_cursor(task_id: str) -> str:
    """Opaque, URL-safe cursor: base64url of a versioned position."""
    return base64.urlsafe_b64encode(f"v1:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("cursor is not one this API returned") from None
    version, _, task_id = raw.partition(":")
    if version != "v1" or not ID_PATTERN.match(task_id):
        raise InvalidCursor("cursor is not one this API returned")
    return task_id


class Read(NamedTuple):
    status: int
    body: bytes
    etag: str


def _task_response(task: Task, status_code: int = 200, **headers: str) -> Response:
    body = to_json(task)
    return Response(body, status_code, {"ETag": etag(body), **headers}, media_type=JSON)


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def none_match(if_none_match: str, current: str) -> bool:
    """If-None-Match holds: no listed tag matches, by weak comparison (RFC 9110 13.1.2)."""
    if if_none_match.strip() == "*":
        return False
    return all(_opaque(tag) != _opaque(current) for tag in if_none_match.split(","))


def match(if_match: str, current: str) -> bool:
    """If-Match holds: a listed tag matches, by strong comparison (a weak tag never does)."""
    if if_match.strip() == "*":
        return True
    return any(tag.strip() == current for tag in if_match.split(","))


def known_id(task_id: str) -> str:
    """The id, or TaskNotFound at once when it cannot be one (the store is not asked)."""
    if not ID_PATTERN.match(task_id):
        raise TaskNotFound()
    return task_id


async def require_json(request: Request) -> None:
    """Bodies are JSON: anything else (text, a form, no body at all) is 415, before the body
    is validated. Runs before body validation errors are raised (FastAPI resolves dependencies
    first), after the edge layer has bounded and buffered the body."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(request.method)


JsonBody = [Depends(require_json)]


@router.post(
    "",
    status_code=201,
    response_model=Task,
    dependencies=JsonBody,
    responses={**_WRITE, **_BODY},
    summary="Create a task",
)
async def create_task(
    body: TaskCreate,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retry-safe creates: the same key and body return the first answer.",
        ),
    ] = None,
) -> Response:
    idempotency = None
    if idempotency_key is not None:
        ttl = settings_of(request).idempotency_ttl_seconds
        idempotency = Idempotency(idempotency_key, body.fingerprint(), ttl)
    created = await store_of(request).create(new_task(body), idempotency)
    headers = {"Location": f"{router.prefix}/{created.task.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _task_response(created.task, 201, **headers)


@router.get(
    "",
    response_model=Page,
    responses=_problems(400, 422, 503),
    summary="List tasks, newest first",
)
async def list_tasks(
    request: Request,
    status: Annotated[Status | None, Query(description="Only tasks with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> Response:
    before = decode_cursor(cursor) if cursor is not None else None
    page = await store_of(request).list(status=status, limit=limit, before=before)
    headers = {}
    next_cursor = None
    if page.next_cursor is not None:
        next_cursor = encode_cursor(page.next_cursor)
        query = {"limit": limit, **({"status": status.value} if status else {})}
        link = f"{router.prefix}?{urlencode({**query, 'cursor': next_cursor})}"
        headers["Link"] = f'<{link}>; rel="next"'
    return Response(page_json(page.items, next_cursor), headers=headers, media_type=JSON)


async def read_task(store: TaskStore, task_id: str, if_none_match: str | None) -> Read:
    """GET one task: its JSON and ETag, or 304 (no body) when If-None-Match names its ETag."""
    body = await store.get_json(known_id(task_id))
    tag = etag(body)
    if if_none_match is not None and not none_match(if_none_match, tag):
        return Read(304, b"", tag)
    return Read(200, body, tag)


@router.get(
    "/{task_id}",
    response_model=Task,
    responses={304: {"description": "Not modified"}, **_problems(404, 503)},
    summary="Read a task (with its ETag; HEAD too)",
    openapi_extra={"parameters": [_IF_NONE_MATCH]},
)
async def get_task(task_id: TaskId, request: Request) -> Response:
    # The edge serves this operation itself (`ReadOne`, below); the route declares it (OpenAPI,
    # the metrics' route label) and serves it the same way to a caller that bypasses the edge.
    read = await read_task(store_of(request), task_id, request.headers.get("if-none-match"))
    if read.status == 304:
        return Response(status_code=304, headers={"ETag": read.etag})
    return Response(read.body, headers={"ETag": read.etag}, media_type=JSON)


class ReadOne:
    """GET (and HEAD) /v1/tasks/{id}, the hottest call, as the edge layer serves it: the same
    `read_task` as the route, answered in raw ASGI messages, without FastAPI's routing, parameter
    resolution and response objects, which cost more CPU than the Redis call itself.
    Errors are raised to the edge, which answers them as FastAPI's handlers would."""

    PREFIX = f"{router.prefix}/"

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        # Set on the scope, as FastAPI's routing would: the request metrics label by its path.
        self.route = next(
            route for route in routes if isinstance(route, APIRoute) and route.endpoint is get_task
        )

    def task_id(self, method: str, path: str) -> str | None:
        """The id when this request is GET or HEAD of one task, else None."""
        if method not in ("GET", "HEAD") or not path.startswith(self.PREFIX):
            return None
        task_id = path[len(self.PREFIX) :]
        return task_id if task_id and "/" not in task_id else None

    async def __call__(self, scope: Scope, send: Send, task_id: str) -> None:
        scope["route"] = self.route
        if_none_match = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None
        )
        read = await read_task(scope["app"].state.store, task_id, if_none_match)
        headers = [(b"etag", read.etag.encode())]
        if read.status == 200:
            headers[:0] = [
                (b"content-length", str(len(read.body)).encode()),
                (b"content-type", b"application/json"),
            ]
        await send({"type": "http.response.start", "status": read.status, "headers": headers})
        await send({"type": "http.response.body", "body": read.body})


@router.patch(
    "/{task_id}",
    response_model=Task,
    dependencies=JsonBody,
    responses={**_WRITE, **_BODY, **_problems(404, 412)},
    summary="Change some fields of a task",
)
async def patch_task(
    task_id: TaskId,
    patch: TaskPatch,
    request: Request,
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="Only apply if the task still has this ETag"),
    ] = None,
) -> Response:
    def change(current: Task) -> Task:
        _check_if_match(if_match, current)
        return apply_patch(current, patch)

    return _task_response(await store_of(request).update(known_id(task_id), change))


def _check_if_match(if_match: str | None, current: Task) -> None:
    if if_match is not None and not match(if_match, etag(to_json(current))):
        raise PreconditionFailed("the task changed since that ETag was issued")


@router.delete(
    "/{task_id}",
    status_code=204,
    responses={**_WRITE, **_problems(404, 412)},
    summary="Delete a task",
)
async def delete_task(
    task_id: TaskId,
    request: Request,
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="Only delete if the task still has this ETag"),
    ] = None,
) -> Response:
    check = None
    if if_match is not None:

        def check(current: Task) -> None:
            _check_if_match(if_match, current)

    await store_of(request).delete(known_id(task_id), check)
    return Response(status_code=204)
