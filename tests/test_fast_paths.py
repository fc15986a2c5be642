"""The edge serves the hottest calls itself (`FastPaths`): every request it serves is answered
as FastAPI's route answers it, and every other one is left to the route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from starlette.types import Scope, Send

from service.api import tasks
from service.api.tasks import FastPaths
from service.domain import TaskCreate

pytestmark = pytest.mark.factor("X")

_DIFFERS = {"date", "x-request-id"}  # per response, whoever answers


@contextmanager
def served_fast(monkeypatch: pytest.MonkeyPatch, fast: bool) -> Iterator[list[bool]]:
    """Within: the fast paths on (each request's verdict recorded) or declining everything."""
    serve = FastPaths.serve
    verdicts: list[bool] = []

    async def recorded(self: FastPaths, scope: Scope, body: bytes | None, send: Send) -> bool:
        served = False
        try:
            served = fast and await serve(self, scope, body, send)
        except Exception:  # taken, and raised to the edge (an error of the operation)
            served = True
            raise
        finally:
            verdicts.append(served)
        return served

    with monkeypatch.context() as patch:
        patch.setattr(FastPaths, "serve", recorded)
        yield verdicts


def _answer(response: Any, volatile: tuple[str, ...] = ()) -> tuple[int, dict[str, str], Any]:
    """What a client sees, without what differs per request anyway (the given headers too)."""
    headers = {k: v for k, v in response.headers.items() if k not in _DIFFERS.union(volatile)}
    body = response.json() if response.content else None
    if isinstance(body, dict) and response.status_code == 201:  # a new task: its own id, times
        body = {k: v for k, v in body.items() if k not in ("id", "created_at", "updated_at")}
        body["completed_at"] = body["completed_at"] is not None
    return response.status_code, headers, body


def test_every_list_query_is_answered_as_the_route_answers_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, status in enumerate(["todo", "done", "in_progress", "done", "todo", "done", "todo"]):
        assert client.post("/v1/tasks", json={"title": f"t{i}", "status": status}).is_success
    cursor = client.get("/v1/tasks?limit=2").json()["next_cursor"]
    plain = [
        "", "limit=3", "limit=003", "limit=1", "limit=100", "status=done", "status=todo&limit=2",
        "limit=%32", "status=in%5Fprogress", f"cursor={cursor}", f"limit=2&cursor={cursor}",
        f"status=done&limit=1&cursor={cursor}", "cursor=bm90LW91cnM", "cursor=",
    ]  # fmt: skip
    other = [
        "limit=0", "limit=101", "limit=1000", "limit=abc", "limit=", "limit=+5", "limit=%205",
        "limit=1e1", "limit=5&limit=6", "status=DONE", "status=", "status=done&status=todo",
        "other=1", "limit=2&other=", "status=%FF",
    ]  # fmt: skip
    for query in plain + other:
        with served_fast(monkeypatch, True) as verdicts:
            fast = client.get(f"/v1/tasks?{query}")
        with served_fast(monkeypatch, False):
            routed = client.get(f"/v1/tasks?{query}")
        assert verdicts == [query in plain], query
        assert _answer(fast) == _answer(routed), query
        if query in plain and fast.status_code == 200:
            assert fast.content == routed.content


def test_every_create_is_answered_as_the_route_answers_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_type = ("content-type", "application/json")
    key = "idempotency-key"
    valid = b'{"title": "a", "description": "b", "status": "done"}'
    plain: list[tuple[bytes, list[tuple[str, str]]]] = [
        (valid, [json_type]),
        (
            b'{"title":"\\u00e9\\ud83d\\ude00 /"}',
            [("content-type", "application/json; charset=utf-8")],
        ),
        (b'{"title":"a","title":"b"}', [("content-type", "application/vnd.tasks+json")]),
        (valid, [json_type, (key, "k" * 255)]),
    ]
    other: list[tuple[bytes, list[tuple[str, str]]]] = [
        (b'{"title": ""}', [json_type]),
        (b'{"title": "a", "extra": 1}', [json_type]),
        (b'{"title": "a", "status": "DONE"}', [json_type]),
        (b'{"title": 5}', [json_type]),
        (b'{"title": "a"', [json_type]),
        (b'{"title": "a"} x', [json_type]),
        (b'\xef\xbb\xbf{"title": "a"}', [json_type]),
        ('{"title": "é"}'.encode("utf-16"), [json_type]),
        (b'{"title": "a\xff"}', [json_type]),
        (b"[]", [json_type]),
        (b"", [json_type]),
        (valid, [("content-type", "text/plain")]),
        (valid, [("content-type", "text/plain"), json_type]),
        (valid, [json_type, ("content-type", "text/plain")]),
        (valid, []),
        (valid, [json_type, (key, "")]),
        (valid, [json_type, (key, "k" * 256)]),
        (valid, [json_type, (key, "k1"), (key, "k2")]),
    ]
    for n, (body, headers) in enumerate(plain + other):
        answers = []
        for fast in (True, False):
            # Keys of their own per run: the second would be a replay of the first.
            sent = [(k, f"{v[:-3]}{n:02}{int(fast)}" if k == key and v else v) for k, v in headers]
            with served_fast(monkeypatch, fast) as verdicts:
                response = client.post("/v1/tasks", content=body, headers=sent)
            answers.append(_answer(response, ("etag", "location", "content-length")))
            if fast:
                assert verdicts == [(body, headers) in plain], (body, headers)
        assert answers[0] == answers[1], (body, headers)


_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from('\x00\n"\\/\u2028\ud800'))
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "title": _TEXT | st.integers() | st.none(),
        "description": _TEXT,
        "status": st.sampled_from(["todo", "done", "in_progress", "Done", ""]),
        "extra": st.booleans(),
    },
)


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(
    fields=_FIELDS,
    ascii_only=st.booleans(),
    prefix=st.sampled_from([b"", b" ", b"\xef\xbb\xbf", b"\n"]),
    suffix=st.sampled_from([b"", b" ", b"\n", b"x", b"\x00", b"}"]),
    noise=st.binary(max_size=4),
)
def test_a_create_body_the_fast_path_accepts_is_the_one_fastapi_reads(
    fields: dict[str, Any], ascii_only: bool, prefix: bytes, suffix: bytes, noise: bytes
) -> None:
    """FastAPI reads a body with `json.loads` and validates the object; the fast path with
    pydantic's JSON parser. Whatever the latter accepts, the former reads as the same task."""
    try:
        text = json.dumps(fields, ensure_ascii=ascii_only)
        encoded = text.encode("utf-8", "surrogatepass")
    except UnicodeEncodeError:
        return
    for body in (prefix + encoded + suffix, encoded[: len(encoded) // 2] + noise, noise):
        accepted = tasks._create_request([(b"content-type", b"application/json")], body)
        if accepted is not None:
            assert accepted == (TaskCreate.model_validate(json.loads(body)), None), body
