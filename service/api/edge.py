"""The edge of the app: what every request goes through before FastAPI reads a byte of its body.

A pure-ASGI layer (no Starlette request objects) directly inside the observability middleware:

- writes (POST, PUT, PATCH, DELETE) without a valid API key are refused (401) before their
  body is read;
- a body is bounded by TASKS_MAX_BODY_BYTES: a larger Content-Length is refused (413) unread,
  and a body without one (chunked) is counted as it arrives and refused once over the bound;
  a refusal with an unread body closes the connection, so the rest is never read either;
- HEAD is served as GET (RFC 9110; the server sends the headers only);
- once the process drains (SIGTERM), every response says `Connection: close`: a keep-alive
  client then opens a new connection, which the Service sends to a pod still ready, instead of
  keeping this one until the listener closes it (a request sent on an idle connection just as it
  is closed is lost: the client reads EOF);
- at most `max_in_flight` API requests are served at once; the others wait for a turn, first
  come first served, for at most `admission_timeout`, then answer 503 (overloaded). Under a
  burst, requests are served at the rate the process can, instead of every one starting and
  none finishing in time (each would run out of its store budget waiting for the CPU);
- the hottest calls (GET and HEAD of one task, a list page, a create) are served here, without
  FastAPI's routing, when they are in a form served exactly as their routes would
  (`service.api.tasks.FastPaths`); FastAPI answers any other;
- an exception nothing else handled (a bug) is answered 500 problem+json and logged once, here,
  with the request id, and not re-raised, so the server logs no second traceback.

Headers are bounded in the HTTP parser (`service.server`), before any of this runs.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import ApiKeyGuard
from service.api.problems import answer, internal_error
from service.api.tasks import FastPaths
from service.errors import BodyTooLarge, Overloaded, TasksError
from service.lifecycle import Lifecycle

log = logging.getLogger("tasks.errors")

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ADMITTED = "/v1/"


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        api_keys: ApiKeyGuard,
        max_in_flight: int,
        admission_timeout: float,
        lifecycle: Lifecycle,
        fast_paths: FastPaths,
    ) -> None:
        self.app = app
        self.fast_paths = fast_paths
        self.lifecycle = lifecycle
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys
        self.admission = asyncio.Semaphore(max_in_flight)
        self.admission_timeout = admission_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        method = scope["method"]
        authorization: bytes | None = None
        declared: bytes | None = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
            elif name == b"authorization":
                authorization = value
        started = False
        received: Message | None = None  # the whole body, once read
        body: bytes | None = None  # its bytes (None: no body, or the client went away)

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            if self.lifecycle.draining and message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        try:
            if method in _WRITES:
                self.api_keys.check(authorization.decode("latin-1") if authorization else None)
            if has_body:
                if declared is not None and _length(declared) > self.max_body_bytes:
                    raise BodyTooLarge(f"the body may be at most {self.max_body_bytes} bytes")
                # Read before the turn is taken: a turn is not held while a body trickles in.
                received = await self._read_body(receive)
                if received["type"] == "http.request":
                    body = received.get("body", b"")
                has_body = False  # read whole: the connection can carry the next request
            inner = scope
            if method == "HEAD":
                inner = {**scope, "method": "GET"}
            # The API's routes wait for a turn; probes and docs never do.
            admitted = scope["path"].startswith(_ADMITTED)
            if admitted:
                await self._take_turn()
            try:
                if not await self.fast_paths.serve(inner, body, tracked):
                    if received is not None:
                        receive = _replaying(received, receive)
                    await self.app(inner, receive, tracked)
            finally:
                if admitted:
                    self.admission.release()
            if inner is not scope and "route" in inner:
                scope["route"] = inner["route"]  # for the request metrics' route label
        except TasksError as exc:
            if started:
                raise
            response = answer(exc)
            if has_body:
                response.headers["Connection"] = "close"
            await response(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error")
            if not started:
                await internal_error()(scope, receive, tracked)

    async def _take_turn(self) -> None:
        """Wait for one of the API's turns, within the bound (a plain method, not a context
        manager: this runs on every API request)."""
        if self.admission.locked():  # others wait (or hold every turn): queue, within the bound
            try:
                async with asyncio.timeout(self.admission_timeout):
                    await self.admission.acquire()
            except TimeoutError:
                raise Overloaded("too many requests at once; retry shortly") from None
        else:  # a turn is free: taken at once, no timer to arm and cancel
            await self.admission.acquire()

    async def _read_body(self, receive: Receive) -> Message:
        """Read the whole body, at most max_body_bytes of it: one message with all of it, or
        the one that says the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: pass that on
                return message
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(f"the body may be at most {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                if len(chunks) == 1:  # the usual case: it came in one message
                    return message
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _replaying(message: Message, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever `receive` gives."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return message

    return replay


def _length(declared: bytes) -> int:
    try:
        return int(declared)
    except ValueError:
        return 0  # the HTTP parser refuses a malformed Content-Length before we see it
