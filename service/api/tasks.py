"""/v1/tasks: create, list (cursor pagination), read, patch and delete (If-Match).

Write access (API keys), body size and HEAD are the edge layer's (`service.api.edge`): they are
settled before FastAPI reads a body. Every status an operation can answer is in its `responses`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
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
    new_fields,
    page_json,
    task_json,
)
from service.errors import InvalidCursor, TaskNotFound, UnsupportedMediaType
from service.settings import Settings
from service.store import Idempotency, TaskStore

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

JSON = "application/json"
_JSON = JSON.encode()
TaskId = Annotated[
    str,
    Path(
        description="The task id (26 characters, sortable by creation); any other is 404",
        # Documented, not enforced by FastAPI (that would answer 422): a malformed id is 404.
        json_schema_extra={"pattern": ID_PATTERN.pattern},
    ),
]
LIMIT_DEFAULT, LIMIT_MAX = 50, 100  # tasks per list page
KEY_MAX = 255  # characters of an Idempotency-Key
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


class Answer(NamedTuple):
    """What an operation answers, before either way of sending it: a route's `Response`
    (`response`), or the edge's raw ASGI messages (`FastPaths`), which skip building one."""

    status: int
    body: bytes  # JSON; empty for 304
    headers: dict[str, str]

    def response(self) -> Response:
        media_type = JSON if self.status != 304 else None
        return Response(self.body, self.status, self.headers, media_type=media_type)

    async def send(self, send: Send) -> None:
        """As `response()` would send it (a test compares the two)."""
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        if self.status != 304:
            headers += [(b"content-length", b"%d" % len(self.body)), (b"content-type", _JSON)]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _task_answer(task: Task, status: int = 200, **headers: str) -> Answer:
    body, tag = task_json(task)
    return Answer(status, body, {"ETag": tag, **headers})


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def none_match(if_none_match: str, current: str) -> bool:
    """If-None-Match holds: no listed tag matches, by weak comparison (RFC 9110 13.1.2)."""
    if if_none_match.strip() == "*":
        return False
    return all(_opaque(tag) != _opaque(current) for tag in if_none_match.split(","))


def required_tags(if_match: str | None) -> frozenset[str] | None:
    """The ETags If-Match lets a write find the task with (None: any). Compared strongly by
    the store, so a weak tag never matches (RFC 9110 13.1.1)."""
    if if_match is None or if_match.strip() == "*":
        return None
    return frozenset(tag.strip() for tag in if_match.split(","))


def known_id(task_id: str) -> str:
    """The id, or TaskNotFound at once when it cannot be one (the store is not asked)."""
    if not ID_PATTERN.match(task_id):
        raise TaskNotFound()
    return task_id


async def require_json(request: Request) -> None:
    """Bodies are JSON: anything else (text, a form, no body at all) is 415, before the body
    is validated. Runs before body validation errors are raised (FastAPI resolves dependencies
    first), after the edge layer has bounded and buffered the body."""
    if not is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType(request.method)


def is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


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
            max_length=KEY_MAX,
            description="Retry-safe creates: the same key and body return the first answer.",
        ),
    ] = None,
) -> Response:
    answer = await _create(store_of(request), settings_of(request), body, idempotency_key)
    return answer.response()


