"""/v1/tasks: create, list (cursor pagination), read, patch (If-Match), delete."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from service.api.deps import require_write_access, settings_of, store_of
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
    to_json,
)
from service.errors import InvalidCursor, PreconditionFailed, TaskNotFound
from service.store import Idempotency

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

JSON = "application/json"
TaskId = Annotated[str, Path(description="The task id (26 characters, sortable by creation)")]
WriteAccess = [Depends(require_write_access)]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
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


def _task_response(task: Task, status_code: int = 200, **headers: str) -> Response:
    body = to_json(task)
    return Response(body, status_code, {"ETag": etag(body), **headers}, media_type=JSON)


def _matches(if_match: str, current: str) -> bool:
    if if_match.strip() == "*":
        return True
    return any(candidate.strip() == current for candidate in if_match.split(","))


@router.post(
    "",
    status_code=201,
    response_model=Task,
    dependencies=WriteAccess,
    responses={401: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
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
    responses={400: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
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
    if page.next_cursor is not None:
        page = Page(items=page.items, next_cursor=encode_cursor(page.next_cursor))
        query = {"limit": limit, **({"status": status.value} if status else {})}
        link = f"{router.prefix}?{urlencode({**query, 'cursor': page.next_cursor})}"
        headers["Link"] = f'<{link}>; rel="next"'
    return Response(page.model_dump_json(), headers=headers, media_type=JSON)


@router.get(
    "/{task_id}",
    response_model=Task,
    responses={304: {"description": "Not modified"}, 404: _PROBLEM, 503: _PROBLEM},
    summary="Read a task (with its ETag)",
    openapi_extra={"parameters": [_IF_NONE_MATCH]},
)
async def get_task(task_id: TaskId, request: Request) -> Response:
    # If-None-Match is read here, and documented by `openapi_extra`, rather than declared as a
    # `Header` parameter: FastAPI's parameter machinery for it cost this, the hottest route, as
    # much as a ninth of a bare FastAPI + Redis GET, on every request, to pass on an optional
    # string it does not check.
    if_none_match = request.headers.get("if-none-match")
    task = await store_of(request).get(task_id)
    response = _task_response(task)
    if if_none_match is not None and _matches(if_none_match, response.headers["etag"]):
        return Response(status_code=304, headers={"ETag": response.headers["etag"]})
    return response


@router.patch(
    "/{task_id}",
    response_model=Task,
    dependencies=WriteAccess,
    responses={401: _PROBLEM, 404: _PROBLEM, 412: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
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
        if if_match is not None and not _matches(if_match, etag(to_json(current))):
            raise PreconditionFailed("the task changed since that ETag was issued")
        return apply_patch(current, patch)

    return _task_response(await store_of(request).update(task_id, change))


@router.delete(
    "/{task_id}",
    status_code=204,
    dependencies=WriteAccess,
    responses={401: _PROBLEM, 404: _PROBLEM, 503: _PROBLEM},
    summary="Delete a task",
)
async def delete_task(task_id: TaskId, request: Request) -> Response:
    if not ID_PATTERN.match(task_id):
        raise TaskNotFound()
    await store_of(request).delete(task_id)
    return Response(status_code=204)
