"""The one place where errors become HTTP answers: application/problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from service.errors import (
    BodyTooLarge,
    IdempotencyKeyReused,
    InvalidCursor,
    Overloaded,
    PreconditionFailed,
    StoreUnavailable,
    TaskNotFound,
    TasksError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.store.base import LayoutMismatch, ShardCountMismatch

log = logging.getLogger("tasks.errors")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
RETRY_AFTER_SECONDS = "1"

# Each error type: its status, title and the last part of its problem type URI.
_STATUS: dict[type[TasksError], tuple[int, str, str]] = {
    InvalidCursor: (400, "Invalid cursor", "invalid-cursor"),
    Unauthorized: (401, "Unauthorized", "unauthorized"),
    TaskNotFound: (404, "Task not found", "task-not-found"),
    PreconditionFailed: (412, "Precondition failed", "precondition-failed"),
    BodyTooLarge: (413, "Content too large", "body-too-large"),
    UnsupportedMediaType: (415, "Unsupported media type", "unsupported-media-type"),
    IdempotencyKeyReused: (422, "Idempotency key reused", "idempotency-key-reused"),
    StoreUnavailable: (503, "Store unavailable", "store-unavailable"),
    Overloaded: (503, "Overloaded", "overloaded"),
    LayoutMismatch: (503, "Data layout mismatch", "layout-mismatch"),
    ShardCountMismatch: (503, "Shard count mismatch", "shard-count-mismatch"),
}


def problem(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def answer(exc: TasksError) -> JSONResponse:
    """The problem+json answer for one of our errors (also used by the edge layer, which
    answers before FastAPI sees the request)."""
    status, title, slug = next(_STATUS[t] for t in type(exc).__mro__ if t in _STATUS)
    headers: dict[str, str] = {}
    if isinstance(exc, StoreUnavailable):
        # One line per failed request; the reason, never the command or its arguments.
        log.warning("store unavailable", extra={"reason": exc.reason.value})
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="tasks"'
    elif isinstance(exc, StoreUnavailable | Overloaded):
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    elif isinstance(exc, UnsupportedMediaType):
        headers["Accept-Patch" if exc.method == "PATCH" else "Accept-Post"] = JSON
    return problem(
        status,
        title=title,
        detail=exc.detail,
        type_=f"urn:tasks:problem:{slug}",
        headers=headers or None,
    )


def internal_error() -> JSONResponse:
    """The answer to a bug: no detail, nothing of the exception leaks to the client."""
    return problem(500, type_="urn:tasks:problem:internal-error")


async def _tasks_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TasksError)
    return answer(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        # Not JSON at all is a syntax error (400); JSON of the wrong shape is 422.
        return problem(
            400,
            title="Malformed JSON",
            detail="The body is not valid JSON; see `errors`.",
            type_="urn:tasks:problem:malformed-json",
            errors=errors,
        )
    return problem(
        422,
        title="Request validation failed",
        detail="The request does not match the API's schema; see `errors`.",
        type_="urn:tasks:problem:validation-error",
        errors=errors,
    )


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (RFC 9110: a 405 lists them all; HEAD
    wherever GET is)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem(exc.status_code, detail=detail, headers=headers or None)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TasksError, _tasks_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # Any other exception is a bug: Starlette's error layer answers it with internal_error()
    # and re-raises it to the edge (service.api.edge), which logs it once with the request id
    # and does not re-raise it; the edge answers those raised outside FastAPI's stack itself.
    app.add_exception_handler(Exception, _bug)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    return internal_error()