async def _create(
    store: TaskStore, settings: Settings, body: TaskCreate, idempotency_key: str | None
) -> Answer:
    idempotency = None
    if idempotency_key is not None:
        ttl = settings.idempotency_ttl_seconds
        idempotency = Idempotency(idempotency_key, body.fingerprint(), ttl)
    created = await store.create(new_fields(body), idempotency)
    headers = {"ETag": created.json.etag, "Location": f"{router.prefix}/{created.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Answer(201, created.json.body, headers)


@router.get(
    "",
    response_model=Page,
    responses=_problems(400, 422, 503),
    summary="List tasks, newest first",
)
async def list_tasks(
    request: Request,
    status: Annotated[Status | None, Query(description="Only tasks with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = LIMIT_DEFAULT,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> Response:
    return (await _list(store_of(request), status, limit, cursor)).response()


async def _list(store: TaskStore, status: Status | None, limit: int, cursor: str | None) -> Answer:
    before = decode_cursor(cursor) if cursor is not None else None
    page = await store.list(status=status, limit=limit, before=before)
    headers = {}
    next_cursor = None
    if page.next_cursor is not None:
        next_cursor = encode_cursor(page.next_cursor)
        query = {"limit": limit, **({"status": status.value} if status else {})}
        link = f"{router.prefix}?{urlencode({**query, 'cursor': next_cursor})}"
        headers["Link"] = f'<{link}>; rel="next"'
    return Answer(200, page_json(page.items, next_cursor), headers)


async def read_task(store: TaskStore, task_id: str, if_none_match: str | None) -> Answer:
    """GET one task: its JSON and ETag, or 304 (no body) when If-None-Match names its ETag."""
    body, tag = await store.get_json(known_id(task_id))
    if if_none_match is not None and not none_match(if_none_match, tag):
        return Answer(304, b"", {"ETag": tag})
    return Answer(200, body, {"ETag": tag})


@router.get(
    "/{task_id}",
    response_model=Task,
    responses={304: {"description": "Not modified"}, **_problems(404, 503)},
    summary="Read a task (with its ETag; HEAD too)",
    openapi_extra={"parameters": [_IF_NONE_MATCH]},
)
async def get_task(task_id: TaskId, request: Request) -> Response:
    # The edge serves this operation itself (`FastPaths`, below); the route declares it (OpenAPI,
    # the metrics' route label) and serves it the same way to a caller that bypasses the edge.
    answer = await read_task(store_of(request), task_id, request.headers.get("if-none-match"))
    return answer.response()


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
    task = await store_of(request).patch(known_id(task_id), patch, required_tags(if_match))
    return _task_answer(task).response()


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
    await store_of(request).delete(known_id(task_id), required_tags(if_match))
    return Response(status_code=204)


_LIST_QUERY = frozenset({"status", "limit", "cursor"})
_LIMIT = re.compile(r"[0-9]{1,3}")
_STATUSES = frozenset(Status)


class FastPaths:
    """The hottest calls, as the edge layer serves them: GET (and HEAD) of one task, a list
    page, a create. Served in raw ASGI messages, without FastAPI's routing, parameter resolution
    and response objects, which cost more CPU than the Redis call itself; by the same functions
    as their routes (`read_task`, `_list`, `_create`).

    Only requests this answers exactly as the route would are served here: a query of the
    parameters, each once and well-formed, a JSON body that validates (`TaskCreate` read by
    pydantic's JSON parser, which accepts less than FastAPI's `json.loads`; a test holds every
    body it accepts to the same model). Any other request is declined, nothing sent, and
    FastAPI answers it, its 400, 415 and 422 included. Errors of the operation itself (404, 503,
    a cursor this API did not issue) are raised to the edge, which answers them as FastAPI's
    handlers would."""

    PREFIX = f"{router.prefix}/"

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        # Set on the scope, as FastAPI's routing would: the request metrics label by its path.
        served = {route.endpoint: route for route in routes if isinstance(route, APIRoute)}
        self.read_route = served[get_task]
        self.list_route = served[list_tasks]
        self.create_route = served[create_task]

    async def serve(self, scope: Scope, body: bytes | None, send: Send) -> bool:
        """Answer the request (HEAD already made GET) if it is one of these; False if not."""
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "GET" and path.startswith(self.PREFIX):
            task_id = path[len(self.PREFIX) :]
            if not task_id or "/" in task_id:
                return False
            scope["route"] = self.read_route
            await self._read(scope, send, task_id)
        elif method == "GET" and path == router.prefix:
            query = _list_query(scope["query_string"])
            if query is None:
                return False
            scope["route"] = self.list_route
            await (await _list(scope["app"].state.store, *query)).send(send)
        elif method == "POST" and path == router.prefix and body is not None:
            create = _create_request(scope["headers"], body)
            if create is None:
                return False
            scope["route"] = self.create_route
            app = scope["app"]
            await (await _create(app.state.store, app.state.settings, *create)).send(send)
        else:
            return False
        return True

    @staticmethod
    async def _read(scope: Scope, send: Send, task_id: str) -> None:
        if_none_match = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None
        )
        await (await read_task(scope["app"].state.store, task_id, if_none_match)).send(send)


def _list_query(query_string: bytes) -> tuple[Status | None, int, str | None] | None:
    """A list page's (status, limit, cursor) when its query is plain, else None."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs) or not query.keys() <= _LIST_QUERY:  # repeated, or unknown
        return None
    status = query.get("status")
    limit = query.get("limit")
    if status is not None and status not in _STATUSES:
        return None
    if limit is not None and not (_LIMIT.fullmatch(limit) and 1 <= int(limit) <= LIMIT_MAX):
        return None
    return (
        None if status is None else Status(status),
        LIMIT_DEFAULT if limit is None else int(limit),
        query.get("cursor"),
    )


def _create_request(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[TaskCreate, str | None] | None:
    """A create's body and Idempotency-Key, when it is JSON that validates, else None."""
    content_type: bytes | None = None
    key: str | None = None
    for name, value in headers:
        if name == b"content-type":
            if content_type is not None:  # sent twice: FastAPI's to judge
                return None
            content_type = value
        elif name == b"idempotency-key":
            if key is not None:
                return None
            key = value.decode("latin-1")
    # application/json, the usual one, is known as sent; any other is decoded and parsed
    if content_type != _JSON and not is_json((content_type or b"").decode("latin-1")):
        return None
    if key is not None and not 1 <= len(key) <= KEY_MAX:
        return None
    try:
        return TaskCreate.__pydantic_validator__.validate_json(body), key
    except ValidationError:
        return None
